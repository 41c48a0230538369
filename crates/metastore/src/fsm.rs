//! The metadata state machine: streams, partitions and consumer groups, changed only by applying
//! committed log entries.
//!
//! `apply` is deterministic. The same entries at the same indexes give the same state and the same
//! results on every node. It does no I/O, reads no clock and draws no random numbers. Preconditions
//! (exists, not found, leader and epoch match) are checked at apply time, so every node reaches the
//! same verdict, and the verdict goes back to the proposer as a typed result.
//!
//! # Epochs (as Liftbridge's)
//! - Creating a stream sets each partition's `leader_epoch` and `epoch` to the entry's index.
//! - A leader change sets both to the index. An ISR change sets `epoch` to the index.
//! - A leader change moves leadership only to an ISR member, and only from the leader and leader
//!   epoch it names (when it names one). An ISR change must name the current leader and leader
//!   epoch; an expansion also names the partition epoch it was decided at (when it names one),
//!   unless it finds the change already done.
//! - An op on a partition whose `epoch` is already ≥ the entry's index is ignored, so replaying
//!   a log over restored state is idempotent.
//!
//! # Recovery
//! While the node replays its log after a restart ([`Fsm::start_recovery`]), a deleted stream is
//! only tombstoned. A later re-creation in the same replay brings it back without losing data.
//! [`Fsm::finish_recovery`] then drops the streams that stayed deleted and reports them, so
//! their data is deleted once rather than deleted and recreated.

use std::collections::BTreeMap;

use liftbridge_proto::internal::{self, Op, RaftLog};

pub use crate::groups::{GroupState, Member};
use prost::Message;

/// Why an operation was refused. The same verdict on every node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The stream (or group) exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The stream, partition, group or member does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The op's view of the world is stale: leader or epoch mismatch, replica not assigned.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The op itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
}

/// The most partitions a stream may have here, whatever proposed it. The brokers' own limit
/// (`streams.max.partitions`) is lower; this one only keeps a forged or corrupt entry from
/// costing every node memory and a folder per partition.
pub const MAX_PARTITIONS: usize = 1 << 16;

/// Checks a stream before it is created: a name that is a folder name, valid subjects, between
/// 1 and [`MAX_PARTITIONS`] partitions numbered from 0 without gaps. A stream that passes the
/// API passes this; one forwarded by a forged `PropagatedRequest` may not.
fn valid_stream(s: &internal::Stream) -> Result<(), OpError> {
    let invalid = |what: String| Err(OpError::InvalidArgument(what));
    if let Err(e) = natsbridge::validate_stream_name(&s.name) {
        return invalid(e.to_string());
    }
    if let Err(e) = natsbridge::validate_subject(&s.subject) {
        return invalid(e.to_string());
    }
    if s.partitions.is_empty() || s.partitions.len() > MAX_PARTITIONS {
        return invalid(format!(
            "a stream has from 1 to {MAX_PARTITIONS} partitions, not {}",
            s.partitions.len()
        ));
    }
    let n = s.partitions.len() as i64;
    // Partition N > 0 records `<subject>.N`: after a `>` that is no subject at all.
    if n > 1 && natsbridge::validate_subject(&natsbridge::partition_subject(&s.subject, 1)).is_err()
    {
        return invalid(format!(
            "subject {:?} ends in '>', so it cannot be split into partitions (partition 1 \
             would record {:?}); use one partition, or a subject without '>'",
            s.subject,
            natsbridge::partition_subject(&s.subject, 1)
        ));
    }
    for p in &s.partitions {
        if i64::from(p.id) < 0 || i64::from(p.id) >= n {
            return invalid(format!("partition id {} is outside 0..{n}", p.id));
        }
        if p.stream != s.name && !p.stream.is_empty() {
            return invalid(format!("partition {} names stream {:?}", p.id, p.stream));
        }
        if !p.subject.is_empty()
            && let Err(e) = natsbridge::validate_subject(&p.subject)
        {
            return invalid(e.to_string());
        }
    }
    Ok(())
}

