//! The broker: NATS connections, the metadata node, and this server's partitions, kept in line
//! with the metadata by one reconcile step.
//!
//! # How partitions follow the metadata
//! Every metadata event, and a tick every second, runs [`Broker::reconcile`]: it reads the
//! metadata and, for each partition this server holds a replica of, opens, restarts (when its
//! leader, epoch, ISR or paused flag changed), or stops the local partition. A stream that
//! disappeared from the metadata has its data deleted. Nothing happens while the metadata node
//! replays its log after a restart, so a stream deleted and re-created during the replay keeps
//! its data.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use liftbridge_proto::api::{self, AckPolicy, StartPosition, StopPosition};
use liftbridge_proto::internal::{self, Op, RaftLog};
use metastore::service::{MetaConfig, Metastore, WatchEvent};
use metastore::{Event, Fsm};
use natsbridge::{Connection, Subjects, connection_name, payload};
use parking_lot::{Mutex, RwLock};
use slog::{Logger, info, warn};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::partition::{Ctx, LocalPublish, Partition, Role, Spec, Stats, now_nanos};

/// The internal stream of metadata events.
pub const ACTIVITY_STREAM: &str = "__activity";
/// The internal stream of consumer cursors.
pub const CURSORS_STREAM: &str = "__cursors";

type Key = (String, i32);

/// The survey's brokers: until when they may be reused, for which Raft members, and the list.
type BrokerList = (Instant, Vec<u64>, Vec<api::Broker>);

/// A running broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("id", &self.inner.cfg.server_id)
            .finish_non_exhaustive()
    }
}

/// The partitions this broker leads, found by subject without a scan of them all.
#[derive(Default)]
struct Routes {
    exact: HashMap<String, Vec<Arc<Partition>>>,
    /// Partitions whose subject has wildcards, matched one by one.
    wildcard: Vec<Arc<Partition>>,
}

