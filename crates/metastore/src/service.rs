//! The metadata group on a network: a [`MetaNode`] on [`DiskStorage`], driven by one tokio task,
//! talking to its peers over NATS.
//!
//! - **Transport:** a Raft message to node `n` is published on `<ns>.raft.metadata.<n>.accept`:
//!   its protobuf bytes in an envelope of type `RaftMessage`, with a CRC-32C. Each node subscribes
//!   to its own subject, so no extra port is needed.
//! - **Membership:** a seed starts as a group of one and elects itself. A static peer list starts
//!   with every peer as a voter. A joining node sends `RaftJoinRequest` envelopes to
//!   `<ns>.raft.metadata.join` until the leader adds it by configuration change. Beyond
//!   `max_quorum_size` voters, new members join as learners.
//! - **Formation safety:** one namespace never holds two groups. Every member answers bootstrap
//!   probes on `<ns>.raft.metadata.bootstrap` (on a task of its own); a seed with nothing saved
//!   answers, waits a random delay, probes, and writes its group only if nobody answered. A
//!   second live process with a server id is refused ([`MetaError::DuplicateId`]), and so is a
//!   member that lost its Raft state ([`MetaError::LostState`]) until
//!   [`Metastore::remove_member`] removes it.
//! - **Proposals from any node:** the leader proposes directly. A follower forwards a
//!   `PropagatedRequest` envelope to `<ns>.raft.metadata.propagate`, which only the leader
//!   subscribes to, and returns the leader's verdict as a typed [`MetaError`].
//! - **Watch:** [`Metastore::watch`] streams role changes and applied events in apply order.
//! - **Reports:** a `ReportLeader` is never logged. [`Metastore::report_leader`] hands it to the
//!   leader (forwarded like a proposal), and the leader passes it to whoever took
//!   [`Metastore::take_reports`]: the broker, which decides on failover.
//!
//! Raft ids are 64-bit hashes of the server ids (FNV-1a), so a string id names a node everywhere.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use liftbridge_proto::internal::{self, Op, RaftLog};
use natsbridge::envelope::{self, MsgType};
use natsbridge::{Connection, NatsError, Subjects, payload};
use parking_lot::RwLock;
use raft::StateRole;
use raft::eraftpb::ConfState;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::fsm::{Applied, Event, Fsm, OpError};
use crate::node::{self, Input, MetaNode, Output};
use crate::storage::DiskStorage;

/// How a node first finds its group. Ignored when its storage already holds a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Start a new group of one (Liftbridge's `raft.bootstrap.seed`).
    Seed,
    /// Start a new group of exactly these servers (`raft.bootstrap.peers`), this one included.
    Peers(Vec<String>),
    /// Ask an existing group's leader to add this node.
    Join,
}

/// Settings of one metadata node.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// This server's id.
    pub server_id: String,
    /// Where the Raft database lives (`<dir>/raft.redb`).
    pub data_dir: PathBuf,
    /// How to find the group the first time.
    pub bootstrap: Bootstrap,
    /// Subjects and namespace.
    pub subjects: Subjects,
    /// One Raft tick. Default 100 ms: elections after about a second.
    pub tick: Duration,
    /// Deadline of a proposal, forwarded or not. Default 5 s, as Liftbridge.
    pub request_timeout: Duration,
    /// Join requests before giving up. Default 30, one a second, as Liftbridge.
    pub join_attempts: u32,
    /// Voters allowed; members beyond it join as learners. 0: no limit.
    pub max_quorum_size: usize,
    /// Applied entries after the last snapshot that trigger a compaction of the Raft log
    /// (Liftbridge's `raft.snapshot.threshold`). Default 8192; 0 never compacts.
    pub snapshot_threshold: u64,
    /// How long a new seed listens for answers to its bootstrap probe, and the bound of the
    /// random delay before it (half of it). Default 1 s.
    pub probe_window: Duration,
    /// Where refused Raft messages and join requests are logged. Default: nowhere.
    pub logger: slog::Logger,
}

impl MetaConfig {
    /// Settings with Liftbridge's defaults for `server_id` in `data_dir`.
    pub fn new(
        server_id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        bootstrap: Bootstrap,
    ) -> Self {
        MetaConfig {
            server_id: server_id.into(),
            data_dir: data_dir.into(),
            bootstrap,
            subjects: Subjects::default(),
            tick: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            join_attempts: 30,
            max_quorum_size: 0,
            snapshot_threshold: crate::node::DEFAULT_SNAPSHOT_THRESHOLD,
            probe_window: Duration::from_secs(1),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        }
    }
}

/// What can go wrong with the metadata group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The operation was applied and refused.
    #[error(transparent)]
    Op(#[from] OpError),
    /// No leader is known; retry later.
    #[error("no metadata leader")]
    NoLeader,
    /// The proposal did not complete before its deadline (it may still commit).
    #[error("metadata proposal timed out")]
    Timeout,
    /// This node lost leadership while the proposal was pending; retry.
    #[error("lost metadata leadership before the proposal committed")]
    LostLeadership,
    /// The operation cannot be forwarded to a leader (only leaders originate it).
    #[error("{0:?} cannot be proposed from a follower")]
    NotForwardable(Op),
    /// Joining the group failed.
    #[error("could not join the metadata group: {0}")]
    Join(String),
    /// A new seed found another metadata node in this namespace: another seed, or a member of
    /// an existing group (which every member answers for). Two seeds would form two separate
    /// groups that each believe they own the metadata. Nothing was saved.
    #[error(
        "server {0} already runs a metadata group in this namespace; start this one with --join (a member whose data was lost must first be removed from the group: see docs/operations.md)"
    )]
    SecondSeed(String),
    /// Another live process runs with this server id. Two would answer as one Raft voter.
    #[error(
        "another live process runs as server {0} in this namespace; stop it, or give this one another id"
    )]
    DuplicateId(String),
    /// This server is a member of the group but has no Raft state: its data was lost, so it may
    /// have voted in a term and would not remember it. It must be removed from the group
    /// ([`Metastore::remove_member`]) before it can join again.
    #[error(
        "server {0} is a member of the metadata group but has lost its Raft state; remove it from the group (liftbridged --raft-remove-member {0}), then start it again to join (see docs/operations.md)"
    )]
    LostState(String),
    /// The leader refused to remove a member.
    #[error("could not remove the member: {0}")]
    Remove(String),
    /// Storage failed.
    #[error("raft storage: {0}")]
    Storage(String),
    /// NATS failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The node is shut down.
    #[error("the metadata node is shut down")]
    Closed,
}

