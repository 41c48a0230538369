//! A broker's settings, with Liftbridge's defaults. Parsing them from files, flags and the
//! environment is the binary's job; this crate takes them ready-made.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use liftbridge_proto::api::AckPolicy;
use liftbridge_proto::internal::StreamConfig;
use metastore::service::Bootstrap;
use natsbridge::NatsConfig;

/// Per-stream defaults (`streams.*`), each of which a CreateStream request may override.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDefaults {
    /// `streams.retention.max.bytes`; 0: no limit.
    pub retention_max_bytes: i64,
    /// `streams.retention.max.messages`; 0: no limit.
    pub retention_max_messages: i64,
    /// `streams.retention.max.age`; zero: no limit. Default 168 h.
    pub retention_max_age: Duration,
    /// `streams.cleaner.interval`: how often retention and compaction run. Default 5 min.
    pub cleaner_interval: Duration,
    /// `streams.segment.max.bytes`. Default 256 MiB.
    pub segment_max_bytes: i64,
    /// `streams.segment.max.age`; `None` means the retention age, as Liftbridge.
    pub segment_max_age: Option<Duration>,
    /// `streams.compact.enabled`.
    pub compact_enabled: bool,
    /// `streams.compact.max.goroutines`: accepted for compatibility; compaction runs one
    /// partition at a time per cleaner.
    pub compact_max_goroutines: i32,
    /// `streams.auto.pause.time`; zero: never.
    pub auto_pause_time: Duration,
    /// `streams.auto.pause.disable.if.subscribers`.
    pub auto_pause_disable_if_subscribers: bool,
    /// `streams.concurrency.control`: optimistic concurrency control.
    pub concurrency_control: bool,
    /// `streams.encryption`.
    pub encryption: bool,
    /// `streams.namespace.open` (ours): whether clients may name subjects inside the brokers'
    /// namespace, or wildcards covering it, as a stream's subject, a PublishToSubject subject or
    /// an ack inbox. Off by default: such a stream records the brokers' own traffic, and such a
    /// publish speaks for a broker.
    pub namespace_open: bool,
}

impl Default for StreamDefaults {
    fn default() -> Self {
        StreamDefaults {
            retention_max_bytes: 0,
            retention_max_messages: 0,
            retention_max_age: Duration::from_secs(168 * 3600),
            cleaner_interval: Duration::from_secs(300),
            segment_max_bytes: 256 * 1024 * 1024,
            segment_max_age: None,
            compact_enabled: false,
            compact_max_goroutines: 10,
            auto_pause_time: Duration::ZERO,
            auto_pause_disable_if_subscribers: false,
            concurrency_control: false,
            encryption: false,
            namespace_open: false,
        }
    }
}

/// One stream's settings after its overrides are applied to the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// Retention by bytes; 0: none.
    pub retention_max_bytes: i64,
    /// Retention by messages; 0: none.
    pub retention_max_messages: i64,
    /// Retention by age; zero: none.
    pub retention_max_age: Duration,
    /// Cleaner period.
    pub cleaner_interval: Duration,
    /// Segment size limit.
    pub segment_max_bytes: i64,
    /// Segment age limit; zero: none.
    pub segment_max_age: Duration,
    /// Compaction on.
    pub compact_enabled: bool,
    /// Auto-pause after this much silence; zero: never.
    pub auto_pause_time: Duration,
    /// Skip auto-pause while anyone subscribes.
    pub auto_pause_disable_if_subscribers: bool,
    /// Minimum in-sync replicas for a commit.
    pub min_isr: i32,
    /// Optimistic concurrency control.
    pub concurrency_control: bool,
    /// Encryption at rest.
    pub encryption: bool,
}

fn millis(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

impl StreamDefaults {
    /// Applies a stream's stored overrides (durations in milliseconds) to these defaults.
    pub fn settings(&self, c: &StreamConfig, min_isr: i32) -> StreamSettings {
        let retention_max_age = c
            .retention_max_age
            .map_or(self.retention_max_age, |v| millis(v.value));
        StreamSettings {
            retention_max_bytes: c
                .retention_max_bytes
                .map_or(self.retention_max_bytes, |v| v.value),
            retention_max_messages: c
                .retention_max_messages
                .map_or(self.retention_max_messages, |v| v.value),
            retention_max_age,
            cleaner_interval: c
                .cleaner_interval
                .map_or(self.cleaner_interval, |v| millis(v.value)),
            segment_max_bytes: c
                .segment_max_bytes
                .map_or(self.segment_max_bytes, |v| v.value),
            segment_max_age: c
                .segment_max_age
                .map_or(self.segment_max_age.unwrap_or(retention_max_age), |v| {
                    millis(v.value)
                }),
            compact_enabled: c.compact_enabled.map_or(self.compact_enabled, |v| v.value),
            auto_pause_time: c
                .auto_pause_time
                .map_or(self.auto_pause_time, |v| millis(v.value)),
            auto_pause_disable_if_subscribers: c
                .auto_pause_disable_if_subscribers
                .map_or(self.auto_pause_disable_if_subscribers, |v| v.value),
            min_isr: c.min_isr.map_or(min_isr, |v| v.value),
            concurrency_control: c
                .optimistic_concurrency_control
                .map_or(self.concurrency_control, |v| v.value),
            encryption: c.encryption.map_or(self.encryption, |v| v.value),
        }
    }
}

/// The activity stream (`activity.stream.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityConfig {
    /// Publish metadata events to `__activity`.
    pub enabled: bool,
    /// How long one event's publication may take before it is retried. Default 5 s.
    pub publish_timeout: Duration,
    /// The ack policy of those publications. Default ALL.
    pub publish_ack_policy: AckPolicy,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            enabled: false,
            publish_timeout: Duration::from_secs(5),
            publish_ack_policy: AckPolicy::All,
        }
    }
}

