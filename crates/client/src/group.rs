//! Consumer groups: members of a group share the partitions of the streams they consume, each
//! partition read by one member at a time, and positions kept in the server's cursors.
//!
//! A [`GroupConsumer`] joins its group, polls its assignments on the group's coordinator (at
//! `0.4 ×` the server's consumer timeout, as go-liftbridge), subscribes to each assigned
//! partition from the group's committed position, and yields the messages of all of them as
//! one `Stream`. Positions are committed every `auto_commit` interval and when partitions move
//! or the consumer closes, under go-liftbridge's cursor id `__group:<group>`, so Go and Rust
//! members of one group share progress. After a rebalance a partition is read again from its
//! last committed offset + 1: at most what was delivered since the last commit is seen twice.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use liftbridge_proto::api;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::types::{Message, StartAt, SubscribeOptions};

/// Where a member starts on a partition for which the group has no committed position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffset {
    /// Only messages published from now on (the default, as go-liftbridge).
    #[default]
    NewOnly,
    /// The oldest message.
    Earliest,
    /// The newest message.
    Latest,
    /// Nothing: the consumer yields an [`Error::InvalidArgument`] naming the partition, and
    /// does not read it.
    None,
}

/// The cursor id under which a group's positions are kept (go-liftbridge's).
pub fn group_cursor_id(group: &str) -> String {
    format!("__group:{group}")
}

/// Builds a [`GroupConsumer`]; from [`Client::consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    client: Client,
    group: String,
    id: Option<String>,
    auto_offset: AutoOffset,
    auto_commit: Option<Duration>,
    fetch_interval: Option<Duration>,
}

impl ConsumerBuilder {
    /// This member's id, unique in the group. Default: a random one.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Where to start on a partition the group has no position for. Default
    /// [`AutoOffset::NewOnly`].
    pub fn auto_offset(mut self, a: AutoOffset) -> Self {
        self.auto_offset = a;
        self
    }

    /// Commit delivered positions this often; `None` commits only on
    /// [`commit`](GroupConsumer::commit), on rebalance and on close. Default 5 s.
    pub fn auto_commit(mut self, every: Option<Duration>) -> Self {
        self.auto_commit = every;
        self
    }

    /// Poll assignments this often. Default: 0.4 × the server's consumer timeout.
    pub fn fetch_interval(mut self, every: Duration) -> Self {
        self.fetch_interval = Some(every);
        self
    }

