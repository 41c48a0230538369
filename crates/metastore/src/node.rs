//! One member of the metadata Raft group: a raft-rs `RawNode` and the [`Fsm`] it feeds.
//!
//! The node is a state machine too. Its driver hands it [`Input`]s (a clock tick, a proposal, a
//! message from a peer) and gets back an [`Output`]: messages to send, entries applied with their
//! verdicts, and role changes. The node owns no thread, socket or clock, so a test can run a whole
//! cluster in one thread, with a seed.
//!
//! # The Ready contract
//! [`MetaNode::drive`] follows raft-rs's documented order. It applies a snapshot, applies
//! committed entries, persists new entries and the hard state, and only then returns messages.
//! Because nothing goes out before the state it depends on is persisted, every message the driver
//! sends is safe, leader messages included.

use std::collections::HashMap;

use liftbridge_proto::internal::RaftLog;
use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};

use crate::storage::{LogStore, MemStore};

use crate::fsm::{Applied, Event, Fsm};

/// Why the node could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// raft-rs refused (for example, a proposal while no leader is known).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A message from a peer could not be decoded.
    #[error("malformed raft message: {0}")]
    Decode(String),
    /// A message from a peer that could not have come from a member following the protocol,
    /// refused before raft-rs saw it (raft-rs treats such input as a fatal bug).
    #[error("refused raft message: {0}")]
    Refused(String),
}

/// How far above this node's term a message's term may be. Terms grow by one per election;
/// a jump past this can only be forged, and a term near `u64::MAX` would overflow raft-rs's
/// next election.
const MAX_TERM_JUMP: u64 = 1 << 20;

/// What the driver feeds the node.
#[derive(Debug)]
pub enum Input {
    /// One clock tick (elections and heartbeats count ticks).
    Tick,
    /// Propose a metadata operation; `id` comes back with its verdict once applied.
    Propose {
        /// The caller's id for the proposal.
        id: u64,
        /// The operation (boxed: it is much larger than the other inputs).
        entry: Box<RaftLog>,
    },
    /// Add a voter (or, with `learner`, a non-voting member).
    AddMember {
        /// The new member's Raft id.
        node: u64,
        /// Whether it joins as a learner.
        learner: bool,
    },
    /// Remove a member (voter or learner).
    RemoveMember {
        /// The member's Raft id.
        node: u64,
    },
    /// A message from a peer.
    Message(Box<Message>),
    /// While leading, hand leadership to the most up-to-date other voter (a planned stop);
    /// nothing happens if this node does not lead or has no other voter.
    TransferLeader,
}

/// One applied entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedEntry {
    /// Its Raft index.
    pub index: u64,
    /// Its Raft term.
    pub term: u64,
    /// The proposal id (it travels with the entry, so every node sees it).
    pub proposal: Option<u64>,
    /// Replayed from this node's own log after a restart: the broker must not act on it as new
    /// (Liftbridge's "recovered" apply: no partitions started twice).
    pub recovered: bool,
    /// The verdict and events.
    pub applied: Applied,
}

/// What the driver must act on after an input.
#[derive(Debug, Default)]
pub struct Output {
    /// Send each to its `to`.
    pub messages: Vec<Message>,
    /// Entries applied to the state machine, in order.
    pub applied: Vec<AppliedEntry>,
    /// The node's role, if it changed.
    pub role: Option<StateRole>,
    /// The state was replaced by a snapshot at this index (a node that joined or fell behind):
    /// watchers must re-read all of it.
    pub restored: Option<u64>,
}

/// A member of the metadata group.
pub struct MetaNode<S: LogStore = MemStore> {
    raw: RawNode<S>,
    fsm: Fsm,
    role: StateRole,
    /// The commit index at start: replaying up to it is recovery.
    recovery_until: u64,
    /// The applied index of the last snapshot offered to storage.
    offered_at: u64,
    /// The last Raft index applied, of any entry type (the FSM counts only metadata entries).
    applied: u64,
    /// Compact the log once this many applied entries follow the last snapshot (0: never).
    snapshot_threshold: u64,
}

