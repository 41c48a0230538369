//! Liftbridge's envelope: the frame around every structured message that travels over NATS.
//!
//! ```text
//! byte 0..4   magic        B9 0E 43 B4 (chosen to be invalid UTF-8)
//! byte 4      version      0
//! byte 5      header_len   8, or 12 with a CRC
//! byte 6      flags        bit 0: a CRC-32C of the payload follows the header
//! byte 7      msg_type     see MsgType
//! byte 8..12  crc          CRC-32C (Castagnoli) of the payload, big-endian (only with flag bit 0)
//! header_len..             payload: a protobuf message, or for ReplicationResponse the binary
//!                          `leader_epoch u64 | high_watermark i64 | records`
//! ```
//!
//! Decoding never panics: any malformed input is an [`EnvelopeError`]. (Liftbridge's decoder
//! slices at `header_len` unchecked and panics on a short frame with a large header length.)

use bytes::{BufMut, Bytes};

/// The envelope's magic number.
pub const MAGIC: [u8; 4] = [0xB9, 0x0E, 0x43, 0xB4];
/// The only envelope version.
pub const VERSION: u8 = 0;
/// Header length without a CRC.
pub const MIN_HEADER_LEN: usize = 8;
/// Header length with a CRC.
pub const CRC_HEADER_LEN: usize = 12;
const FLAG_CRC: u8 = 0x01;

/// What an envelope carries. The numbers are Liftbridge's wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// A client publish (`proto.Message`).
    Publish = 0,
    /// An ack to a publisher (`proto.Ack`).
    Ack = 1,
    /// A follower's fetch from a partition leader.
    ReplicationRequest = 2,
    /// The leader's answer: binary epoch, high watermark and records.
    ReplicationResponse = 3,
    /// A node asking to join the metadata Raft group.
    RaftJoinRequest = 4,
    /// The answer to a join.
    RaftJoinResponse = 5,
    /// A follower asking where a leader epoch ended.
    LeaderEpochOffsetRequest = 6,
    /// The answer: the epoch's end offset.
    LeaderEpochOffsetResponse = 7,
    /// A metadata operation forwarded to the metadata leader.
    PropagatedRequest = 8,
    /// The metadata leader's result.
    PropagatedResponse = 9,
    /// A survey of the servers in the cluster.
    ServerInfoRequest = 10,
    /// One server's answer to the survey.
    ServerInfoResponse = 11,
    /// A question about a partition's state on one server.
    PartitionStatusRequest = 12,
    /// The answer.
    PartitionStatusResponse = 13,
    /// A wake-up for followers: new data on a partition.
    PartitionNotification = 14,
    /// A raft-rs message between metadata nodes (protobuf-2 bytes). Our extension: Liftbridge's
    /// Raft library had its own framing, so Liftbridge has no type for it. It travels only on
    /// liftbridge-rs's own Raft subjects.
    RaftMessage = 15,
}

impl MsgType {
    /// Every type, in wire order.
    pub const ALL: [MsgType; 16] = [
        MsgType::Publish,
        MsgType::Ack,
        MsgType::ReplicationRequest,
        MsgType::ReplicationResponse,
        MsgType::RaftJoinRequest,
        MsgType::RaftJoinResponse,
        MsgType::LeaderEpochOffsetRequest,
        MsgType::LeaderEpochOffsetResponse,
        MsgType::PropagatedRequest,
        MsgType::PropagatedResponse,
        MsgType::ServerInfoRequest,
        MsgType::ServerInfoResponse,
        MsgType::PartitionStatusRequest,
        MsgType::PartitionStatusResponse,
        MsgType::PartitionNotification,
        MsgType::RaftMessage,
    ];

    /// The type with this wire value.
    pub fn from_u8(v: u8) -> Option<MsgType> {
        MsgType::ALL.get(v as usize).copied()
    }
}

/// Why bytes are not the expected envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Fewer bytes than a header.
    #[error("data missing envelope header ({0} bytes)")]
    Underflow(usize),
    /// Not the envelope magic: a plain NATS message, not a structured one.
    #[error("unexpected envelope magic number")]
    BadMagic,
    /// An envelope version this code does not know.
    #[error("unknown envelope protocol version {0}")]
    BadVersion(u8),
    /// A header length that is impossible for the flags, or longer than the data.
    #[error("incorrect envelope header length {0}")]
    BadHeaderLen(u8),
    /// A message type byte outside the known range.
    #[error("unknown envelope message type {0}")]
    UnknownType(u8),
    /// The envelope holds another type than expected.
    #[error("message type mismatch: expected {expected:?}, got {actual:?}")]
    TypeMismatch {
        /// What the caller expected.
        expected: MsgType,
        /// What the envelope holds.
        actual: MsgType,
    },
    /// The payload does not match its CRC-32C.
    #[error("CRC-32C mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    CrcMismatch {
        /// The CRC in the header.
        expected: u32,
        /// The payload's CRC.
        actual: u32,
    },
    /// The payload is not a valid protobuf of the expected message.
    #[error("invalid payload: {0}")]
    Payload(String),
    /// A replication response shorter than its 16 fixed bytes.
    #[error("replication response needs 16 bytes of epoch and high watermark, got {0}")]
    ShortReplicationResponse(usize),
}

