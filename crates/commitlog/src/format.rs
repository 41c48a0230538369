//! The record format: how one message is laid out in a segment file.
//!
//! See `docs/format.md` for the byte-by-byte description. In short, every record is
//!
//! ```text
//! offset i64 | timestamp i64 | leader_epoch u64 | size u32        (28-byte header, big-endian)
//! crc u32 | magic i8 | attributes i8 | key | value | headers     (`size` bytes: the message)
//! ```
//!
//! This is Liftbridge's layout. Liftbridge writes magic 1, whose CRC-32C covers only the message
//! after the CRC. We write magic 2, whose CRC-32C also covers the first 24 header bytes (offset,
//! timestamp, leader epoch), so a flipped bit anywhere in a record is detected. Records with magic
//! 1 are still read.

use bytes::{BufMut, Bytes};

/// Bytes in a record header: offset, timestamp, leader epoch and size.
pub const RECORD_HEADER_LEN: usize = 28;
/// The largest offset a record can have: one below `i64::MAX`, so that the log end offset (one
/// past the newest record) is always representable.
pub(crate) const MAX_OFFSET: i64 = i64::MAX - 1;
/// Bytes of the smallest record: a header and a minimal message.
pub(crate) const MIN_RECORD_LEN: usize = RECORD_HEADER_LEN + MIN_MESSAGE_LEN;
/// Smallest possible message: crc, magic, attributes, two null lengths and a header count.
pub const MIN_MESSAGE_LEN: usize = 4 + 1 + 1 + 4 + 4 + 2;
/// Liftbridge's magic: the CRC covers the message after the CRC field.
pub const MAGIC_V1: i8 = 1;
/// This crate's magic: the CRC also covers offset, timestamp and leader epoch.
pub const MAGIC_V2: i8 = 2;

/// A message to append. The log assigns its offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Optional key; compaction keeps the newest message per key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers, in order. Keys are UTF-8 strings.
    pub headers: Vec<(String, Bytes)>,
    /// Nanoseconds since the Unix epoch, chosen by the caller.
    pub timestamp: i64,
    /// The leader epoch under which the message is written.
    pub leader_epoch: u64,
}

impl Message {
    /// A message with only a value, timestamp 0 and leader epoch 0.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Message {
            value: value.into(),
            ..Message::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the timestamp (nanoseconds since the Unix epoch).
    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Sets the leader epoch.
    pub fn with_leader_epoch(mut self, epoch: u64) -> Self {
        self.leader_epoch = epoch;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Whether the record format can hold this message: a size, key, value, header count and
    /// header lengths within their fields. A message that fails this makes an append of its
    /// whole batch fail with [`Error::InvalidBatch`](crate::Error::InvalidBatch), so code that
    /// batches messages from different sources checks each one first.
    ///
    /// # Errors
    /// What does not fit, in words.
    pub fn check_format(&self) -> std::result::Result<(), String> {
        let total = self.encoded_len();
        if total - RECORD_HEADER_LEN as u64 > u32::MAX as u64 {
            return Err(format!(
                "a record of {total} bytes does not fit its size field"
            ));
        }
        if self
            .key
            .as_ref()
            .is_some_and(|k| k.len() > i32::MAX as usize)
            || self.value.len() > i32::MAX as usize
        {
            return Err("key or value longer than 2 GiB".into());
        }
        if self.headers.len() > i16::MAX as usize {
            return Err(format!(
                "{} headers; at most {} are allowed",
                self.headers.len(),
                i16::MAX
            ));
        }
        for (k, v) in &self.headers {
            if k.len() > i16::MAX as usize || v.len() > i32::MAX as usize {
                return Err(format!("header {k:?} is too long"));
            }
        }
        Ok(())
    }

    /// Size of the record this message encodes to, header included.
    pub fn encoded_len(&self) -> u64 {
        let mut n = (RECORD_HEADER_LEN + MIN_MESSAGE_LEN) as u64;
        n += self.key.as_ref().map_or(0, |k| k.len() as u64);
        n += self.value.len() as u64;
        for (k, v) in &self.headers {
            n += 2 + k.len() as u64 + 4 + v.len() as u64;
        }
        n
    }
}

/// A message read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the log.
    pub offset: i64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// The leader epoch it was written under.
    pub leader_epoch: u64,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// The headers, in stored order.
    pub headers: Vec<(String, Bytes)>,
}

