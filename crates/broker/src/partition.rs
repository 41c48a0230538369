//! One partition on this broker: its commit log and, while it leads, the tasks that record the
//! partition's NATS subject into the log, acknowledge publishers, pause it when idle and apply
//! retention and compaction.
//!
//! # Invariants
//! - Only the leader appends: its ingest task, and publishers appending in place
//!   ([`Partition::append_in_place`]) the publishes this broker took itself. Appends take the
//!   partition's write lock one at a time, so each source's messages get offsets in its own
//!   order: NATS delivery order, a publisher's order.
//! - A publish this broker takes goes to its own leading partitions on the subject in process,
//!   and to NATS (unless the embedded server says nobody else listens) on the `streams`
//!   connection, which has echo off: each local partition gets it exactly once. This holds only
//!   when no local partition on the subject belongs to a stream group; otherwise the publish
//!   goes through NATS, whose queue group picks one member.
//! - On a follower, only the follower task appends, copying the leader's records byte for byte
//!   (`replica.rs`).
//! - The high watermark only moves forward, and only as the commit rule of
//!   `replication::Leader` allows: every ISR member holds the offset and the ISR has at least
//!   min ISR members. A follower adopts its leader's high watermark.
//! - An ack with policy ALL is sent only once the high watermark covers its offset; LEADER acks
//!   after the write; NONE never (error acks are always sent).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use commitlog::{Log, LogOptions, Retention};
use futures_util::{FutureExt, StreamExt};
use liftbridge_proto::api::{self, AckPolicy, ack};
use liftbridge_proto::internal::{self, Op, RaftLog};
use natsbridge::envelope::{self, MsgType};
use natsbridge::{Connection, Subscriber, payload};
use parking_lot::Mutex;
use slog::{Logger, error, info, warn};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{BrokerConfig, StreamSettings};
use crate::embedded::{LocalSubscribe, LocalSubscription, NatsMessage};
use crate::error::{BrokerError, Result};

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// When something first and last happened (ns; 0 = never), as FetchPartitionMetadata reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTimes {
    /// The first time.
    pub first: i64,
    /// The latest time.
    pub latest: i64,
}

impl EventTimes {
    pub(crate) fn touch(&mut self, now: i64) {
        if self.first == 0 {
            self.first = now;
        }
        self.latest = now;
    }

    pub(crate) fn to_api(self) -> api::PartitionEventTimestamps {
        api::PartitionEventTimestamps {
            first_timestamp: self.first,
            latest_timestamp: self.latest,
        }
    }
}

/// A partition's event times.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub received: EventTimes,
    pub paused: EventTimes,
    pub readonly: EventTimes,
}

/// What the metadata says this broker should do with a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Role {
    /// Whether this broker leads it.
    pub leader: bool,
    /// The leader's server id.
    pub leader_id: String,
    pub leader_epoch: u64,
    pub paused: bool,
    pub replicas: Vec<String>,
    pub isr: Vec<String>,
    /// The partition epoch of `isr` (taken in place with it, as the ISR).
    pub epoch: u64,
    pub group: String,
}

impl Role {
    /// Whether the partition runs the same way under both: everything but the ISR, which a
    /// running leader takes in place.
    pub(crate) fn same_run(&self, o: &Role) -> bool {
        self.leader == o.leader
            && self.leader_id == o.leader_id
            && self.leader_epoch == o.leader_epoch
            && self.paused == o.paused
            && self.replicas == o.replicas
            && self.group == o.group
    }
}

/// What the ingest task and acks need from the broker.
pub(crate) struct Ctx {
    pub cfg: Arc<BrokerConfig>,
    pub local_acks: Arc<crate::acks::LocalAcks>,
    pub streams_conn: Connection,
    pub acks_conn: Connection,
    /// Fetches, epoch questions and notifications between replicas.
    pub repl_conn: Connection,
    pub subjects: natsbridge::Subjects,
    pub meta: metastore::service::Metastore,
    pub logger: Logger,
    /// The disk-full guard of the data folder.
    pub disk: crate::disk::DiskGuard,
    /// The names of the connections the ingest publishes on (acks, replication): with
    /// embedded NATS they never wait for an ingest queue, which would deadlock.
    pub never_wait: Vec<String>,
    /// Counters and timings for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The (stream, partition, leader epoch)s this process has led: a leader epoch found in the
    /// log and not here was led by an earlier run, which may have lost an unsynced tail.
    pub led: Mutex<std::collections::HashSet<(String, i32, u64)>>,
}

impl Ctx {
    /// Proposes a metadata change and waits for its verdict, timing it.
    pub(crate) async fn propose(
        &self,
        entry: liftbridge_proto::internal::RaftLog,
    ) -> std::result::Result<metastore::fsm::Applied, metastore::service::MetaError> {
        let started = Instant::now();
        let out = self.meta.propose(entry).await;
        self.metrics.proposed(started.elapsed().as_secs_f64());
        out
    }

    /// The largest record a leader accepts: one that a follower's fetch can carry. A fetch
    /// answer is one NATS message (the envelope, epoch and high watermark, then whole records),
    /// so a record must fit in NATS's max payload with that header, and within
    /// `clustering.replication.max.bytes`.
    pub(crate) fn record_budget(&self) -> u64 {
        const REPLY_HEADER: usize = natsbridge::envelope::CRC_HEADER_LEN + 16;
        let payload = self
            .repl_conn
            .client()
            .max_payload()
            .saturating_sub(REPLY_HEADER);
        self.cfg.replication_max_bytes.min(payload as u64)
    }
}