/// One partition's replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// The partition number.
    pub id: i32,
    /// The NATS subject it records.
    pub subject: String,
    /// The queue group for its subscription ("" for none).
    pub group: String,
    /// Requested replication factor.
    pub replication_factor: i32,
    /// Brokers holding a replica.
    pub replicas: Vec<String>,
    /// The leading broker.
    pub leader: String,
    /// The in-sync replicas.
    pub isr: Vec<String>,
    /// Changes with each leader change.
    pub leader_epoch: u64,
    /// Changes with each leader or ISR change.
    pub epoch: u64,
    /// Paused: no leader work until a publish or subscribe resumes it.
    pub paused: bool,
    /// Read-only: no more writes.
    pub readonly: bool,
}

/// One stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamState {
    /// Its name.
    pub name: String,
    /// The NATS subject it records.
    pub subject: String,
    /// Per-stream settings.
    pub config: internal::StreamConfig,
    /// When it was created (ns since the epoch, from the proposer).
    pub creation_timestamp: i64,
    /// Its partitions by id.
    pub partitions: BTreeMap<i32, PartitionState>,
    /// Deleted during recovery; see the module docs.
    pub tombstoned: bool,
    /// The last pause asked for a publish to one partition to resume all paused partitions.
    /// Snapshots carry it in `Stream.resumeAll` (field 6, our addition).
    pub resume_all: bool,
}

/// What applying an entry changed, for watchers (in apply order).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stream was created (or un-tombstoned during recovery).
    StreamCreated {
        /// Its name.
        stream: String,
    },
    /// A stream was deleted; its data can go.
    StreamDeleted {
        /// Its name.
        stream: String,
    },
    /// A partition's leader, ISR or epochs changed.
    PartitionChanged {
        /// The stream.
        stream: String,
        /// The partition.
        partition: i32,
    },
    /// Partitions were paused.
    Paused {
        /// The stream.
        stream: String,
        /// The partitions.
        partitions: Vec<i32>,
    },
    /// Partitions were resumed.
    Resumed {
        /// The stream.
        stream: String,
        /// The partitions.
        partitions: Vec<i32>,
    },
    /// Partitions became read-only or writable.
    Readonly {
        /// The stream.
        stream: String,
        /// The partitions.
        partitions: Vec<i32>,
        /// The new flag.
        readonly: bool,
    },
    /// A consumer group changed.
    GroupChanged {
        /// The group.
        group: String,
    },
    /// A consumer joined a group (or created it by joining).
    MemberJoined {
        /// The group.
        group: String,
        /// The consumer.
        consumer: String,
        /// The streams it consumes.
        streams: Vec<String>,
    },
    /// A consumer left a group, or was removed for missing its liveness deadline.
    MemberLeft {
        /// The group.
        group: String,
        /// The consumer.
        consumer: String,
        /// Removed by its coordinator, not by its own request.
        expired: bool,
    },
    /// The leader asked for activity-stream publication up to this Raft index.
    PublishActivity {
        /// The index.
        raft_index: u64,
    },
}

/// The result of applying one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The verdict for the proposer.
    pub result: Result<(), OpError>,
    /// What changed (empty when refused or ignored).
    pub events: Vec<Event>,
    /// For a join: the group's coordinator and epoch.
    pub join: Option<(String, u64)>,
}

impl Applied {
    fn ok(events: Vec<Event>) -> Applied {
        Applied {
            result: Ok(()),
            events,
            join: None,
        }
    }

    fn err(e: OpError) -> Applied {
        Applied {
            result: Err(e),
            events: Vec::new(),
            join: None,
        }
    }
}

/// The metadata state machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fsm {
    streams: BTreeMap<String, StreamState>,
    groups: BTreeMap<String, GroupState>,
    applied_index: u64,
    recovering: bool,
}

fn missing_body(op: &str) -> Applied {
    Applied::err(OpError::InvalidArgument(format!(
        "{op} entry without its body"
    )))
}