/// What a record's header says, after the whole record was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub offset: i64,
    pub timestamp: i64,
    pub leader_epoch: u64,
    /// Total length, header included.
    pub len: usize,
}

/// The outcome of checking the bytes at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// A complete record that passed its checksum and structural checks.
    Valid(RecordMeta),
    /// The buffer holds only a prefix of a record: `needed` bytes in all would complete it.
    Incomplete { needed: usize },
    /// The bytes are not a record.
    Invalid(&'static str),
}

/// Values of at least this many bytes are written to the file from the message's own buffer
/// (see [`encode_around_value`]); smaller ones are copied into the batch's buffer, where a
/// separate write would cost more than the copy.
pub(crate) const VALUE_IN_PLACE_MIN: usize = 4096;

/// Encodes `msg` at `offset`, appending the record to `buf`. Returns the record's length.
///
/// # Errors
/// A key, header count, header key or record that is too long for its length field.
#[cfg(test)]
pub(crate) fn encode(buf: &mut Vec<u8>, offset: i64, msg: &Message) -> Result<usize, String> {
    encode_around_value(buf, offset, msg, false).map(|(len, _)| len)
}

/// Encodes `msg` at `offset` like [`encode`], but with `leave_value` its value's bytes are not
/// copied: the record in `buf` then lacks them, and the returned position says where in `buf`
/// they belong. The checksum covers them all the same, so writing `buf` up to that position,
/// then the value, then the rest gives exactly the bytes [`encode`] would have.
///
/// Returns the record's length, value included, and the value's position when left out.
///
/// # Errors
/// As [`encode`].
pub(crate) fn encode_around_value(
    buf: &mut Vec<u8>,
    offset: i64,
    msg: &Message,
    leave_value: bool,
) -> Result<(usize, Option<usize>), String> {
    msg.check_format()?;
    let total = msg.encoded_len();
    let start = buf.len();
    let value_len = if leave_value { msg.value.len() } else { 0 };
    buf.reserve(total as usize - value_len);
    buf.put_i64(offset);
    buf.put_i64(msg.timestamp);
    buf.put_u64(msg.leader_epoch);
    buf.put_u32((total - RECORD_HEADER_LEN as u64) as u32);
    let crc_at = buf.len();
    buf.put_u32(0);
    buf.put_i8(MAGIC_V2);
    buf.put_i8(0);
    match &msg.key {
        Some(k) => {
            buf.put_i32(k.len() as i32);
            buf.put_slice(k);
        }
        None => buf.put_i32(-1),
    }
    buf.put_i32(msg.value.len() as i32);
    let value_at = buf.len();
    if !leave_value {
        buf.put_slice(&msg.value);
    }
    buf.put_i16(msg.headers.len() as i16);
    for (k, v) in &msg.headers {
        buf.put_i16(k.len() as i16);
        buf.put_slice(k.as_bytes());
        buf.put_i32(v.len() as i32);
        buf.put_slice(v);
    }
    // A value left out belongs between the two parts of `buf`; one kept is in the second.
    let value: &[u8] = if leave_value { &msg.value } else { &[] };
    let body = [&buf[crc_at + 4..value_at], value, &buf[value_at..]];
    let crc = crc_v2(&buf[start..start + 24], &body);
    buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    Ok((total as usize, leave_value.then_some(value_at)))
}