/// One partition's log and its running tasks.
pub(crate) struct Partition {
    pub stream: String,
    pub id: i32,
    /// The stream's subject (acks report it as `partitionSubject`).
    pub stream_subject: String,
    /// The subject this partition records.
    pub subject: String,
    pub settings: StreamSettings,
    pub log: Log,
    pub role: Role,
    pub stats: Arc<Mutex<Stats>>,
    pub subscribers: Arc<AtomicUsize>,
    /// The active subscription of each consumer group, for fencing by group epoch.
    pub(crate) group_subs: crate::groups::GroupSubscribers,
    /// ALL-policy acks waiting for the high watermark, by offset.
    pending: Mutex<BTreeMap<i64, api::Ack>>,
    /// The leader's commit state (created when it starts leading).
    pub(crate) commit: Mutex<Option<replication::Leader>>,
    /// The ISR last taken from the metadata.
    isr: Mutex<Vec<String>>,
    /// This partition's series in `/metrics`.
    pub(crate) counters: crate::metrics::PartitionCounters,
    /// Leader: followers that fetched everything and wait for a notification.
    pub(crate) waiting: Mutex<std::collections::BTreeSet<String>>,
    /// Follower: the leader's notification that data arrived.
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Leader: the ingest task's queue for publishes this broker took itself.
    local: std::sync::OnceLock<mpsc::Sender<LocalPublish>>,
    /// The bytes that queue may hold.
    local_bytes: crate::budget::ByteBudget,
    /// Held for each append, so that the ingest task and publishers appending in place
    /// ([`Partition::append_in_place`]) take turns.
    write: Mutex<()>,
    /// Set before a stop of the broker itself: the ingest task records what it has received
    /// before it ends.
    drain_on_stop: std::sync::atomic::AtomicBool,
    /// For an encrypted stream: the master key (to open values) and this leader's sealer.
    pub(crate) crypto: Option<Crypto>,
}

/// An encrypted partition's keys.
pub(crate) struct Crypto {
    pub(crate) master: crate::encryption::MasterKey,
    sealer: crate::encryption::Sealer,
}

/// A publish this broker took, handed to one of its own leading partitions without NATS.
pub(crate) struct LocalPublish {
    pub subject: String,
    pub envelope: api::Message,
    /// The size of the envelope as NATS would have carried it.
    pub size: usize,
    /// Its share of the partition's queue budget while it waits in the queue.
    pub share: Option<crate::budget::Share>,
    /// Whether it also went to NATS, where another broker (a new leader of this partition)
    /// may store it: then this partition may not say that it was not stored.
    pub to_nats: bool,
}

impl Clone for LocalPublish {
    /// A copy for another partition, which takes its own share of that partition's budget.
    fn clone(&self) -> Self {
        LocalPublish {
            subject: self.subject.clone(),
            envelope: self.envelope.clone(),
            size: self.size,
            share: None,
            to_nats: self.to_nats,
        }
    }
}

/// How many local publishes wait for a partition's ingest task before publishers wait.
const LOCAL_QUEUE: usize = 4096;
/// How many bytes of local publishes wait for a partition's ingest task before publishers
/// wait: the count alone would allow 4096 of the largest messages.
const LOCAL_QUEUE_BYTES: usize = 64 * 1024 * 1024;

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.stream, self.id)
    }
}

/// Options of a partition's log under these stream settings.
pub(crate) fn log_options(s: &StreamSettings, sync: commitlog::SyncPolicy) -> LogOptions {
    let positive = |v: i64| (v > 0).then_some(v as u64);
    LogOptions {
        segment_max_bytes: s.segment_max_bytes.max(0) as u64,
        segment_max_age: (!s.segment_max_age.is_zero()).then_some(s.segment_max_age),
        sync,
        retention: Retention {
            max_bytes: positive(s.retention_max_bytes),
            max_messages: positive(s.retention_max_messages),
            max_age: (!s.retention_max_age.is_zero()).then_some(s.retention_max_age),
        },
        ..LogOptions::default()
    }
}

/// The data needed to open a partition.
pub(crate) struct Spec<'a> {
    pub stream: &'a str,
    pub id: i32,
    pub stream_subject: &'a str,
    pub settings: StreamSettings,
    pub role: Role,
    pub readonly: bool,
    pub stats: Arc<Mutex<Stats>>,
}

impl Partition {
    /// Opens the log in `dir` and, if this broker leads and the partition is not paused, starts
    /// recording its subject.
    pub(crate) async fn open(
        spec: Spec<'_>,
        dir: std::path::PathBuf,
        ctx: &Arc<Ctx>,
    ) -> Result<Arc<Partition>> {
        // An encrypted partition needs the master key, to lead (seal) and to follow (its
        // readers open what it copies): without it, this broker does not open it at all.
        let crypto = if spec.settings.encryption {
            let master = ctx.cfg.encryption_key.clone().ok_or_else(|| {
                BrokerError::FailedPrecondition(format!(
                    "stream {} is encrypted and LIFTBRIDGE_ENCRYPTION_KEY is not set on this \
                     server: it cannot lead or follow partition {}",
                    spec.stream, spec.id
                ))
            })?;
            let sealer = crate::encryption::Sealer::new(&master)
                .map_err(|e| BrokerError::internal("creating the partition's data key", e))?;
            Some(Crypto { master, sealer })
        } else {
            None
        };
        let opts = LogOptions {
            on_sync: Some(ctx.metrics.fsyncs()),
            ..log_options(&spec.settings, ctx.cfg.sync)
        };
        let log = tokio::task::spawn_blocking(move || Log::open(dir, opts))
            .await
            .map_err(|e| BrokerError::internal("opening a log", e))?
            .map_err(|e| BrokerError::internal("opening a log", e))?;
        let report = log.recovery();
        if !report.repaired.is_empty() || !report.removed_files.is_empty() {
            warn!(ctx.logger, "recovered partition log";
                "stream" => spec.stream, "partition" => spec.id,
                "repaired_segments" => report.repaired.len(),
                "truncated_bytes" => report.truncated_bytes());
        }
        log.set_readonly(spec.readonly);
        let (stop, _) = watch::channel(false);
        let isr = spec.role.isr.clone();
        let p = Arc::new(Partition {
            stream: spec.stream.to_owned(),
            id: spec.id,
            stream_subject: spec.stream_subject.to_owned(),
            subject: natsbridge::partition_subject(spec.stream_subject, spec.id),
            settings: spec.settings,
            log,
            role: spec.role,
            stats: spec.stats,
            counters: ctx.metrics.partition(spec.stream, spec.id),
            subscribers: Arc::new(AtomicUsize::new(0)),
            group_subs: Default::default(),
            pending: Mutex::new(BTreeMap::new()),
            commit: Mutex::new(None),
            isr: Mutex::new(isr),
            waiting: Mutex::new(Default::default()),
            wake: tokio::sync::Notify::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
            local: std::sync::OnceLock::new(),
            local_bytes: crate::budget::ByteBudget::new(LOCAL_QUEUE_BYTES),
            write: Mutex::new(()),
            drain_on_stop: std::sync::atomic::AtomicBool::new(false),
            crypto,
        });
        if p.role.paused {
            p.log
                .close()
                .map_err(|e| BrokerError::internal("closing a paused log", e))?;
            return Ok(p);
        }
        let checkpoints = tokio::spawn(checkpointer(
            p.clone(),
            ctx.cfg.hw_checkpoint_interval,
            ctx.logger.clone(),
            p.stop.subscribe(),
        ));
        p.tasks.lock().push(checkpoints);
        if p.role.leader {
            p.start_leading(ctx).await?;
        } else {
            let follow = tokio::spawn(crate::replica::follow(
                p.clone(),
                ctx.clone(),
                p.stop.subscribe(),
            ));
            // Followers apply retention, compaction and segment roll by age as the leader does,
            // so that every replica's disk stays bounded.
            let clean = tokio::spawn(cleaner(p.clone(), ctx.logger.clone(), p.stop.subscribe()));
            p.tasks.lock().extend([follow, clean]);
        }
        Ok(p)
    }