/// The cursors stream (`cursors.stream.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorsConfig {
    /// Partitions of `__cursors`; 0 disables cursors.
    pub partitions: i32,
    /// Its replication factor; -1: every broker.
    pub replication_factor: i32,
    /// Its auto-pause time. Default 1 min.
    pub auto_pause_time: Duration,
}

impl Default for CursorsConfig {
    fn default() -> Self {
        CursorsConfig {
            partitions: 0,
            replication_factor: -1,
            auto_pause_time: Duration::from_secs(60),
        }
    }
}

/// Consumer groups (`groups.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupsConfig {
    /// `groups.consumer.timeout`: a member that has not fetched its assignments for this long
    /// is removed from its group by the coordinator. Default 15 s.
    pub consumer_timeout: Duration,
    /// `groups.coordinator.timeout`: told to members, which report a coordinator silent for
    /// this long; also how long reports count toward a coordinator failover. Default 15 s.
    pub coordinator_timeout: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            consumer_timeout: Duration::from_secs(15),
            coordinator_timeout: Duration::from_secs(15),
        }
    }
}

/// Replication timing (`clustering.replica.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// `replica.max.lag.time`: a follower that has not caught up for this long leaves the ISR.
    /// Default 15 s.
    pub max_lag_time: Duration,
    /// `replica.max.leader.timeout`: a follower reports a leader it has not heard from for this
    /// long. Default 15 s.
    pub max_leader_timeout: Duration,
    /// `replica.max.idle.wait`: how long a caught-up follower waits before fetching again (the
    /// leader's notification ends the wait early). Default 10 s.
    pub max_idle_wait: Duration,
    /// `replica.fetch.timeout`: how long a follower waits for a fetch answer. Default 3 s.
    pub fetch_timeout: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            max_lag_time: Duration::from_secs(15),
            max_leader_timeout: Duration::from_secs(15),
            max_idle_wait: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(3),
        }
    }
}

/// Everything a broker needs to run.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This server's id (`clustering.server.id`).
    pub server_id: String,
    /// The namespace of all NATS subjects (`clustering.namespace`).
    pub namespace: String,
    /// Where streams and metadata live (`data.dir`).
    pub data_dir: PathBuf,
    /// The host clients are told to connect to.
    pub advertise_host: String,
    /// The port clients are told to connect to.
    pub advertise_port: u16,
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// How the metadata group is formed.
    pub bootstrap: Bootstrap,
    /// `clustering.raft.max.quorum.size`; 0: no limit.
    pub max_quorum_size: usize,
    /// `clustering.raft.snapshot.threshold`.
    pub raft_snapshot_threshold: u64,
    /// `batch.max.messages`: the most messages appended in one write.
    pub batch_max_messages: usize,
    /// `batch.max.time`: how long a batch may wait to fill; zero: take what is there.
    pub batch_max_time: Duration,
    /// `batch.max.bytes` (ours): a batch closes once its values reach this many bytes, so
    /// that what one write copies into the page cache is still in the CPU's cache (a batch of
    /// 1024 messages of 16 KiB, 16 MiB, made the ingest three times slower). At least one
    /// message goes in every batch.
    pub batch_max_bytes: usize,
    /// `publish.async.max.inflight` (ours): the most messages of one PublishAsync session
    /// that wait for their ack. At the bound the session reads no more requests until acks
    /// come in, so the publisher is held back by HTTP/2 flow control and the broker's memory
    /// stays bounded. Default 8192.
    pub publish_async_max_inflight: usize,
    /// `clustering.replication.max.bytes`: larger messages are refused with a TOO_LARGE ack.
    pub replication_max_bytes: u64,
    /// `clustering.min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// `clustering.replica.*`.
    pub replica: ReplicaConfig,
    /// `metadata.cache.max.age`: how long the broker list from a survey is reused.
    pub metadata_cache_max_age: Duration,
    /// Stream defaults.
    pub streams: StreamDefaults,
    /// When appended data reaches stable storage (our addition; default: the OS decides, as
    /// Liftbridge).
    pub sync: commitlog::SyncPolicy,
    /// The activity stream.
    pub activity: ActivityConfig,
    /// The cursors stream.
    pub cursors: CursorsConfig,
    /// Consumer groups.
    pub groups: GroupsConfig,
    /// The master key for encrypted streams (`LIFTBRIDGE_ENCRYPTION_KEY`). Without it, an
    /// encrypted stream cannot be created, led or followed here.
    pub encryption_key: Option<crate::encryption::MasterKey>,
    /// The NATS server, when it runs in this process (our addition). With it, a publish that
    /// only this broker's own partitions want is not sent to NATS at all, and partitions
    /// record their subjects through in-process subscriptions that never drop a message.
    pub embedded_nats: Option<Arc<dyn crate::EmbeddedNats>>,
    /// `data.min.free.bytes` (our addition): below this many free bytes on the data folder's
    /// file system, publishes are refused with ResourceExhausted until space is freed; reads
    /// and replication go on. 0 turns the guard off. Default 128 MiB.
    pub min_free_bytes: u64,
    /// How long an ALL ack waits for its message to commit (while the ISR is below min ISR,
    /// nothing commits) before the broker forgets it. The publisher's own wait has ended by
    /// then; this bounds the broker's memory. Default 60 s.
    pub all_ack_max_wait: Duration,
    /// How often each partition's high watermark is written to its checkpoint file, when it
    /// moved, as well as at a clean stop. Default 5 s, as Liftbridge.
    pub hw_checkpoint_interval: Duration,
    /// `streams.max.partitions` (our addition): the most partitions CreateStream accepts for
    /// one stream. Default 1024.
    pub max_partitions: i32,
    /// `nats.ingest.max.pending.bytes` (our addition): with embedded NATS, bytes a partition's
    /// ingest queues before the server stops reading from the publishers. Default 16 MiB.
    pub ingest_max_pending_bytes: usize,
    /// `shutdown.handoff.timeout` (our addition): at a clean stop (SIGTERM), how long the
    /// broker waits for the partitions it leads, and the metadata leadership, to move to
    /// in-sync peers before it stops anyway. Zero stops at once, as Liftbridge does (its
    /// partitions then fail over when the followers notice). Default 10 s.
    pub handoff_timeout: Duration,
}

