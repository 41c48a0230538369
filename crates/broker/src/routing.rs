//! Publish routing: where a publish this broker takes goes. The partitions it leads on the
//! subject get it in process; NATS gets it for everyone else, unless the embedded server says
//! nobody else listens.
//!
//! Exactly once per local partition: the in-process hand-over and the `streams` connection's
//! echo-off together make each local partition get a publish once; with a stream group on the
//! subject, NATS's queue group must choose, so the publish goes through NATS instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use liftbridge_proto::api::{self, AckPolicy};
use liftbridge_proto::internal::{self, Op, RaftLog};
use natsbridge::payload;

use crate::broker::*;
use crate::error::{BrokerError, Result};
use crate::partition::{LocalPublish, Partition};

/// The partitions this broker leads, found by subject without a scan of them all.
#[derive(Default)]
pub(crate) struct Routes {
    exact: HashMap<String, Vec<Arc<Partition>>>,
    /// Partitions whose subject has wildcards, matched one by one.
    wildcard: Vec<Arc<Partition>>,
}

impl Routes {
    pub(crate) fn of<'a>(parts: impl Iterator<Item = &'a Arc<Partition>>) -> Routes {
        let mut r = Routes::default();
        for p in parts.filter(|p| p.is_running_leader()) {
            if natsbridge::has_wildcards(&p.subject) {
                r.wildcard.push(p.clone());
            } else {
                r.exact
                    .entry(p.subject.clone())
                    .or_default()
                    .push(p.clone());
            }
        }
        r
    }
}

impl Broker {
    /// Publishes one envelope to `subject` and, unless the policy is NONE or there is no
    /// deadline, waits for its ack: on the broker's shared ack subscription, or on the client's
    /// own inbox when it named one, subscribed at the NATS server before the publish.
    pub(crate) async fn publish_envelope(
        &self,
        subject: &str,
        mut msg: api::Message,
        deadline: Option<Duration>,
    ) -> Result<Option<api::Ack>> {
        let wait = msg.ack_policy != AckPolicy::None as i32 && deadline.is_some();
        let limit = deadline.unwrap_or_default();
        let timeout = || BrokerError::Timeout("timed out waiting for the ack".into());
        if !wait {
            if msg.ack_inbox.is_empty() {
                msg.ack_inbox = self.inner.subjects.ack_inbox();
            }
            self.nats_publish(subject, msg).await?;
            return Ok(None);
        }
        if msg.ack_inbox.is_empty() {
            // A fresh random token per publish: an ack shows its inbox, so the next one must not
            // be guessable from it.
            msg.ack_inbox = format!("{}.{}", self.inner.ack_prefix, natsbridge::unique_id());
            let rx = self.inner.local_acks.wait(&msg.ack_inbox, &msg.stream);
            let inbox = msg.ack_inbox.clone();
            let result = async {
                self.nats_publish(subject, msg).await?;
                match tokio::time::timeout(limit, rx).await {
                    Ok(Ok(a)) => Ok(Some(a)),
                    Ok(Err(_)) => Err(BrokerError::Internal("ack subscription closed".into())),
                    Err(_) => Err(timeout()),
                }
            }
            .await;
            self.inner.local_acks.forget(&inbox);
            return result;
        }
        let mut sub = self
            .inner
            .publishes
            .subscribe(&msg.ack_inbox)
            .await
            .map_err(|e| BrokerError::internal("subscribing to the ack inbox", e))?;
        // The ack goes out on another connection (or from another broker), so it could reach
        // the NATS server before this subscription: a round trip (a request nobody answers)
        // puts the subscription in place at the server before the message can be acked.
        let _ = self
            .inner
            .publishes
            .request(
                &self.inner.subjects.sync(),
                Bytes::new(),
                limit.min(Duration::from_secs(2)),
            )
            .await;
        // The answer is the ack of the stream published to: other streams on the subject ack
        // the same inbox (a publish to a subject takes the first).
        let stream = msg.stream.clone();
        self.nats_publish(subject, msg).await?;
        let answer = async {
            while let Some(m) = sub.next().await {
                let ack = payload::decode::<api::Ack>(&m.payload)
                    .map_err(|e| BrokerError::internal("decoding an ack", e))?;
                if stream.is_empty() || ack.stream == stream {
                    return Ok(Some(ack));
                }
            }
            Err(BrokerError::Internal("ack subscription closed".into()))
        };
        tokio::time::timeout(limit, answer)
            .await
            .unwrap_or_else(|_| Err(timeout()))
    }

    /// Publishes an envelope on `subject`; see [`nats_publish_all`](Self::nats_publish_all).
    pub(crate) async fn nats_publish(&self, subject: &str, msg: api::Message) -> Result<()> {
        let mut results = self.nats_publish_all(subject, vec![msg]).await;
        results.pop().unwrap_or(Ok(()))
    }

