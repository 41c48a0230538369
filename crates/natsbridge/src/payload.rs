//! Which protobuf message each envelope type carries, so callers cannot mix them up.
//!
//! [`encode`] and [`decode`] take the envelope type from the message type. The one type without
//! a protobuf payload, `ReplicationResponse`, has its own functions in [`crate::envelope`].

use bytes::Bytes;
use liftbridge_proto::{api, internal};

use crate::envelope::{self, EnvelopeError, MsgType};

/// A protobuf message that travels in an envelope of one fixed type.
pub trait Payload: prost::Message + Default {
    /// The envelope type that carries it.
    const TYPE: MsgType;
}

macro_rules! payloads {
    ($($ty:ty => $msg:ident),* $(,)?) => {
        $(impl Payload for $ty {
            const TYPE: MsgType = MsgType::$msg;
        })*
    };
}

payloads! {
    api::Message => Publish,
    api::Ack => Ack,
    internal::ReplicationRequest => ReplicationRequest,
    internal::RaftJoinRequest => RaftJoinRequest,
    internal::RaftJoinResponse => RaftJoinResponse,
    internal::LeaderEpochOffsetRequest => LeaderEpochOffsetRequest,
    internal::LeaderEpochOffsetResponse => LeaderEpochOffsetResponse,
    internal::PropagatedRequest => PropagatedRequest,
    internal::PropagatedResponse => PropagatedResponse,
    internal::ServerInfoRequest => ServerInfoRequest,
    internal::ServerInfoResponse => ServerInfoResponse,
    internal::PartitionStatusRequest => PartitionStatusRequest,
    internal::PartitionStatusResponse => PartitionStatusResponse,
    internal::PartitionNotification => PartitionNotification,
}

/// Frames `msg` in an envelope of its type, with a CRC-32C when `crc` is set.
pub fn encode<M: Payload>(msg: &M, crc: bool) -> Bytes {
    envelope::encode_message(M::TYPE, msg, crc)
}

/// Decodes an envelope that must carry an `M`.
///
/// # Errors
/// Any [`EnvelopeError`]: a bad header, another type, a CRC mismatch, or a malformed protobuf.
pub fn decode<M: Payload>(data: &[u8]) -> Result<M, EnvelopeError> {
    envelope::decode_message(data, M::TYPE)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn check<M: Payload + PartialEq + std::fmt::Debug>(msg: M, seen: &mut Vec<MsgType>) {
        for crc in [false, true] {
            let data = encode(&msg, crc);
            assert_eq!(envelope::peek(&data), Ok(M::TYPE));
            assert_eq!(decode::<M>(&data).unwrap(), msg, "{:?} crc={crc}", M::TYPE);
        }
        seen.push(M::TYPE);
    }

    #[test]
    fn every_type_round_trips_with_its_message() {
        let mut seen = Vec::new();
        check(
            api::Message {
                offset: 7,
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                timestamp: 99,
                stream: "s".into(),
                partition: 2,
                subject: "orders".into(),
                reply_subject: "r".into(),
                headers: HashMap::from([("h".to_string(), Bytes::from_static(b"x"))]),
                ack_inbox: "inbox".into(),
                correlation_id: "c1".into(),
                ack_policy: api::AckPolicy::All as i32,
            },
            &mut seen,
        );
        check(
            api::Ack {
                stream: "s".into(),
                offset: 3,
                ack_error: api::ack::Error::IncorrectOffset as i32,
                ..Default::default()
            },
            &mut seen,
        );
        check(
            internal::ReplicationRequest {
                replica_id: "b".into(),
                offset: 10,
                leader_epoch: 2,
            },
            &mut seen,
        );
        check(
            internal::RaftJoinRequest {
                node_id: "n".into(),
                node_addr: "a".into(),
                nonce: "x".into(),
            },
            &mut seen,
        );
        check(
            internal::RaftJoinResponse {
                error: "no".into(),
                permanent: true,
            },
            &mut seen,
        );
        check(
            internal::LeaderEpochOffsetRequest {
                leader_epoch: 4,
                current_leader_epoch: 5,
                replica_id: "b".into(),
            },
            &mut seen,
        );
        check(
            internal::LeaderEpochOffsetResponse {
                end_offset: 40,
                leader_epoch: 3,
                found: true,
                leader_id: "a".into(),
                current_leader_epoch: 5,
            },
            &mut seen,
        );
        check(
            internal::PropagatedRequest {
                op: internal::Op::ShrinkIsr as i32,
                shrink_isr_op: Some(internal::ShrinkIsrOp {
                    stream: "s".into(),
                    partition: 1,
                    replica_to_remove: "b".into(),
                    leader: "a".into(),
                    leader_epoch: 3,
                }),
                ..Default::default()
            },
            &mut seen,
        );
        check(
            internal::PropagatedResponse {
                op: internal::Op::JoinConsumerGroup as i32,
                error: Some(internal::Error {
                    code: 5,
                    msg: "not found".into(),
                }),
                join_consumer_group_resp: Some(
                    internal::propagated_response::JoinConsumerGroupResponse {
                        coordinator: "a".into(),
                        epoch: 9,
                    },
                ),
            },
            &mut seen,
        );
        check(
            internal::ServerInfoRequest {
                id: "a".into(),
                nonce: "n".into(),
            },
            &mut seen,
        );
        check(
            internal::ServerInfoResponse {
                id: "a".into(),
                host: "h".into(),
                port: 9292,
                nonce: "n".into(),
                raft_members: vec![1, 2],
            },
            &mut seen,
        );
        check(
            internal::PartitionStatusRequest {
                stream: "s".into(),
                partition: 1,
            },
            &mut seen,
        );
        check(
            internal::PartitionStatusResponse {
                exists: true,
                is_leader: true,
            },
            &mut seen,
        );
        check(
            internal::PartitionNotification {
                stream: "s".into(),
                partition: 1,
            },
            &mut seen,
        );
        seen.push(MsgType::ReplicationResponse); // binary, covered in envelope's tests
        seen.push(MsgType::RaftMessage); // protobuf-2 bytes, carried by metastore
        seen.sort_by_key(|t| *t as u8);
        assert_eq!(seen, MsgType::ALL.to_vec(), "every type has its payload");
    }

    #[test]
    fn a_payload_of_the_wrong_type_is_refused() {
        let req = internal::ServerInfoRequest {
            id: "a".into(),
            ..Default::default()
        };
        let data = encode(&req, false);
        assert!(matches!(
            decode::<internal::ServerInfoResponse>(&data),
            Err(EnvelopeError::TypeMismatch { .. })
        ));
    }
}