impl std::fmt::Debug for dyn crate::EmbeddedNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedNats")
    }
}

impl BrokerConfig {
    /// Liftbridge's defaults for a server `server_id` keeping its data in `data_dir`, as the
    /// seed of a new cluster, on NATS at `nats://127.0.0.1:4222`.
    pub fn new(server_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> BrokerConfig {
        BrokerConfig {
            server_id: server_id.into(),
            namespace: "liftbridge-default".into(),
            data_dir: data_dir.into(),
            advertise_host: "localhost".into(),
            advertise_port: 9292,
            nats: NatsConfig::default(),
            bootstrap: Bootstrap::Seed,
            max_quorum_size: 0,
            raft_snapshot_threshold: 8192,
            batch_max_messages: 1024,
            batch_max_time: Duration::ZERO,
            batch_max_bytes: 1024 * 1024,
            publish_async_max_inflight: 8192,
            replication_max_bytes: 1024 * 1024,
            min_insync_replicas: 1,
            replica: ReplicaConfig::default(),
            metadata_cache_max_age: Duration::from_secs(120),
            streams: StreamDefaults::default(),
            sync: commitlog::SyncPolicy::Os,
            activity: ActivityConfig::default(),
            cursors: CursorsConfig::default(),
            groups: GroupsConfig::default(),
            encryption_key: None,
            embedded_nats: None,
            ingest_max_pending_bytes: 16 * 1024 * 1024,
            max_partitions: 1024,
            hw_checkpoint_interval: Duration::from_secs(5),
            all_ack_max_wait: Duration::from_secs(60),
            min_free_bytes: 128 * 1024 * 1024,
            handoff_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use liftbridge_proto::internal::{NullableBool, NullableInt32, NullableInt64};

    use super::*;

    #[test]
    fn overrides_win_and_durations_are_milliseconds() {
        let d = StreamDefaults::default();
        let plain = d.settings(&StreamConfig::default(), 1);
        assert_eq!(plain.segment_max_age, Duration::from_secs(168 * 3600));
        assert_eq!(plain.min_isr, 1);
        assert!(!plain.compact_enabled);
        let c = StreamConfig {
            retention_max_age: Some(NullableInt64 { value: 1500 }),
            retention_max_messages: Some(NullableInt64 { value: 7 }),
            compact_enabled: Some(NullableBool { value: true }),
            min_isr: Some(NullableInt32 { value: 2 }),
            ..Default::default()
        };
        let s = d.settings(&c, 1);
        assert_eq!(s.retention_max_age, Duration::from_millis(1500));
        // The segment age follows the stream's retention age unless set itself.
        assert_eq!(s.segment_max_age, Duration::from_millis(1500));
        assert_eq!(s.retention_max_messages, 7);
        assert!(s.compact_enabled);
        assert_eq!(s.min_isr, 2);
    }
}