/// The v2 checksum: CRC-32C of the header's first 24 bytes, then of the body after the
/// checksum field, given in consecutive pieces.
fn crc_v2(header: &[u8], body: &[&[u8]]) -> u32 {
    (body.iter()).fold(crc32c::crc32c(header), |crc, piece| {
        crc32c::crc32c_append(crc, piece)
    })
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Checks the record at the start of `buf`: lengths, checksum and structure. Never panics.
pub(crate) fn check(buf: &[u8]) -> Check {
    if buf.len() < RECORD_HEADER_LEN {
        return Check::Incomplete {
            needed: RECORD_HEADER_LEN,
        };
    }
    let offset = be_i64(&buf[0..]);
    let timestamp = be_i64(&buf[8..]);
    let leader_epoch = u64::from_be_bytes(buf[16..24].try_into().expect("8 bytes"));
    let size = u32::from_be_bytes(buf[24..28].try_into().expect("4 bytes")) as usize;
    if offset < 0 {
        return Check::Invalid("negative offset");
    }
    if size < MIN_MESSAGE_LEN {
        return Check::Invalid("message size below the minimum");
    }
    let len = RECORD_HEADER_LEN + size;
    if buf.len() < len {
        return Check::Incomplete { needed: len };
    }
    let msg = &buf[RECORD_HEADER_LEN..len];
    let stored = u32::from_be_bytes(msg[0..4].try_into().expect("4 bytes"));
    let crc = match msg[4] as i8 {
        MAGIC_V1 => crc32c::crc32c(&msg[4..]),
        MAGIC_V2 => crc_v2(&buf[0..24], &[&msg[4..]]),
        _ => return Check::Invalid("unknown magic byte"),
    };
    if crc != stored {
        return Check::Invalid("CRC-32C mismatch");
    }
    if let Err(reason) = walk(msg, |_| {}) {
        return Check::Invalid(reason);
    }
    Check::Valid(RecordMeta {
        offset,
        timestamp,
        leader_epoch,
        len,
    })
}

/// The fields of a message body, as ranges into it.
struct Fields {
    key: Option<(usize, usize)>,
    value: (usize, usize),
    headers: Vec<((usize, usize), (usize, usize))>,
}

/// Walks a message body (CRC first), checking every length. `on_fields` sees the field ranges.
fn walk(msg: &[u8], on_fields: impl FnOnce(Fields)) -> Result<(), &'static str> {
    let mut at = 6usize; // crc, magic, attributes
    let mut take = |n: usize| -> Result<usize, &'static str> {
        if msg.len() - at < n {
            return Err("field runs past the end of the message");
        }
        let start = at;
        at += n;
        Ok(start)
    };
    let i32_at =
        |msg: &[u8], p: usize| i32::from_be_bytes(msg[p..p + 4].try_into().expect("4 bytes"));
    let i16_at =
        |msg: &[u8], p: usize| i16::from_be_bytes(msg[p..p + 2].try_into().expect("2 bytes"));

    let p = take(4)?;
    let key = match i32_at(msg, p) {
        -1 => None,
        n if n < 0 => return Err("negative key length"),
        n => Some((take(n as usize)?, n as usize)),
    };
    let p = take(4)?;
    let value = match i32_at(msg, p) {
        -1 => (p + 4, 0),
        n if n < 0 => return Err("negative value length"),
        n => (take(n as usize)?, n as usize),
    };
    let p = take(2)?;
    let count = i16_at(msg, p);
    if count < 0 {
        return Err("negative header count");
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let p = take(2)?;
        let kl = i16_at(msg, p);
        if kl < 0 {
            return Err("negative header key length");
        }
        let k = (take(kl as usize)?, kl as usize);
        let p = take(4)?;
        let v = match i32_at(msg, p) {
            -1 => (p + 4, 0),
            n if n < 0 => return Err("negative header value length"),
            n => (take(n as usize)?, n as usize),
        };
        headers.push((k, v));
    }
    if at != msg.len() {
        return Err("trailing bytes after the headers");
    }
    on_fields(Fields {
        key,
        value,
        headers,
    });
    Ok(())
}

/// Decodes a record that [`check`] accepted. `rec` holds exactly the record.
///
/// Key, value and header values share `rec`'s memory.
pub(crate) fn decode(rec: &Bytes, meta: &RecordMeta) -> Record {
    let msg = rec.slice(RECORD_HEADER_LEN..meta.len);
    let mut out = Record {
        offset: meta.offset,
        timestamp: meta.timestamp,
        leader_epoch: meta.leader_epoch,
        key: None,
        value: Bytes::new(),
        headers: Vec::new(),
    };
    let walked = walk(&msg, |f| {
        out.key = f.key.map(|(s, n)| msg.slice(s..s + n));
        out.value = msg.slice(f.value.0..f.value.0 + f.value.1);
        out.headers = f
            .headers
            .into_iter()
            .map(|((ks, kn), (vs, vn))| {
                let key = String::from_utf8_lossy(&msg[ks..ks + kn]).into_owned();
                (key, msg.slice(vs..vs + vn))
            })
            .collect();
    });
    debug_assert!(
        walked.is_ok(),
        "decode called on a record that check rejected"
    );
    out
}