    /// Takes a new ISR, at partition epoch `epoch`, from the metadata. A leader commits with it
    /// at once.
    pub(crate) async fn update_isr(&self, ctx: &Ctx, isr: &[String], epoch: u64) {
        if let Some(l) = self.commit.lock().as_mut() {
            l.set_partition_epoch(epoch);
        }
        let before = {
            let mut seen = self.isr.lock();
            if seen.as_slice() == isr {
                return;
            }
            std::mem::replace(&mut *seen, isr.to_vec()).len()
        };
        let min = self.settings.min_isr.max(1) as usize;
        if self.role.leader && isr.len() < min && before >= min {
            warn!(ctx.logger, "partition below min ISR: nothing commits until followers catch up";
                "stream" => &self.stream, "partition" => self.id, "isr" => ?isr, "min_isr" => min);
        } else if self.role.leader && isr.len() >= min && before < min {
            info!(ctx.logger, "partition back at min ISR"; "stream" => &self.stream,
                "partition" => self.id, "isr" => ?isr);
        }
        let advanced = match self.commit.lock().as_mut() {
            Some(l) => l.on_isr(isr.iter().cloned()),
            None => None,
        };
        if let Some(hw) = advanced {
            let due = self.advance_hw(ctx, hw);
            send_acks(ctx, due).await;
            crate::replica::notify_followers(self, ctx, None).await;
        }
    }

    async fn start_leading(self: &Arc<Self>, ctx: &Arc<Ctx>) -> Result<()> {
        let generation = (self.stream.clone(), self.id, self.role.leader_epoch);
        if self.role.replicas.len() > 1
            && self.log.last_leader_epoch() == Some(self.role.leader_epoch)
            && !ctx.led.lock().contains(&generation)
        {
            // This epoch was led by an earlier run of this broker, which may have lost records
            // it never synced that followers copied. Writing again at the same offsets and
            // epoch would let them keep the old records; a new epoch makes them truncate.
            warn!(ctx.logger, "leading a partition again after a restart: moving it to a new \
                leader epoch before accepting writes"; "stream" => &self.stream,
                "partition" => self.id, "epoch" => self.role.leader_epoch);
            let renew = tokio::spawn(crate::replica::renew_epoch(
                self.clone(),
                ctx.clone(),
                self.stop.subscribe(),
            ));
            self.tasks.lock().push(renew);
            return Ok(());
        }
        ctx.led.lock().insert(generation);
        self.log
            .assign_leader_epoch(self.role.leader_epoch)
            .map_err(|e| BrokerError::internal("recording the leader epoch", e))?;
        let mut leader = replication::Leader::new(
            ctx.cfg.server_id.clone(),
            self.role.leader_epoch,
            self.role.replicas.iter().cloned(),
            self.role.isr.iter().cloned(),
            (self.log.newest_offset(), self.log.high_watermark()),
            crate::replica::settings(ctx, self.settings.min_isr),
            crate::replica::now_ms(),
        );
        leader.set_partition_epoch(self.role.epoch);
        // Alone in the ISR, everything this leader holds is committed.
        let hw = leader.hw();
        *self.commit.lock() = Some(leader);
        let due = self.advance_hw(ctx, hw);
        send_acks(ctx, due).await;
        if self.role.replicas.len() > 1 {
            let fetches = ctx
                .repl_conn
                .subscribe(&ctx.subjects.replicate(&self.stream, self.id))
                .await
                .map_err(|e| BrokerError::internal("subscribing to follower fetches", e))?;
            let questions = ctx
                .repl_conn
                .subscribe(&ctx.subjects.leader_epoch_offset(&self.stream, self.id))
                .await
                .map_err(|e| BrokerError::internal("subscribing to epoch questions", e))?;
            let mut tasks = self.tasks.lock();
            tasks.push(tokio::spawn(crate::replica::serve_followers(
                self.clone(),
                ctx.clone(),
                fetches,
                questions,
                self.stop.subscribe(),
            )));
            tasks.push(tokio::spawn(crate::replica::watch_isr(
                self.clone(),
                ctx.clone(),
                self.stop.subscribe(),
            )));
            tasks.push(tokio::spawn(crate::replica::give_up_if_failed(
                self.clone(),
                ctx.clone(),
                self.stop.subscribe(),
            )));
        }
        let (local_tx, local_rx) = mpsc::channel(LOCAL_QUEUE);
        let source = self.subscribe_subject(ctx).await?;
        let _ = self.local.set(local_tx);
        let mut tasks = self.tasks.lock();
        tasks.push(tokio::spawn(ingest(
            self.clone(),
            ctx.clone(),
            source,
            local_rx,
            self.stop.subscribe(),
        )));
        tasks.push(tokio::spawn(cleaner(
            self.clone(),
            ctx.logger.clone(),
            self.stop.subscribe(),
        )));
        tasks.push(tokio::spawn(expire_acks(
            self.clone(),
            ctx.clone(),
            self.stop.subscribe(),
        )));
        if !self.settings.auto_pause_time.is_zero() {
            tasks.push(tokio::spawn(auto_pause(
                self.clone(),
                ctx.clone(),
                self.stop.subscribe(),
            )));
        }
        info!(ctx.logger, "leading partition"; "server" => &ctx.cfg.server_id, "stream" => &self.stream, "partition" => self.id, "subject" => &self.subject,
            "epoch" => self.role.leader_epoch, "hw" => self.log.high_watermark());
        Ok(())
    }

