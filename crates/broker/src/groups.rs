//! Consumer groups: the four group RPCs, group metadata, the fencing of group subscriptions, and
//! the coordinator's duties (member liveness) and the metadata leader's (coordinator failover).
//!
//! Membership and assignments live in the metadata state machine (`metastore::groups`), which
//! computes them in `apply`; this module only proposes and reads. Liveness is the pure
//! [`replication::groups::Liveness`], ticked here; failover counts reports with
//! [`replication::FailoverTally`].

use std::collections::HashMap;
use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::Stream;
use liftbridge_proto::api;
use liftbridge_proto::internal::{self, Op, RaftLog};
use metastore::OpError;
use metastore::service::MetaError;
use slog::{info, warn};
use tokio::sync::{oneshot, watch};

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::Subscription;
use crate::partition::Partition;
use crate::replica::now_ms;

/// How long a group subscription waits for this broker's metadata to know its group and
/// epoch before it is refused.
const GROUP_EPOCH_WAIT: Duration = Duration::from_secs(2);

/// The active group subscription of one partition, per group (Liftbridge's fencing record).
pub(crate) struct GroupSubscriber {
    epoch: u64,
    token: u64,
    /// Dropping it ends the subscription (with an OK status).
    _close: oneshot::Sender<()>,
}

/// The fencing records of one partition, by group id.
pub(crate) type GroupSubscribers = parking_lot::Mutex<HashMap<String, GroupSubscriber>>;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn check_ids(group: &str, consumer: &str) -> Result<()> {
    if group.is_empty() {
        return Err(BrokerError::InvalidArgument("No groupId provided".into()));
    }
    if consumer.is_empty() {
        return Err(BrokerError::InvalidArgument(
            "No consumerId provided".into(),
        ));
    }
    Ok(())
}

