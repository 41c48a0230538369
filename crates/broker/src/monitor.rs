//! What the broker tells its operators: a snapshot of its state for metrics, and readiness.
//!
//! Everything here is read at the moment it is asked for, from the metadata and the running
//! partitions (follower lag from each leader's replication state, cursor lag from the cursor
//! cache). Counters and timings live in `metrics`.

use crate::broker::Broker;

/// One partition as this broker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: i32,
    /// Whether this broker leads it.
    pub leader: bool,
    /// Whether it has a leader at all (in the metadata).
    pub has_leader: bool,
    /// Replicas, by the metadata.
    pub replicas: usize,
    /// In-sync replicas, by the metadata.
    pub isr: usize,
    /// The stream's minimum ISR.
    pub min_isr: i32,
    /// The high watermark, when this broker holds the partition open; else -1.
    pub high_watermark: i64,
    /// The newest offset, when open; else -1.
    pub newest_offset: i64,
    /// Subscriptions on this broker.
    pub subscribers: usize,
    /// Bytes of its segments on this broker's disk.
    pub bytes: u64,
    /// Its segments on this broker's disk.
    pub segments: usize,
    /// Whether this broker holds a replica of it (and so reports it).
    pub local: bool,
    /// When this broker leads it: each follower's lag in messages.
    pub follower_lag: Vec<(String, i64)>,
}

/// A cursor's lag: the partition's high watermark minus the cursor's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorLag {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: i32,
    /// The cursor id (a consumer group's is `__group:<group>` style, see the client).
    pub cursor: String,
    /// Messages committed past the cursor.
    pub lag: i64,
}

/// The broker at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// This server's id.
    pub server_id: String,
    /// Whether this broker leads the metadata group.
    pub metadata_leader: bool,
    /// Whether a metadata leader is known.
    pub metadata_leader_known: bool,
    /// The metadata group's term.
    pub raft_term: u64,
    /// The highest index known committed.
    pub raft_commit: u64,
    /// The last index applied.
    pub raft_applied: u64,
    /// Every partition of every stream, as the metadata has them.
    pub partitions: Vec<PartitionView>,
    /// ALL acks waiting for their messages to commit.
    pub pending_acks: usize,
    /// Free bytes on the data folder's file system, if known.
    pub free_bytes: Option<u64>,
    /// Per NATS connection: name, slow-consumer drops, disconnects, reconnects, connected.
    pub nats: Vec<(String, u64, u64, u64, bool)>,
    /// Consumer groups: id, members, epoch.
    pub groups: Vec<(String, usize, u64)>,
    /// Cursors this broker keeps (it leads their cursors partition) whose partition it also
    /// holds open, with their lag; at most the cursor cache's size.
    pub cursors: Vec<CursorLag>,
}

impl Broker {
    /// The state operators watch, read now.
    pub fn snapshot(&self) -> Snapshot {
        let status = self.metadata().status();
        let me = self.id().to_owned();
        let running = self.inner.partitions.read().clone();
        let mut partitions = Vec::new();
        let groups = self.metadata().with_state(|f| {
            for s in f.streams().values().filter(|s| !s.tombstoned) {
                let min_isr = self
                    .config()
                    .streams
                    .settings(&s.config, self.config().min_insync_replicas)
                    .min_isr;
                for p in s.partitions.values() {
                    let open = running.get(&(s.name.clone(), p.id));
                    let segments = open.map(|o| o.log.segments()).unwrap_or_default();
                    partitions.push(PartitionView {
                        stream: s.name.clone(),
                        partition: p.id,
                        leader: p.leader == me,
                        has_leader: !p.leader.is_empty(),
                        replicas: p.replicas.len(),
                        isr: p.isr.len(),
                        min_isr,
                        high_watermark: open.map_or(-1, |o| o.log.high_watermark()),
                        newest_offset: open.map_or(-1, |o| o.log.newest_offset()),
                        subscribers: open.map_or(0, |o| {
                            o.subscribers.load(std::sync::atomic::Ordering::Acquire)
                        }),
                        bytes: segments.iter().map(|s| s.bytes).sum(),
                        segments: segments.len(),
                        local: p.replicas.contains(&me),
                        follower_lag: open
                            .and_then(|o| o.commit.lock().as_ref().map(|l| l.follower_lag()))
                            .unwrap_or_default(),
                    });
                }
            }
            f.groups()
                .values()
                .map(|g| (g.id.clone(), g.members.len(), g.epoch))
                .collect()
        });
        let nats = self
            .nats_stats()
            .into_iter()
            .map(|(name, s)| {
                (
                    name,
                    s.slow_consumer,
                    s.disconnects,
                    s.reconnects,
                    s.connected,
                )
            })
            .collect();
        let mut cursors: Vec<CursorLag> = self
            .inner
            .cursor_cache
            .lock()
            .entries()
            .filter_map(|((stream, partition, cursor), offset)| {
                let open = running.get(&(stream.clone(), *partition))?;
                Some(CursorLag {
                    stream: stream.clone(),
                    partition: *partition,
                    cursor: cursor.clone(),
                    lag: (open.log.high_watermark() - offset).max(0),
                })
            })
            .collect();
        cursors.sort_by(|a, b| {
            (&a.stream, a.partition, &a.cursor).cmp(&(&b.stream, b.partition, &b.cursor))
        });
        Snapshot {
            server_id: me,
            cursors,
            metadata_leader: status.is_leader,
            metadata_leader_known: status.leader.is_some(),
            raft_term: status.term,
            raft_commit: status.commit,
            raft_applied: status.applied,
            partitions,
            pending_acks: self.pending_acks(),
            free_bytes: self.inner.ctx.disk.free_bytes(),
            nats,
            groups,
        }
    }

    /// Whether this broker is ready to serve: it is not stopping, a metadata leader is known,
    /// every partition the metadata gives it is open (or refused for a reason it logged), and
    /// it is in the ISR of every partition it follows. `Err` says what is missing.
    ///
    /// # Errors
    /// A sentence naming the first thing that is not ready.
    pub fn ready(&self) -> std::result::Result<(), String> {
        if self
            .inner
            .leaving
            .load(std::sync::atomic::Ordering::Relaxed)
            || self.is_shutting_down()
        {
            return Err("this broker is stopping".into());
        }
        let status = self.metadata().status();
        if status.leader.is_none() {
            return Err("no metadata leader is known".into());
        }
        if !self.partitions_running() {
            return Err("some partitions of this broker are not open yet".into());
        }
        let me = self.id().to_owned();
        let behind = self.metadata().with_state(|f| {
            f.streams()
                .values()
                .filter(|s| !s.tombstoned)
                .flat_map(|s| s.partitions.values().map(move |p| (s.name.clone(), p)))
                .find(|(_, p)| p.replicas.contains(&me) && !p.isr.contains(&me))
                .map(|(s, p)| format!("partition {} of stream {s} is not in sync here", p.id))
        });
        match behind {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}