/// What a watcher sees, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// This node's role changed.
    Role {
        /// Whether it now leads.
        leader: bool,
        /// The term.
        term: u64,
    },
    /// The whole state was replaced by a snapshot from the leader (this node joined, or fell too
    /// far behind). Events before it may be missing: re-read the state with
    /// [`Metastore::with_state`].
    Restored {
        /// The snapshot's Raft index.
        index: u64,
    },
    /// Another seed appeared in this namespace; this node stopped (see [`MetaError::SecondSeed`]).
    SecondSeed {
        /// The other seed's server id.
        server: String,
    },
    /// An applied entry changed the metadata.
    Applied {
        /// The entry's Raft index.
        index: u64,
        /// Replayed from this node's log after a restart: already acted on before the restart.
        /// A broker starts partitions for these once, when recovery ends, not one by one.
        recovered: bool,
        /// What changed.
        event: Event,
    },
}

/// A stable, non-zero Raft id for a server id (64-bit FNV-1a).
pub fn raft_id(server_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// What a report is about.
#[derive(Debug, Clone)]
pub enum Report {
    /// A follower finds a partition leader silent (or a leader gives its partition up).
    Leader(internal::ReportLeaderOp),
    /// A group member finds its coordinator silent.
    Coordinator(internal::ReportConsumerGroupCoordinatorOp),
}

/// A report for the metadata leader to judge: a silent partition leader or group coordinator.
#[derive(Debug)]
pub struct LeaderReport {
    /// The report.
    pub op: Report,
    /// Where the verdict goes: `Ok` when counted (or acted on), or the refusal.
    pub reply: oneshot::Sender<Result<(), OpError>>,
}

enum Command {
    Propose {
        entry: Box<RaftLog>,
        reply: oneshot::Sender<Result<Applied, MetaError>>,
    },
    TransferLeader,
    Shutdown,
}

/// A node's view of the group, for monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The leader's Raft id, if known.
    pub leader: Option<u64>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// The current term.
    pub term: u64,
    /// The highest index known committed.
    pub commit: u64,
    /// The last index in this node's log.
    pub last_index: u64,
    /// The last index applied to the metadata.
    pub applied: u64,
    /// Voting members' Raft ids.
    pub voters: Vec<u64>,
    /// Non-voting members' Raft ids.
    pub learners: Vec<u64>,
}

impl Status {
    /// Every member's Raft id, voters first.
    fn members(&self) -> Vec<u64> {
        self.voters.iter().chain(&self.learners).copied().collect()
    }
}

/// A running metadata node. Cheap to clone.
#[derive(Clone)]
pub struct Metastore {
    cfg: Arc<MetaConfig>,
    conn: Connection,
    /// This process's incarnation (see [`Metastore::start`]).
    nonce: Arc<str>,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<WatchEvent>,
    state: Arc<RwLock<Fsm>>,
    status: Arc<RwLock<Status>>,
    /// Subscribed before the node's task started, so the first watcher sees the whole replay.
    first_watch: Arc<parking_lot::Mutex<Option<broadcast::Receiver<WatchEvent>>>>,
    reports: mpsc::Sender<LeaderReport>,
    reports_rx: Arc<parking_lot::Mutex<Option<mpsc::Receiver<LeaderReport>>>>,
}

impl std::fmt::Debug for Metastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metastore")
            .field("server_id", &self.cfg.server_id)
            .finish_non_exhaustive()
    }
}