    /// Subscribes to the partition's subject (in its stream's queue group, if any): in
    /// process when NATS runs in this process, so that nothing is dropped, else on the
    /// `streams` connection.
    async fn subscribe_subject(&self, ctx: &Ctx) -> Result<Source> {
        let group = (!self.role.group.is_empty()).then_some(self.role.group.as_str());
        if let Some(nats) = &ctx.cfg.embedded_nats {
            let sub = nats
                .subscribe(LocalSubscribe {
                    subject: &self.subject,
                    queue: group,
                    name: ctx.streams_conn.name(),
                    never_wait: &ctx.never_wait,
                    max_pending: ctx.cfg.ingest_max_pending_bytes,
                })
                .map_err(|e| BrokerError::internal("subscribing to the partition subject", e))?;
            return Ok(Source::Local {
                sub,
                dropped: 0,
                reported: None,
            });
        }
        let sub = match group {
            None => ctx.streams_conn.subscribe(&self.subject).await,
            Some(g) => ctx.streams_conn.queue_subscribe(&self.subject, g).await,
        }
        .map_err(|e| BrokerError::internal("subscribing to the partition subject", e))?;
        // A round trip (a request nobody answers), so that the subscription is in place at the
        // server before anyone is told the partition started.
        let _ = ctx
            .streams_conn
            .request(&ctx.subjects.sync(), Bytes::new(), Duration::from_secs(2))
            .await;
        Ok(Source::Nats(sub))
    }

    /// Leader: whether publishes this broker takes can be handed to the ingest task.
    pub(crate) fn takes_local(&self) -> bool {
        self.local.get().is_some()
    }

    /// Leader: hands a publish this broker took to the ingest task, waiting while the queue
    /// holds [`LOCAL_QUEUE`] publishes or [`LOCAL_QUEUE_BYTES`]. Returns false if the
    /// partition is not taking them (it stopped meanwhile, and had stopped listening to NATS
    /// too).
    pub(crate) async fn hand_over(&self, mut l: LocalPublish) -> bool {
        let Some(q) = self.local.get() else {
            return false;
        };
        l.share = self.local_bytes.take(l.size).await;
        q.send(l).await.is_ok()
    }

    /// Whether this broker leads the partition and it is running.
    pub(crate) fn is_running_leader(&self) -> bool {
        self.role.leader && !self.role.paused
    }

    /// Whether a publish this broker took may be appended by the publisher's own task instead
    /// of being handed to the ingest task. That needs a started leader outside a stream group,
    /// under the OS sync policy (an append is then a copy to the page cache, not a wait for the
    /// disk), and without optimistic concurrency, whose check takes one message per append.
    pub(crate) fn appends_in_place(&self, sync: commitlog::SyncPolicy) -> bool {
        self.local.get().is_some()
            && self.role.group.is_empty()
            && sync == commitlog::SyncPolicy::Os
            && !self.settings.concurrency_control
    }

    /// Appends publishes this broker took, in the caller's task, as one batch; then sends the
    /// acks and wakes the followers, as the ingest task does. The caller checked
    /// [`appends_in_place`](Self::appends_in_place) and keeps the batch within
    /// `batch_max_messages` and `batch_max_bytes` ([`Gather`]). Acks for this broker's own
    /// waiters are handed over before this returns.
    pub(crate) async fn append_in_place(&self, ctx: &Ctx, batch: Vec<LocalPublish>) {
        let now = now_nanos();
        self.stats.lock().received.touch(now);
        let epoch = self.role.leader_epoch;
        let batch = batch
            .into_iter()
            .map(|l| Arrival::Local(l).into_incoming(epoch, now))
            .collect();
        let acks = self.write_batch(ctx, batch);
        send_acks(ctx, acks).await;
        crate::replica::notify_followers(self, ctx, None).await;
    }

    /// Stops the tasks and closes the log. Subscribers see the log close.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        self.finish_stop().await;
    }

    /// Stops as the broker stops: a leader's ingest first records what NATS and this broker's
    /// own publishers had handed it (bounded by [`DRAIN_LIMIT`]), so that a clean stop loses
    /// nothing accepted. A stop for a leader change, a pause or a delete must not do this: the
    /// partition may no longer be this broker's to write.
    pub(crate) async fn stop_draining(&self) {
        self.drain_on_stop.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        self.finish_stop().await;
    }

    async fn finish_stop(&self) {
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        let _ = self.log.checkpoint_high_watermark();
        let _ = self.log.close();
    }

    /// The leader appended up to `offset`: commits what the commit rule allows. Returns the ALL
    /// acks it makes due.
    fn try_commit(&self, ctx: &Ctx, offset: i64) -> Vec<api::Ack> {
        // The commit rule lives in the replication state machine.
        let advanced = self
            .commit
            .lock()
            .as_mut()
            .and_then(|c| c.on_append(offset));
        match advanced {
            Some(hw) => self.advance_hw(ctx, hw),
            None => Vec::new(),
        }
    }

    /// ALL acks waiting for their messages to commit.
    pub(crate) fn pending_acks(&self) -> usize {
        self.pending.lock().len()
    }

    /// Forgets the ALL acks received before `before` (ns) that are still waiting. Returns how
    /// many.
    fn expire_acks(&self, before: i64) -> usize {
        let mut pending = self.pending.lock();
        let n = pending.len();
        pending.retain(|_, a| a.reception_timestamp >= before);
        n - pending.len()
    }

    /// Raises the high watermark to `offset`. Returns the ALL acks it makes due.
    pub(crate) fn advance_hw(&self, ctx: &Ctx, offset: i64) -> Vec<api::Ack> {
        if offset <= self.log.high_watermark() {
            return Vec::new();
        }
        let hw = match self.log.set_high_watermark(offset) {
            Ok(hw) => hw,
            Err(e) => {
                error!(ctx.logger, "setting the high watermark failed"; "error" => %e);
                return Vec::new();
            }
        };
        let mut due: Vec<api::Ack> = {
            let mut pending = self.pending.lock();
            let rest = pending.split_off(&(hw + 1));
            std::mem::replace(&mut *pending, rest)
                .into_values()
                .collect()
        };
        let now = now_nanos();
        for a in &mut due {
            a.commit_timestamp = now;
        }
        due
    }
}

