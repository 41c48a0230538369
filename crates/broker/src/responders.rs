//! The NATS responders between brokers: the server-info survey (FetchMetadata's broker list)
//! and partition status questions (CreateStream waits for each leader to report its partition
//! running), and the survey's client side.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use liftbridge_proto::api::{self};
use liftbridge_proto::internal::{self};
use natsbridge::payload;

use crate::broker::*;
use crate::error::{BrokerError, Result};

impl Broker {
    pub(crate) async fn spawn_responders(&self) -> Result<()> {
        // Acks of unary publishes, routed to their waiters by inbox.
        let mut acks = self
            .inner
            .publishes
            .subscribe(&format!("{}.*", self.inner.ack_prefix))
            .await
            .map_err(|e| BrokerError::internal("subscribing to the ack inboxes", e))?;
        let b = self.clone();
        let t = tokio::spawn(async move {
            while let Some(m) = acks.next().await {
                if let Ok(mut a) = payload::decode::<api::Ack>(&m.payload) {
                    a.ack_inbox = m.subject.to_string();
                    let _ = b.inner.local_acks.deliver(a);
                }
            }
        });
        self.inner.tasks.lock().push(t);
        // Partition notifications from leaders: wake the follower of that partition.
        let mut notes = self
            .inner
            .ctx
            .repl_conn
            .subscribe(&self.inner.subjects.notify(&self.inner.cfg.server_id))
            .await
            .map_err(|e| BrokerError::internal("subscribing to partition notifications", e))?;
        let b = self.clone();
        let t = tokio::spawn(async move {
            while let Some(m) = notes.next().await {
                if let Ok(n) = payload::decode::<internal::PartitionNotification>(&m.payload)
                    && let Some(p) = b.partition(&n.stream, n.partition)
                {
                    p.wake.notify_one();
                }
            }
        });
        self.inner.tasks.lock().push(t);
        // ServerInfo survey: every broker but the asker answers with its advertised address.
        let b = self.clone();
        self.respond(
            self.inner.subjects.server_info(),
            move |req: internal::ServerInfoRequest| {
                (req.id != b.inner.cfg.server_id).then(|| internal::ServerInfoResponse {
                    id: b.inner.cfg.server_id.clone(),
                    host: b.inner.cfg.advertise_host.clone(),
                    port: i32::from(b.inner.cfg.advertise_port),
                    ..Default::default()
                })
            },
        )
        .await?;
        // PartitionStatus: whether this broker runs a partition, and leads it.
        let b = self.clone();
        self.respond(
            self.inner
                .subjects
                .partition_status(&self.inner.cfg.server_id),
            move |req: internal::PartitionStatusRequest| {
                let p = b.partition(&req.stream, req.partition);
                Some(internal::PartitionStatusResponse {
                    exists: p.is_some(),
                    is_leader: p.is_some_and(|p| p.is_running_leader()),
                })
            },
        )
        .await
    }