impl Fsm {
    /// An empty state.
    pub fn new() -> Self {
        Fsm::default()
    }

    /// Streams by name, tombstoned ones included.
    pub fn streams(&self) -> &BTreeMap<String, StreamState> {
        &self.streams
    }

    /// A live (not tombstoned) stream.
    pub fn stream(&self, name: &str) -> Option<&StreamState> {
        self.streams.get(name).filter(|s| !s.tombstoned)
    }

    /// A partition of a live stream.
    pub fn partition(&self, stream: &str, id: i32) -> Option<&PartitionState> {
        self.stream(stream).and_then(|s| s.partitions.get(&id))
    }

    /// Consumer groups by id.
    pub fn groups(&self) -> &BTreeMap<String, GroupState> {
        &self.groups
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Whether a recovery replay is under way.
    pub fn is_recovering(&self) -> bool {
        self.recovering
    }

    /// Enters recovery: deletes only tombstone until [`finish_recovery`](Fsm::finish_recovery).
    pub fn start_recovery(&mut self) {
        self.recovering = true;
    }

    /// Ends recovery: streams still tombstoned are removed and reported as deleted.
    pub fn finish_recovery(&mut self) -> Vec<Event> {
        self.recovering = false;
        let gone: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.tombstoned)
            .map(|(n, _)| n.clone())
            .collect();
        gone.into_iter()
            .map(|stream| {
                self.streams.remove(&stream);
                Event::StreamDeleted { stream }
            })
            .collect()
    }

    /// Applies a committed entry at Raft index `index`. Entries at or below the last applied
    /// index are ignored (a replay).
    pub fn apply(&mut self, entry: &RaftLog, index: u64) -> Applied {
        if index <= self.applied_index {
            return Applied::ok(Vec::new());
        }
        self.applied_index = index;
        let Ok(op) = Op::try_from(entry.op) else {
            return Applied::err(OpError::InvalidArgument(format!("unknown op {}", entry.op)));
        };
        match op {
            Op::CreateStream => match entry
                .create_stream_op
                .as_ref()
                .and_then(|o| o.stream.as_ref())
            {
                Some(s) => self.create_stream(s, index),
                None => missing_body("CreateStream"),
            },
            Op::DeleteStream => match &entry.delete_stream_op {
                Some(o) => self.delete_stream(&o.stream, index),
                None => missing_body("DeleteStream"),
            },
            Op::ShrinkIsr => match &entry.shrink_isr_op {
                Some(o) => self.change_isr(
                    &o.stream,
                    o.partition,
                    &o.replica_to_remove,
                    false,
                    (&o.leader, o.leader_epoch, 0),
                    index,
                ),
                None => missing_body("ShrinkISR"),
            },
            Op::ExpandIsr => match &entry.expand_isr_op {
                Some(o) => self.change_isr(
                    &o.stream,
                    o.partition,
                    &o.replica_to_add,
                    true,
                    (&o.leader, o.leader_epoch, o.epoch),
                    index,
                ),
                None => missing_body("ExpandISR"),
            },
            Op::ChangeLeader => match &entry.change_leader_op {
                Some(o) => self.change_leader(o, index),
                None => missing_body("ChangeLeader"),
            },
            Op::PauseStream => match &entry.pause_stream_op {
                Some(o) => {
                    let applied = self.set_paused(&o.stream, &o.partitions, true);
                    if applied.result.is_ok()
                        && let Some(st) = self.streams.get_mut(&o.stream)
                    {
                        st.resume_all = o.resume_all;
                    }
                    applied
                }
                None => missing_body("PauseStream"),
            },
            Op::ResumeStream => match &entry.resume_stream_op {
                Some(o) => self.set_paused(&o.stream, &o.partitions, false),
                None => missing_body("ResumeStream"),
            },
            Op::SetStreamReadonly => match &entry.set_stream_readonly_op {
                Some(o) => self.set_readonly(&o.stream, &o.partitions, o.readonly),
                None => missing_body("SetStreamReadonly"),
            },
            Op::PublishActivity => match &entry.publish_activity_op {
                Some(o) => Applied::ok(vec![Event::PublishActivity {
                    raft_index: o.raft_index,
                }]),
                None => missing_body("PublishActivity"),
            },
            Op::CreateConsumerGroup => match entry
                .create_consumer_group_op
                .as_ref()
                .and_then(|o| o.consumer_group.as_ref())
            {
                Some(g) => self.create_group(g, index),
                None => missing_body("CreateConsumerGroup"),
            },
            Op::JoinConsumerGroup => match &entry.join_consumer_group_op {
                Some(o) => self.join_group(&o.group_id, &o.consumer_id, &o.streams, index),
                None => missing_body("JoinConsumerGroup"),
            },
            Op::LeaveConsumerGroup => match &entry.leave_consumer_group_op {
                Some(o) => self.leave_group(&o.group_id, &o.consumer_id, o.expired, index),
                None => missing_body("LeaveConsumerGroup"),
            },
            Op::ChangeConsumerGroupCoordinator => match &entry.change_consumer_group_coordinator_op
            {
                Some(o) => self.change_coordinator(&o.group_id, &o.coordinator, index),
                None => missing_body("ChangeConsumerGroupCoordinator"),
            },
            Op::ReportLeader | Op::ReportConsumerGroupCoordinator => {
                Applied::err(OpError::InvalidArgument(
                    "report ops are handled by the metadata leader and never logged".into(),
                ))
            }
        }
    }