/// Runs a write to a log: here under the OS sync policy (a copy to the page cache, quick
/// enough), else on the blocking pool, since it waits for the disk. `None` if that task failed.
pub(crate) async fn write_log<T: Send + 'static>(
    sync: commitlog::SyncPolicy,
    write: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if sync == commitlog::SyncPolicy::Os {
        Some(write())
    } else {
        tokio::task::spawn_blocking(write).await.ok()
    }
}

/// Publishes acks to their inboxes, in order.
pub(crate) async fn send_acks(ctx: &Ctx, acks: Vec<api::Ack>) {
    for ack in acks {
        if ack.ack_inbox.is_empty() {
            continue;
        }
        let Some(ack) = ctx.local_acks.deliver(ack) else {
            continue;
        };
        // A NATS client names its own inbox: never a wildcard, nor a subject in the brokers'
        // namespace other than their ack inboxes, unless the operator opened the namespace.
        let allowed = if ctx.cfg.streams.namespace_open {
            natsbridge::validate_publish_subject(&ack.ack_inbox).is_ok()
        } else {
            ctx.subjects.is_ack_inbox_allowed(&ack.ack_inbox)
        };
        if !allowed {
            slog::debug!(ctx.logger, "an ack inbox outside what clients may name; no ack sent";
                "inbox" => &ack.ack_inbox);
            continue;
        }
        let data = payload::encode(&ack, false);
        if let Err(e) = ctx.acks_conn.publish(&ack.ack_inbox, data).await {
            warn!(ctx.logger, "sending an ack failed"; "inbox" => &ack.ack_inbox, "error" => %e);
        }
    }
}

/// A message as received, before it gets an offset.
struct Incoming {
    msg: commitlog::Message,
    ack: AckTo,
}

/// What an ack for an incoming message needs, apart from the log message.
struct AckTo {
    subject: String,
    ack_inbox: String,
    correlation_id: String,
    ack_policy: AckPolicy,
    /// Optimistic concurrency: the offset the publisher expects; -1 for none.
    expected_offset: i64,
    size: usize,
    /// A Liftbridge publish (an envelope), not a plain NATS message.
    api: bool,
    /// Handed over by this broker and sent nowhere else: if this partition does not store
    /// it, nobody does.
    only_here: bool,
}

/// Turns a NATS message into a log message: a Publish envelope gives key, headers and ack
/// details; anything else is recorded whole as the value.
fn incoming(
    subject: String,
    reply: String,
    payload: Bytes,
    leader_epoch: u64,
    now: i64,
) -> Incoming {
    if envelope::peek(&payload) == Ok(MsgType::Publish)
        && let Ok(env) = payload::decode::<api::Message>(&payload)
    {
        return from_envelope(subject, reply, env, payload.len(), leader_epoch, now);
    }
    let size = payload.len();
    Incoming {
        msg: commitlog::Message {
            key: None,
            value: payload,
            headers: vec![
                ("subject".into(), Bytes::from(subject.clone())),
                ("reply".into(), Bytes::from(reply)),
            ],
            timestamp: now,
            leader_epoch,
        },
        ack: AckTo {
            subject,
            ack_inbox: String::new(),
            correlation_id: String::new(),
            ack_policy: AckPolicy::Leader,
            // A plain NATS message carries no expectation (Liftbridge reads it as offset 0).
            expected_offset: -1,
            size,
            api: false,
            only_here: false,
        },
    }
}

/// A Publish envelope as a log message: key, headers and ack details from the envelope, plus
/// the `subject` and `reply` headers of the NATS message that carried it.
fn from_envelope(
    subject: String,
    reply: String,
    env: api::Message,
    size: usize,
    leader_epoch: u64,
    now: i64,
) -> Incoming {
    let mut headers: Vec<(String, Bytes)> = env
        .headers
        .into_iter()
        .filter(|(k, _)| k != "subject" && k != "reply")
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers.push(("subject".into(), Bytes::from(subject.clone())));
    headers.push(("reply".into(), Bytes::from(reply)));
    Incoming {
        msg: commitlog::Message {
            key: (!env.key.is_empty()).then_some(env.key),
            value: env.value,
            headers,
            timestamp: now,
            leader_epoch,
        },
        ack: AckTo {
            subject,
            ack_inbox: env.ack_inbox,
            correlation_id: env.correlation_id,
            ack_policy: AckPolicy::try_from(env.ack_policy).unwrap_or(AckPolicy::Leader),
            expected_offset: env.offset,
            size,
            api: true,
            only_here: false,
        },
    }
}

/// A message for the ingest task, from either of its sources.
enum Arrival {
    Nats(natsbridge::Message),
    Embedded(NatsMessage),
    Local(LocalPublish),
}

/// Bytes of a subject as text; NATS subjects are ASCII, anything else is replaced.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Arrival {
    fn into_incoming(self, leader_epoch: u64, now: i64) -> Incoming {
        match self {
            Arrival::Nats(m) => incoming(
                m.subject.to_string(),
                m.reply.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                m.payload,
                leader_epoch,
                now,
            ),
            Arrival::Embedded(m) => incoming(
                text(&m.subject),
                m.reply.as_deref().map(text).unwrap_or_default(),
                m.payload,
                leader_epoch,
                now,
            ),
            Arrival::Local(l) => {
                let mut i = from_envelope(
                    l.subject,
                    String::new(),
                    l.envelope,
                    l.size,
                    leader_epoch,
                    now,
                );
                i.ack.only_here = !l.to_nats;
                i
            }
        }
    }
}

/// Where the ingest task reads the partition's subject.
enum Source {
    /// A subscription of the `streams` connection.
    Nats(Subscriber),
    /// An in-process subscription to the embedded NATS server.
    Local {
        sub: std::pin::Pin<Box<dyn LocalSubscription>>,
        /// Drops last reported, and when.
        dropped: u64,
        reported: Option<Instant>,
    },
}

