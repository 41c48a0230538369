//! The broker: its NATS connections, the metadata node, and this server's partitions; how it
//! starts and stops. Its jobs live beside it: `reconcile` (partitions follow the metadata),
//! `routing` (where a publish goes), `placement` (where partitions go) and `responders` (the
//! NATS services between brokers).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use liftbridge_proto::api::{self, AckPolicy, StartPosition, StopPosition};
use metastore::Fsm;
use metastore::service::{MetaConfig, Metastore};
use natsbridge::{Connection, Subjects, connection_name};
use parking_lot::{Mutex, RwLock};
use slog::{Logger, info};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::partition::{Ctx, Partition, Stats};
use crate::routing::Routes;

/// The internal stream of metadata events.
pub const ACTIVITY_STREAM: &str = "__activity";
/// The internal stream of consumer cursors.
pub const CURSORS_STREAM: &str = "__cursors";

pub(crate) type Key = (String, i32);

/// The survey's brokers: until when they may be reused, for which Raft members, and the list.
pub(crate) type BrokerList = (Instant, Vec<u64>, Vec<api::Broker>);

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

pub(crate) struct Inner {
    pub(crate) cfg: Arc<BrokerConfig>,
    pub(crate) subjects: Subjects,
    pub(crate) meta: Metastore,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) publishes: Connection,
    pub(crate) raft_conn: Connection,
    pub(crate) logger: Logger,
    pub(crate) partitions: RwLock<HashMap<Key, Arc<Partition>>>,
    /// The partitions this broker leads, by the subject they record; kept with `partitions`.
    pub(crate) routes: RwLock<Routes>,
    /// Stream creation times of running partitions, to tell a re-created stream from the old one.
    pub(crate) created: Mutex<HashMap<String, i64>>,
    pub(crate) stats: Mutex<HashMap<Key, Arc<Mutex<Stats>>>>,
    pub(crate) reconciling: tokio::sync::Mutex<()>,
    pub(crate) cursor_cache: Mutex<crate::cursor_cache::CursorCache>,
    pub(crate) brokers_cache: Mutex<Option<BrokerList>>,
    pub(crate) activity_seen: AtomicU64,
    /// Activity events, published in order by one task (started on the first event).
    pub(crate) activity:
        Mutex<Option<tokio::sync::mpsc::UnboundedSender<api::ActivityStreamEvent>>>,
    /// Unary publishes wait for acks on `<ack_prefix>.<random>`, all under one subscription.
    pub(crate) ack_prefix: String,
    pub(crate) local_acks: Arc<crate::acks::LocalAcks>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Coordinator: when each member of the groups this broker coordinates was last heard of.
    pub(crate) liveness: Mutex<replication::groups::Liveness>,
    /// Partitions this server refused to open, and why (an encrypted stream without the key).
    pub(crate) refused: Mutex<HashMap<Key, String>>,
    /// Set by [`Broker::hand_off`]: the broker is stopping (not ready), and at shutdown it
    /// also leaves the ISRs it is in (unless the hand-off is turned off).
    pub(crate) leaving: std::sync::atomic::AtomicBool,
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
            disk: crate::disk::DiskGuard::new(cfg.data_dir.clone(), cfg.min_free_bytes),
            never_wait: ["acks", "replication"]
                .map(|role| connection_name(&cfg.namespace, &cfg.server_id, role))
                .to_vec(),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            led: Default::default(),
        });
        let (shutdown, _) = watch::channel(false);
        let consumer_timeout = cfg.groups.consumer_timeout;
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
                local_acks,
                shutdown,
                tasks: Mutex::new(Vec::new()),
                refused: Mutex::new(HashMap::new()),
                leaving: std::sync::atomic::AtomicBool::new(false),
                liveness: Mutex::new(replication::groups::Liveness::new(
                    consumer_timeout.as_millis() as u64,
                )),
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
        let t = tokio::spawn(crate::groups::watch_members(
            broker.clone(),
            broker.inner.shutdown.subscribe(),
        ));
        broker.inner.tasks.lock().push(t);
        let b = broker.clone();
        let t = tokio::spawn(async move { b.metadata_loop().await });
        broker.inner.tasks.lock().push(t);
        let b = broker.clone();
        let t = tokio::spawn(async move {
            loop {
                b.inner.ctx.disk.check(&b.inner.logger);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
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
        self.connections()
            .iter()
            .map(|c| (c.name().to_owned(), c.stats()))
            .collect()
    }

    /// Every NATS connection of this broker, one per role.
    fn connections(&self) -> [&natsbridge::Connection; 5] {
        let i = &self.inner;
        [
            &i.raft_conn,
            &i.ctx.streams_conn,
            &i.ctx.acks_conn,
            &i.ctx.repl_conn,
            &i.publishes,
        ]
    }

    /// This server's id.
    pub fn id(&self) -> &str {
        &self.inner.cfg.server_id
    }

    /// The settings it runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.cfg
    }

    /// The broker's counters and timings, for `/metrics`.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.ctx.metrics
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
    pub(crate) fn partitions_running(&self) -> bool {
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
        let refused = self.inner.refused.lock();
        wanted
            .iter()
            .all(|k| running.contains_key(k) || refused.contains_key(k))
    }

    pub(crate) fn internal_streams_ready(&self) -> bool {
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
        if self
            .inner
            .leaving
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.leave_isrs().await;
        }
        self.inner.meta.shutdown().await;
        for c in self.connections() {
            c.close().await;
        }
        info!(self.inner.logger, "broker stopped");
    }

    /// Changes the running partitions, and the routes with them.
    pub(crate) fn edit_partitions<R>(
        &self,
        f: impl FnOnce(&mut HashMap<Key, Arc<Partition>>) -> R,
    ) -> R {
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

    /// A record as the API sends it, its value opened if the stream is encrypted.
    ///
    /// # Errors
    /// Internal, naming the record, when an encrypted value does not open (a different
    /// master key, or damage); never garbage.
    pub(crate) fn to_api(p: &Partition, mut r: commitlog::Record) -> Result<api::Message> {
        if let Some(c) = &p.crypto {
            let opened = c.master.open(&r.value).map_err(|e| {
                BrokerError::Internal(format!(
                    "cannot read offset {} of stream {} partition {}: {e}",
                    r.offset, p.stream, p.id
                ))
            })?;
            r.value = opened.into();
        }
        // Every message a subscription sends comes through here.
        p.counters.out_subscribers.0.inc();
        p.counters.out_subscribers.1.inc_by(r.value.len() as u64);
        Ok(Self::record_to_api(p, r))
    }

    fn record_to_api(p: &Partition, mut r: commitlog::Record) -> api::Message {
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