impl Metastore {
    /// Opens the Raft database, joins or starts the group as configured, and starts the node's
    /// task on the current tokio runtime.
    ///
    /// # Errors
    /// [`MetaError::Storage`] if the database cannot be opened, [`MetaError::Nats`] if the
    /// subscription fails, [`MetaError::Join`] if no leader added this node in time,
    /// [`MetaError::DuplicateId`] if another live process has this server id,
    /// [`MetaError::SecondSeed`] if a seed with nothing saved finds another metadata node in the
    /// namespace (nothing is saved then), [`MetaError::LostState`] if this node is a member that
    /// lost its Raft state.
    pub async fn start(cfg: MetaConfig, conn: Connection) -> Result<Metastore, MetaError> {
        let id = raft_id(&cfg.server_id);
        // This process's incarnation: it tells this process's probes and answers from those of
        // another process with the same server id.
        let nonce = natsbridge::unique_id();
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| MetaError::Storage(e.to_string()))?;
        // Two live processes with one id would receive each other's Raft messages and answer as
        // one voter: refused before anything else.
        if find_twin(&conn, &cfg.subjects, &cfg.server_id, &nonce).await? {
            return Err(MetaError::DuplicateId(cfg.server_id.clone()));
        }
        let initial = match &cfg.bootstrap {
            Bootstrap::Seed => Some(ConfState::from((vec![id], vec![]))),
            Bootstrap::Peers(peers) => {
                let mut ids: Vec<u64> = peers.iter().map(|p| raft_id(p)).collect();
                if !ids.contains(&id) {
                    ids.push(id);
                }
                Some(ConfState::from((ids, vec![])))
            }
            Bootstrap::Join => None,
        };
        // Opened without a membership: nothing is written before the seed check below.
        let disk = DiskStorage::open(&cfg.data_dir.join("raft.redb"), None)
            .map_err(|e| MetaError::Storage(e.to_string()))?;
        let empty = disk.is_empty();
        let seed = cfg.bootstrap == Bootstrap::Seed;
        let (commands, rx) = mpsc::channel(1024);
        let status = Arc::new(RwLock::new(Status::default()));
        // Answers probes on its own task from now on, a new seed's included: two seeds started
        // together then see each other whichever probes first.
        let answers = answer_probes(
            &conn,
            &cfg,
            &nonce,
            status.clone(),
            empty && seed,
            commands.clone(),
        )
        .await?;
        if empty && seed {
            // A random delay, so that two seeds started together probe one after the other.
            let delay = cfg.probe_window / 2 * (raft_id(&nonce) % 1000) as u32 / 1000;
            tokio::time::sleep(delay).await;
            let refusal = match probe(&conn, &cfg.subjects, &cfg.server_id, &nonce, &cfg).await {
                Ok(found) => found.into_iter().next().map(|a| {
                    if a.id == cfg.server_id {
                        MetaError::DuplicateId(a.id)
                    } else {
                        MetaError::SecondSeed(a.id)
                    }
                }),
                Err(e) => Some(e),
            };
            if let Some(e) = refusal {
                answers.abort();
                return Err(e);
            }
        }
        if empty && let Some(cs) = initial {
            crate::storage::LogStore::apply_snapshot(&disk, node::bootstrap_snapshot(cs))
                .map_err(|e| MetaError::Storage(e.to_string()))?;
        }
        let fresh_joiner = {
            use raft::Storage as _;
            let st = disk
                .initial_state()
                .map_err(|e| MetaError::Storage(e.to_string()))?;
            st.conf_state.voters.is_empty() && st.conf_state.learners.is_empty()
        };
        let mut node = MetaNode::new(id, disk).map_err(|e| MetaError::Storage(e.to_string()))?;
        node.set_snapshot_threshold(cfg.snapshot_threshold);
        let raft_sub = conn
            .subscribe(&cfg.subjects.raft_accept(&id.to_string()))
            .await?;
        let (events, first) = broadcast::channel(4096);
        let (reports, reports_rx) = mpsc::channel(1024);
        let store = Metastore {
            cfg: Arc::new(cfg),
            conn: conn.clone(),
            nonce: Arc::from(nonce.as_str()),
            commands,
            events: events.clone(),
            state: Arc::new(RwLock::new(Fsm::new())),
            status,
            first_watch: Arc::new(parking_lot::Mutex::new(Some(first))),
            reports,
            reports_rx: Arc::new(parking_lot::Mutex::new(Some(reports_rx))),
        };
        let driver = Driver {
            node,
            store: store.clone(),
            proposal_ids: ProposalIds::new(id, raft_id(&store.nonce)),
            pending: HashMap::new(),
            join_sub: None,
            propagate_sub: None,
            remove_sub: None,
            accepted_joins: HashMap::new(),
            published: u64::MAX,
            refused: (0, None),
        };
        tokio::spawn(driver.run(rx, raft_sub));
        if seed {
            tokio::spawn(guard_seed(store.clone()));
        }
        if fresh_joiner && let Err(e) = store.join().await {
            // Not started: nothing of this node may keep running (or answer for its id).
            answers.abort();
            store.shutdown().await;
            return Err(e);
        }
        Ok(store)
    }

    async fn join(&self) -> Result<(), MetaError> {
        let req = internal::RaftJoinRequest {
            node_id: self.cfg.server_id.clone(),
            node_addr: raft_id(&self.cfg.server_id).to_string(),
            nonce: self.nonce.to_string(),
        };
        let mut last = String::from("no leader answered");
        for _ in 0..self.cfg.join_attempts.max(1) {
            if self.status().leader.is_some() {
                return Ok(()); // an earlier request was accepted, and a leader took this node in
            }
            let sent = self
                .conn
                .request(
                    &self.cfg.subjects.raft_join(),
                    payload::encode(&req, false),
                    Duration::from_secs(1),
                )
                .await;
            match sent.map(|m| payload::decode::<internal::RaftJoinResponse>(&m.payload)) {
                Ok(Ok(resp)) if resp.error.is_empty() => {
                    // Accepted: joined once a leader talks to this node.
                    let until = tokio::time::Instant::now() + Duration::from_secs(3);
                    while tokio::time::Instant::now() < until {
                        if self.status().leader.is_some() {
                            return Ok(());
                        }
                        tokio::time::sleep(self.cfg.tick).await;
                    }
                    last = "accepted, but no leader contacted this node".into();
                }
                Ok(Ok(resp)) if resp.permanent => {
                    // A member without Raft state: unless a leader takes this node in after all
                    // (an accepted request answered again by a new leader), an operator must act.
                    let until = tokio::time::Instant::now() + Duration::from_secs(3);
                    while tokio::time::Instant::now() < until {
                        if self.status().leader.is_some() {
                            return Ok(());
                        }
                        tokio::time::sleep(self.cfg.tick).await;
                    }
                    return Err(MetaError::LostState(self.cfg.server_id.clone()));
                }
                Ok(Ok(resp)) => last = resp.error,
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(MetaError::Join(last))
    }

    /// This node's Raft id.
    pub fn raft_id(&self) -> u64 {
        raft_id(&self.cfg.server_id)
    }

    /// Whether this node leads the group.
    pub fn is_leader(&self) -> bool {
        self.status.read().is_leader
    }

    /// The leader's Raft id, if known.
    pub fn leader(&self) -> Option<u64> {
        self.status.read().leader
    }

    /// This node's view of the group.
    pub fn status(&self) -> Status {
        self.status.read().clone()
    }

    /// Reads the current metadata.
    pub fn with_state<T>(&self, f: impl FnOnce(&Fsm) -> T) -> T {
        f(&self.state.read())
    }

    /// Role changes and applied events, in order. The first call gets everything since
    /// [`start`](Metastore::start), the replay of the log included (up to 4096 events buffered);
    /// later calls get events from then on.
    pub fn watch(&self) -> broadcast::Receiver<WatchEvent> {
        self.first_watch
            .lock()
            .take()
            .unwrap_or_else(|| self.events.subscribe())
    }

    /// Proposes an operation and waits for its verdict. On a follower it goes to the leader over
    /// NATS. Waits up to `request_timeout` for a leader when none is known.
    ///
    /// # Errors
    /// The operation's own refusal ([`MetaError::Op`]), or [`MetaError::NoLeader`],
    /// [`MetaError::Timeout`], [`MetaError::LostLeadership`], [`MetaError::Closed`].
    pub async fn propose(&self, entry: RaftLog) -> Result<Applied, MetaError> {
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        loop {
            let status = self.status.read().clone();
            if status.is_leader {
                let (reply, rx) = oneshot::channel();
                self.commands
                    .send(Command::Propose {
                        entry: Box::new(entry),
                        reply,
                    })
                    .await
                    .map_err(|_| MetaError::Closed)?;
                return match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(MetaError::Closed),
                    Err(_) => Err(MetaError::Timeout),
                };
            }
            if status.leader.is_some() {
                return self.forward(entry, deadline).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MetaError::NoLeader);
            }
            tokio::time::sleep(self.cfg.tick).await;
        }
    }

    async fn forward(
        &self,
        entry: RaftLog,
        deadline: tokio::time::Instant,
    ) -> Result<Applied, MetaError> {
        let req = to_propagated(&entry)?;
        self.forward_request(req, deadline).await
    }

    async fn forward_request(
        &self,
        req: internal::PropagatedRequest,
        deadline: tokio::time::Instant,
    ) -> Result<Applied, MetaError> {
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(1));
        let reply = match self
            .conn
            .request(
                &self.cfg.subjects.propagate(),
                payload::encode(&req, false),
                left,
            )
            .await
        {
            Ok(m) => m,
            Err(NatsError::Timeout { .. }) => return Err(MetaError::Timeout),
            // The leader stepped down between our look and its subscription: no leader for now.
            Err(NatsError::NoResponders(_)) => return Err(MetaError::NoLeader),
            Err(e) => return Err(e.into()),
        };
        let resp = payload::decode::<internal::PropagatedResponse>(&reply.payload)
            .map_err(|e| MetaError::Nats(NatsError::InvalidSubject(e.to_string())))?;
        let result = match resp.error {
            Some(e) if e.code != 0 => Err(op_error_from_code(e.code, e.msg)),
            _ => Ok(()),
        };
        result?;
        Ok(Applied {
            result: Ok(()),
            events: Vec::new(),
            join: resp
                .join_consumer_group_resp
                .map(|j| (j.coordinator, j.epoch)),
        })
    }

    /// The reports of silent partition leaders this node receives while it leads the group.
    /// The first call gets the receiver; later calls get `None`. Until it is taken, reports are
    /// queued, and time out if nobody takes them.
    pub fn take_reports(&self) -> Option<mpsc::Receiver<LeaderReport>> {
        self.reports_rx.lock().take()
    }

    /// Reports a silent partition leader to the metadata leader (Liftbridge's `ReportLeader`),
    /// forwarding it when this node does not lead.
    ///
    /// # Errors
    /// The leader's refusal ([`MetaError::Op`]: the partition is unknown, or the leader or epoch
    /// moved on), or [`MetaError::NoLeader`], [`MetaError::Timeout`], [`MetaError::Closed`].
    pub async fn report_leader(&self, op: internal::ReportLeaderOp) -> Result<(), MetaError> {
        self.report(Report::Leader(op)).await
    }

    /// Reports a silent consumer-group coordinator to the metadata leader (Liftbridge's
    /// `ReportConsumerGroupCoordinator`), forwarding it when this node does not lead.
    ///
    /// # Errors
    /// As [`report_leader`](Self::report_leader).
    pub async fn report_coordinator(
        &self,
        op: internal::ReportConsumerGroupCoordinatorOp,
    ) -> Result<(), MetaError> {
        self.report(Report::Coordinator(op)).await
    }

    async fn report(&self, op: Report) -> Result<(), MetaError> {
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        loop {
            let status = self.status.read().clone();
            if status.is_leader {
                return self.deliver_report(op, deadline).await;
            }
            if status.leader.is_some() {
                let mut req = internal::PropagatedRequest::default();
                match op {
                    Report::Leader(op) => {
                        req.op = Op::ReportLeader as i32;
                        req.report_leader_op = Some(op);
                    }
                    Report::Coordinator(op) => {
                        req.op = Op::ReportConsumerGroupCoordinator as i32;
                        req.report_consumer_group_coordinator_op = Some(op);
                    }
                }
                return self.forward_request(req, deadline).await.map(|_| ());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MetaError::NoLeader);
            }
            tokio::time::sleep(self.cfg.tick).await;
        }
    }

    async fn deliver_report(
        &self,
        op: Report,
        deadline: tokio::time::Instant,
    ) -> Result<(), MetaError> {
        let (reply, rx) = oneshot::channel();
        self.reports
            .try_send(LeaderReport { op, reply })
            .map_err(|_| MetaError::Timeout)?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r.map_err(MetaError::Op),
            Ok(Err(_)) => Err(MetaError::Closed),
            Err(_) => Err(MetaError::Timeout),
        }
    }

    /// A planned stop: if this node leads the metadata group, hands leadership to the most
    /// up-to-date other voter and waits, at most `wait`, until it no longer leads. Returns
    /// whether this node has stopped leading (true at once for a node that did not lead). A
    /// single-voter group keeps its leader.
    pub async fn hand_off_leadership(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while self.is_leader() {
            if self.status().voters.len() < 2 || tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Asked again each round: raft-rs drops a transfer that does not finish within an
            // election timeout.
            if self.commands.send(Command::TransferLeader).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50).min(wait)).await;
        }
        true
    }

    /// Removes server `server_id` from the group (asked of the leader over NATS, from any node).
    ///
    /// # Errors
    /// As the free function [`remove_member`].
    pub async fn remove_member(&self, server_id: &str) -> Result<(), MetaError> {
        remove_member(
            &self.conn,
            &self.cfg.subjects,
            server_id,
            self.cfg.request_timeout,
        )
        .await
    }

    /// Stops the node's task.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