    /// Joins the group as a consumer of `streams` and starts consuming.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty group or no streams; the server's refusal of
    /// the join (a stream that does not exist, an id already in the group, cursors disabled).
    pub async fn subscribe<I, S>(self, streams: I) -> Result<GroupConsumer>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let streams: Vec<String> = streams.into_iter().map(Into::into).collect();
        if self.group.is_empty() {
            return Err(Error::InvalidArgument("invalid consumer group id".into()));
        }
        if streams.is_empty() {
            return Err(Error::InvalidArgument("no streams to consume".into()));
        }
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("rs-{:016x}", rand_u64()));
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            group: self.group.clone(),
            id,
            streams,
            auto_offset: self.auto_offset,
            delivered: Mutex::new(HashMap::new()),
            committed: Mutex::new(HashMap::new()),
            queued: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            next_lease: std::sync::atomic::AtomicU64::new(1),
            owned: Mutex::new(Vec::new()),
            assignments: Mutex::new((0, Vec::new())),
        });
        let joined = shared.join().await?;
        let (tx, rx) = mpsc::channel(1024);
        let (stop_tx, stop) = watch::channel(false);
        let interval = self
            .fetch_interval
            .unwrap_or_else(|| joined.consumer_timeout.mul_f64(0.4))
            .max(Duration::from_millis(10));
        let poll = tokio::spawn(poll_loop(
            shared.clone(),
            joined,
            interval,
            tx,
            stop.clone(),
        ));
        let commits = self.auto_commit.filter(|d| !d.is_zero()).map(|every| {
            let shared = shared.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.changed() => return,
                    }
                    let _ = shared.commit_delivered(None).await;
                }
            })
        });
        Ok(GroupConsumer {
            shared,
            rx,
            stop: stop_tx,
            tasks: [Some(poll), commits].into_iter().flatten().collect(),
        })
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl Client {
    /// A member of consumer group `group`; finish with
    /// [`subscribe`](ConsumerBuilder::subscribe).
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use liftbridge_client::{AutoOffset, Client, PublishOptions, StreamOptions};
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = liftbridged::start_local(dir.path()).await?;
    /// let client = Client::connect([server.grpc_addr().to_string()]).await?;
    /// client.create_stream("jobs", "jobs", StreamOptions::default()).await?;
    /// client.publish("jobs", "first", PublishOptions::default()).await?;
    /// let mut worker = client
    ///     .consumer("workers")
    ///     .id("worker-1")
    ///     .auto_offset(AutoOffset::Earliest)
    ///     .subscribe(["jobs"])
    ///     .await?;
    /// let job = worker.next().await.expect("a message")?;
    /// assert_eq!(job.value.as_ref(), b"first");
    /// worker.close().await?; // commits the position and leaves the group
    /// # client.close(); server.shutdown().await; Ok(()) }
    /// ```
    pub fn consumer(&self, group: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            client: self.clone(),
            group: group.into(),
            id: None,
            auto_offset: AutoOffset::NewOnly,
            auto_commit: Some(Duration::from_secs(5)),
            fetch_interval: None,
        }
    }

    /// For each partition of `streams`: the group's committed offset (-1 for none), the high
    /// watermark, and how many committed messages the group has not consumed yet.
    ///
    /// # Errors
    /// [`Error::NoSuchStream`]; as [`fetch_cursor`](Client::fetch_cursor).
    pub async fn group_lag<I, S>(&self, group: &str, streams: I) -> Result<Vec<PartitionLag>>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let md = self.refresh_metadata().await?;
        let cursor = group_cursor_id(group);
        let mut out = Vec::new();
        for stream in streams.into_iter().map(Into::into) {
            let info = md.streams.get(&stream).ok_or(Error::NoSuchStream)?;
            for (id, p) in &info.partitions {
                let committed = self.fetch_cursor(&cursor, &stream, *id).await?;
                out.push(PartitionLag {
                    stream: stream.clone(),
                    partition: *id,
                    committed,
                    high_watermark: p.high_watermark,
                    lag: (p.high_watermark - committed).max(0),
                });
            }
        }
        Ok(out)
    }
}

/// How far a group is behind on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset: the last message it consumed, or -1 for none.
    pub committed: i64,
    /// The newest committed message of the partition, or -1 when it has none.
    pub high_watermark: i64,
    /// Messages up to the high watermark the group has not consumed.
    pub lag: i64,
}

/// What the server said on joining.
struct Joined {
    coordinator: String,
    epoch: u64,
    consumer_timeout: Duration,
    coordinator_timeout: Duration,
}

/// (stream, partition)
type Key = (String, i32);

struct Shared {
    client: Client,
    group: String,
    id: String,
    streams: Vec<String>,
    auto_offset: AutoOffset,
    /// The last offset handed to the application, per partition.
    delivered: Mutex<HashMap<Key, i64>>,
    /// The last offset committed, per partition.
    committed: Mutex<HashMap<Key, i64>>,
    /// The last offset read from each partition this member holds (delivered or still
    /// queued), so that a reader restarted under a new epoch goes on from there.
    queued: Mutex<HashMap<Key, i64>>,
    /// The lease under which each held partition is read: a message read under another lease
    /// (before the partition went to another member and came back) is not delivered.
    leases: Mutex<HashMap<Key, u64>>,
    next_lease: std::sync::atomic::AtomicU64,
    /// The partitions this member owns now; only their messages are delivered.
    owned: Mutex<Vec<Key>>,
    /// The latest assignments and their epoch, once their subscriptions are in place.
    assignments: Mutex<(u64, Vec<Key>)>,
}