/// Key of a checked record, without decoding the rest. `None` for a null key.
pub(crate) fn key_of(rec: &[u8]) -> Option<&[u8]> {
    let msg = &rec[RECORD_HEADER_LEN..];
    let n = i32::from_be_bytes(msg[6..10].try_into().ok()?);
    if n < 0 {
        return None;
    }
    msg.get(10..10 + n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message::new("value")
            .with_key("k")
            .with_timestamp(1_700_000_000_000_000_000)
            .with_leader_epoch(7)
            .with_header("subject", "foo.bar")
            .with_header("empty", Bytes::new())
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let mut buf = Vec::new();
        let msg = sample();
        let len = encode(&mut buf, 42, &msg).unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(len as u64, msg.encoded_len());
        let Check::Valid(meta) = check(&buf) else {
            panic!("not valid")
        };
        assert_eq!((meta.offset, meta.len), (42, len));
        let rec = decode(&Bytes::from(buf.clone()), &meta);
        assert_eq!(rec.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(&rec.value[..], b"value");
        assert_eq!(rec.timestamp, msg.timestamp);
        assert_eq!(rec.leader_epoch, 7);
        assert_eq!(rec.headers, msg.headers);
        assert_eq!(key_of(&buf), Some(&b"k"[..]));
    }

    #[test]
    fn a_value_left_out_and_put_back_gives_the_same_record() {
        let big = Bytes::from((0..5000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
        for msg in [
            sample(),
            Message::new(big.clone()).with_header("h", "after the value"),
            Message::new(Bytes::new()),
            Message::new(big).with_key("k"),
        ] {
            let mut whole = vec![0xAA; 3];
            let (len, at) = encode_around_value(&mut whole, 9, &msg, false).unwrap();
            assert_eq!((len, at), (whole.len() - 3, None));
            let mut around = vec![0xAA; 3];
            let (len2, at) = encode_around_value(&mut around, 9, &msg, true).unwrap();
            let at = at.expect("the value's position");
            assert_eq!(len2, len);
            assert_eq!(around.len(), 3 + len - msg.value.len());
            let mut put_back = around[..at].to_vec();
            put_back.extend_from_slice(&msg.value);
            put_back.extend_from_slice(&around[at..]);
            assert_eq!(put_back, whole, "same bytes, checksum included");
            assert!(matches!(check(&put_back[3..]), Check::Valid(_)));
        }
    }

    #[test]
    fn layout_matches_the_documented_bytes() {
        let mut buf = Vec::new();
        let msg = Message::new("v").with_timestamp(2).with_leader_epoch(3);
        encode(&mut buf, 1, &msg).unwrap();
        let mut expect = Vec::new();
        expect.extend_from_slice(&1i64.to_be_bytes());
        expect.extend_from_slice(&2i64.to_be_bytes());
        expect.extend_from_slice(&3u64.to_be_bytes());
        expect.extend_from_slice(&17u32.to_be_bytes()); // 4+1+1+4+0+4+1+2
        expect.extend_from_slice(&buf[28..32]); // the CRC, checked below
        expect.extend_from_slice(&[2, 0]);
        expect.extend_from_slice(&(-1i32).to_be_bytes());
        expect.extend_from_slice(&1i32.to_be_bytes());
        expect.push(b'v');
        expect.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(buf, expect);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..24]), &buf[32..]);
        assert_eq!(&buf[28..32], &crc.to_be_bytes());
    }

    #[test]
    fn liftbridge_magic_one_records_are_read() {
        // A magic-1 record: the CRC covers only the message after the CRC.
        let mut body = vec![1u8, 0];
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"hi");
        body.extend_from_slice(&0i16.to_be_bytes());
        let mut rec = Vec::new();
        rec.extend_from_slice(&5i64.to_be_bytes());
        rec.extend_from_slice(&9i64.to_be_bytes());
        rec.extend_from_slice(&1u64.to_be_bytes());
        rec.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        rec.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        rec.extend_from_slice(&body);
        let Check::Valid(meta) = check(&rec) else {
            panic!("magic 1 rejected")
        };
        assert_eq!(&decode(&Bytes::from(rec), &meta).value[..], b"hi");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 3, &sample()).unwrap();
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    !matches!(check(&bad), Check::Valid(_)),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let mut buf = Vec::new();
        encode(&mut buf, 3, &sample()).unwrap();
        for cut in 0..buf.len() {
            assert!(
                matches!(check(&buf[..cut]), Check::Incomplete { .. }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_header_count_is_refused() {
        let mut msg = Message::new("x");
        msg.headers = (0..(i16::MAX as usize + 1))
            .map(|i| (i.to_string(), Bytes::new()))
            .collect();
        assert!(encode(&mut Vec::new(), 0, &msg).is_err());
    }
}