impl Broker {
    /// Joins `consumer_id` to a group, creating the group when it does not exist; see the
    /// JoinConsumerGroup RPC.
    ///
    /// # Errors
    /// InvalidArgument for missing fields; FailedPrecondition when cursors are disabled, a
    /// stream does not exist, or the consumer is a member already; the metadata group's errors.
    pub async fn join_consumer_group(
        &self,
        req: api::JoinConsumerGroupRequest,
    ) -> Result<api::JoinConsumerGroupResponse> {
        check_ids(&req.group_id, &req.consumer_id)?;
        if req.streams.is_empty() {
            return Err(BrokerError::InvalidArgument("No streams provided".into()));
        }
        if self.config().cursors.partitions < 1 {
            return Err(BrokerError::FailedPrecondition(
                "consumer groups keep their positions in the cursors stream, which is \
                 disabled: set cursors.stream.partitions to at least 1"
                    .into(),
            ));
        }
        let mut streams = req.streams.clone();
        streams.sort();
        streams.dedup();
        // The local view decides between creating and joining; if it was stale, the state
        // machine says so and the other one is tried.
        let mut create = !self
            .metadata()
            .with_state(|f| f.groups().contains_key(&req.group_id));
        for attempt in 0..3 {
            let entry = if create {
                let coordinator = self.pick_coordinator(None)?;
                RaftLog {
                    op: Op::CreateConsumerGroup as i32,
                    create_consumer_group_op: Some(internal::CreateConsumerGroupOp {
                        consumer_group: Some(internal::ConsumerGroup {
                            id: req.group_id.clone(),
                            members: vec![internal::Consumer {
                                id: req.consumer_id.clone(),
                                streams: streams.clone(),
                                ..Default::default()
                            }],
                            coordinator,
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                }
            } else {
                RaftLog {
                    op: Op::JoinConsumerGroup as i32,
                    join_consumer_group_op: Some(internal::JoinConsumerGroupOp {
                        group_id: req.group_id.clone(),
                        consumer_id: req.consumer_id.clone(),
                        streams: streams.clone(),
                    }),
                    ..Default::default()
                }
            };
            let verdict = match self.inner.ctx.propose(entry).await {
                Ok(a) => a.result.map(|()| a.join).map_err(MetaError::Op),
                Err(e) => Err(e),
            };
            match verdict {
                Ok(join) => {
                    let (coordinator, epoch) = join.unwrap_or_default();
                    let g = self.config().groups;
                    return Ok(api::JoinConsumerGroupResponse {
                        coordinator,
                        epoch,
                        consumer_timeout: g.consumer_timeout.as_nanos() as i64,
                        coordinator_timeout: g.coordinator_timeout.as_nanos() as i64,
                    });
                }
                Err(MetaError::Op(OpError::FailedPrecondition(m)))
                    if create && m == "consumer group already exists" && attempt < 2 =>
                {
                    create = false;
                }
                Err(MetaError::Op(OpError::NotFound(m)))
                    if !create && m == "consumer group does not exist" && attempt < 2 =>
                {
                    create = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BrokerError::Unavailable(
            "the group changed during the join; retry".into(),
        ))
    }

    /// Removes `consumer_id` from its group; see the LeaveConsumerGroup RPC.
    ///
    /// # Errors
    /// InvalidArgument for missing fields; NotFound for an unknown group; FailedPrecondition
    /// for a consumer that is not a member; the metadata group's errors.
    pub async fn leave_consumer_group(&self, req: api::LeaveConsumerGroupRequest) -> Result<()> {
        check_ids(&req.group_id, &req.consumer_id)?;
        self.propose_leave(&req.group_id, &req.consumer_id, false)
            .await
    }

    async fn propose_leave(&self, group: &str, consumer: &str, expired: bool) -> Result<()> {
        let entry = RaftLog {
            op: Op::LeaveConsumerGroup as i32,
            leave_consumer_group_op: Some(internal::LeaveConsumerGroupOp {
                group_id: group.to_owned(),
                consumer_id: consumer.to_owned(),
                expired,
            }),
            ..Default::default()
        };
        let applied = self.inner.ctx.propose(entry).await?;
        applied.result.map_err(MetaError::Op)?;
        Ok(())
    }

    /// A member's assignments, answered by its group's coordinator, which counts the call as
    /// the member's heartbeat; see the FetchConsumerGroupAssignments RPC.
    ///
    /// # Errors
    /// InvalidArgument for missing fields; NotFound for an unknown group; FailedPrecondition
    /// when this broker does not coordinate the group, the epoch differs, or the consumer is
    /// not a member.
    pub fn fetch_consumer_group_assignments(
        &self,
        req: api::FetchConsumerGroupAssignmentsRequest,
    ) -> Result<api::FetchConsumerGroupAssignmentsResponse> {
        check_ids(&req.group_id, &req.consumer_id)?;
        let group = self
            .metadata()
            .with_state(|f| f.groups().get(&req.group_id).cloned())
            .ok_or_else(|| BrokerError::NotFound("consumer group does not exist".into()))?;
        if group.coordinator != *self.id() {
            return Err(BrokerError::FailedPrecondition(
                "broker is not the consumer group coordinator".into(),
            ));
        }
        if req.epoch != group.epoch {
            return Err(BrokerError::FailedPrecondition(
                "client-provided group epoch differs from broker group epoch".into(),
            ));
        }
        let Some(member) = group.members.get(&req.consumer_id) else {
            return Err(BrokerError::FailedPrecondition(
                "consumer is not a member of the consumer group".into(),
            ));
        };
        {
            // A member not tracked yet (this broker just became coordinator) starts now,
            // where Liftbridge answers Unknown "no timer".
            let now = now_ms();
            let mut l = self.inner.liveness.lock();
            l.track(&req.group_id, &req.consumer_id, now);
            l.heartbeat(&req.group_id, &req.consumer_id, now);
        }
        Ok(api::FetchConsumerGroupAssignmentsResponse {
            epoch: group.epoch,
            assignments: member
                .assignments
                .iter()
                .filter(|(_, p)| !p.is_empty())
                .map(|(s, p)| api::PartitionAssignment {
                    stream: s.clone(),
                    partitions: p.clone(),
                })
                .collect(),
        })
    }

    /// A member reports its coordinator silent; the metadata leader moves the group to another
    /// broker once more than half of the members agree. See the ReportConsumerGroupCoordinator
    /// RPC.
    ///
    /// # Errors
    /// InvalidArgument for missing fields; FailedPrecondition for an unknown group, a report
    /// about an older coordinator or epoch, or a reporter that is not a member.
    pub async fn report_consumer_group_coordinator(
        &self,
        req: api::ReportConsumerGroupCoordinatorRequest,
    ) -> Result<()> {
        check_ids(&req.group_id, &req.consumer_id)?;
        if req.coordinator.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "No coordinator provided".into(),
            ));
        }
        if req.consumer_id == req.coordinator {
            // That report is the coordinator's own resignation, sent only between brokers.
            return Err(BrokerError::InvalidArgument(
                "A consumer cannot report itself as its group's coordinator".into(),
            ));
        }
        let op = internal::ReportConsumerGroupCoordinatorOp {
            group_id: req.group_id,
            consumer_id: req.consumer_id,
            coordinator: req.coordinator,
            epoch: req.epoch,
        };
        self.metadata().report_coordinator(op).await?;
        Ok(())
    }

    /// A group subscription's epoch against the metadata (ours; Liftbridge took any epoch):
    /// the group must exist and the epoch must not be newer than the group's, or a client
    /// with an invented epoch would fence every member out of the partition until it
    /// restarted. This broker's metadata may trail the coordinator's by a moment, so it is
    /// given up to [`GROUP_EPOCH_WAIT`] to catch up.
    ///
    /// # Errors
    /// FailedPrecondition for an unknown group or an epoch the group never had.
    pub(crate) async fn check_group_epoch(&self, consumer: &api::Consumer) -> Result<()> {
        let deadline = tokio::time::Instant::now() + GROUP_EPOCH_WAIT;
        loop {
            let epoch = self
                .metadata()
                .with_state(|f| f.groups().get(&consumer.group_id).map(|g| g.epoch));
            let refusal = match epoch {
                Some(e) if consumer.group_epoch <= e => return Ok(()),
                Some(e) => format!(
                    "Group epoch {} is newer than the group's epoch {e}",
                    consumer.group_epoch
                ),
                None => format!("No such consumer group: {}", consumer.group_id),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::FailedPrecondition(refusal));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The metadata of the named groups (`UNKNOWN_GROUP` for unknown ones).
    pub(crate) fn group_metadata(
        &self,
        mut ids: Vec<String>,
        all: bool,
    ) -> Vec<api::ConsumerGroupMetadata> {
        self.metadata().with_state(|f| {
            if all {
                for id in f.groups().keys() {
                    if !ids.contains(id) {
                        ids.push(id.clone());
                    }
                }
            }
            ids.into_iter()
                .map(|id| match f.groups().get(&id) {
                    Some(g) => api::ConsumerGroupMetadata {
                        group_id: id,
                        error: api::consumer_group_metadata::Error::Ok as i32,
                        coordinator: g.coordinator.clone(),
                        epoch: g.epoch,
                        members: g
                            .members
                            .iter()
                            .map(|(cid, m)| api::ConsumerGroupMember {
                                consumer_id: cid.clone(),
                                streams: m.streams.iter().cloned().collect(),
                                assignments: m
                                    .assignments
                                    .iter()
                                    .map(|(s, ps)| api::PartitionAssignment {
                                        stream: s.clone(),
                                        partitions: ps.clone(),
                                    })
                                    .collect(),
                            })
                            .collect(),
                    },
                    None => api::ConsumerGroupMetadata {
                        group_id: id,
                        error: api::consumer_group_metadata::Error::UnknownGroup as i32,
                        ..Default::default()
                    },
                })
                .collect()
        })
    }

    /// The broker to coordinate a group: among the cluster's brokers (but `except`), the one
    /// coordinating the fewest groups, ties broken by id.
    fn pick_coordinator(&self, except: Option<&str>) -> Result<String> {
        let loads = self.metadata().with_state(|f| f.coordinator_loads());
        self.known_servers()
            .into_iter()
            .filter(|s| Some(s.as_str()) != except)
            .min_by(|a, b| {
                let la = loads.get(a).copied().unwrap_or(0);
                let lb = loads.get(b).copied().unwrap_or(0);
                la.cmp(&lb).then_with(|| a.cmp(b))
            })
            .ok_or_else(|| {
                BrokerError::FailedPrecondition("No group coordinator candidates".into())
            })
    }
}

/// Metadata leader: judges one report of a silent coordinator. `tally` counts reports per
/// group; a new coordinator or epoch starts the count over, so a former witness never counts
/// toward a later failover (Liftbridge keeps the witnesses and fails over again at once).
pub(crate) async fn judge_coordinator(
    broker: &Broker,
    tally: &mut replication::FailoverTally<String>,
    op: &internal::ReportConsumerGroupCoordinatorOp,
) -> std::result::Result<(), OpError> {
    let Some(group) = broker
        .metadata()
        .with_state(|f| f.groups().get(&op.group_id).cloned())
    else {
        return Err(OpError::FailedPrecondition(format!(
            "No such consumer group {}",
            op.group_id
        )));
    };
    if group.coordinator != op.coordinator || group.epoch != op.epoch {
        return Err(OpError::FailedPrecondition(format!(
            "Coordinator generation mismatch, current coordinator: {} epoch: {}, got coordinator: {} epoch: {}",
            group.coordinator, group.epoch, op.coordinator, op.epoch
        )));
    }
    // A coordinator reporting itself is stopping (a planned hand-off): no witnesses needed.
    let resigning = op.consumer_id == op.coordinator;
    if !resigning && !group.members.contains_key(&op.consumer_id) {
        return Err(OpError::FailedPrecondition(format!(
            "Consumer {} is not a member of consumer group {}",
            op.consumer_id, op.group_id
        )));
    }
    // The tally's rule counts witnesses against `size − 1`; a group needs more than half of
    // its members, so it is given members + 1.
    if !resigning
        && !tally.report(
            op.group_id.clone(),
            &op.coordinator,
            op.epoch,
            &op.consumer_id,
            group.members.len() + 1,
            now_ms(),
        )
    {
        return Ok(());
    }
    let new = broker
        .pick_coordinator(Some(&group.coordinator))
        .map_err(|e| OpError::FailedPrecondition(e.to_string()))?;
    info!(broker.inner.logger, "moving a consumer group to a new coordinator";
        "group" => &op.group_id, "old" => &group.coordinator, "new" => &new);
    let entry = RaftLog {
        op: Op::ChangeConsumerGroupCoordinator as i32,
        change_consumer_group_coordinator_op: Some(internal::ChangeConsumerGroupCoordinatorOp {
            group_id: op.group_id.clone(),
            coordinator: new,
        }),
        ..Default::default()
    };
    match broker.inner.ctx.propose(entry).await {
        Ok(a) => a.result,
        Err(MetaError::Op(e)) => Err(e),
        Err(e) => Err(OpError::FailedPrecondition(format!(
            "Failed to replicate coordinator change: {e}"
        ))),
    }
}

/// Coordinator: removes the members of the groups this broker coordinates that have not
/// fetched their assignments within the consumer timeout, until `stop`.
pub(crate) async fn watch_members(broker: Broker, mut stop: watch::Receiver<bool>) {
    let timeout = broker.config().groups.consumer_timeout;
    let every = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let me = broker.id().to_owned();
        let coordinated: Vec<(String, String)> = broker.metadata().with_state(|f| {
            f.groups()
                .values()
                .filter(|g| g.coordinator == me)
                .flat_map(|g| g.members.keys().map(|m| (g.id.clone(), m.clone())))
                .collect()
        });
        let expired = {
            let now = now_ms();
            let mut l = broker.inner.liveness.lock();
            l.sync(coordinated, now);
            l.expired(now)
        };
        for (group, member) in expired {
            info!(broker.inner.logger, "removing a consumer that stopped fetching its assignments";
                "group" => &group, "consumer" => &member, "timeout" => ?timeout);
            let b = broker.clone();
            tokio::spawn(async move {
                if let Err(e) = b.propose_leave(&group, &member, true).await {
                    // Named again after another timeout, unless it left meanwhile.
                    warn!(b.inner.logger, "removing an expired consumer failed; will retry";
                        "group" => &group, "consumer" => &member, "error" => %e);
                }
            });
        }
    }
}

/// Ends a fenced subscription when a newer one of its group replaces it, and drops its
/// fencing record when it ends (only its own: a replacement keeps its record).
struct Fenced {
    inner: Subscription,
    replaced: oneshot::Receiver<()>,
    partition: Arc<Partition>,
    group: String,
    token: u64,
}

impl Stream for Fenced {
    type Item = Result<api::Message>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        if std::pin::Pin::new(&mut self.replaced).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        let mut subs = self.partition.group_subs.lock();
        if subs.get(&self.group).is_some_and(|s| s.token == self.token) {
            subs.remove(&self.group);
        }
    }
}

/// Registers a group subscription on `p` (Liftbridge's fencing): refused when the partition's
/// current group subscriber has a newer epoch; otherwise it replaces the current one, whose
/// stream ends. Returns `inner` wrapped so that it ends when replaced.
pub(crate) fn fence(
    p: &Arc<Partition>,
    consumer: &api::Consumer,
    inner: impl FnOnce() -> Result<Subscription>,
) -> Result<Subscription> {
    let mut subs = p.group_subs.lock();
    if let Some(cur) = subs.get(&consumer.group_id)
        && cur.epoch > consumer.group_epoch
    {
        return Err(BrokerError::FailedPrecondition(
            "Consumer is not currently assigned this partition".into(),
        ));
    }
    let inner = inner()?;
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let (close, replaced) = oneshot::channel();
    let old = subs.insert(
        consumer.group_id.clone(),
        GroupSubscriber {
            epoch: consumer.group_epoch,
            token,
            _close: close,
        },
    );
    drop(subs);
    // Dropping the old record's sender ends the replaced subscription.
    drop(old);
    Ok(Box::pin(Fenced {
        inner,
        replaced,
        partition: p.clone(),
        group: consumer.group_id.clone(),
        token,
    }))
}