    fn create_stream(&mut self, s: &internal::Stream, index: u64) -> Applied {
        if let Err(e) = valid_stream(s) {
            return Applied::err(e);
        }
        if self
            .streams
            .get(&s.name)
            .is_some_and(|existing| !existing.tombstoned)
        {
            return Applied::err(OpError::AlreadyExists(format!(
                "stream {} already exists",
                s.name
            )));
        }
        let mut partitions = BTreeMap::new();
        for p in &s.partitions {
            if partitions.contains_key(&p.id) {
                return Applied::err(OpError::InvalidArgument(format!(
                    "partition {} given twice",
                    p.id
                )));
            }
            partitions.insert(
                p.id,
                PartitionState {
                    id: p.id,
                    subject: p.subject.clone(),
                    group: p.group.clone(),
                    replication_factor: p.replication_factor,
                    replicas: p.replicas.clone(),
                    leader: p.leader.clone(),
                    // The ISR starts as every replica.
                    isr: p.replicas.clone(),
                    leader_epoch: index,
                    epoch: index,
                    paused: false,
                    readonly: false,
                },
            );
        }
        self.streams.insert(
            s.name.clone(),
            StreamState {
                name: s.name.clone(),
                subject: s.subject.clone(),
                config: s.config.unwrap_or_default(),
                creation_timestamp: s.creation_timestamp,
                partitions,
                tombstoned: false,
                resume_all: false,
            },
        );
        Applied::ok(vec![Event::StreamCreated {
            stream: s.name.clone(),
        }])
    }

    fn delete_stream(&mut self, name: &str, index: u64) -> Applied {
        let Some(s) = self.streams.get_mut(name).filter(|s| !s.tombstoned) else {
            return Applied::err(OpError::NotFound(format!("stream {name} not found")));
        };
        if self.recovering {
            s.tombstoned = true;
            self.groups_lose_stream(name, index);
            return Applied::ok(Vec::new());
        }
        self.streams.remove(name);
        let mut events = vec![Event::StreamDeleted {
            stream: name.to_owned(),
        }];
        events.extend(self.groups_lose_stream(name, index));
        Applied::ok(events)
    }

    fn partition_mut(&mut self, stream: &str, id: i32) -> Result<&mut PartitionState, OpError> {
        let s = self
            .streams
            .get_mut(stream)
            .filter(|s| !s.tombstoned)
            .ok_or_else(|| OpError::NotFound(format!("stream {stream} not found")))?;
        s.partitions.get_mut(&id).ok_or_else(|| {
            OpError::NotFound(format!("partition {id} of stream {stream} not found"))
        })
    }