impl Shared {
    async fn join(&self) -> Result<Joined> {
        let req = api::JoinConsumerGroupRequest {
            group_id: self.group.clone(),
            consumer_id: self.id.clone(),
            streams: self.streams.clone(),
        };
        let mut attempt = 0u32;
        loop {
            let (addr, mut c) = self.client.any_conn().await?;
            match c
                .join_consumer_group(self.client.request(req.clone()))
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(Joined {
                        coordinator: r.coordinator,
                        epoch: r.epoch,
                        consumer_timeout: Duration::from_nanos(r.consumer_timeout.max(0) as u64),
                        coordinator_timeout: Duration::from_nanos(
                            r.coordinator_timeout.max(0) as u64
                        ),
                    });
                }
                Err(s) if s.code() == tonic::Code::Unavailable && attempt < 10 => {
                    self.client.forget(&addr);
                    attempt += 1;
                    self.client.backoff(attempt).await;
                }
                Err(s) => return Err(Error::from_status(s)),
            }
        }
    }

    async fn leave(&self) -> Result<()> {
        let req = api::LeaveConsumerGroupRequest {
            group_id: self.group.clone(),
            consumer_id: self.id.clone(),
        };
        match self
            .client
            .on_any_broker(|mut c| {
                let r = self.client.request(req.clone());
                async move { c.leave_consumer_group(r).await }
            })
            .await
        {
            // Not in the group (any more): expired, or an earlier attempt whose answer was
            // lost took effect. Either way the member is out, which is what was asked.
            Ok(_) | Err(Error::NoSuchGroup) => Ok(()),
            Err(Error::Transport(s))
                if s.message().contains("not a member of the consumer group") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The partitions this member holds by the coordinator's word, when the group's epoch has
    /// moved on since the assignments it last fetched (another member joined or left, and may
    /// hold some of this member's partitions now); `None` when it has not.
    async fn held_now(&self) -> Result<Option<Vec<Key>>> {
        let known = self.assignments.lock().0;
        let Some((coordinator, epoch)) = self.client.group_metadata(&self.group).await? else {
            // Not in the metadata (gone, or a server that does not list groups): nobody else
            // holds its partitions under a newer epoch.
            return Ok(None);
        };
        if epoch == known {
            return Ok(None);
        }
        let mut c = self.coordinator_conn(&coordinator).await?;
        let resp = c
            .fetch_consumer_group_assignments(self.client.request(
                api::FetchConsumerGroupAssignmentsRequest {
                    group_id: self.group.clone(),
                    consumer_id: self.id.clone(),
                    epoch,
                },
            ))
            .await
            .map_err(Error::from_status)?
            .into_inner();
        Ok(Some(
            resp.assignments
                .iter()
                .flat_map(|a| a.partitions.iter().map(|p| (a.stream.clone(), *p)))
                .collect(),
        ))
    }

    /// Commits what was delivered and not yet committed: on every partition this member holds,
    /// or on those of `only` it holds. A partition it no longer holds is never committed, even
    /// before this member's next fetch of its assignments: when the group's epoch moved on,
    /// the coordinator is asked first.
    async fn commit_delivered(&self, only: Option<&[Key]>) -> Result<()> {
        let due: Vec<(Key, i64)> = {
            let delivered = self.delivered.lock();
            let committed = self.committed.lock();
            let owned = self.owned.lock();
            delivered
                .iter()
                .filter(|(k, _)| owned.contains(k))
                // Never back: a position below the committed one is stale.
                .filter(|(k, o)| committed.get(*k).is_none_or(|c| c < *o))
                .filter(|(k, _)| only.is_none_or(|keys| keys.contains(k)))
                .map(|(k, o)| (k.clone(), *o))
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let due: Vec<(Key, i64)> = match self.held_now().await? {
            Some(held) => due.into_iter().filter(|(k, _)| held.contains(k)).collect(),
            None => due,
        };
        let cursor = group_cursor_id(&self.group);
        let mut first_err = None;
        for ((stream, partition), offset) in due {
            match self
                .client
                .set_cursor(&cursor, &stream, partition, offset)
                .await
            {
                Ok(()) => {
                    self.committed.lock().insert((stream, partition), offset);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Where to start reading a newly assigned partition.
    async fn start_of(&self, stream: &str, partition: i32) -> Result<Option<StartAt>> {
        let cursor = self
            .client
            .fetch_cursor(&group_cursor_id(&self.group), stream, partition)
            .await?;
        if cursor >= 0 {
            self.committed
                .lock()
                .insert((stream.to_owned(), partition), cursor);
            return Ok(Some(StartAt::Offset(cursor + 1)));
        }
        Ok(match self.auto_offset {
            AutoOffset::NewOnly => Some(StartAt::NewOnly),
            AutoOffset::Earliest => Some(StartAt::Earliest),
            AutoOffset::Latest => Some(StartAt::Latest),
            AutoOffset::None => None,
        })
    }

    /// The coordinator's address, from the metadata (refreshed if it does not know it).
    async fn coordinator_conn(&self, coordinator: &str) -> Result<crate::transport::Conn> {
        let mut addr = self.client.metadata().broker_addr(coordinator);
        if addr.is_none() {
            addr = self
                .client
                .refresh_metadata()
                .await?
                .broker_addr(coordinator);
        }
        let addr = addr.ok_or_else(|| {
            Error::NoBrokers(format!(
                "the group's coordinator {coordinator} is not known"
            ))
        })?;
        self.client.conn(&addr).await
    }
}

/// A running partition subscription of this member; dropping it stops it.
struct Reader {
    epoch: u64,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls assignments and keeps one subscription per assigned partition until `stop`.
async fn poll_loop(
    shared: Arc<Shared>,
    joined: Joined,
    interval: Duration,
    tx: mpsc::Sender<(u64, Result<Message>)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut coordinator = joined.coordinator;
    let mut epoch = joined.epoch;
    let coordinator_timeout = joined.coordinator_timeout;
    let mut last_ok = Instant::now();
    let mut readers: BTreeMap<Key, Reader> = BTreeMap::new();
    let retry = Duration::from_secs(2).min(interval);
    loop {
        readers.retain(|_, r| !r.task.is_finished());
        let answer = match shared.coordinator_conn(&coordinator).await {
            Ok(mut c) => c
                .fetch_consumer_group_assignments(shared.client.request(
                    api::FetchConsumerGroupAssignmentsRequest {
                        group_id: shared.group.clone(),
                        consumer_id: shared.id.clone(),
                        epoch,
                    },
                ))
                .await
                .map(|r| r.into_inner())
                .map_err(Some),
            Err(_) => Err(None),
        };
        let wait = match answer {
            Ok(resp) => {
                last_ok = Instant::now();
                epoch = resp.epoch;
                reconcile(&shared, &mut readers, resp, &tx).await;
                interval
            }
            Err(status) => {
                let md = shared.client.group_metadata(&shared.group).await;
                match md {
                    // The group forgot us (we expired, or it was deleted): join again, which
                    // go-liftbridge never does.
                    Ok(None) => rejoin(&shared, &mut coordinator, &mut epoch).await,
                    Ok(Some((c, e))) if c != coordinator || e != epoch => {
                        coordinator = c;
                        epoch = e;
                    }
                    _ => {
                        let not_member = status.as_ref().is_some_and(|s| {
                            s.message().contains("not a member of the consumer group")
                        });
                        if not_member {
                            rejoin(&shared, &mut coordinator, &mut epoch).await;
                        } else if last_ok.elapsed() > coordinator_timeout {
                            let _ = shared
                                .client
                                .report_coordinator(&shared.group, &shared.id, &coordinator, epoch)
                                .await;
                        }
                    }
                }
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    drop(readers);
}

async fn rejoin(shared: &Shared, coordinator: &mut String, epoch: &mut u64) {
    if let Ok(j) = shared.join().await {
        *coordinator = j.coordinator;
        *epoch = j.epoch;
    }
}

/// Stops the readers of partitions no longer assigned (or assigned under another epoch, as
/// go-liftbridge does), without committing for partitions lost; starts readers for the rest.
async fn reconcile(
    shared: &Arc<Shared>,
    readers: &mut BTreeMap<Key, Reader>,
    resp: api::FetchConsumerGroupAssignmentsResponse,
    tx: &mpsc::Sender<(u64, Result<Message>)>,
) {
    let assigned: Vec<Key> = resp
        .assignments
        .iter()
        .flat_map(|a| a.partitions.iter().map(|p| (a.stream.clone(), *p)))
        .collect();
    *shared.owned.lock() = assigned.clone();
    let gone: Vec<Key> = readers
        .iter()
        .filter(|(k, r)| !assigned.contains(k) || r.epoch != resp.epoch)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &gone {
        readers.remove(k);
    }
    // Every partition held before and not now, whether its reader still runs or already
    // ended (a newer member's subscription ends it): another member reads it now, and if it
    // comes back, it starts from the cursor.
    let revoked: Vec<Key> = shared
        .leases
        .lock()
        .keys()
        .filter(|k| !assigned.contains(k))
        .cloned()
        .collect();
    for k in &revoked {
        shared.queued.lock().remove(k);
        shared.leases.lock().remove(k);
    }
    if !revoked.is_empty() {
        // Not committed: another member holds them now and may have committed further, so
        // this member's position could send the group's cursor back. What it delivered and
        // did not commit is read again by the new owner (at least once).
        // What this member knew of them is stale from now on.
        for k in &revoked {
            shared.delivered.lock().remove(k);
            shared.committed.lock().remove(k);
        }
    }
    for key in assigned.iter().cloned() {
        if readers.contains_key(&key) {
            continue;
        }
        let (stream, partition) = key.clone();
        let held = shared.queued.lock().get(&key).copied();
        let start = match held {
            // Still ours under a new epoch: on from what was already read.
            Some(o) => Ok(Some(StartAt::Offset(o + 1))),
            None => shared.start_of(&stream, partition).await,
        };
        let start = match start {
            Ok(Some(s)) => s,
            Ok(None) => {
                let _ = tx
                    .send((0, Err(Error::InvalidArgument(format!(
                        "no previous consumer group offset found for partition {partition} of stream {stream}"
                    )))))
                    .await;
                continue;
            }
            Err(_) => continue, // tried again at the next poll
        };
        let consumer = api::Consumer {
            group_id: shared.group.clone(),
            group_epoch: resp.epoch,
            consumer_id: shared.id.clone(),
        };
        let sub = shared
            .client
            .subscribe_as(
                &stream,
                SubscribeOptions::default()
                    .partition(partition)
                    .start(start),
                Some(consumer),
            )
            .await;
        let Ok(mut sub) = sub else {
            continue; // tried again at the next poll
        };
        let lease = *shared.leases.lock().entry(key.clone()).or_insert_with(|| {
            shared
                .next_lease
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        let tx = tx.clone();
        let reading = shared.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let fatal = m.is_err();
                if let Ok(m) = &m {
                    reading.queued.lock().insert(key_of(m), m.offset);
                }
                if tx.send((lease, m)).await.is_err() || fatal {
                    return;
                }
            }
        });
        readers.insert(
            key,
            Reader {
                epoch: resp.epoch,
                task,
            },
        );
    }
    *shared.assignments.lock() = (resp.epoch, assigned);
}

fn key_of(m: &Message) -> Key {
    (m.stream.clone(), m.partition)
}

/// A consumer group as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group id.
    pub id: String,
    /// The broker coordinating it.
    pub coordinator: String,
    /// Its epoch (generation of membership and assignments).
    pub epoch: u64,
    /// Its members (with `liftbridged`; the original Liftbridge sends none).
    pub members: Vec<GroupMember>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The consumer id.
    pub id: String,
    /// The streams it consumes.
    pub streams: Vec<String>,
    /// Its partitions, by stream.
    pub assignments: Vec<(String, Vec<i32>)>,
}

impl Client {
    /// The named groups that exist, or with `ids` empty every group of the cluster (a
    /// `liftbridged` extension; the original Liftbridge answers with none).
    ///
    /// # Errors
    /// As [`fetch_metadata`](Client::fetch_metadata).
    pub async fn groups(&self, ids: &[&str]) -> Result<Vec<GroupInfo>> {
        let req = api::FetchMetadataRequest {
            groups: ids.iter().map(|s| (*s).to_owned()).collect(),
            all_groups: ids.is_empty(),
            ..Default::default()
        };
        let md = self
            .on_any_broker(|mut c| {
                let r = self.request(req.clone());
                async move { c.fetch_metadata(r).await }
            })
            .await?
            .into_inner();
        Ok(md
            .group_metadata
            .into_iter()
            .filter(|g| g.error == api::consumer_group_metadata::Error::Ok as i32)
            .map(|g| GroupInfo {
                id: g.group_id,
                coordinator: g.coordinator,
                epoch: g.epoch,
                members: g
                    .members
                    .into_iter()
                    .map(|m| GroupMember {
                        id: m.consumer_id,
                        streams: m.streams,
                        assignments: m
                            .assignments
                            .into_iter()
                            .map(|a| (a.stream, a.partitions))
                            .collect(),
                    })
                    .collect(),
            })
            .collect())
    }

    /// The coordinator and epoch of a group, or `None` when the group does not exist.
    pub(crate) async fn group_metadata(&self, group: &str) -> Result<Option<(String, u64)>> {
        Ok(self
            .groups(&[group])
            .await?
            .into_iter()
            .find(|g| g.id == group)
            .map(|g| (g.coordinator, g.epoch)))
    }

    pub(crate) async fn report_coordinator(
        &self,
        group: &str,
        consumer: &str,
        coordinator: &str,
        epoch: u64,
    ) -> Result<()> {
        let req = api::ReportConsumerGroupCoordinatorRequest {
            group_id: group.to_owned(),
            consumer_id: consumer.to_owned(),
            coordinator: coordinator.to_owned(),
            epoch,
        };
        self.on_any_broker(|mut c| {
            let r = self.request(req.clone());
            async move { c.report_consumer_group_coordinator(r).await }
        })
        .await?;
        Ok(())
    }

    /// Calls some broker; a broker that cannot be reached is forgotten and the next one tried
    /// (up to three).
    pub(crate) async fn on_any_broker<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(crate::transport::Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut last = None;
        for _ in 0..3 {
            let (addr, c) = self.any_conn().await?;
            match call(c).await {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    self.forget(&addr);
                    last = Some(s);
                }
                Err(s) => return Err(Error::from_status(s)),
            }
        }
        Err(last.map_or(
            Error::NoBrokers("no broker answered".into()),
            Error::from_status,
        ))
    }
}

/// A member of a consumer group: the messages of every partition assigned to it, as one
/// `Stream`. Messages of one partition arrive in offset order; partitions interleave.
///
/// Dropping it stops consuming without leaving the group (the coordinator removes the member
/// after the consumer timeout); [`close`](GroupConsumer::close) commits and leaves at once.
pub struct GroupConsumer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<(u64, Result<Message>)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.shared.group)
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// This member's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The group's epoch and this member's partitions, as last fetched from the coordinator,
    /// once their subscriptions are in place.
    pub fn assignments(&self) -> (u64, Vec<(String, i32)>) {
        self.shared.assignments.lock().clone()
    }

    /// Commits the position of every message delivered so far.
    ///
    /// # Errors
    /// As [`Client::set_cursor`]; what could not be committed is tried again later.
    pub async fn commit(&self) -> Result<()> {
        self.shared.commit_delivered(None).await
    }

    /// Stops consuming, commits what was delivered, and leaves the group, whose other
    /// members take over this member's partitions.
    ///
    /// # Errors
    /// The leave's or the commit's failure; the consumer is stopped either way.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        // A partition leader may be moving (a broker just died): try a few times.
        let mut committed = self.shared.commit_delivered(None).await;
        for attempt in 0..5 {
            if committed.is_ok() {
                break;
            }
            let _ = self.shared.client.refresh_metadata().await;
            self.shared.client.backoff(attempt + 2).await;
            committed = self.shared.commit_delivered(None).await;
        }
        self.shared.leave().await?;
        committed
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Stream for GroupConsumer {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let (lease, item) = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(x)) => x,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            if let Ok(m) = &item {
                let key = key_of(m);
                // Read before its partition moved to another member, which reads it from
                // the committed position: not delivered here.
                if !self.shared.owned.lock().contains(&key)
                    || self.shared.leases.lock().get(&key) != Some(&lease)
                {
                    continue;
                }
                self.shared.delivered.lock().insert(key, m.offset);
            }
            return Poll::Ready(Some(item));
        }
    }
}