impl<S: LogStore> std::fmt::Debug for MetaNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaNode")
            .field("id", &self.raw.raft.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.role)
            .field("applied", &self.fsm.applied_index())
            .finish()
    }
}

/// Applied entries after the last snapshot that trigger a compaction of the log.
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 8192;

/// Election and heartbeat timing, in ticks (Liftbridge's defaults are 1 s and 100 ms).
pub const ELECTION_TICKS: usize = 10;
/// Heartbeat interval in ticks.
pub const HEARTBEAT_TICKS: usize = 1;

/// Index of the bootstrap snapshot. The initial membership is recorded in a snapshot here,
/// rather than only in local storage, so that the log of a bootstrapped group starts after it. A
/// node that joins with an empty log is then sent this snapshot and learns the whole initial
/// membership. Without it, a joiner would know only the members added after it, and could form a
/// group that leaves the seed out.
pub const BOOTSTRAP_INDEX: u64 = 5;

/// The snapshot a new group starts from: the initial membership and an empty state.
pub fn bootstrap_snapshot(cs: ConfState) -> raft::eraftpb::Snapshot {
    let mut snap = raft::eraftpb::Snapshot::default();
    snap.mut_metadata().index = BOOTSTRAP_INDEX;
    snap.mut_metadata().term = BOOTSTRAP_INDEX;
    snap.mut_metadata().set_conf_state(cs);
    snap
}

/// Initial storage for a node that starts with `voters` as the whole group (a seed starts with
/// itself alone; a static peer list starts with every peer).
pub fn bootstrap_storage(voters: &[u64]) -> MemStore {
    let s = MemStore::new();
    s.apply_snapshot(bootstrap_snapshot(ConfState::from((
        voters.to_vec(),
        vec![],
    ))))
    .expect("an empty storage takes any snapshot");
    s
}

/// Storage for a node that will be added by a configuration change.
pub fn joining_storage() -> MemStore {
    MemStore::new()
}

impl<S: LogStore> MetaNode<S> {
    /// Starts node `id` on `storage`, replaying what it holds. Everything replayed is applied in
    /// recovery mode (see [`Fsm::start_recovery`]); recovery ends when the node has applied up to
    /// the commit index it had at start.
    ///
    /// # Errors
    /// [`NodeError::Raft`] for an invalid configuration.
    pub fn new(id: u64, storage: S) -> Result<MetaNode<S>, NodeError> {
        Self::with_election_range(id, storage, None)
    }