    /// `expected` is the proposer's view: the leader, its leader epoch and (for an expansion,
    /// 0 for none) the partition epoch it decided at.
    fn change_isr(
        &mut self,
        stream: &str,
        id: i32,
        replica: &str,
        add: bool,
        expected: (&str, u64, u64),
        index: u64,
    ) -> Applied {
        let (leader, leader_epoch, epoch) = expected;
        let p = match self.partition_mut(stream, id) {
            Ok(p) => p,
            Err(e) => return Applied::err(e),
        };
        if p.epoch >= index {
            return Applied::ok(Vec::new()); // replayed
        }
        if p.leader != leader || p.leader_epoch != leader_epoch {
            return Applied::err(OpError::FailedPrecondition(format!(
                "leader generation mismatch: the partition's leader is {} at epoch {}, the request says {leader} at epoch {leader_epoch}",
                p.leader, p.leader_epoch
            )));
        }
        if !p.replicas.iter().any(|r| r == replica) {
            return Applied::err(OpError::FailedPrecondition(format!(
                "{replica} is not a replica of the partition"
            )));
        }
        if !add && replica == p.leader {
            // The leader always holds what it commits; without it the ISR could elect no one.
            return Applied::err(OpError::FailedPrecondition(format!(
                "{replica} leads the partition and cannot leave its ISR"
            )));
        }
        let present = p.isr.iter().any(|r| r == replica);
        if add && !present && epoch != 0 && epoch != p.epoch {
            // Decided on an ISR that has changed since (a retry, or a stale proposal): the
            // replica may have been dropped again for lagging.
            return Applied::err(OpError::FailedPrecondition(format!(
                "partition epoch mismatch: the partition is at epoch {}, the request was decided at {epoch}",
                p.epoch
            )));
        }
        match (add, present) {
            (true, false) => p.isr.push(replica.to_owned()),
            (false, true) => p.isr.retain(|r| r != replica),
            _ => return Applied::ok(Vec::new()), // already so
        }
        p.epoch = index;
        Applied::ok(vec![Event::PartitionChanged {
            stream: stream.to_owned(),
            partition: id,
        }])
    }

    /// Moves leadership. Only an ISR member may lead (it holds everything committed); the op's
    /// expected leader and leader epoch, when given, must still be the partition's (a failover
    /// decided on a stale state is refused). A leader may name itself, to lead at a new epoch.
    fn change_leader(&mut self, o: &internal::ChangeLeaderOp, index: u64) -> Applied {
        let (stream, id, leader) = (o.stream.as_str(), o.partition, o.leader.as_str());
        let p = match self.partition_mut(stream, id) {
            Ok(p) => p,
            Err(e) => return Applied::err(e),
        };
        if p.epoch >= index {
            return Applied::ok(Vec::new());
        }
        if !o.expected_leader.is_empty()
            && (p.leader != o.expected_leader || p.leader_epoch != o.expected_leader_epoch)
        {
            return Applied::err(OpError::FailedPrecondition(format!(
                "leader generation mismatch: the partition's leader is {} at epoch {}, the request replaces {} at epoch {}",
                p.leader, p.leader_epoch, o.expected_leader, o.expected_leader_epoch
            )));
        }
        if !p.replicas.iter().any(|r| r == leader) {
            return Applied::err(OpError::FailedPrecondition(format!(
                "{leader} is not a replica of the partition"
            )));
        }
        if !p.isr.iter().any(|r| r == leader) {
            // An unclean election: it may lack committed messages.
            return Applied::err(OpError::FailedPrecondition(format!(
                "{leader} is not in the partition's ISR {:?}",
                p.isr
            )));
        }
        p.leader = leader.to_owned();
        p.leader_epoch = index;
        p.epoch = index;
        Applied::ok(vec![Event::PartitionChanged {
            stream: stream.to_owned(),
            partition: id,
        }])
    }

