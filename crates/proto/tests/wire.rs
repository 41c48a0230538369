//! Wire identity: each field, set on its own, encodes under Liftbridge's field number.

use liftbridge_proto::{api, internal};
use prost::Message;
use prost::bytes::Bytes;

/// The field number of the only field present in an encoded message.
fn field_number<M: Message>(m: &M) -> u64 {
    let bytes = m.encode_to_vec();
    assert!(!bytes.is_empty(), "the field was not encoded");
    let mut key = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        key |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    key >> 3
}

macro_rules! numbers {
    ($ty:ty { $($field:ident : $value:expr => $num:expr),* $(,)? }) => {
        $({
            type T = $ty;
            #[allow(clippy::needless_update)]
            let m = T { $field: $value, ..Default::default() };
            assert_eq!(field_number(&m), $num, "{}.{}", stringify!($ty), stringify!($field));
        })*
    };
}

fn b() -> Bytes {
    Bytes::from_static(b"x")
}

#[test]
fn public_api_field_numbers() {
    let n64 = Some(api::NullableInt64 { value: 1 });
    let n32 = Some(api::NullableInt32 { value: 1 });
    let nb = Some(api::NullableBool { value: true });
    numbers!(api::CreateStreamRequest {
        subject: "s".into() => 1, name: "n".into() => 2, group: "g".into() => 3,
        replication_factor: 1 => 4, partitions: 1 => 5, retention_max_bytes: n64 => 6,
        retention_max_messages: n64 => 7, retention_max_age: n64 => 8, cleaner_interval: n64 => 9,
        segment_max_bytes: n64 => 10, segment_max_age: n64 => 11, compact_max_goroutines: n32 => 12,
        compact_enabled: nb => 13, auto_pause_time: n64 => 14, auto_pause_disable_if_subscribers: nb => 15,
        min_isr: n32 => 16, optimistic_concurrency_control: nb => 17, encryption: nb => 18,
    });
    numbers!(api::SubscribeRequest {
        stream: "s".into() => 1, partition: 1 => 2, start_position: 1 => 3, start_offset: 1 => 4,
        start_timestamp: 1 => 5, read_isr_replica: true => 6, resume: true => 7, stop_position: 1 => 8,
        stop_offset: 1 => 9, stop_timestamp: 1 => 10, consumer: Some(api::Consumer::default()) => 11,
        reverse: true => 12,
    });
    numbers!(api::PublishRequest {
        key: b() => 1, value: b() => 2, stream: "s".into() => 3, partition: 1 => 4,
        headers: [("h".to_string(), b())].into() => 5, ack_inbox: "i".into() => 6,
        correlation_id: "c".into() => 7, ack_policy: 1 => 8, expected_offset: 1 => 9,
    });
    numbers!(api::Message {
        offset: 1 => 1, key: b() => 2, value: b() => 3, timestamp: 1 => 4, stream: "s".into() => 5,
        partition: 1 => 6, subject: "s".into() => 7, reply_subject: "r".into() => 8,
        headers: [("h".to_string(), b())].into() => 9, ack_inbox: "i".into() => 10,
        correlation_id: "c".into() => 11, ack_policy: 1 => 12,
    });
    numbers!(api::Ack {
        stream: "s".into() => 1, partition_subject: "p".into() => 2, msg_subject: "m".into() => 3,
        offset: 1 => 4, ack_inbox: "i".into() => 5, correlation_id: "c".into() => 6, ack_policy: 1 => 7,
        reception_timestamp: 1 => 8, commit_timestamp: 1 => 9, ack_error: 1 => 10,
    });
    numbers!(api::PartitionMetadata {
        id: 1 => 1, leader: "l".into() => 2, replicas: vec!["r".into()] => 3, isr: vec!["r".into()] => 4,
        high_watermark: 1 => 5, newest_offset: 1 => 6, paused: true => 7, readonly: true => 8,
        messages_received_timestamps: Some(Default::default()) => 9,
        pause_timestamps: Some(Default::default()) => 10, readonly_timestamps: Some(Default::default()) => 11,
    });
    numbers!(api::PublishResponse {
        ack: Some(Default::default()) => 1, async_error: Some(Default::default()) => 2,
        correlation_id: "c".into() => 3,
    });
    numbers!(api::FetchCursorResponse { offset: -1 => 1 });
    numbers!(api::Broker {
        id: "i".into() => 1, host: "h".into() => 2, port: 1 => 3, partition_count: 1 => 4, leader_count: 1 => 5,
    });
    numbers!(api::StreamMetadata {
        name: "n".into() => 1, subject: "s".into() => 2, error: 1 => 3,
        partitions: [(0, api::PartitionMetadata::default())].into() => 4, creation_timestamp: 1 => 5,
    });
    // Enum values are wire values too.
    assert_eq!(api::AckPolicy::None as i32, 2);
    assert_eq!(api::StartPosition::Timestamp as i32, 4);
    assert_eq!(api::StopPosition::StopTimestamp as i32, 3);
    assert_eq!(api::publish_async_error::Code::PermissionDenied as i32, 7);
    assert_eq!(api::ack::Error::Encryption as i32, 4);
    assert_eq!(api::ack::Error::Readonly as i32, 100);
    assert_eq!(api::ack::Error::NotStored as i32, 101);
    assert_eq!(api::ActivityStreamOp::LeaveConsumerGroup as i32, 6);
}

#[test]
fn internal_field_numbers() {
    numbers!(internal::Partition {
        subject: "s".into() => 1, stream: "s".into() => 2, id: 1 => 3, group: "g".into() => 4,
        replication_factor: 1 => 5, replicas: vec!["a".into()] => 6, leader: "l".into() => 7,
        isr: vec!["a".into()] => 8, leader_epoch: 1 => 9, epoch: 1 => 10, paused: true => 11, readonly: true => 12,
    });
    numbers!(internal::ReplicationRequest { replica_id: "r".into() => 1, offset: 1 => 2, leader_epoch: 1 => 3 });
    numbers!(internal::PropagatedResponse {
        op: 1 => 1, error: Some(Default::default()) => 2, join_consumer_group_resp: Some(Default::default()) => 11,
    });
    numbers!(internal::RaftLog {
        op: 1 => 1, change_consumer_group_coordinator_op: Some(Default::default()) => 14,
    });
    // Ours: fencing fields, numbered from 10.
    numbers!(internal::ChangeLeaderOp {
        leader: "l".into() => 3, expected_leader: "l".into() => 10, expected_leader_epoch: 1 => 11,
    });
    numbers!(internal::ExpandIsrOp { leader_epoch: 1 => 5, epoch: 1 => 10 });
    numbers!(internal::ReportLeaderOp { leader_epoch: 1 => 5, renew_epoch: true => 10 });
    numbers!(internal::LeaderEpochOffsetRequest {
        leader_epoch: 1 => 1, current_leader_epoch: 1 => 10, replica_id: "r".into() => 11,
    });
    numbers!(internal::LeaderEpochOffsetResponse {
        end_offset: 1 => 1, leader_epoch: 1 => 2, found: true => 3, leader_id: "l".into() => 10,
        current_leader_epoch: 1 => 11,
    });
    assert_eq!(internal::Op::ChangeConsumerGroupCoordinator as i32, 14);
    assert_eq!(liftbridge_proto::SERVICE_NAME, "proto.API");
}