impl Routes {
    fn of<'a>(parts: impl Iterator<Item = &'a Arc<Partition>>) -> Routes {
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

pub(crate) struct Inner {
    pub cfg: Arc<BrokerConfig>,
    pub subjects: Subjects,
    pub meta: Metastore,
    pub ctx: Arc<Ctx>,
    pub publishes: Connection,
    pub raft_conn: Connection,
    pub logger: Logger,
    partitions: RwLock<HashMap<Key, Arc<Partition>>>,
    /// The partitions this broker leads, by the subject they record; kept with `partitions`.
    routes: RwLock<Routes>,
    /// Stream creation times of running partitions, to tell a re-created stream from the old one.
    created: Mutex<HashMap<String, i64>>,
    stats: Mutex<HashMap<Key, Arc<Mutex<Stats>>>>,
    reconciling: tokio::sync::Mutex<()>,
    pub cursor_cache: Mutex<crate::cursor_cache::CursorCache>,
    brokers_cache: Mutex<Option<BrokerList>>,
    activity_seen: AtomicU64,
    /// Activity events, published in order by one task (started on the first event).
    activity: Mutex<Option<tokio::sync::mpsc::UnboundedSender<api::ActivityStreamEvent>>>,
    /// Unary publishes wait for acks on `<ack_prefix>.<n>`, all under one subscription.
    ack_prefix: String,
    ack_seq: AtomicU64,
    pub local_acks: Arc<crate::acks::LocalAcks>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Broker {
    /// Connects to NATS, starts (or rejoins) the metadata group, and starts serving the
    /// partitions the metadata gives this server.
    ///
    /// # Errors
    /// [`BrokerError::Internal`] when NATS cannot be reached, the data folder cannot be used, or
    /// the metadata node fails to start.
    pub async fn start(cfg: BrokerConfig, logger: Logger) -> Result<Broker> {
        let subjects = Subjects::new(&cfg.namespace)
            .map_err(|e| BrokerError::InvalidArgument(format!("namespace: {e}")))?;
        std::fs::create_dir_all(cfg.data_dir.join("streams"))
            .map_err(|e| BrokerError::internal("creating the data folder", e))?;
        let conns = crate::connections::Connections::open(&cfg, &logger).await?;
        let crate::connections::Connections {
            raft: raft_conn,
            streams: streams_conn,
            acks: acks_conn,
            replication: repl_conn,
            publishes,
        } = conns;

        let mut mc = MetaConfig::new(
            cfg.server_id.clone(),
            cfg.data_dir.join("raft"),
            cfg.bootstrap.clone(),
        );
        mc.subjects = subjects.clone();
        mc.max_quorum_size = cfg.max_quorum_size;
        mc.snapshot_threshold = cfg.raft_snapshot_threshold;
        mc.logger = logger.clone();
        let meta = Metastore::start(mc, raft_conn.clone())
            .await
            .map_err(|e| BrokerError::internal("starting the metadata node", e))?;
        let ack_prefix = format!("{}.ack.{}", cfg.namespace, natsbridge::unique_id());
        let cfg = Arc::new(cfg);
        let local_acks = Arc::new(crate::acks::LocalAcks::default());
        let ctx = Arc::new(Ctx {
            cfg: cfg.clone(),
            local_acks: local_acks.clone(),
            streams_conn,
            acks_conn,
            repl_conn,
            subjects: subjects.clone(),
            meta: meta.clone(),
            logger: logger.clone(),
            never_wait: ["acks", "replication"]
                .map(|role| connection_name(&cfg.namespace, &cfg.server_id, role))
                .to_vec(),
        });
        let (shutdown, _) = watch::channel(false);
        let broker = Broker {
            inner: Arc::new(Inner {
                cfg,
                subjects,
                meta,
                ctx,
                publishes,
                raft_conn,
                logger,
                partitions: RwLock::new(HashMap::new()),
                routes: RwLock::new(Routes::default()),
                created: Mutex::new(HashMap::new()),
                stats: Mutex::new(HashMap::new()),
                reconciling: tokio::sync::Mutex::new(()),
                cursor_cache: Mutex::new(Default::default()),
                brokers_cache: Mutex::new(None),
                activity_seen: AtomicU64::new(0),
                activity: Mutex::new(None),
                ack_prefix,
                ack_seq: AtomicU64::new(0),
                local_acks,
                shutdown,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        broker.spawn_responders().await?;
        if let Some(reports) = broker.inner.meta.take_reports() {
            let t = tokio::spawn(crate::replica::judge_reports(
                broker.clone(),
                reports,
                broker.inner.shutdown.subscribe(),
            ));
            broker.inner.tasks.lock().push(t);
        }
        let b = broker.clone();
        let t = tokio::spawn(async move { b.metadata_loop().await });
        broker.inner.tasks.lock().push(t);
        info!(broker.inner.logger, "broker started"; "id" => &broker.inner.cfg.server_id,
            "data_dir" => %broker.inner.cfg.data_dir.display());
        Ok(broker)
    }

    /// ALL acks waiting for their messages to commit, over every partition this broker leads.
    pub fn pending_acks(&self) -> usize {
        self.inner
            .partitions
            .read()
            .values()
            .map(|p| p.pending_acks())
            .sum()
    }

    /// Each NATS connection's name and what happened to it: slow-consumer drops, disconnects
    /// and reconnects.
    pub fn nats_stats(&self) -> Vec<(String, natsbridge::ConnectionStats)> {
        let i = &self.inner;
        crate::connections::stats(&[
            &i.raft_conn,
            &i.ctx.streams_conn,
            &i.ctx.acks_conn,
            &i.ctx.repl_conn,
            &i.publishes,
        ])
    }

    /// This server's id.
    pub fn id(&self) -> &str {
        &self.inner.cfg.server_id
    }

    /// The settings it runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.cfg
    }

    /// The metadata node.
    pub fn metadata(&self) -> &Metastore {
        &self.inner.meta
    }

    /// Waits until the metadata group has a leader and this broker has caught up with it, or
    /// `timeout` passes. Returns whether it is ready.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.inner.meta.status();
            let caught_up = s.leader.is_some()
                && s.applied >= s.commit
                && !self.inner.meta.with_state(Fsm::is_recovering);
            if caught_up && self.internal_streams_ready() && self.partitions_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether every partition the metadata gives this server has been opened here.
    fn partitions_running(&self) -> bool {
        let me = &self.inner.cfg.server_id;
        let wanted: Vec<Key> = self.inner.meta.with_state(|f| {
            f.streams()
                .values()
                .filter(|s| !s.tombstoned)
                .flat_map(|s| {
                    s.partitions
                        .values()
                        .filter(|p| p.replicas.contains(me))
                        .map(|p| (s.name.clone(), p.id))
                })
                .collect()
        });
        let running = self.inner.partitions.read();
        wanted.iter().all(|k| running.contains_key(k))
    }

    fn internal_streams_ready(&self) -> bool {
        let cfg = &self.inner.cfg;
        self.inner.meta.with_state(|f| {
            (cfg.cursors.partitions <= 0 || f.stream(CURSORS_STREAM).is_some())
                && (!cfg.activity.enabled || f.stream(ACTIVITY_STREAM).is_some())
        })
    }

    /// Whether [`shutdown`](Broker::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// A receiver that changes when shutdown begins.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Stops every partition (their logs are closed cleanly, and subscriptions end with
    /// `Unavailable`), the metadata node and the tasks.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let tasks: Vec<_> = self.inner.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        let _guard = self.inner.reconciling.lock().await;
        let parts: Vec<_> = self.edit_partitions(|map| map.drain().map(|(_, p)| p).collect());
        futures_util::future::join_all(parts.iter().map(|p| p.stop_draining())).await;
        self.inner.meta.shutdown().await;
        let i = &self.inner;
        for c in [
            &i.raft_conn,
            &i.ctx.streams_conn,
            &i.ctx.acks_conn,
            &i.ctx.repl_conn,
            &i.publishes,
        ] {
            c.close().await;
        }
        info!(self.inner.logger, "broker stopped");
    }

    /// Changes the running partitions, and the routes with them.
    fn edit_partitions<R>(&self, f: impl FnOnce(&mut HashMap<Key, Arc<Partition>>) -> R) -> R {
        let mut map = self.inner.partitions.write();
        let out = f(&mut map);
        *self.inner.routes.write() = Routes::of(map.values());
        out
    }

    /// The running partition object, if this server holds the partition.
    pub(crate) fn partition(&self, stream: &str, id: i32) -> Option<Arc<Partition>> {
        self.inner
            .partitions
            .read()
            .get(&(stream.to_owned(), id))
            .cloned()
    }

    pub(crate) fn stream_dir(&self, stream: &str) -> PathBuf {
        self.inner.cfg.data_dir.join("streams").join(stream)
    }

    async fn metadata_loop(&self) {
        let mut events = self.inner.meta.watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(WatchEvent::Role { leader: true, .. }) => {
                        let b = self.clone();
                        tokio::spawn(async move { b.ensure_internal_streams().await });
                    }
                    Ok(WatchEvent::Applied { index, recovered: false, event }) => {
                        if self.inner.cfg.activity.enabled {
                            self.record_activity(index, &event);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if self.inner.meta.is_leader() {
                        self.ensure_internal_streams().await;
                    }
                }
                _ = shutdown.changed() => return,
            }
            self.reconcile().await;
        }
    }

    /// Brings the local partitions in line with the metadata (see the module docs).
    pub(crate) async fn reconcile(&self) {
        let _guard = self.inner.reconciling.lock().await;
        let me = self.inner.cfg.server_id.clone();
        let defaults = self.inner.cfg.streams.clone();
        let min_isr = self.inner.cfg.min_insync_replicas;
        // What the metadata wants, read in one go.
        let Some(wanted) = self.inner.meta.with_state(|f| {
            if f.is_recovering() {
                return None;
            }
            let mut out = Vec::new();
            for s in f.streams().values().filter(|s| !s.tombstoned) {
                for p in s.partitions.values() {
                    if !p.replicas.contains(&me) {
                        continue;
                    }
                    out.push((
                        (s.name.clone(), p.id),
                        s.subject.clone(),
                        s.creation_timestamp,
                        defaults.settings(&s.config, min_isr),
                        Role {
                            leader: p.leader == me,
                            leader_id: p.leader.clone(),
                            leader_epoch: p.leader_epoch,
                            paused: p.paused,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                            group: p.group.clone(),
                        },
                        p.readonly,
                    ));
                }
            }
            Some(out)
        }) else {
            return;
        };
        let wanted_keys: std::collections::HashSet<Key> =
            wanted.iter().map(|w| w.0.clone()).collect();
        let wanted_created: HashMap<String, i64> =
            wanted.iter().map(|w| (w.0.0.clone(), w.2)).collect();

        // Streams gone, or replaced by a new stream of the same name: stop and delete.
        let stale: Vec<String> = self
            .inner
            .created
            .lock()
            .iter()
            .filter(|(name, created)| wanted_created.get(*name) != Some(*created))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let parts: Vec<Arc<Partition>> = self.edit_partitions(|map| {
                let keys: Vec<Key> = map.keys().filter(|k| k.0 == name).cloned().collect();
                keys.iter().filter_map(|k| map.remove(k)).collect()
            });
            for p in parts {
                p.stop().await;
            }
            self.inner.stats.lock().retain(|k, _| k.0 != name);
            self.inner.created.lock().remove(&name);
            let dir = self.stream_dir(&name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => info!(self.inner.logger, "deleted stream data"; "stream" => &name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(self.inner.logger, "deleting stream data failed";
                    "stream" => &name, "error" => %e),
            }
        }
        // Partitions no longer held here.
        let dropped: Vec<Arc<Partition>> = self.edit_partitions(|map| {
            let keys: Vec<Key> = map
                .keys()
                .filter(|k| !wanted_keys.contains(*k))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        });
        for p in dropped {
            p.stop().await;
        }

        for (key, subject, created, settings, role, readonly) in wanted {
            let existing = self.partition(&key.0, key.1);
            if let Some(p) = &existing {
                if p.role.same_run(&role) && p.settings == settings {
                    if p.log.is_readonly() != readonly {
                        p.log.set_readonly(readonly);
                        p.stats.lock().readonly.touch(now_nanos());
                    }
                    p.update_isr(&self.inner.ctx, &role.isr).await;
                    continue;
                }
                slog::debug!(self.inner.logger, "restarting partition"; "stream" => &key.0,
                    "partition" => key.1, "was" => ?p.role, "now" => ?role);
                p.stop().await;
                self.edit_partitions(|map| map.remove(&key));
            }
            let stats = self
                .inner
                .stats
                .lock()
                .entry(key.clone())
                .or_default()
                .clone();
            if role.paused && existing.as_ref().is_some_and(|p| !p.role.paused) {
                stats.lock().paused.touch(now_nanos());
            }
            let became_leader = role.leader && existing.as_ref().is_none_or(|p| !p.role.leader);
            if key.0 == CURSORS_STREAM && became_leader {
                self.inner.cursor_cache.lock().clear();
            }
            let dir = self.stream_dir(&key.0).join(key.1.to_string());
            let spec = Spec {
                stream: &key.0,
                id: key.1,
                stream_subject: &subject,
                settings,
                role,
                readonly,
                stats,
            };
            match Partition::open(spec, dir, &self.inner.ctx).await {
                Ok(p) => {
                    self.edit_partitions(|map| map.insert(key.clone(), p));
                    self.inner.created.lock().insert(key.0.clone(), created);
                }
                Err(e) => warn!(self.inner.logger, "starting a partition failed";
                    "stream" => &key.0, "partition" => key.1, "error" => %e),
            }
        }
    }

    /// On the metadata leader: creates `__cursors` and `__activity` when configured and missing.
    async fn ensure_internal_streams(&self) {
        let cfg = self.inner.cfg.clone();
        let mut wanted = Vec::new();
        if cfg.cursors.partitions > 0 {
            let mut c = internal::StreamConfig {
                compact_enabled: Some(internal::NullableBool { value: true }),
                ..Default::default()
            };
            if !cfg.cursors.auto_pause_time.is_zero() {
                c.auto_pause_time = Some(internal::NullableInt64 {
                    value: cfg.cursors.auto_pause_time.as_millis() as i64,
                });
            }
            wanted.push((
                CURSORS_STREAM,
                self.inner.subjects.cursors(),
                cfg.cursors.partitions,
                cfg.cursors.replication_factor,
                c,
            ));
        }
        if cfg.activity.enabled {
            wanted.push((
                ACTIVITY_STREAM,
                self.inner.subjects.activity(),
                1,
                -1,
                internal::StreamConfig::default(),
            ));
        }
        for (name, subject, partitions, rf, config) in wanted {
            if self.inner.meta.with_state(|f| f.stream(name).is_some()) {
                continue;
            }
            let req = api::CreateStreamRequest {
                subject,
                name: name.into(),
                replication_factor: rf,
                partitions,
                ..Default::default()
            };
            match self.create_stream_entry(&req, config) {
                Ok(entry) => match self.inner.meta.propose(entry).await {
                    Ok(a) if a.result.is_ok() => {
                        info!(self.inner.logger, "created internal stream"; "stream" => name)
                    }
                    Ok(_) => {}
                    Err(e) => warn!(self.inner.logger, "creating an internal stream failed";
                        "stream" => name, "error" => %e),
                },
                Err(e) => warn!(self.inner.logger, "creating an internal stream failed";
                    "stream" => name, "error" => %e),
            }
        }
    }

    async fn spawn_responders(&self) -> Result<()> {
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
    async fn respond<Req, Resp>(
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

    fn with_load(&self, mut list: Vec<api::Broker>) -> Vec<api::Broker> {
        let (parts, leads) = self.loads();
        for b in &mut list {
            b.partition_count = parts.get(&b.id).copied().unwrap_or(0) as i32;
            b.leader_count = leads.get(&b.id).copied().unwrap_or(0) as i32;
        }
        list
    }

    /// Partitions held and partitions led, per server, over the live streams.
    pub(crate) fn loads(&self) -> (HashMap<String, usize>, HashMap<String, usize>) {
        self.inner.meta.with_state(|f| {
            let mut held: HashMap<String, usize> = HashMap::new();
            let mut led: HashMap<String, usize> = HashMap::new();
            for s in f.streams().values().filter(|s| !s.tombstoned) {
                for p in s.partitions.values() {
                    for r in &p.replicas {
                        *held.entry(r.clone()).or_default() += 1;
                    }
                    *led.entry(p.leader.clone()).or_default() += 1;
                }
            }
            (held, led)
        })
    }

    /// Builds the CreateStream entry: replicas on the least-loaded brokers, the leader the
    /// replica leading the fewest partitions.
    pub(crate) fn create_stream_entry(
        &self,
        req: &api::CreateStreamRequest,
        config: internal::StreamConfig,
    ) -> Result<RaftLog> {
        let status = self.inner.meta.status();
        let mut ids: Vec<u64> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .collect();
        ids.sort_unstable();
        let size = ids.len().max(1) as i32;
        // Server ids from Raft ids: this server, and the others the metadata knows of.
        let servers = self.known_servers();
        let rf = match req.replication_factor {
            0 => 1,
            -1 => size,
            n if n < 0 => {
                return Err(BrokerError::InvalidArgument(format!(
                    "Invalid replicationFactor {n}"
                )));
            }
            n if n > size => {
                return Err(BrokerError::InvalidArgument(format!(
                    "Invalid replicationFactor {n}, cluster size {size}"
                )));
            }
            n => n,
        };
        if servers.len() < rf as usize {
            return Err(BrokerError::Internal(format!(
                "replication factor {rf} needs {rf} known brokers; {} are known",
                servers.len()
            )));
        }
        let partitions = req.partitions.max(1);
        let (mut load, mut leads) = self.loads();
        let mut parts = Vec::with_capacity(partitions as usize);
        for id in 0..partitions {
            let mut order = servers.clone();
            order.sort_by_key(|s| load.get(s).copied().unwrap_or(0));
            let replicas: Vec<String> = order.into_iter().take(rf as usize).collect();
            let leader = replicas
                .iter()
                .min_by_key(|s| leads.get(*s).copied().unwrap_or(0))
                .cloned()
                .unwrap_or_default();
            for r in &replicas {
                *load.entry(r.clone()).or_default() += 1;
            }
            *leads.entry(leader.clone()).or_default() += 1;
            parts.push(internal::Partition {
                subject: req.subject.clone(),
                stream: req.name.clone(),
                id,
                group: req.group.clone(),
                replication_factor: rf,
                isr: replicas.clone(),
                replicas,
                leader,
                ..Default::default()
            });
        }
        Ok(RaftLog {
            op: Op::CreateStream as i32,
            create_stream_op: Some(internal::CreateStreamOp {
                stream: Some(internal::Stream {
                    name: req.name.clone(),
                    subject: req.subject.clone(),
                    partitions: parts,
                    config: Some(config),
                    creation_timestamp: now_nanos(),
                    resume_all: false,
                }),
            }),
            ..Default::default()
        })
    }

    /// Server ids of the members: this one plus those seen in the metadata or the survey.
    fn known_servers(&self) -> Vec<String> {
        let status = self.inner.meta.status();
        let members: std::collections::HashSet<u64> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .collect();
        let mut names: Vec<String> = vec![self.inner.cfg.server_id.clone()];
        if let Some((_, _, list)) = &*self.inner.brokers_cache.lock() {
            names.extend(list.iter().map(|b| b.id.clone()));
        }
        self.inner.meta.with_state(|f| {
            for s in f.streams().values() {
                for p in s.partitions.values() {
                    names.extend(p.replicas.iter().cloned());
                }
            }
        });
        names.sort();
        names.dedup();
        names.retain(|n| members.contains(&metastore::service::raft_id(n)));
        names
    }

    /// Publishes one envelope to `subject` and, unless the policy is NONE or there is no
    /// deadline, waits for its ack: on the broker's shared ack subscription, or on the client's
    /// own inbox when it named one.
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
            let n = self.inner.ack_seq.fetch_add(1, Ordering::Relaxed);
            msg.ack_inbox = format!("{}.{n}", self.inner.ack_prefix);
            let rx = self.inner.local_acks.wait(&msg.ack_inbox);
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
        self.nats_publish(subject, msg).await?;
        match tokio::time::timeout(limit, sub.next()).await {
            Ok(Some(m)) => payload::decode::<api::Ack>(&m.payload)
                .map(Some)
                .map_err(|e| BrokerError::internal("decoding an ack", e)),
            Ok(None) => Err(BrokerError::Internal("ack subscription closed".into())),
            Err(_) => Err(timeout()),
        }
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

    async fn nats_publish_fitting(
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
            });
        }
        let count = batch.len();
        match targets.as_slice() {
            [p] if p.appends_in_place(self.inner.cfg.sync) => {
                p.append_in_place(&self.inner.ctx, batch).await;
            }
            _ => {
                let last = targets.len() - 1;
                for l in batch {
                    let mut l = Some(l);
                    for (i, p) in targets.iter().enumerate() {
                        let one = if i == last { l.take() } else { l.clone() };
                        // A partition that stopped meanwhile had stopped listening to NATS too.
                        if let Some(one) = one {
                            p.hand_over(one).await;
                        }
                    }
                }
            }
        }
        if !others {
            // Nobody else would get them: the local partitions have them already.
            return (0..count).map(|_| Ok(())).collect();
        }
        let mut results = Vec::with_capacity(to_nats.len());
        for data in to_nats {
            results.push(conn.publish(subject, data).await.map_err(nats_error));
        }
        results
    }

    /// The partitions this broker leads, with their ingest running, whose subject matches
    /// `subject`. `None` when one of them belongs to a stream group: NATS must then choose.
    fn local_targets(&self, subject: &str) -> Option<Vec<Arc<Partition>>> {
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
        self.inner.meta.propose(entry).await?;
        self.reconcile().await;
        self.wait_partition_started(stream, partition, Duration::from_secs(5))
            .await;
        Ok(())
    }

    fn record_activity(&self, index: u64, event: &Event) {
        if !self.inner.meta.is_leader() || index <= self.inner.activity_seen.load(Ordering::Acquire)
        {
            return;
        }
        let Some(ev) = crate::activity::event_for(index, event, &self.inner.meta) else {
            return;
        };
        self.inner.activity_seen.store(index, Ordering::Release);
        // One task publishes them all, in order: a task per event left its handle behind
        // forever and could publish events out of order.
        let mut activity = self.inner.activity.lock();
        let tx = activity.get_or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let b = self.clone();
            let t = tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    crate::activity::publish(b.clone(), ev).await;
                }
            });
            self.inner.tasks.lock().push(t);
            tx
        });
        let _ = tx.send(ev);
    }

    /// The log start and end of a partition: (start, stop) for a subscription, checked.
    pub(crate) fn positions(
        p: &Partition,
        req: &api::SubscribeRequest,
    ) -> Result<(i64, Option<i64>)> {
        let log = &p.log;
        let oldest = log.oldest_offset();
        let newest = log.newest_offset();
        let start = match StartPosition::try_from(req.start_position) {
            Ok(StartPosition::Offset) => req.start_offset,
            Ok(StartPosition::Earliest) => oldest,
            Ok(StartPosition::Latest) => newest,
            Ok(StartPosition::NewOnly) => newest + 1,
            Ok(StartPosition::Timestamp) => log
                .offset_for_timestamp(req.start_timestamp)
                .map_err(|e| BrokerError::internal("finding the start timestamp", e))?
                .unwrap_or(newest + 1),
            Err(_) => {
                return Err(BrokerError::InvalidArgument(format!(
                    "Unknown StartPosition {}",
                    req.start_position
                )));
            }
        };
        let start = start.max(0).max(oldest);
        let stop = match StopPosition::try_from(req.stop_position) {
            Ok(StopPosition::StopOnCancel) => None,
            Ok(StopPosition::StopOffset) => Some(req.stop_offset),
            Ok(StopPosition::StopLatest) => {
                if newest < 0 {
                    return Err(BrokerError::End("Stream is empty".into()));
                }
                Some(newest)
            }
            Ok(StopPosition::StopTimestamp) => {
                let t = req.stop_timestamp;
                if let Some(first) = log.read_at(oldest.max(0)).ok().flatten()
                    && first.timestamp > t
                {
                    return Err(BrokerError::Internal(
                        "Stop timestamp is before the first message of the stream".into(),
                    ));
                }
                let at = log
                    .offset_for_timestamp(t)
                    .map_err(|e| BrokerError::internal("finding the stop timestamp", e))?;
                Some(match at {
                    Some(o) => match log.read_at(o).ok().flatten() {
                        Some(r) if r.timestamp == t => o,
                        _ => o - 1,
                    },
                    None => newest,
                })
            }
            Err(_) => {
                return Err(BrokerError::InvalidArgument(format!(
                    "Unknown StopPosition {}",
                    req.stop_position
                )));
            }
        };
        Ok((start, stop))
    }

    /// A partition's message as the API sends it.
    pub(crate) fn to_api(p: &Partition, mut r: commitlog::Record) -> api::Message {
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        api::Message {
            offset: r.offset,
            subject: header("subject"),
            reply_subject: header("reply"),
            key: r.key.take().unwrap_or_default(),
            value: std::mem::take(&mut r.value),
            timestamp: r.timestamp,
            stream: p.stream.clone(),
            partition: p.id,
            headers: r.headers.into_iter().collect(),
            ..Default::default()
        }
    }
}

/// An envelope for a publish the broker makes itself (cursors, activity events): no OCC check.
pub(crate) fn internal_message(
    stream: &str,
    subject: &str,
    key: Bytes,
    value: Bytes,
    policy: AckPolicy,
) -> api::Message {
    api::Message {
        key,
        value,
        stream: stream.into(),
        subject: subject.into(),
        ack_policy: policy as i32,
        offset: -1,
        ..Default::default()
    }
}