    /// The partitions an op names: all of them when none are named.
    fn select(&mut self, stream: &str, partitions: &[i32]) -> Result<Vec<i32>, OpError> {
        let s = self
            .streams
            .get(stream)
            .filter(|s| !s.tombstoned)
            .ok_or_else(|| OpError::NotFound(format!("stream {stream} not found")))?;
        if partitions.is_empty() {
            return Ok(s.partitions.keys().copied().collect());
        }
        for id in partitions {
            if !s.partitions.contains_key(id) {
                return Err(OpError::NotFound(format!(
                    "partition {id} of stream {stream} not found"
                )));
            }
        }
        Ok(partitions.to_vec())
    }

    /// Applies `change` to the partitions an op names (all when none are named) and returns
    /// their ids.
    fn update_selected(
        &mut self,
        stream: &str,
        partitions: &[i32],
        change: impl Fn(&mut PartitionState),
    ) -> Result<Vec<i32>, OpError> {
        let ids = self.select(stream, partitions)?;
        let s = self.streams.get_mut(stream).expect("selected");
        for id in &ids {
            change(s.partitions.get_mut(id).expect("selected"));
        }
        Ok(ids)
    }

    fn set_paused(&mut self, stream: &str, partitions: &[i32], paused: bool) -> Applied {
        match self.update_selected(stream, partitions, |p| p.paused = paused) {
            Ok(partitions) => {
                let stream = stream.to_owned();
                Applied::ok(vec![if paused {
                    Event::Paused { stream, partitions }
                } else {
                    Event::Resumed { stream, partitions }
                }])
            }
            Err(e) => Applied::err(e),
        }
    }

    fn set_readonly(&mut self, stream: &str, partitions: &[i32], readonly: bool) -> Applied {
        match self.update_selected(stream, partitions, |p| p.readonly = readonly) {
            Ok(partitions) => Applied::ok(vec![Event::Readonly {
                stream: stream.to_owned(),
                partitions,
                readonly,
            }]),
            Err(e) => Applied::err(e),
        }
    }

    /// A stream's partition count for assignment: 0 when it does not exist.
    fn partition_count(streams: &BTreeMap<String, StreamState>, stream: &str) -> i32 {
        streams
            .get(stream)
            .filter(|s| !s.tombstoned)
            .map_or(0, |s| s.partitions.len() as i32)
    }

    fn check_streams(&self, streams: &[String]) -> Result<(), OpError> {
        if streams.is_empty() {
            return Err(OpError::InvalidArgument("No streams provided".into()));
        }
        if streams
            .iter()
            .any(|s| Self::partition_count(&self.streams, s) == 0)
        {
            return Err(OpError::FailedPrecondition("stream does not exist".into()));
        }
        Ok(())
    }

    /// How many groups each broker coordinates.
    pub fn coordinator_loads(&self) -> BTreeMap<String, usize> {
        let mut loads = BTreeMap::new();
        for g in self.groups.values() {
            *loads.entry(g.coordinator.clone()).or_insert(0) += 1;
        }
        loads
    }

    fn create_group(&mut self, g: &internal::ConsumerGroup, index: u64) -> Applied {
        if g.id.is_empty() {
            return Applied::err(OpError::InvalidArgument("No groupId provided".into()));
        }
        if g.members.iter().any(|m| m.id.is_empty()) {
            return Applied::err(OpError::InvalidArgument("No consumerId provided".into()));
        }
        if self.groups.contains_key(&g.id) {
            return Applied::err(OpError::FailedPrecondition(
                "consumer group already exists".into(),
            ));
        }
        for m in &g.members {
            if let Err(e) = self.check_streams(&m.streams) {
                return Applied::err(e);
            }
        }
        // A new group starts at the entry's index (Liftbridge: 0), as join, leave and a
        // coordinator change do: a group re-created after its last member left must start
        // above the old group's epochs, which its partitions still hold for fencing.
        let mut group = GroupState::new(&g.id, &g.coordinator, index);
        let streams = &self.streams;
        for m in &g.members {
            group.add_member(&m.id, &m.streams, &|s| Self::partition_count(streams, s));
        }
        let join = (group.coordinator.clone(), group.epoch);
        self.groups.insert(g.id.clone(), group);
        let mut events = vec![Event::GroupChanged {
            group: g.id.clone(),
        }];
        events.extend(g.members.iter().map(|m| Event::MemberJoined {
            group: g.id.clone(),
            consumer: m.id.clone(),
            streams: m.streams.clone(),
        }));
        let mut applied = Applied::ok(events);
        applied.join = Some(join);
        applied
    }