    /// As [`new`](MetaNode::new), with the election timeout drawn from `[min, max)` ticks instead
    /// of raft-rs's default `[10, 20)`. A range of one tick makes the node deterministic, for
    /// simulations that replay a seed.
    ///
    /// # Errors
    /// As [`new`](MetaNode::new).
    pub fn with_election_range(
        id: u64,
        storage: S,
        range: Option<(usize, usize)>,
    ) -> Result<MetaNode<S>, NodeError> {
        let (min, max) = range.unwrap_or((0, 0));
        let cfg = Config {
            min_election_tick: min,
            max_election_tick: max,
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            // Pre-vote and check-quorum keep a partitioned node from disrupting the group when it
            // returns, and make a leader cut off from the majority step down.
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let commit = storage.initial_state()?.hard_state.commit;
        let snapshot_index = storage.first_index()?.saturating_sub(1);
        let raw = RawNode::new(&cfg, storage, &logger)?;
        let mut fsm = Fsm::new();
        // A compacted log starts from its snapshot: restore the state it holds first.
        if let Some(snap) = raw.raft.raft_log.store.persisted_snapshot()
            && !snap.data.is_empty()
        {
            fsm.restore(&snap.data, snap.get_metadata().index)
                .map_err(|e| NodeError::Decode(e.to_string()))?;
        }
        // Entries beyond the snapshot that were committed before the restart are a replay.
        if commit > snapshot_index {
            fsm.start_recovery();
        }
        Ok(MetaNode {
            raw,
            fsm,
            role: StateRole::Follower,
            recovery_until: commit,
            offered_at: 0,
            applied: snapshot_index,
            snapshot_threshold: DEFAULT_SNAPSHOT_THRESHOLD,
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The current role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    /// The last Raft index applied (entries of every type).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Whether a membership change is proposed and not yet applied (raft-rs allows one at a time).
    pub fn has_pending_conf_change(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Whether `node` is a voter or learner of the group.
    pub fn is_member(&self, node: u64) -> bool {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        conf.voters.contains(&node) || conf.learners.contains(&node)
    }

    /// The voter a leader would hand leadership to: the other voter that has replicated the
    /// most of the log (ties go to the lower id, so the choice is deterministic).
    pub fn transferee(&self) -> Option<u64> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let conf = raft.prs().conf().to_conf_state();
        conf.voters
            .iter()
            .filter(|&&v| v != raft.id)
            .filter_map(|&v| raft.prs().get(v).map(|p| (p.matched, v)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, v)| v)
    }

    /// The state machine.
    pub fn fsm(&self) -> &Fsm {
        &self.fsm
    }

    /// The storage, for a restart "with the disk intact".
    pub fn storage(&self) -> S {
        self.raw.raft.raft_log.store.clone()
    }

    /// Handles one input and returns what to do about it.
    ///
    /// # Errors
    /// A proposal that raft-rs refuses (e.g. no known leader), or a malformed conf change.
    pub fn handle(&mut self, input: Input) -> Result<Output, NodeError> {
        match input {
            Input::Tick => {
                self.raw.tick();
            }
            Input::Propose { id, entry } => {
                self.raw
                    .propose(id.to_be_bytes().to_vec(), entry.encode_to_vec())?;
            }
            Input::AddMember { node, learner } => {
                let mut cc = ConfChange::default();
                cc.set_node_id(node);
                cc.set_change_type(if learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                });
                self.raw.propose_conf_change(vec![], cc)?;
            }
            Input::RemoveMember { node } => {
                let mut cc = ConfChange::default();
                cc.set_node_id(node);
                cc.set_change_type(ConfChangeType::RemoveNode);
                self.raw.propose_conf_change(vec![], cc)?;
            }
            Input::TransferLeader => {
                if let Some(to) = self.transferee() {
                    self.raw.transfer_leader(to);
                }
            }
            Input::Message(m) => {
                self.admit(&m).map_err(NodeError::Refused)?;
                // Messages for a node that was removed, or from a stale incarnation, are dropped
                // by raft-rs itself; an error here is not fatal to the node.
                let _ = self.raw.step(*m);
            }
        }
        self.drive()
    }

    /// Checks a peer's message against what raft-rs asserts instead of checking: raft-rs
    /// panics on a heartbeat that commits past its log, on entries that conflict with
    /// committed ones, and on a snapshot with an impossible membership. Anyone who can publish
    /// on NATS can send this node a message, so each is checked first: addressed to this node,
    /// from a member (unless this node is not yet one, as a joiner waiting for its snapshot),
    /// with a believable term, and consistent with the committed log.
    fn admit(&self, m: &Message) -> Result<(), String> {
        use raft::eraftpb::MessageType as T;
        let raft = &self.raw.raft;
        if m.to != raft.id {
            return Err(format!("addressed to node {}, not {}", m.to, raft.id));
        }
        let conf = raft.prs().conf().to_conf_state();
        let member = |id: u64| conf.voters.contains(&id) || conf.learners.contains(&id);
        let joining = conf.voters.is_empty() && conf.learners.is_empty();
        if !joining && !member(m.from) {
            return Err(format!("from node {}, not a member", m.from));
        }
        if m.term > raft.term.saturating_add(MAX_TERM_JUMP) {
            return Err(format!(
                "term {} from node {} is far beyond this node's {}",
                m.term, m.from, raft.term
            ));
        }
        let log = &raft.raft_log;
        match m.get_msg_type() {
            T::MsgHeartbeat if m.commit > log.last_index() => Err(format!(
                "heartbeat from node {} commits {} beyond the last index {}",
                m.from,
                m.commit,
                log.last_index()
            )),
            T::MsgAppend => {
                let mut term = m.log_term;
                for (expect, e) in (m.index.saturating_add(1)..).zip(m.entries.iter()) {
                    if e.index != expect || e.term < term {
                        return Err(format!(
                            "entries from node {} are not contiguous or go back in term",
                            m.from
                        ));
                    }
                    // Entries at or below the commit index must be the committed ones.
                    if e.index <= log.committed && log.term(e.index).is_ok_and(|t| t != e.term) {
                        return Err(format!(
                            "entry {} from node {} conflicts with the committed log",
                            e.index, m.from
                        ));
                    }
                    term = e.term;
                }
                Ok(())
            }
            T::MsgSnapshot => {
                let snap = m.get_snapshot();
                let cs = snap.get_metadata().get_conf_state();
                let overlap = cs.voters.iter().any(|v| cs.learners.contains(v));
                if cs.voters.is_empty() || overlap || !cs.voters_outgoing.is_empty() {
                    return Err(format!(
                        "snapshot from node {} has an impossible membership",
                        m.from
                    ));
                }
                if !cs.voters.contains(&raft.id) && !cs.learners.contains(&raft.id) {
                    return Err(format!(
                        "snapshot from node {} leaves this node out",
                        m.from
                    ));
                }
                if !snap.data.is_empty()
                    && Fsm::new()
                        .restore(&snap.data, snap.get_metadata().index)
                        .is_err()
                {
                    return Err(format!(
                        "snapshot from node {} does not hold metadata",
                        m.from
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs the Ready loop until raft-rs has nothing more to do.
    fn drive(&mut self) -> Result<Output, NodeError> {
        let mut out = Output::default();
        // Bounded: each round consumes what the previous one produced.
        for _ in 0..64 {
            if !self.raw.has_ready() {
                break;
            }
            let store = self.storage();
            let mut ready = self.raw.ready();
            let mut messages = ready.take_messages();
            if !ready.snapshot().is_empty() {
                let snap = ready.snapshot().clone();
                store.apply_snapshot(snap.clone())?;
                let index = snap.get_metadata().index;
                if snap.data.is_empty() {
                    // The bootstrap snapshot: membership only, no metadata yet.
                    self.fsm.reset(index);
                } else {
                    self.fsm
                        .restore(&snap.data, index)
                        .map_err(|e| NodeError::Decode(e.to_string()))?;
                }
                self.applied = self.applied.max(index);
                out.restored = Some(index);
            }
            self.apply(ready.take_committed_entries(), &mut out)?;
            if !ready.entries().is_empty() {
                store.append(ready.entries())?;
            }
            if let Some(hs) = ready.hs() {
                store.set_hard_state(hs.clone())?;
            }
            messages.extend(ready.take_persisted_messages());
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                store.set_commit(commit)?;
            }
            messages.extend(light.take_messages());
            self.apply(light.take_committed_entries(), &mut out)?;
            self.raw.advance_apply();
            out.messages.extend(messages);
        }
        // raft-rs waits for a report on every snapshot it sends. The transport cannot confirm
        // delivery, so report it done when handed out: a lost one shows up as rejected appends,
        // and the leader sends it again.
        let snapshot_targets: Vec<u64> = out
            .messages
            .iter()
            .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
            .map(|m| m.to)
            .collect();
        for to in snapshot_targets {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        if self.applied > self.offered_at {
            self.offer_snapshot()?;
        }
        self.maybe_compact()?;
        let role = self.raw.raft.state;
        if role != self.role {
            self.role = role;
            out.role = Some(role);
        }
        Ok(out)
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), NodeError> {
        for entry in entries {
            self.applied = self.applied.max(entry.index);
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {} // a new leader's empty entry
                // Already in the state (restored from a snapshot at or after it): a replay that
                // must not be reported again, or its proposal would get a second verdict.
                EntryType::EntryNormal if entry.index <= self.fsm.applied_index() => {}
                EntryType::EntryNormal => {
                    let applied = match RaftLog::decode(&entry.data[..]) {
                        Ok(log) => self.fsm.apply(&log, entry.index),
                        Err(e) => Applied {
                            result: Err(crate::fsm::OpError::InvalidArgument(format!(
                                "undecodable entry: {e}"
                            ))),
                            events: Vec::new(),
                            join: None,
                        },
                    };
                    let proposal = <[u8; 8]>::try_from(&entry.context[..])
                        .ok()
                        .map(u64::from_be_bytes);
                    out.applied.push(AppliedEntry {
                        index: entry.index,
                        term: entry.term,
                        proposal,
                        recovered: entry.index <= self.recovery_until,
                        applied,
                    });
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    protobuf::Message::merge_from_bytes(&mut cc, &entry.data)
                        .map_err(|e| NodeError::Decode(e.to_string()))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.storage().set_conf_state(cs)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = raft::eraftpb::ConfChangeV2::default();
                    protobuf::Message::merge_from_bytes(&mut cc, &entry.data)
                        .map_err(|e| NodeError::Decode(e.to_string()))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.storage().set_conf_state(cs)?;
                }
            }
            if self.fsm.is_recovering() && entry.index >= self.recovery_until {
                for e in self.fsm.finish_recovery() {
                    out.applied.push(AppliedEntry {
                        index: entry.index,
                        term: entry.term,
                        proposal: None,
                        recovered: false,
                        applied: Applied {
                            result: Ok(()),
                            events: vec![e],
                            join: None,
                        },
                    });
                }
            }
        }
        Ok(())
    }
}

impl<S: LogStore> MetaNode<S> {
    /// Sets how many applied entries after the last snapshot trigger a compaction (0: never).
    pub fn set_snapshot_threshold(&mut self, entries: u64) {
        self.snapshot_threshold = entries;
    }

    /// Persists a snapshot of the applied state and drops the log before it, once enough
    /// entries have been applied since the last one.
    fn maybe_compact(&mut self) -> Result<(), NodeError> {
        let store = self.storage();
        let first = store.first_index()?;
        if self.snapshot_threshold == 0 || self.applied < first + self.snapshot_threshold {
            return Ok(());
        }
        let snap = store.snapshot(self.applied, 0)?;
        if snap.get_metadata().index != self.applied || snap.data.is_empty() {
            return Ok(()); // the offered snapshot is not current yet
        }
        store.compact(snap)?;
        Ok(())
    }

    /// Offers storage a snapshot of the applied state with the current membership, for followers
    /// that need one. The metadata is small, so this runs after every batch of applied entries.
    fn offer_snapshot(&mut self) -> Result<(), NodeError> {
        let index = self.applied;
        let store = self.storage();
        let term = store.term(index)?;
        let mut snap = raft::eraftpb::Snapshot {
            data: self.fsm.snapshot().into(),
            ..Default::default()
        };
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata()
            .set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        store.offer_snapshot(snap);
        self.offered_at = index;
        Ok(())
    }
}

/// Encodes a raft message for the wire (the transport carries these bytes).
pub fn encode_message(m: &Message) -> Vec<u8> {
    protobuf::Message::write_to_bytes(m).expect("a raft message always encodes")
}

/// Decodes a raft message from the wire.
///
/// # Errors
/// [`NodeError::Decode`] for bytes that are not a raft message.
pub fn decode_message(bytes: &[u8]) -> Result<Message, NodeError> {
    let mut m = Message::default();
    protobuf::Message::merge_from_bytes(&mut m, bytes)
        .map_err(|e| NodeError::Decode(e.to_string()))?;
    Ok(m)
}

/// Events of applied entries, in order: what a watcher sees.
pub fn events(applied: &[AppliedEntry]) -> Vec<Event> {
    applied
        .iter()
        .flat_map(|a| a.applied.events.clone())
        .collect()
}

/// Proposals by id that have an answer in `applied`.
pub fn verdicts(applied: &[AppliedEntry]) -> HashMap<u64, Applied> {
    applied
        .iter()
        .filter_map(|a| a.proposal.map(|p| (p, a.applied.clone())))
        .collect()
}
