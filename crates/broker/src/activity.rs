//! The activity stream: on the metadata leader, each committed stream operation is published to
//! `__activity` as an `ActivityStreamEvent` whose id is the operation's Raft index, then marked
//! published with a `PUBLISH_ACTIVITY` entry.
//!
//! Delivery is at least once and in order per leader: a failed publication is retried with a
//! backoff (1 s, doubling, at most 10 s) until it succeeds or this server stops leading.

use std::time::Duration;

use bytes::Bytes;
use liftbridge_proto::api::{self, ActivityStreamOp};
use liftbridge_proto::internal::{self, Op, RaftLog};
use metastore::Event;
use metastore::service::Metastore;
use prost::Message as _;
use slog::warn;

use crate::broker::{ACTIVITY_STREAM, Broker, internal_message};

/// The event for a metadata change, if the activity stream reports it.
pub(crate) fn event_for(
    index: u64,
    event: &Event,
    meta: &Metastore,
) -> Option<api::ActivityStreamEvent> {
    let mut ev = api::ActivityStreamEvent {
        id: index,
        ..Default::default()
    };
    match event {
        Event::StreamCreated { stream } => {
            let partitions = meta.with_state(|f| {
                f.stream(stream)
                    .map(|s| s.partitions.keys().copied().collect::<Vec<_>>())
            })?;
            ev.op = ActivityStreamOp::CreateStream as i32;
            ev.create_stream_op = Some(api::CreateStreamOp {
                stream: stream.clone(),
                partitions,
            });
        }
        Event::StreamDeleted { stream } => {
            ev.op = ActivityStreamOp::DeleteStream as i32;
            ev.delete_stream_op = Some(api::DeleteStreamOp {
                stream: stream.clone(),
            });
        }
        Event::Paused { stream, partitions } => {
            let resume_all = meta.with_state(|f| f.stream(stream).is_some_and(|s| s.resume_all));
            ev.op = ActivityStreamOp::PauseStream as i32;
            ev.pause_stream_op = Some(api::PauseStreamOp {
                stream: stream.clone(),
                partitions: partitions.clone(),
                resume_all,
            });
        }
        Event::Resumed { stream, partitions } => {
            ev.op = ActivityStreamOp::ResumeStream as i32;
            ev.resume_stream_op = Some(api::ResumeStreamOp {
                stream: stream.clone(),
                partitions: partitions.clone(),
            });
        }
        Event::Readonly {
            stream,
            partitions,
            readonly,
        } => {
            ev.op = ActivityStreamOp::SetStreamReadonly as i32;
            ev.set_stream_readonly_op = Some(api::SetStreamReadonlyOp {
                stream: stream.clone(),
                partitions: partitions.clone(),
                readonly: *readonly,
            });
        }
        Event::MemberJoined {
            group,
            consumer,
            streams,
        } => {
            ev.op = ActivityStreamOp::JoinConsumerGroup as i32;
            ev.join_consumer_group_op = Some(api::JoinConsumerGroupOp {
                group_id: group.clone(),
                consumer_id: consumer.clone(),
                streams: streams.clone(),
            });
        }
        Event::MemberLeft {
            group,
            consumer,
            expired,
        } => {
            ev.op = ActivityStreamOp::LeaveConsumerGroup as i32;
            ev.leave_consumer_group_op = Some(api::LeaveConsumerGroupOp {
                group_id: group.clone(),
                consumer_id: consumer.clone(),
                expired: *expired,
            });
        }
        _ => return None,
    }
    Some(ev)
}

/// Publishes one event, retrying with backoff while this server leads the metadata.
pub(crate) async fn publish(broker: Broker, ev: api::ActivityStreamEvent) {
    let cfg = broker.config().activity.clone();
    let mut backoff = Duration::from_secs(1);
    for _ in 0..10_000 {
        if !broker.metadata().is_leader() {
            return;
        }
        let subject = broker
            .metadata()
            .with_state(|f| f.stream(ACTIVITY_STREAM).map(|s| s.subject.clone()));
        let result = match subject {
            None => Err("the activity stream does not exist yet".to_string()),
            Some(subject) => {
                let _ = broker.resume_for_publish(ACTIVITY_STREAM, 0).await;
                broker
                    .wait_partition_started(ACTIVITY_STREAM, 0, cfg.publish_timeout)
                    .await;
                let msg = internal_message(
                    ACTIVITY_STREAM,
                    &subject,
                    Bytes::new(),
                    Bytes::from(ev.encode_to_vec()),
                    cfg.publish_ack_policy,
                );
                broker
                    .publish_envelope(&subject, msg, Some(cfg.publish_timeout))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(()) => {
                let entry = RaftLog {
                    op: Op::PublishActivity as i32,
                    publish_activity_op: Some(internal::PublishActivityOp { raft_index: ev.id }),
                    ..Default::default()
                };
                let _ = broker.inner.ctx.propose(entry).await;
                return;
            }
            Err(e) => {
                warn!(broker.inner.logger, "publishing an activity event failed; retrying";
                    "id" => ev.id, "error" => e, "retry_in" => ?backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