impl Source {
    /// Logs, at most once a second, messages the in-process subscription did not take.
    fn report_drops(&mut self, p: &Partition, logger: &Logger) {
        let Source::Local {
            sub,
            dropped,
            reported,
        } = self
        else {
            return;
        };
        let now = sub.dropped();
        if now > *dropped && reported.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            warn!(logger, "messages from this broker's own connections were not recorded: the partition's ingest queue was full";
                "stream" => &p.stream, "partition" => p.id, "dropped" => now - *dropped, "dropped_total" => now);
            *dropped = now;
            *reported = Some(Instant::now());
        }
    }

    /// Takes no more messages; what was received can still be read, then the source ends.
    async fn close(&mut self) {
        match self {
            Source::Nats(sub) => {
                let _ = sub.unsubscribe().await;
            }
            Source::Local { sub, .. } => sub.close(),
        }
    }

    async fn next(&mut self) -> Option<Arrival> {
        match self {
            Source::Nats(sub) => sub.next().await.map(Arrival::Nats),
            Source::Local { sub, .. } => sub.next().await.map(Arrival::Embedded),
        }
    }
}

/// The longest a stopping broker's ingest spends recording what it had received.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The next message from NATS or from this broker's own publishes; `None` once the
/// subscription ends.
async fn arrival(source: &mut Source, local: &mut mpsc::Receiver<LocalPublish>) -> Option<Arrival> {
    tokio::select! {
        m = source.next() => m,
        l = local.recv() => l.map(Arrival::Local),
    }
}

impl Partition {
    /// The ack for a message received at `received`.
    fn ack_for(&self, to: AckTo, received: i64, offset: i64, error: ack::Error) -> api::Ack {
        api::Ack {
            stream: self.stream.clone(),
            partition_subject: self.stream_subject.clone(),
            msg_subject: to.subject,
            offset,
            ack_inbox: to.ack_inbox,
            correlation_id: to.correlation_id,
            ack_policy: to.ack_policy as i32,
            reception_timestamp: received,
            commit_timestamp: if error == ack::Error::Ok {
                0
            } else {
                now_nanos()
            },
            ack_error: error as i32,
        }
    }

    /// Error acks (`why`) for messages that were not stored, for every publisher with an
    /// inbox. Returns how many had none to be told on.
    fn refuse_unstored(
        &self,
        unstored: Vec<(AckTo, i64)>,
        why: ack::Error,
        acks: &mut Vec<api::Ack>,
    ) -> usize {
        let mut unannounced = 0;
        for (to, received) in unstored {
            if to.ack_inbox.is_empty() {
                unannounced += 1;
            } else {
                acks.push(self.ack_for(to, received, 0, why));
            }
        }
        unannounced
    }

    /// Appends one batch. Returns the acks to send, in order.
    fn write_batch(&self, ctx: &Ctx, batch: Vec<Incoming>) -> Vec<api::Ack> {
        let _writing = self.write.lock();
        let mut acks = Vec::new();
        let mut msgs = Vec::with_capacity(batch.len());
        let mut acks_to = Vec::with_capacity(batch.len());
        // Only a replicated partition's records must fit in a follower's fetch.
        let budget = if self.role.replicas.len() > 1 {
            ctx.record_budget()
        } else {
            u64::MAX
        };
        let mut unannounced = 0usize;
        for Incoming { mut msg, ack: to } in batch {
            let sealed = match &self.crypto {
                Some(c) => match c.sealer.seal(&msg.value) {
                    Ok(sealed) => {
                        msg.value = sealed.into();
                        true
                    }
                    Err(e) => {
                        warn!(ctx.logger, "encrypting a message failed"; "stream" => &self.stream,
                            "partition" => self.id, "error" => %e);
                        false
                    }
                },
                None => true,
            };
            // Too large for the configured limit, for a follower's fetch to carry, or for the
            // record format (which would fail the whole batch, other publishers' too).
            let refused = if !sealed {
                Some(ack::Error::Encryption)
            } else if to.size as u64 > ctx.cfg.replication_max_bytes
                || msg.encoded_len() > budget
                || msg.check_format().is_err()
            {
                Some(ack::Error::TooLarge)
            } else if self.settings.concurrency_control
                && to.expected_offset != -1
                && to.expected_offset != self.log.next_offset()
            {
                Some(ack::Error::IncorrectOffset)
            } else {
                None
            };
            match refused {
                Some(error) => {
                    // A plain NATS message has no inbox to be told on: say it here.
                    if to.ack_inbox.is_empty() {
                        unannounced += 1;
                    }
                    acks.push(self.ack_for(to, msg.timestamp, 0, error))
                }
                None => {
                    acks_to.push((to, msg.timestamp));
                    msgs.push(msg);
                }
            }
        }
        if !msgs.is_empty() && ctx.disk.is_low() {
            // Nearly full: refused before the disk is, every publisher told.
            unannounced +=
                self.refuse_unstored(std::mem::take(&mut acks_to), ack::Error::Unknown, &mut acks);
            msgs.clear();
        }
        if unannounced > 0 {
            warn!(ctx.logger, "refused messages that no ack can report";
                "stream" => &self.stream, "partition" => self.id, "count" => unannounced,
                "why" => "too large to record or to replicate, or the data directory is nearly full");
        }
        if msgs.is_empty() {
            return acks;
        }
        let started = Instant::now();
        let appended = self.log.append(&msgs);
        ctx.metrics
            .appended(started.elapsed().as_secs_f64(), msgs.len());
        let info = match appended {
            Ok(info) => info,
            Err(commitlog::Error::Readonly) => {
                // Every publisher with an inbox is told, none is left to time out.
                warn!(ctx.logger, "refused messages sent to a read-only partition";
                    "stream" => &self.stream, "partition" => self.id, "count" => msgs.len());
                self.refuse_unstored(acks_to, ack::Error::Readonly, &mut acks);
                return acks;
            }
            Err(commitlog::Error::Closed) => {
                // The partition stopped (a leader change, a pause, a delete) meanwhile. Only
                // the messages nobody else received are refused: another broker (a new
                // leader) may store the others, and ack them.
                slog::debug!(ctx.logger, "refused messages sent to a closed partition";
                    "stream" => &self.stream, "partition" => self.id, "count" => msgs.len());
                let only_here = acks_to.into_iter().filter(|(to, _)| to.only_here).collect();
                self.refuse_unstored(only_here, ack::Error::NotStored, &mut acks);
                return acks;
            }
            Err(e) => {
                // A disk error (EIO, ENOSPC): every publisher of the batch is told, none is left
                // waiting for an ack that will not come.
                error!(ctx.logger, "appending to a partition failed; its publishers get an error ack";
                    "stream" => &self.stream, "partition" => self.id, "count" => msgs.len(),
                    "data_dir" => %ctx.cfg.data_dir.display(), "error" => %e);
                self.refuse_unstored(acks_to, ack::Error::Unknown, &mut acks);
                return acks;
            }
        };
        drop(msgs);
        for (i, (to, received)) in acks_to.into_iter().enumerate() {
            let offset = info.first_offset + i as i64;
            let (msgs, bytes) = if to.api {
                &self.counters.in_api
            } else {
                &self.counters.in_nats
            };
            msgs.inc();
            bytes.inc_by(to.size as u64);
            if to.ack_inbox.is_empty() {
                continue;
            }
            match to.ack_policy {
                AckPolicy::Leader => {
                    let mut a = self.ack_for(to, received, offset, ack::Error::Ok);
                    a.commit_timestamp = now_nanos();
                    acks.push(a);
                }
                AckPolicy::All => {
                    let a = self.ack_for(to, received, offset, ack::Error::Ok);
                    self.pending.lock().insert(offset, a);
                }
                _ => {}
            }
        }
        acks.extend(self.try_commit(ctx, info.last_offset));
        acks
    }
}

