//! The client side of the core NATS protocol, parsed incrementally from a byte buffer.
//!
//! Control lines end in `\r\n` (a bare `\n` is accepted, as nats-server does). Operation names
//! are case-insensitive. Arguments are separated by spaces or tabs. Payloads are taken out of
//! the buffer without copying.

use bytes::{Buf, Bytes, BytesMut};

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `CONNECT {json}`.
    Connect(Bytes),
    /// `PUB` (headers `None`) or `HPUB` (headers = the header block's length within `payload`).
    Pub {
        /// The subject.
        subject: Bytes,
        /// The reply subject, if any.
        reply: Option<Bytes>,
        /// For HPUB, the length of the header block at the start of `payload`.
        header_len: Option<usize>,
        /// The payload, headers included for HPUB.
        payload: Bytes,
    },
    /// `SUB subject [queue] sid`.
    Sub {
        /// The subject, possibly with wildcards.
        subject: Bytes,
        /// The queue group, if any.
        queue: Option<Bytes>,
        /// The client's subscription id.
        sid: Bytes,
    },
    /// `UNSUB sid [max]`.
    Unsub {
        /// The client's subscription id.
        sid: Bytes,
        /// Unsubscribe after this many messages in all.
        max: Option<u64>,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK` (ignored).
    Ok,
    /// `-ERR ...` (ignored).
    Err,
}

/// A protocol violation. Each kind closes the connection; some say why first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// An unknown operation or malformed framing: `-ERR 'Unknown Protocol Operation'`.
    UnknownOp,
    /// A control line longer than allowed: `-ERR 'maximum control line exceeded'`.
    MaxControlLine,
    /// A payload larger than `max_payload`: `-ERR 'Maximum Payload Violation'`.
    MaxPayload,
    /// Wrong arguments to a known operation; the connection closes without a message.
    BadArgs,
}

impl ParseError {
    /// The text nats-server sends for this error before closing, if any.
    pub fn message(&self) -> Option<&'static str> {
        match self {
            ParseError::UnknownOp => Some("Unknown Protocol Operation"),
            ParseError::MaxControlLine => Some("maximum control line exceeded"),
            ParseError::MaxPayload => Some("Maximum Payload Violation"),
            ParseError::BadArgs => None,
        }
    }
}

#[derive(Debug, Clone)]
struct PendingPub {
    subject: Bytes,
    reply: Option<Bytes>,
    header_len: Option<usize>,
    size: usize,
}

/// An incremental parser; feed it the connection's read buffer.
#[derive(Debug)]
pub struct Parser {
    pending: Option<PendingPub>,
    max_control_line: usize,
    max_payload: usize,
}

impl Parser {
    /// A parser enforcing the given limits.
    pub fn new(max_control_line: usize, max_payload: usize) -> Self {
        Parser {
            pending: None,
            max_control_line,
            max_payload,
        }
    }

    /// Takes the next complete operation out of `buf`, or `Ok(None)` if more bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Op>, ParseError> {
        if let Some(p) = &self.pending {
            if buf.len() < p.size + 2 {
                return Ok(None);
            }
            let payload = buf.split_to(p.size).freeze();
            if &buf[..2] != b"\r\n" {
                return Err(ParseError::UnknownOp);
            }
            buf.advance(2);
            let p = self.pending.take().expect("checked above");
            return Ok(Some(Op::Pub {
                subject: p.subject,
                reply: p.reply,
                header_len: p.header_len,
                payload,
            }));
        }
        let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
            if buf.len() > self.max_control_line {
                return Err(ParseError::MaxControlLine);
            }
            return Ok(None);
        };
        if nl > self.max_control_line {
            return Err(ParseError::MaxControlLine);
        }
        let line = buf.split_to(nl + 1).freeze();
        let end = if nl > 0 && line[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = line.slice(..end);
        let op_end = line
            .iter()
            .position(|b| *b == b' ' || *b == b'\t')
            .unwrap_or(line.len());
        let name = &line[..op_end];
        let rest = line.slice(op_end..);
        if name.eq_ignore_ascii_case(b"PUB") || name.eq_ignore_ascii_case(b"HPUB") {
            let hpub = name.len() == 4;
            let args = split_args(&rest);
            let (subject, reply, sizes) = match (hpub, args.len()) {
                (false, 2) => (args[0].clone(), None, &args[1..]),
                (false, 3) => (args[0].clone(), Some(args[1].clone()), &args[2..]),
                (true, 3) => (args[0].clone(), None, &args[1..]),
                (true, 4) => (args[0].clone(), Some(args[1].clone()), &args[2..]),
                (_, 0) => return Err(ParseError::UnknownOp),
                _ => return Err(ParseError::BadArgs),
            };
            let nums: Option<Vec<usize>> = sizes.iter().map(|s| parse_size(s)).collect();
            let Some(nums) = nums else {
                return Err(ParseError::BadArgs);
            };
            let (header_len, size) = if hpub {
                if nums[0] > nums[1] {
                    return Err(ParseError::BadArgs);
                }
                (Some(nums[0]), nums[1])
            } else {
                (None, nums[0])
            };
            if size > self.max_payload {
                return Err(ParseError::MaxPayload);
            }
            self.pending = Some(PendingPub {
                subject,
                reply,
                header_len,
                size,
            });
            return self.next(buf);
        }
        if name.eq_ignore_ascii_case(b"SUB") {
            let args = split_args(&rest);
            return match args.len() {
                2 => Ok(Some(Op::Sub {
                    subject: args[0].clone(),
                    queue: None,
                    sid: args[1].clone(),
                })),
                3 => Ok(Some(Op::Sub {
                    subject: args[0].clone(),
                    queue: Some(args[1].clone()),
                    sid: args[2].clone(),
                })),
                0 => Err(ParseError::UnknownOp),
                _ => Err(ParseError::BadArgs),
            };
        }
        if name.eq_ignore_ascii_case(b"UNSUB") {
            let args = split_args(&rest);
            return match args.len() {
                1 => Ok(Some(Op::Unsub {
                    sid: args[0].clone(),
                    max: None,
                })),
                2 => match parse_size(&args[1]) {
                    Some(n) => Ok(Some(Op::Unsub {
                        sid: args[0].clone(),
                        max: Some(n as u64),
                    })),
                    None => Err(ParseError::BadArgs),
                },
                0 => Err(ParseError::UnknownOp),
                _ => Err(ParseError::BadArgs),
            };
        }
        if name.eq_ignore_ascii_case(b"CONNECT") {
            let json = trim_start(&rest);
            if json.is_empty() {
                return Err(ParseError::UnknownOp);
            }
            return Ok(Some(Op::Connect(json)));
        }
        if name.eq_ignore_ascii_case(b"PING") {
            return Ok(Some(Op::Ping));
        }
        if name.eq_ignore_ascii_case(b"PONG") {
            return Ok(Some(Op::Pong));
        }
        if name.eq_ignore_ascii_case(b"+OK") {
            return Ok(Some(Op::Ok));
        }
        if name.eq_ignore_ascii_case(b"-ERR") {
            return Ok(Some(Op::Err));
        }
        Err(ParseError::UnknownOp)
    }
}

/// Parses `data` fed `chunk` bytes at a time, as reads would deliver it, until the end or the
/// first error. Returns the operations and the error, if any. It panics if the parser ever
/// waits for more with more buffered than one control line and one payload can need, so that
/// a fuzzer or a property test finds unbounded buffering as well as panics. The fuzz target
/// (`fuzz/fuzz_targets/nats_parser.rs`) and `tests/parser_props.rs` run it.
pub fn parse_chunked(
    data: &[u8],
    chunk: usize,
    max_control_line: usize,
    max_payload: usize,
) -> (Vec<Op>, Option<ParseError>) {
    let mut p = Parser::new(max_control_line, max_payload);
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    // The most a parser may hold while waiting: a control line, a payload and its CRLF.
    let bound = max_control_line + max_payload + 2 + chunk.max(1);
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match p.next(&mut buf) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(e) => return (ops, Some(e)),
            }
        }
        assert!(
            buf.len() <= bound,
            "the parser buffers {} bytes, more than {bound}",
            buf.len()
        );
    }
    (ops, None)
}

fn trim_start(b: &Bytes) -> Bytes {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    b.slice(start..)
}

fn split_args(rest: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(4);
    let mut start = None;
    for (i, c) in rest.iter().enumerate() {
        let space = *c == b' ' || *c == b'\t';
        match (space, start) {
            (true, Some(s)) => {
                out.push(rest.slice(s..i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(rest.slice(s..));
    }
    out
}

fn parse_size(b: &[u8]) -> Option<usize> {
    if b.is_empty() || b.len() > 18 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0usize, |n, d| n * 10 + (d - b'0') as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Op>, ParseError> {
        let mut p = Parser::new(4096, 1024);
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = p.next(&mut buf)? {
            ops.push(op);
        }
        Ok(ops)
    }

    #[test]
    fn every_operation() {
        let ops = parse_all(
            b"CONNECT {\"verbose\":false}\r\nPUB a.b 5\r\nhello\r\npub a.b r.1 0\r\n\r\n\
              HPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB a.* 1\r\nsub a.> q 2\r\n\
              UNSUB 1\r\nUNSUB 2 10\r\nPING\r\nPONG\nPing\r\n",
        )
        .unwrap();
        assert_eq!(ops.len(), 11);
        assert_eq!(
            ops[0],
            Op::Connect(Bytes::from_static(b"{\"verbose\":false}"))
        );
        assert_eq!(
            ops[1],
            Op::Pub {
                subject: Bytes::from_static(b"a.b"),
                reply: None,
                header_len: None,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert!(
            matches!(&ops[2], Op::Pub { reply: Some(r), payload, .. } if &r[..] == b"r.1" && payload.is_empty())
        );
        assert!(
            matches!(&ops[3], Op::Pub { header_len: Some(12), payload, .. } if payload.len() == 14)
        );
        assert!(
            matches!(&ops[5], Op::Sub { queue: Some(q), sid, .. } if &q[..] == b"q" && &sid[..] == b"2")
        );
        assert_eq!(
            ops[7],
            Op::Unsub {
                sid: Bytes::from_static(b"2"),
                max: Some(10)
            }
        );
        assert_eq!(&ops[8..], &[Op::Ping, Op::Pong, Op::Ping]);
    }

    #[test]
    fn split_reads_are_reassembled() {
        let input = b"PUB subject 11\r\nhello world\r\nPING\r\n";
        for cut in 0..input.len() {
            let mut p = Parser::new(4096, 1024);
            let mut buf = BytesMut::from(&input[..cut]);
            let mut ops = Vec::new();
            while let Some(op) = p.next(&mut buf).unwrap() {
                ops.push(op);
            }
            buf.extend_from_slice(&input[cut..]);
            while let Some(op) = p.next(&mut buf).unwrap() {
                ops.push(op);
            }
            assert_eq!(ops.len(), 2, "cut at {cut}");
            assert!(matches!(&ops[0], Op::Pub { payload, .. } if &payload[..] == b"hello world"));
        }
    }

    #[test]
    fn violations() {
        assert_eq!(parse_all(b"FOO\r\n"), Err(ParseError::UnknownOp));
        assert_eq!(parse_all(b"PUB a 2000\r\n"), Err(ParseError::MaxPayload));
        assert_eq!(
            parse_all(b"PUB a 3\r\nabcde\r\n"),
            Err(ParseError::UnknownOp)
        );
        assert_eq!(parse_all(b"PUB a x\r\n"), Err(ParseError::BadArgs));
        assert_eq!(parse_all(b"HPUB a 5 2\r\n"), Err(ParseError::BadArgs));
        assert_eq!(parse_all(b"SUB a b c d\r\n"), Err(ParseError::BadArgs));
        assert_eq!(parse_all(&[b'x'; 5000]), Err(ParseError::MaxControlLine));
    }
}