    /// Answers requests on `subject`: each decoded request that `answer` maps to a response gets
    /// it as the reply; malformed requests and those without a reply subject are ignored.
    pub(crate) async fn respond<Req, Resp>(
        &self,
        subject: String,
        answer: impl Fn(Req) -> Option<Resp> + Send + 'static,
    ) -> Result<()>
    where
        Req: payload::Payload + Send + 'static,
        Resp: payload::Payload + Send + 'static,
    {
        let mut sub = self
            .inner
            .raft_conn
            .subscribe(&subject)
            .await
            .map_err(|e| BrokerError::internal("subscribing to a request subject", e))?;
        let conn = self.inner.raft_conn.clone();
        let t = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(reply) = m.reply.clone() else {
                    continue;
                };
                let Some(resp) = payload::decode::<Req>(&m.payload).ok().and_then(&answer) else {
                    continue;
                };
                let _ = conn.publish(&reply, payload::encode(&resp, false)).await;
            }
        });
        self.inner.tasks.lock().push(t);
        Ok(())
    }

    /// Waits (best effort, up to `timeout`) until the partition's leader runs it.
    pub(crate) async fn wait_partition_started(
        &self,
        stream: &str,
        id: i32,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self
                .inner
                .meta
                .with_state(|f| f.partition(stream, id).map(|p| p.leader.clone()));
            // Unknown here yet: this broker may not have applied the change (it was proposed
            // through another broker). Wait for it rather than answer early.
            let Some(leader) = leader else {
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let started = if leader == self.inner.cfg.server_id {
                self.partition(stream, id)
                    .is_some_and(|p| p.is_running_leader())
            } else {
                let req = internal::PartitionStatusRequest {
                    stream: stream.into(),
                    partition: id,
                };
                match self
                    .inner
                    .raft_conn
                    .request(
                        &self.inner.subjects.partition_status(&leader),
                        payload::encode(&req, false),
                        Duration::from_millis(500),
                    )
                    .await
                {
                    Ok(m) => payload::decode::<internal::PartitionStatusResponse>(&m.payload)
                        .is_ok_and(|r| r.exists && r.is_leader),
                    Err(_) => false,
                }
            };
            if started {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The brokers of the cluster, by survey, cached while membership is unchanged.
    pub(crate) async fn brokers(&self, timeout: Duration) -> Vec<api::Broker> {
        let status = self.inner.meta.status();
        let mut members: Vec<u64> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .collect();
        members.sort_unstable();
        if let Some((until, m, list)) = &*self.inner.brokers_cache.lock()
            && *m == members
            && Instant::now() < *until
        {
            return self.with_load(list.clone());
        }
        let mut found = vec![api::Broker {
            id: self.inner.cfg.server_id.clone(),
            host: self.inner.cfg.advertise_host.clone(),
            port: i32::from(self.inner.cfg.advertise_port),
            ..Default::default()
        }];
        let others = members.len().saturating_sub(1);
        if others > 0 {
            let inbox = format!(
                "{}.raft.metadata.fetch.{}",
                self.inner.subjects.namespace(),
                natsbridge::unique_id()
            );
            if let Ok(mut sub) = self.inner.raft_conn.subscribe(&inbox).await {
                let req = internal::ServerInfoRequest {
                    id: self.inner.cfg.server_id.clone(),
                    ..Default::default()
                };
                let _ = self
                    .inner
                    .raft_conn
                    .publish_with(
                        &self.inner.subjects.server_info(),
                        Some(&inbox),
                        natsbridge::Headers::new(),
                        payload::encode(&req, false),
                    )
                    .await;
                // Answers take a NATS round trip; a member that has not answered in a second is
                // down or starting, and the caller's own deadline must leave room for the reply.
                let wait = (timeout / 2).min(Duration::from_secs(1));
                let deadline = tokio::time::Instant::now() + wait;
                while found.len() <= others {
                    match tokio::time::timeout_at(deadline, sub.next()).await {
                        Ok(Some(m)) => {
                            if let Ok(r) =
                                payload::decode::<internal::ServerInfoResponse>(&m.payload)
                                && !found.iter().any(|b| b.id == r.id)
                            {
                                found.push(api::Broker {
                                    id: r.id,
                                    host: r.host,
                                    port: r.port,
                                    ..Default::default()
                                });
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        // A survey some member missed (it is starting, or down) is kept only a few seconds, so
        // the member shows up soon after it answers.
        let age = if found.len() >= members.len() {
            self.inner.cfg.metadata_cache_max_age
        } else {
            self.inner
                .cfg
                .metadata_cache_max_age
                .min(Duration::from_secs(5))
        };
        *self.inner.brokers_cache.lock() = Some((Instant::now() + age, members, found.clone()));
        self.with_load(found)
    }

    pub(crate) fn with_load(&self, mut list: Vec<api::Broker>) -> Vec<api::Broker> {
        let (parts, leads) = self.loads();
        for b in &mut list {
            b.partition_count = parts.get(&b.id).copied().unwrap_or(0) as i32;
            b.leader_count = leads.get(&b.id).copied().unwrap_or(0) as i32;
        }
        list
    }
}