/// The fill of a batch being gathered: it has room until it holds `batch.max.messages`
/// messages or `batch.max.bytes` bytes of values, whichever comes first.
pub(crate) struct Gather {
    max_messages: usize,
    max_bytes: usize,
    messages: usize,
    bytes: usize,
}

impl Gather {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Gather {
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            messages: 0,
            bytes: 0,
        }
    }

    /// Whether another message may go in. An empty batch always has room.
    pub(crate) fn room(&self) -> bool {
        self.messages < self.max_messages && self.bytes < self.max_bytes
    }

    pub(crate) fn add(&mut self, value_bytes: usize) {
        self.messages += 1;
        self.bytes += value_bytes;
    }
}

async fn ingest(
    p: Arc<Partition>,
    ctx: Arc<Ctx>,
    mut source: Source,
    mut local: mpsc::Receiver<LocalPublish>,
    mut stop: watch::Receiver<bool>,
) {
    let max = if p.settings.concurrency_control {
        1
    } else {
        ctx.cfg.batch_max_messages.max(1)
    };
    let epoch = p.role.leader_epoch;
    loop {
        // The sender lives in `p`, so `local` never ends while this task runs.
        let first = tokio::select! {
            a = arrival(&mut source, &mut local) => a,
            _ = stop.changed() => None,
        };
        let Some(first) = first else {
            break;
        };
        let now = now_nanos();
        p.stats.lock().received.touch(now);
        let mut batch = vec![first.into_incoming(epoch, now)];
        let mut fill = Gather::new(max, ctx.cfg.batch_max_bytes);
        fill.add(batch[0].msg.value.len());
        let deadline = tokio::time::Instant::now() + ctx.cfg.batch_max_time;
        while fill.room() {
            let next = match arrival(&mut source, &mut local).now_or_never() {
                Some(a) => a,
                None if ctx.cfg.batch_max_time.is_zero() => break,
                None => {
                    match tokio::time::timeout_at(deadline, arrival(&mut source, &mut local)).await
                    {
                        Ok(a) => a,
                        Err(_) => break,
                    }
                }
            };
            match next {
                Some(a) => {
                    let incoming = a.into_incoming(epoch, now);
                    fill.add(incoming.msg.value.len());
                    batch.push(incoming);
                }
                None => break,
            }
        }
        if !record(&p, &ctx, batch).await {
            break;
        }
        source.report_drops(&p, &ctx.logger);
    }
    if p.drain_on_stop.load(Ordering::Acquire) {
        drain(&p, &ctx, &mut source, &mut local, max).await;
    } else {
        refuse_queued(&p, &ctx, &mut local).await;
    }
    slog::debug!(ctx.logger, "ingest stopped"; "stream" => &p.stream, "partition" => p.id);
    source.close().await;
}

/// Appends a batch, sends its acks and wakes the followers. False if the write's task failed.
async fn record(p: &Arc<Partition>, ctx: &Arc<Ctx>, batch: Vec<Incoming>) -> bool {
    let (p2, ctx2) = (p.clone(), ctx.clone());
    let Some(acks) = write_log(ctx.cfg.sync, move || p2.write_batch(&ctx2, batch)).await else {
        return false;
    };
    send_acks(ctx, acks).await;
    crate::replica::notify_followers(p, ctx, None).await;
    true
}

/// Tells this broker's own publishers whose messages still wait in the ingest queue of a
/// partition that stops (a leader change, a pause, a delete) that they were not stored
/// (`NOT_STORED`), instead of leaving them to time out. Messages that also went to NATS are
/// not refused: a new leader may have received them too, and acks what it stores.
async fn refuse_queued(
    p: &Arc<Partition>,
    ctx: &Arc<Ctx>,
    local: &mut mpsc::Receiver<LocalPublish>,
) {
    local.close();
    let mut acks = Vec::new();
    let now = now_nanos();
    while let Ok(l) = local.try_recv() {
        let Incoming { ack: to, .. } = Arrival::Local(l).into_incoming(p.role.leader_epoch, now);
        if to.only_here && !to.ack_inbox.is_empty() {
            acks.push(p.ack_for(to, now, 0, ack::Error::NotStored));
        }
    }
    if !acks.is_empty() {
        slog::debug!(ctx.logger, "refused messages queued for a stopping partition";
            "stream" => &p.stream, "partition" => p.id, "count" => acks.len());
        send_acks(ctx, acks).await;
    }
}