    fn join_group(
        &mut self,
        group: &str,
        consumer: &str,
        streams: &[String],
        index: u64,
    ) -> Applied {
        if group.is_empty() {
            return Applied::err(OpError::InvalidArgument("No groupId provided".into()));
        }
        if consumer.is_empty() {
            return Applied::err(OpError::InvalidArgument("No consumerId provided".into()));
        }
        let Some(g) = self.groups.get(group) else {
            return Applied::err(OpError::NotFound("consumer group does not exist".into()));
        };
        if g.members.contains_key(consumer) {
            return Applied::err(OpError::FailedPrecondition(
                "consumer is already a member of the consumer group".into(),
            ));
        }
        if index < g.epoch {
            return Applied::err(OpError::FailedPrecondition(format!(
                "join at index {index} is older than the group's epoch {}",
                g.epoch
            )));
        }
        if let Err(e) = self.check_streams(streams) {
            return Applied::err(e);
        }
        let all = &self.streams;
        let g = self.groups.get_mut(group).expect("looked up");
        g.add_member(consumer, streams, &|s| Self::partition_count(all, s));
        g.epoch = index;
        let mut applied = Applied::ok(vec![
            Event::GroupChanged {
                group: group.to_owned(),
            },
            Event::MemberJoined {
                group: group.to_owned(),
                consumer: consumer.to_owned(),
                streams: streams.to_vec(),
            },
        ]);
        applied.join = Some((g.coordinator.clone(), g.epoch));
        applied
    }

    fn leave_group(&mut self, group: &str, consumer: &str, expired: bool, index: u64) -> Applied {
        if group.is_empty() {
            return Applied::err(OpError::InvalidArgument("No groupId provided".into()));
        }
        if consumer.is_empty() {
            return Applied::err(OpError::InvalidArgument("No consumerId provided".into()));
        }
        let all = &self.streams;
        let Some(g) = self.groups.get_mut(group) else {
            return Applied::err(OpError::NotFound("consumer group does not exist".into()));
        };
        if !g.members.contains_key(consumer) {
            return Applied::err(OpError::FailedPrecondition(
                "consumer is not a member of the consumer group".into(),
            ));
        }
        if index < g.epoch {
            return Applied::err(OpError::FailedPrecondition(format!(
                "leave at index {index} is older than the group's epoch {}",
                g.epoch
            )));
        }
        g.remove_member(consumer, &|s| Self::partition_count(all, s));
        g.epoch = index;
        if g.members.is_empty() {
            self.groups.remove(group);
        }
        Applied::ok(vec![
            Event::GroupChanged {
                group: group.to_owned(),
            },
            Event::MemberLeft {
                group: group.to_owned(),
                consumer: consumer.to_owned(),
                expired,
            },
        ])
    }

    fn change_coordinator(&mut self, group: &str, coordinator: &str, index: u64) -> Applied {
        let Some(g) = self.groups.get_mut(group) else {
            return Applied::err(OpError::FailedPrecondition(
                "consumer group does not exist".into(),
            ));
        };
        if g.epoch >= index {
            return Applied::ok(Vec::new());
        }
        g.coordinator = coordinator.to_owned();
        g.epoch = index;
        Applied::ok(vec![Event::GroupChanged {
            group: group.to_owned(),
        }])
    }