/// The subject on which a process answers for its server id (Raft id `id`).
fn alive_subject(subjects: &Subjects, id: u64) -> String {
    format!("{}{id}.alive", subjects.raft_prefix())
}

/// Whether another live process answers for `server_id` (a `ServerInfoRequest` on the id's own
/// subject; nobody listening is answered at once by NATS).
async fn find_twin(
    conn: &Connection,
    subjects: &Subjects,
    server_id: &str,
    nonce: &str,
) -> Result<bool, MetaError> {
    let req = internal::ServerInfoRequest {
        id: server_id.to_owned(),
        nonce: nonce.to_owned(),
    };
    match conn
        .request(
            &alive_subject(subjects, raft_id(server_id)),
            payload::encode(&req, false),
            Duration::from_secs(1),
        )
        .await
    {
        Ok(m) => Ok(payload::decode::<internal::ServerInfoResponse>(&m.payload)
            .is_ok_and(|r| r.nonce != nonce)),
        Err(NatsError::NoResponders(_) | NatsError::Timeout { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Answers, on its own task and until the node stops, the bootstrap probes of other processes
/// and questions for this server id. Every member answers a probe with its group's members; a
/// new seed (`candidate`) answers before it has a group, so that another seed probing meanwhile
/// finds it. Subscribed, and the subscriptions known to the server, when this returns.
async fn answer_probes(
    conn: &Connection,
    cfg: &MetaConfig,
    nonce: &str,
    status: Arc<RwLock<Status>>,
    candidate: bool,
    commands: mpsc::Sender<Command>,
) -> Result<tokio::task::JoinHandle<()>, MetaError> {
    let mut probes = conn.subscribe(&cfg.subjects.raft_bootstrap()).await?;
    let mut twins = conn
        .subscribe(&alive_subject(&cfg.subjects, raft_id(&cfg.server_id)))
        .await?;
    conn.flush().await?;
    let (conn, me, nonce) = (conn.clone(), cfg.server_id.clone(), nonce.to_owned());
    Ok(tokio::spawn(async move {
        loop {
            let (m, always) = tokio::select! {
                _ = commands.closed() => return,
                m = probes.next() => (m, false),
                m = twins.next() => (m, true),
            };
            let Some(m) = m else { return };
            let Some(reply) = m.reply else { continue };
            let asker = payload::decode::<internal::ServerInfoRequest>(&m.payload)
                .map(|r| r.nonce)
                .unwrap_or_default();
            if asker == nonce {
                continue; // this process's own probe
            }
            let members = status.read().members();
            if members.is_empty() && !candidate && !always {
                continue; // a joiner not yet in a group has nothing to say
            }
            let resp = internal::ServerInfoResponse {
                id: me.clone(),
                nonce: nonce.clone(),
                raft_members: members,
                ..Default::default()
            };
            let _ = conn
                .publish(reply.as_str(), payload::encode(&resp, false))
                .await;
        }
    }))
}

/// Probes the namespace for metadata nodes: every answer from another process that comes
/// within the probe window.
async fn probe(
    conn: &Connection,
    subjects: &Subjects,
    me: &str,
    nonce: &str,
    cfg: &MetaConfig,
) -> Result<Vec<internal::ServerInfoResponse>, MetaError> {
    let inbox = format!(
        "{}probe.{}",
        subjects.raft_prefix(),
        natsbridge::unique_id()
    );
    let mut sub = conn.subscribe(&inbox).await?;
    let req = internal::ServerInfoRequest {
        id: me.to_owned(),
        nonce: nonce.to_owned(),
    };
    conn.publish_with(
        &subjects.raft_bootstrap(),
        Some(&inbox),
        natsbridge::Headers::new(),
        payload::encode(&req, false),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + cfg.probe_window;
    let mut found = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(a) = payload::decode::<internal::ServerInfoResponse>(&m.payload)
            && a.nonce != nonce
        {
            found.push(a);
        }
    }
    Ok(found)
}

/// Asks the leader, over NATS, to remove `server_id` from the group; retried until `timeout`
/// while no leader answers or a membership change is in progress. Removing a server that is not
/// a member succeeds.
///
/// # Errors
/// [`MetaError::Remove`] with the leader's refusal (it does not remove itself), or the last
/// answer when the time is up ([`MetaError::NoLeader`] if none came); [`MetaError::Nats`].
pub async fn remove_member(
    conn: &Connection,
    subjects: &Subjects,
    server_id: &str,
    timeout: Duration,
) -> Result<(), MetaError> {
    let req = internal::RaftJoinRequest {
        node_id: server_id.to_owned(),
        node_addr: raft_id(server_id).to_string(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = MetaError::NoLeader;
    while tokio::time::Instant::now() < deadline {
        let sent = conn
            .request(
                &remove_subject(subjects),
                payload::encode(&req, false),
                Duration::from_secs(1),
            )
            .await;
        match sent.map(|m| payload::decode::<internal::RaftJoinResponse>(&m.payload)) {
            Ok(Ok(resp)) if resp.error.is_empty() => return Ok(()),
            Ok(Ok(resp)) if resp.permanent => return Err(MetaError::Remove(resp.error)),
            Ok(Ok(resp)) => last = MetaError::Remove(resp.error),
            Ok(Err(e)) => last = MetaError::Remove(e.to_string()),
            Err(NatsError::NoResponders(_) | NatsError::Timeout { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Requests to remove a member, answered by the leader.
fn remove_subject(subjects: &Subjects) -> String {
    format!("{}remove", subjects.raft_prefix())
}

/// A seed's watch for another group in its namespace, after it formed its own: every 10 s or
/// so (a random part keeps two seeds' checks apart), it probes; an answer from a member of a
/// group with none of this group's members, or from a second process with this server id, stops
/// this node and tells watchers. A backstop: a new seed is checked before it writes anything.
async fn guard_seed(store: Metastore) {
    let me = store.cfg.server_id.clone();
    loop {
        let jitter = Duration::from_millis(raft_id(&natsbridge::unique_id()) % 2000);
        tokio::select! {
            _ = store.commands.closed() => return,
            _ = tokio::time::sleep(Duration::from_secs(9) + jitter) => {}
        }
        let Ok(found) = probe(
            &store.conn,
            &store.cfg.subjects,
            &me,
            &store.nonce,
            &store.cfg,
        )
        .await
        else {
            continue;
        };
        let mine = store.status.read().members();
        let foreign = found.into_iter().find(|a| {
            a.id == me
                || (!a.raft_members.is_empty()
                    && !mine.is_empty()
                    && !a.raft_members.iter().any(|m| mine.contains(m)))
        });
        if let Some(other) = foreign {
            let _ = store
                .events
                .send(WatchEvent::SecondSeed { server: other.id });
            store.shutdown().await;
            return;
        }
    }
}

/// gRPC status codes, as `PropagatedResponse.error.code` carries them.
fn op_error_code(e: &OpError) -> u32 {
    match e {
        OpError::InvalidArgument(_) => 3,
        OpError::NotFound(_) => 5,
        OpError::AlreadyExists(_) => 6,
        OpError::FailedPrecondition(_) => 9,
    }
}

fn op_error_from_code(code: u32, msg: String) -> MetaError {
    if code == 14 {
        // The leader could not judge it now (no handler, or it stepped down): retry later.
        return MetaError::NoLeader;
    }
    MetaError::Op(match code {
        3 => OpError::InvalidArgument(msg),
        5 => OpError::NotFound(msg),
        6 => OpError::AlreadyExists(msg),
        _ => OpError::FailedPrecondition(msg),
    })
}

/// A log entry as the request a follower forwards (only ops a follower may originate).
fn to_propagated(e: &RaftLog) -> Result<internal::PropagatedRequest, MetaError> {
    let op = Op::try_from(e.op).unwrap_or(Op::CreateStream);
    let mut r = internal::PropagatedRequest {
        op: e.op,
        ..Default::default()
    };
    match op {
        Op::CreateStream => r.create_stream_op = e.create_stream_op.clone(),
        Op::ShrinkIsr => r.shrink_isr_op = e.shrink_isr_op.clone(),
        Op::ExpandIsr => r.expand_isr_op = e.expand_isr_op.clone(),
        Op::DeleteStream => r.delete_stream_op = e.delete_stream_op.clone(),
        Op::PauseStream => r.pause_stream_op = e.pause_stream_op.clone(),
        Op::ResumeStream => r.resume_stream_op = e.resume_stream_op.clone(),
        Op::SetStreamReadonly => r.set_stream_readonly_op = e.set_stream_readonly_op.clone(),
        Op::JoinConsumerGroup => r.join_consumer_group_op = e.join_consumer_group_op.clone(),
        Op::LeaveConsumerGroup => r.leave_consumer_group_op = e.leave_consumer_group_op.clone(),
        Op::CreateConsumerGroup => r.create_consumer_group_op = e.create_consumer_group_op.clone(),
        other => return Err(MetaError::NotForwardable(other)),
    }
    Ok(r)
}

fn from_propagated(r: internal::PropagatedRequest) -> RaftLog {
    RaftLog {
        op: r.op,
        create_stream_op: r.create_stream_op,
        shrink_isr_op: r.shrink_isr_op,
        expand_isr_op: r.expand_isr_op,
        delete_stream_op: r.delete_stream_op,
        pause_stream_op: r.pause_stream_op,
        resume_stream_op: r.resume_stream_op,
        set_stream_readonly_op: r.set_stream_readonly_op,
        join_consumer_group_op: r.join_consumer_group_op,
        leave_consumer_group_op: r.leave_consumer_group_op,
        create_consumer_group_op: r.create_consumer_group_op,
        ..Default::default()
    }
}

/// Ids for this process's proposals. An id travels in its entry's context, and the verdict of
/// every applied entry goes to the waiter with the entry's id; a leader also applies entries
/// that an earlier leader (another node, or an earlier run of this one) proposed. So ids must be
/// unique per node and incarnation, not only per process: the top 32 bits mix the node's Raft
/// id with a nonce drawn at start, the low 32 bits count.
struct ProposalIds {
    tag: u64,
    counter: u32,
}

impl ProposalIds {
    fn new(raft_id: u64, nonce: u64) -> ProposalIds {
        let mixed = splitmix(raft_id ^ splitmix(nonce));
        ProposalIds {
            tag: mixed & !u64::from(u32::MAX),
            counter: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        self.tag | u64::from(self.counter)
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Who waits for a proposal's verdict.
enum Waiter {
    Local(oneshot::Sender<Result<Applied, MetaError>>),
    Remote(String),
}

struct Driver {
    node: MetaNode<DiskStorage>,
    store: Metastore,
    proposal_ids: ProposalIds,
    pending: HashMap<u64, Waiter>,
    join_sub: Option<natsbridge::connection::Subscriber>,
    propagate_sub: Option<natsbridge::connection::Subscriber>,
    remove_sub: Option<natsbridge::connection::Subscriber>,
    /// Joins this leader accepted: the joiner's Raft id and process incarnation. A member that
    /// asks again from the same incarnation is a retry; from another, it lost its Raft state.
    accepted_joins: HashMap<u64, String>,
    /// The applied index of the state last published to readers.
    published: u64,
    /// Raft messages refused so far, and when that was last logged.
    refused: (u64, Option<std::time::Instant>),
}

async fn next_or_pending(
    sub: &mut Option<natsbridge::connection::Subscriber>,
) -> Option<natsbridge::connection::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut raft_sub: natsbridge::connection::Subscriber,
    ) {
        let mut tick = tokio::time::interval(self.store.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let out = tokio::select! {
                _ = tick.tick() => self.node.handle(Input::Tick),
                cmd = commands.recv() => match cmd {
                    Some(Command::Propose { entry, reply }) => self.propose(entry, Waiter::Local(reply)),
                    Some(Command::TransferLeader) => self.node.handle(Input::TransferLeader),
                    Some(Command::Shutdown) | None => break,
                },
                Some(m) = raft_sub.next() => {
                    let decoded = envelope::decode(&m.payload, MsgType::RaftMessage)
                        .map_err(|e| e.to_string())
                        .and_then(|raw| node::decode_message(raw).map_err(|e| e.to_string()));
                    match decoded {
                        Ok(msg) => self.node.handle(Input::Message(Box::new(msg))),
                        Err(_) => continue, // not a well-formed raft message: ignore it
                    }
                }
                Some(m) = next_or_pending(&mut self.join_sub) => self.join(m).await,
                Some(m) = next_or_pending(&mut self.remove_sub) => self.remove(m).await,
                Some(m) = next_or_pending(&mut self.propagate_sub) => match (m.reply.clone(), payload::decode::<internal::PropagatedRequest>(&m.payload)) {
                    (Some(reply), Ok(req))
                        if req.op == Op::ReportLeader as i32
                            || req.op == Op::ReportConsumerGroupCoordinator as i32 =>
                    {
                        self.forwarded_report(req, reply.to_string());
                        continue;
                    }
                    (Some(reply), Ok(req)) => self.propose(Box::new(from_propagated(req)), Waiter::Remote(reply.to_string())),
                    _ => continue,
                },
            };
            match out {
                Ok(out) => self.act(out).await,
                Err(node::NodeError::Refused(reason)) => self.log_refused(&reason),
                // A proposal raft-rs refused (e.g. while stepping down): the waiter was told.
                Err(_) => continue,
            }
        }
    }

    /// Logs a refused Raft message at WARN, at most once a second, with the count so far.
    fn log_refused(&mut self, reason: &str) {
        self.refused.0 += 1;
        if self
            .refused
            .1
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            slog::warn!(self.store.cfg.logger, "refused a raft message";
                "reason" => reason, "refused_total" => self.refused.0);
            self.refused.1 = Some(std::time::Instant::now());
        }
    }

    /// A report forwarded by another node: judged by the report handler, answered when it decides.
    fn forwarded_report(&self, req: internal::PropagatedRequest, reply: String) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + store.cfg.request_timeout;
            let report = match (
                req.report_leader_op,
                req.report_consumer_group_coordinator_op,
            ) {
                (Some(op), _) => Some(Report::Leader(op)),
                (None, Some(op)) => Some(Report::Coordinator(op)),
                (None, None) => None,
            };
            let result = match report {
                Some(op) => store.deliver_report(op, deadline).await,
                None => Err(MetaError::Op(OpError::InvalidArgument(
                    "a report without its body".into(),
                ))),
            };
            let error = match result {
                Ok(()) => None,
                Err(MetaError::Op(e)) => Some(internal::Error {
                    code: op_error_code(&e),
                    msg: e.to_string(),
                }),
                Err(e) => Some(internal::Error {
                    code: 14, // Unavailable
                    msg: e.to_string(),
                }),
            };
            let resp = internal::PropagatedResponse {
                op: req.op,
                error,
                join_consumer_group_resp: None,
            };
            let _ = store
                .conn
                .publish(&reply, payload::encode(&resp, false))
                .await;
        });
    }

    fn propose(&mut self, entry: Box<RaftLog>, waiter: Waiter) -> Result<Output, node::NodeError> {
        let id = self.proposal_ids.next();
        match self.node.handle(Input::Propose { id, entry }) {
            Ok(out) => {
                self.pending.insert(id, waiter);
                Ok(out)
            }
            Err(e) => {
                if let Waiter::Local(tx) = waiter {
                    let _ = tx.send(Err(MetaError::LostLeadership));
                }
                Err(e)
            }
        }
    }

    async fn join(
        &mut self,
        m: natsbridge::connection::Message,
    ) -> Result<Output, node::NodeError> {
        let Some(reply) = m.reply.clone() else {
            return Ok(Output::default());
        };
        let answer = |error: String| {
            payload::encode(
                &internal::RaftJoinResponse {
                    error,
                    ..Default::default()
                },
                false,
            )
        };
        let req = match payload::decode::<internal::RaftJoinRequest>(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                let _ = self.store.conn.publish(&reply, answer(e.to_string())).await;
                return Ok(Output::default());
            }
        };
        let id = raft_id(&req.node_id);
        slog::info!(self.store.cfg.logger, "join request"; "server" => &req.node_id,
            "raft_id" => id, "member" => self.node.is_member(id));
        if self.node.is_member(id) {
            // Only a node with no membership saved asks to join. From the incarnation whose
            // join this leader accepted, it is a retry; otherwise the member lost its Raft
            // state (its vote among it), and letting it in could make it vote twice in a term.
            if self.accepted_joins.get(&id) == Some(&req.nonce) {
                let _ = self.store.conn.publish(&reply, answer(String::new())).await;
            } else {
                slog::warn!(self.store.cfg.logger, "refused a join from a member without raft state";
                    "server" => &req.node_id, "raft_id" => id);
                let refusal = internal::RaftJoinResponse {
                    error: MetaError::LostState(req.node_id.clone()).to_string(),
                    permanent: true,
                };
                let _ = self
                    .store
                    .conn
                    .publish(&reply, payload::encode(&refusal, false))
                    .await;
            }
            return Ok(Output::default());
        }
        if self.node.has_pending_conf_change() {
            let busy = "a membership change is in progress; retry".to_string();
            let _ = self.store.conn.publish(&reply, answer(busy)).await;
            return Ok(Output::default());
        }
        let voters = {
            use raft::Storage as _;
            self.node
                .storage()
                .initial_state()
                .map(|s| s.conf_state.voters.len())
                .unwrap_or(0)
        };
        let max = self.store.cfg.max_quorum_size;
        let learner = max > 0 && voters >= max;
        let result = self.node.handle(Input::AddMember { node: id, learner });
        let error = match &result {
            Ok(_) => {
                self.accepted_joins.insert(id, req.nonce);
                String::new()
            }
            Err(e) => e.to_string(),
        };
        let _ = self.store.conn.publish(&reply, answer(error)).await;
        result
    }

    /// An operator's request to remove a member (a `RaftJoinRequest` naming it).
    async fn remove(
        &mut self,
        m: natsbridge::connection::Message,
    ) -> Result<Output, node::NodeError> {
        let Some(reply) = m.reply.clone() else {
            return Ok(Output::default());
        };
        let answer = |error: String, permanent: bool| {
            payload::encode(&internal::RaftJoinResponse { error, permanent }, false)
        };
        let req = match payload::decode::<internal::RaftJoinRequest>(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                let _ = self
                    .store
                    .conn
                    .publish(&reply, answer(e.to_string(), true))
                    .await;
                return Ok(Output::default());
            }
        };
        let id = raft_id(&req.node_id);
        slog::info!(self.store.cfg.logger, "member removal request"; "server" => &req.node_id,
            "raft_id" => id, "member" => self.node.is_member(id));
        let (error, permanent) = if !self.node.is_member(id) {
            (String::new(), false) // not (or no longer) a member: done
        } else if id == self.node.id() {
            (
                format!(
                    "server {} leads the metadata group; stop it first, then remove it from another member",
                    req.node_id
                ),
                true,
            )
        } else if self.node.has_pending_conf_change() {
            ("a membership change is in progress; retry".into(), false)
        } else {
            let result = self.node.handle(Input::RemoveMember { node: id });
            let error = match &result {
                Ok(_) => {
                    self.accepted_joins.remove(&id);
                    String::new()
                }
                Err(e) => e.to_string(),
            };
            let _ = self.store.conn.publish(&reply, answer(error, false)).await;
            return result;
        };
        let _ = self
            .store
            .conn
            .publish(&reply, answer(error, permanent))
            .await;
        Ok(Output::default())
    }

    async fn act(&mut self, out: Output) {
        for m in &out.messages {
            let subject = self.store.cfg.subjects.raft_accept(&m.to.to_string());
            // Raft tolerates loss: a failed publish is a lost message, retried by the protocol.
            let _ = self
                .store
                .conn
                .publish(
                    &subject,
                    envelope::encode(MsgType::RaftMessage, &node::encode_message(m), true),
                )
                .await;
        }
        // Entries or a restored snapshot: publish the state whenever the applied index moves.
        if self.node.applied_index() != self.published {
            *self.store.state.write() = self.node.fsm().clone();
            self.published = self.node.applied_index();
        }
        if let Some(index) = out.restored {
            let _ = self.store.events.send(WatchEvent::Restored { index });
        }
        for a in out.applied {
            for e in &a.applied.events {
                let _ = self.store.events.send(WatchEvent::Applied {
                    index: a.index,
                    recovered: a.recovered,
                    event: e.clone(),
                });
            }
            let Some(waiter) = a.proposal.and_then(|p| self.pending.remove(&p)) else {
                continue;
            };
            match waiter {
                Waiter::Local(tx) => {
                    let _ = tx.send(
                        a.applied
                            .result
                            .clone()
                            .map(|()| a.applied.clone())
                            .map_err(MetaError::Op),
                    );
                }
                Waiter::Remote(reply) => {
                    let resp = internal::PropagatedResponse {
                        op: 0,
                        error: a.applied.result.as_ref().err().map(|e| internal::Error {
                            code: op_error_code(e),
                            msg: e.to_string(),
                        }),
                        join_consumer_group_resp: a.applied.join.clone().map(
                            |(coordinator, epoch)| {
                                internal::propagated_response::JoinConsumerGroupResponse {
                                    coordinator,
                                    epoch,
                                }
                            },
                        ),
                    };
                    let _ = self
                        .store
                        .conn
                        .publish(&reply, payload::encode(&resp, false))
                        .await;
                }
            }
        }
        let is_leader = self.node.role() == StateRole::Leader;
        let (commit, last_index, conf) = {
            use raft::Storage as _;
            let store = self.node.storage();
            let state = store.initial_state().unwrap_or_default();
            (
                state.hard_state.commit,
                store.last_index().unwrap_or(0),
                state.conf_state,
            )
        };
        let status = Status {
            leader: self.node.leader(),
            is_leader,
            term: self.node.term(),
            commit,
            last_index,
            applied: self.node.applied_index(),
            voters: conf.voters,
            learners: conf.learners,
        };
        let term = status.term;
        *self.store.status.write() = status;
        if let Some(role) = out.role {
            let _ = self.store.events.send(WatchEvent::Role {
                leader: role == StateRole::Leader,
                term,
            });
            if role == StateRole::Leader {
                let subjects = &self.store.cfg.subjects;
                self.join_sub = self.store.conn.subscribe(&subjects.raft_join()).await.ok();
                self.propagate_sub = self.store.conn.subscribe(&subjects.propagate()).await.ok();
                self.remove_sub = self
                    .store
                    .conn
                    .subscribe(&remove_subject(subjects))
                    .await
                    .ok();
            } else {
                self.join_sub = None;
                self.propagate_sub = None;
                self.remove_sub = None;
                // Proposals made as leader may never commit now; their callers retry.
                for (_, w) in self.pending.drain() {
                    if let Waiter::Local(tx) = w {
                        let _ = tx.send(Err(MetaError::LostLeadership));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new metadata leader applies the old leader's leftover entries: their ids must not
    /// match its own waiters', whichever node or run proposed them.
    #[test]
    fn proposal_ids_differ_between_nodes_and_runs() {
        let mut seen = std::collections::HashSet::new();
        for (node, nonce) in [(1, 7), (2, 7), (1, 8), (2, 9)] {
            let mut ids = ProposalIds::new(raft_id(&format!("n{node}")), nonce);
            for _ in 0..1000 {
                assert!(
                    seen.insert(ids.next()),
                    "node {node} run {nonce}: an id seen before"
                );
            }
        }
    }
}