    /// Publishes envelopes on `subject`, in order, as Liftbridge does, so that every stream and
    /// subscriber on the subject gets them. Returns one result per envelope.
    ///
    /// The partitions this broker leads on the subject get them in process instead, when no
    /// stream group is involved: a single such partition that
    /// [appends in place](Partition::appends_in_place) takes them all as one append in this
    /// task; otherwise they go to the partitions' ingest queues. Then they go to NATS on the
    /// `streams` connection, whose echo is off, so that those partitions do not get them
    /// twice, and only if someone else listens when the NATS server is in this process and can
    /// tell.
    ///
    /// An envelope larger than NATS's max payload is refused with InvalidArgument and goes
    /// nowhere: it could not be a message on the subject.
    pub(crate) async fn nats_publish_all(
        &self,
        subject: &str,
        msgs: Vec<api::Message>,
    ) -> Vec<Result<()>> {
        let max = self.inner.publishes.client().max_payload();
        let size = |m: &api::Message| {
            natsbridge::envelope::MIN_HEADER_LEN + prost::Message::encoded_len(m)
        };
        if msgs.iter().all(|m| size(m) <= max) {
            return self.nats_publish_fitting(subject, msgs).await;
        }
        // Results keep the order of the messages: the ones NATS cannot carry are refused.
        let mut slots = Vec::with_capacity(msgs.len());
        let mut fitting = Vec::with_capacity(msgs.len());
        for m in msgs {
            let n = size(&m);
            if n > max {
                slots.push(Some(Err(BrokerError::InvalidArgument(format!(
                    "message of {n} bytes exceeds the NATS max payload of {max} bytes"
                )))));
            } else {
                slots.push(None);
                fitting.push(m);
            }
        }
        let mut done = self
            .nats_publish_fitting(subject, fitting)
            .await
            .into_iter();
        slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| done.next().unwrap_or(Ok(()))))
            .collect()
    }

    pub(crate) async fn nats_publish_fitting(
        &self,
        subject: &str,
        msgs: Vec<api::Message>,
    ) -> Vec<Result<()>> {
        let nats_error = |e| BrokerError::internal("publishing to NATS", e);
        let targets = match self.local_targets(subject) {
            Some(t) if !t.is_empty() => t,
            _ => {
                let mut results = Vec::with_capacity(msgs.len());
                for msg in &msgs {
                    let data = payload::encode(msg, false);
                    let r = self.inner.publishes.publish(subject, data).await;
                    results.push(r.map_err(nats_error));
                }
                return results;
            }
        };
        let conn = &self.inner.ctx.streams_conn;
        let others = (self.inner.cfg.embedded_nats.as_ref())
            .is_none_or(|n| n.listened_by_others(subject, conn.name()));
        let mut to_nats = Vec::new();
        let mut batch = Vec::with_capacity(msgs.len());
        for msg in msgs {
            // Encoded only if NATS needs it; the size is the one NATS would carry either way.
            let data = others.then(|| payload::encode(&msg, false));
            let size = data.as_ref().map_or_else(
                || natsbridge::envelope::MIN_HEADER_LEN + prost::Message::encoded_len(&msg),
                Bytes::len,
            );
            to_nats.extend(data);
            batch.push(LocalPublish {
                subject: subject.to_owned(),
                envelope: msg,
                size,
                share: None,
                to_nats: others,
            });
        }
        let count = batch.len();
        // Whether a local partition took each message (one that stopped meanwhile did not).
        let mut taken = vec![true; count];
        match targets.as_slice() {
            [p] if p.appends_in_place(self.inner.cfg.sync) => {
                p.append_in_place(&self.inner.ctx, batch).await;
            }
            _ => {
                let last = targets.len() - 1;
                for (l, took) in batch.into_iter().zip(&mut taken) {
                    let mut l = Some(l);
                    let mut any = false;
                    for (i, p) in targets.iter().enumerate() {
                        let one = if i == last { l.take() } else { l.clone() };
                        // A partition that stopped meanwhile had stopped listening to NATS too.
                        if let Some(one) = one {
                            any |= p.hand_over(one).await;
                        }
                    }
                    *took = any;
                }
            }
        }
        if !others {
            // Nobody else would get them: the local partitions have them already, unless they
            // stopped meanwhile; their publishers are told at once instead of timing out.
            return taken
                .into_iter()
                .map(|took| {
                    took.then_some(())
                        .ok_or_else(|| BrokerError::Unavailable(crate::ops::NOT_STORED.into()))
                })
                .collect();
        }
        let mut results = Vec::with_capacity(to_nats.len());
        for data in to_nats {
            results.push(conn.publish(subject, data).await.map_err(nats_error));
        }
        results
    }

    /// The partitions this broker leads, with their ingest running, whose subject matches
    /// `subject`. `None` when one of them belongs to a stream group: NATS must then choose.
    pub(crate) fn local_targets(&self, subject: &str) -> Option<Vec<Arc<Partition>>> {
        let routes = self.inner.routes.read();
        let exact = routes.exact.get(subject).into_iter().flatten();
        let wild = routes
            .wildcard
            .iter()
            .filter(|p| natsbridge::subject_matches(&p.subject, subject));
        let mut out = Vec::new();
        for p in exact.chain(wild) {
            if !p.role.group.is_empty() {
                return None;
            }
            if p.takes_local() {
                out.push(p.clone());
            }
        }
        Some(out)
    }

    /// Resumes paused partitions for a publish to `partition` (all of them with resumeAll).
    pub(crate) async fn resume_for_publish(&self, stream: &str, partition: i32) -> Result<()> {
        let paused: Option<Vec<i32>> = self.inner.meta.with_state(|f| {
            let s = f.stream(stream)?;
            let p = s.partitions.get(&partition)?;
            if !p.paused {
                return None;
            }
            Some(if s.resume_all {
                s.partitions
                    .values()
                    .filter(|p| p.paused)
                    .map(|p| p.id)
                    .collect()
            } else {
                vec![partition]
            })
        });
        let Some(partitions) = paused else {
            return Ok(());
        };
        let entry = RaftLog {
            op: Op::ResumeStream as i32,
            resume_stream_op: Some(internal::ResumeStreamOp {
                stream: stream.into(),
                partitions,
            }),
            ..Default::default()
        };
        self.inner.ctx.propose(entry).await?;
        self.reconcile().await;
        self.wait_partition_started(stream, partition, Duration::from_secs(5))
            .await;
        Ok(())
    }
}