/// Records what the ingest had received when the broker stops: everything already queued for
/// it, from NATS and from this broker's own publishers, in batches, within [`DRAIN_LIMIT`].
async fn drain(
    p: &Arc<Partition>,
    ctx: &Arc<Ctx>,
    source: &mut Source,
    local: &mut mpsc::Receiver<LocalPublish>,
    max: usize,
) {
    source.close().await;
    local.close();
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    let epoch = p.role.leader_epoch;
    let mut recorded = 0usize;
    let mut ended = false;
    while !ended {
        let now = now_nanos();
        let mut batch = Vec::new();
        let mut fill = Gather::new(max, ctx.cfg.batch_max_bytes);
        while fill.room() {
            let next = async {
                match local.try_recv() {
                    Ok(l) => Some(Arrival::Local(l)),
                    Err(_) => source.next().await,
                }
            };
            match tokio::time::timeout_at(deadline, next).await {
                Ok(Some(a)) => {
                    let incoming = a.into_incoming(epoch, now);
                    fill.add(incoming.msg.value.len());
                    batch.push(incoming);
                }
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => {
                    warn!(ctx.logger, "stopping before every received message was recorded";
                        "stream" => &p.stream, "partition" => p.id, "recorded" => recorded + batch.len(),
                        "limit" => ?DRAIN_LIMIT);
                    ended = true;
                    break;
                }
            }
        }
        if batch.is_empty() {
            break;
        }
        recorded += batch.len();
        if !record(p, ctx, batch).await {
            break;
        }
    }
    if recorded > 0 {
        info!(ctx.logger, "recorded what was received before the stop";
            "stream" => &p.stream, "partition" => p.id, "messages" => recorded);
    }
}

/// Leader: forgets ALL acks that waited longer than `all_ack_max_wait` (nothing commits while
/// the ISR is below min ISR), so that their number stays bounded. Checks a tenth as often.
async fn expire_acks(p: Arc<Partition>, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let wait = ctx.cfg.all_ack_max_wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep((wait / 10).max(Duration::from_millis(10))) => {}
            _ = stop.changed() => return,
        }
        let before = now_nanos().saturating_sub(wait.as_nanos().min(i64::MAX as u128) as i64);
        let expired = p.expire_acks(before);
        if expired > 0 {
            warn!(ctx.logger, "ALL acks expired before their messages committed";
                "stream" => &p.stream, "partition" => p.id, "count" => expired,
                "waited" => ?wait, "isr" => ?*p.isr.lock(), "min_isr" => p.settings.min_isr);
        }
    }
}

/// Writes the high watermark to its checkpoint file every `every` when it moved, so that a
/// broker killed without a clean stop restarts with a recent one, not the one of its last
/// clean stop.
async fn checkpointer(
    p: Arc<Partition>,
    every: Duration,
    logger: Logger,
    mut stop: watch::Receiver<bool>,
) {
    let mut written = p.log.high_watermark();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every.max(Duration::from_millis(10))) => {}
            _ = stop.changed() => return,
        }
        let hw = p.log.high_watermark();
        if hw == written {
            continue;
        }
        let log = p.log.clone();
        match tokio::task::spawn_blocking(move || log.checkpoint_high_watermark()).await {
            Ok(Ok(())) => written = hw,
            Ok(Err(commitlog::Error::Closed)) | Err(_) => return,
            Ok(Err(e)) => warn!(logger, "writing the high watermark checkpoint failed";
                "stream" => &p.stream, "partition" => p.id, "error" => %e),
        }
    }
}

async fn cleaner(p: Arc<Partition>, logger: Logger, mut stop: watch::Receiver<bool>) {
    let every = p.settings.cleaner_interval.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let log = p.log.clone();
        let compact = p.settings.compact_enabled;
        let result = tokio::task::spawn_blocking(move || -> commitlog::Result<(u64, u64)> {
            log.roll_if_due()?;
            let r = log.apply_retention()?;
            let c = if compact {
                log.compact()?.messages_removed
            } else {
                0
            };
            Ok((r.messages, c))
        })
        .await;
        match result {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((expired, compacted))) => {
                p.counters.expired.inc_by(expired);
                p.counters.compacted.inc_by(compacted);
                info!(logger, "cleaned partition";
                "stream" => &p.stream, "partition" => p.id,
                "expired_messages" => expired, "compacted_messages" => compacted)
            }
            Ok(Err(commitlog::Error::Closed)) => return,
            Ok(Err(e)) => warn!(logger, "cleaning a partition failed";
                "stream" => &p.stream, "partition" => p.id, "error" => %e),
            Err(_) => return,
        }
    }
}

async fn auto_pause(p: Arc<Partition>, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let limit = p.settings.auto_pause_time;
    let started = Instant::now();
    let started_ns = now_nanos();
    loop {
        let latest = p.stats.lock().received.latest.max(started_ns);
        let idle = Duration::from_nanos((now_nanos() - latest).max(0) as u64);
        let wait = if idle >= limit { limit } else { limit - idle };
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            _ = stop.changed() => return,
        }
        let latest = p.stats.lock().received.latest.max(started_ns);
        let idle = Duration::from_nanos((now_nanos() - latest).max(0) as u64);
        let watched = p.settings.auto_pause_disable_if_subscribers
            && p.subscribers.load(Ordering::Acquire) > 0;
        if idle >= limit && started.elapsed() >= limit && !watched {
            info!(ctx.logger, "pausing idle partition"; "stream" => &p.stream,
                "partition" => p.id, "idle" => ?idle);
            let entry = RaftLog {
                op: Op::PauseStream as i32,
                pause_stream_op: Some(internal::PauseStreamOp {
                    stream: p.stream.clone(),
                    partitions: vec![p.id],
                    resume_all: false,
                }),
                ..Default::default()
            };
            match ctx.propose(entry).await {
                Ok(_) => return,
                Err(e) => warn!(ctx.logger, "auto-pause failed"; "error" => %e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Gather;

    #[test]
    fn a_batch_closes_at_whichever_limit_comes_first() {
        let mut by_bytes = Gather::new(1024, 4096);
        let mut n = 0;
        while by_bytes.room() {
            by_bytes.add(1000);
            n += 1;
        }
        assert_eq!(n, 5, "4000 bytes leave room for a fifth message");
        let mut by_count = Gather::new(3, 1 << 20);
        let mut n = 0;
        while by_count.room() {
            by_count.add(10);
            n += 1;
        }
        assert_eq!(n, 3);
        // A message larger than the limit still goes, alone.
        let mut big = Gather::new(1024, 4096);
        assert!(big.room());
        big.add(1 << 20);
        assert!(!big.room());
    }
}