/// Frames `payload` as `ty`, with a CRC-32C of the payload when `crc` is set.
pub fn encode(ty: MsgType, payload: &[u8], crc: bool) -> Bytes {
    frame(ty, payload.len(), crc, |buf| buf.put_slice(payload))
}

/// Frames a protobuf message, encoding it straight into the frame.
pub fn encode_message<M: prost::Message>(ty: MsgType, msg: &M, crc: bool) -> Bytes {
    frame(ty, msg.encoded_len(), crc, |buf| {
        msg.encode_raw(buf);
    })
}

/// Writes the header, then `len` payload bytes through `write`, then fills in the CRC.
fn frame(ty: MsgType, len: usize, crc: bool, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let header_len = if crc { CRC_HEADER_LEN } else { MIN_HEADER_LEN };
    let mut buf = Vec::with_capacity(header_len + len);
    buf.put_slice(&MAGIC);
    buf.put_u8(VERSION);
    buf.put_u8(header_len as u8);
    buf.put_u8(if crc { FLAG_CRC } else { 0 });
    buf.put_u8(ty as u8);
    if crc {
        buf.put_u32(0);
    }
    write(&mut buf);
    debug_assert_eq!(buf.len(), header_len + len);
    if crc {
        let sum = crc32c::crc32c(&buf[header_len..]);
        buf[MIN_HEADER_LEN..header_len].copy_from_slice(&sum.to_be_bytes());
    }
    Bytes::from(buf)
}

/// The type of an envelope, after checking its header (not its CRC).
///
/// # Errors
/// Any header problem.
pub fn peek(data: &[u8]) -> Result<MsgType, EnvelopeError> {
    header(data).map(|(ty, _, _)| ty)
}

/// Checks the header: returns the type, the header length and whether a CRC is present.
fn header(data: &[u8]) -> Result<(MsgType, usize, bool), EnvelopeError> {
    if data.len() < MIN_HEADER_LEN {
        return Err(EnvelopeError::Underflow(data.len()));
    }
    if data[..4] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if data[4] != VERSION {
        return Err(EnvelopeError::BadVersion(data[4]));
    }
    let header_len = data[5] as usize;
    let has_crc = data[6] & FLAG_CRC != 0;
    let expected_len = if has_crc {
        CRC_HEADER_LEN
    } else {
        MIN_HEADER_LEN
    };
    // Liftbridge accepts a longer header without a CRC and skips it; so do we, within the data.
    if header_len < expected_len
        || (has_crc && header_len != CRC_HEADER_LEN)
        || header_len > data.len()
    {
        return Err(EnvelopeError::BadHeaderLen(data[5]));
    }
    let ty = MsgType::from_u8(data[7]).ok_or(EnvelopeError::UnknownType(data[7]))?;
    Ok((ty, header_len, has_crc))
}

/// Checks an envelope of type `expected` and returns its payload.
///
/// # Errors
/// Any header problem, a type mismatch, or a CRC mismatch.
pub fn decode(data: &[u8], expected: MsgType) -> Result<&[u8], EnvelopeError> {
    let (actual, header_len, has_crc) = header(data)?;
    if actual != expected {
        return Err(EnvelopeError::TypeMismatch { expected, actual });
    }
    let payload = &data[header_len..];
    if has_crc {
        let stated = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(payload);
        if stated != actual {
            return Err(EnvelopeError::CrcMismatch {
                expected: stated,
                actual,
            });
        }
    }
    Ok(payload)
}

/// Decodes an envelope holding a protobuf message of type `expected`.
///
/// # Errors
/// As [`decode`], or [`EnvelopeError::Payload`] for a malformed protobuf.
pub fn decode_message<M: prost::Message + Default>(
    data: &[u8],
    expected: MsgType,
) -> Result<M, EnvelopeError> {
    let payload = decode(data, expected)?;
    M::decode(payload).map_err(|e| EnvelopeError::Payload(e.to_string()))
}

/// A leader's answer to a replication request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationResponse {
    /// The leader's epoch for the partition.
    pub leader_epoch: u64,
    /// The leader's high watermark.
    pub high_watermark: i64,
    /// Records exactly as stored in the leader's log.
    pub records: Bytes,
}