    /// A stream is gone: every group drops it and rebalances, here in apply (Liftbridge does
    /// it in the background, where nodes can diverge). Groups that ever had a subscriber on
    /// it move to the deletion's epoch.
    fn groups_lose_stream(&mut self, stream: &str, index: u64) -> Vec<Event> {
        let all = &self.streams;
        let mut events = Vec::new();
        for g in self.groups.values_mut() {
            if g.stream_deleted(stream, &|s| Self::partition_count(all, s)) {
                g.epoch = g.epoch.max(index);
                events.push(Event::GroupChanged {
                    group: g.id.clone(),
                });
            }
        }
        events
    }

    /// The state as a snapshot: `u32 BE length | MetadataSnapshot`, as Liftbridge writes it.
    /// Tombstoned streams are left out.
    pub fn snapshot(&self) -> Vec<u8> {
        let snap = internal::MetadataSnapshot {
            streams: self
                .streams
                .values()
                .filter(|s| !s.tombstoned)
                .map(|s| internal::Stream {
                    name: s.name.clone(),
                    subject: s.subject.clone(),
                    config: Some(s.config),
                    creation_timestamp: s.creation_timestamp,
                    resume_all: s.resume_all,
                    partitions: s
                        .partitions
                        .values()
                        .map(|p| internal::Partition {
                            subject: p.subject.clone(),
                            stream: s.name.clone(),
                            id: p.id,
                            group: p.group.clone(),
                            replication_factor: p.replication_factor,
                            replicas: p.replicas.clone(),
                            leader: p.leader.clone(),
                            isr: p.isr.clone(),
                            leader_epoch: p.leader_epoch,
                            epoch: p.epoch,
                            paused: p.paused,
                            readonly: p.readonly,
                        })
                        .collect(),
                })
                .collect(),
            groups: self.groups.values().map(GroupState::to_proto).collect(),
        };
        let body = snap.encode_to_vec();
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Empties the state, as of Raft index `index` (a snapshot with no metadata in it).
    pub fn reset(&mut self, index: u64) {
        *self = Fsm {
            applied_index: index,
            recovering: self.recovering,
            ..Fsm::default()
        };
    }

    /// Replaces the state with a snapshot taken at Raft index `index`.
    ///
    /// # Errors
    /// [`OpError::InvalidArgument`] when the bytes are not a snapshot; the state is unchanged.
    pub fn restore(&mut self, bytes: &[u8], index: u64) -> Result<(), OpError> {
        let bad = |why: &str| OpError::InvalidArgument(format!("invalid metadata snapshot: {why}"));
        if bytes.len() < 4 {
            return Err(bad("shorter than its length prefix"));
        }
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        if bytes.len() - 4 != len {
            return Err(bad("length prefix does not match"));
        }
        let snap =
            internal::MetadataSnapshot::decode(&bytes[4..]).map_err(|e| bad(&e.to_string()))?;
        let mut fresh = Fsm {
            applied_index: index,
            recovering: self.recovering,
            ..Fsm::default()
        };
        for s in snap.streams {
            let partitions = s
                .partitions
                .iter()
                .map(|p| {
                    (
                        p.id,
                        PartitionState {
                            id: p.id,
                            subject: p.subject.clone(),
                            group: p.group.clone(),
                            replication_factor: p.replication_factor,
                            replicas: p.replicas.clone(),
                            leader: p.leader.clone(),
                            isr: p.isr.clone(),
                            leader_epoch: p.leader_epoch,
                            epoch: p.epoch,
                            paused: p.paused,
                            readonly: p.readonly,
                        },
                    )
                })
                .collect();
            fresh.streams.insert(
                s.name.clone(),
                StreamState {
                    name: s.name,
                    subject: s.subject,
                    config: s.config.unwrap_or_default(),
                    creation_timestamp: s.creation_timestamp,
                    partitions,
                    tombstoned: false,
                    resume_all: s.resume_all,
                },
            );
        }
        for g in snap.groups {
            let all = &fresh.streams;
            let group = GroupState::from_proto(g, &|s| Self::partition_count(all, s));
            fresh.groups.insert(group.id.clone(), group);
        }
        *self = fresh;
        Ok(())
    }
}