/// Frames a replication response (no CRC, as Liftbridge writes it: the records carry their own).
pub fn encode_replication_response(
    leader_epoch: u64,
    high_watermark: i64,
    records: &[u8],
) -> Bytes {
    let mut payload = Vec::with_capacity(16 + records.len());
    payload.put_u64(leader_epoch);
    payload.put_i64(high_watermark);
    payload.put_slice(records);
    encode(MsgType::ReplicationResponse, &payload, false)
}

/// Decodes a replication response.
///
/// # Errors
/// As [`decode`], or [`EnvelopeError::ShortReplicationResponse`].
pub fn decode_replication_response(data: &Bytes) -> Result<ReplicationResponse, EnvelopeError> {
    let payload = decode(data, MsgType::ReplicationResponse)?;
    if payload.len() < 16 {
        return Err(EnvelopeError::ShortReplicationResponse(payload.len()));
    }
    let start = data.len() - payload.len();
    Ok(ReplicationResponse {
        leader_epoch: u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")),
        high_watermark: i64::from_be_bytes(payload[8..16].try_into().expect("8 bytes")),
        records: data.slice(start + 16..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_with_and_without_crc() {
        for ty in MsgType::ALL {
            for crc in [false, true] {
                let payload = format!("payload of {ty:?}").into_bytes();
                let data = encode(ty, &payload, crc);
                assert_eq!(data[..4], MAGIC);
                assert_eq!(
                    (data[4], data[5], data[6], data[7]),
                    (0, if crc { 12 } else { 8 }, crc as u8, ty as u8)
                );
                assert_eq!(peek(&data), Ok(ty));
                assert_eq!(decode(&data, ty).unwrap(), &payload[..]);
                for other in MsgType::ALL.into_iter().filter(|o| *o != ty) {
                    assert_eq!(
                        decode(&data, other),
                        Err(EnvelopeError::TypeMismatch {
                            expected: other,
                            actual: ty
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn the_replication_response_header_is_liftbridges() {
        let data = encode_replication_response(7, 41, b"records");
        assert_eq!(data[..8], [0xB9, 0x0E, 0x43, 0xB4, 0x00, 0x08, 0x00, 0x03]);
        let r = decode_replication_response(&data).unwrap();
        assert_eq!(
            (r.leader_epoch, r.high_watermark, &r.records[..]),
            (7, 41, &b"records"[..])
        );
        let short = encode(MsgType::ReplicationResponse, &[0u8; 15], false);
        assert_eq!(
            decode_replication_response(&short),
            Err(EnvelopeError::ShortReplicationResponse(15))
        );
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        let good = encode(MsgType::Ack, b"abc", true);
        assert_eq!(
            decode(&good[..7], MsgType::Ack),
            Err(EnvelopeError::Underflow(7))
        );
        let mut bad = good.to_vec();
        bad[0] = 0;
        assert_eq!(decode(&bad, MsgType::Ack), Err(EnvelopeError::BadMagic));
        let mut bad = good.to_vec();
        bad[4] = 1;
        assert_eq!(
            decode(&bad, MsgType::Ack),
            Err(EnvelopeError::BadVersion(1))
        );
        let mut bad = good.to_vec();
        bad[5] = 8; // CRC flag, but no room for the CRC
        assert_eq!(
            decode(&bad, MsgType::Ack),
            Err(EnvelopeError::BadHeaderLen(8))
        );
        let mut bad = good.to_vec();
        bad[5] = 200; // longer than the data: Liftbridge panics here
        assert_eq!(
            decode(&bad, MsgType::Ack),
            Err(EnvelopeError::BadHeaderLen(200))
        );
        let mut bad = good.to_vec();
        bad[7] = 16;
        assert_eq!(
            decode(&bad, MsgType::Ack),
            Err(EnvelopeError::UnknownType(16))
        );
        let mut bad = good.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode(&bad, MsgType::Ack),
            Err(EnvelopeError::CrcMismatch { .. })
        ));
        assert_eq!(
            decode(b"just a plain NATS message", MsgType::Publish),
            Err(EnvelopeError::BadMagic)
        );
    }

    #[test]
    fn protobuf_payloads() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Probe {
            #[prost(string, tag = "1")]
            stream: String,
            #[prost(int64, tag = "2")]
            offset: i64,
        }
        let msg = Probe {
            stream: "orders".into(),
            offset: 42,
        };
        let data = encode_message(MsgType::PartitionNotification, &msg, true);
        assert_eq!(
            decode_message::<Probe>(&data, MsgType::PartitionNotification).unwrap(),
            msg
        );
        let garbage = encode(MsgType::PartitionNotification, &[0xff, 0xff, 0xff], false);
        assert!(matches!(
            decode_message::<Probe>(&garbage, MsgType::PartitionNotification),
            Err(EnvelopeError::Payload(_))
        ));
    }
}
