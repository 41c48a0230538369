//! The client's own types: messages, acks, metadata and options.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use liftbridge_proto::api;

/// When the leader acknowledges a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckPolicy {
    /// Once the leader wrote it (the default).
    #[default]
    Leader,
    /// Once every in-sync replica has it.
    All,
    /// Never: no ack is sent.
    None,
}

impl AckPolicy {
    pub(crate) fn to_api(self) -> i32 {
        match self {
            AckPolicy::Leader => api::AckPolicy::Leader as i32,
            AckPolicy::All => api::AckPolicy::All as i32,
            AckPolicy::None => api::AckPolicy::None as i32,
        }
    }

    fn from_api(v: i32) -> Self {
        match api::AckPolicy::try_from(v) {
            Ok(api::AckPolicy::All) => AckPolicy::All,
            Ok(api::AckPolicy::None) => AckPolicy::None,
            _ => AckPolicy::Leader,
        }
    }
}

/// A message read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if it has one.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
    /// When the leader received it, in nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// Its headers.
    pub headers: HashMap<String, Bytes>,
    /// The NATS subject it was published on.
    pub subject: String,
    /// The NATS reply subject it was published with, if any.
    pub reply_subject: String,
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: i32,
}

impl Message {
    pub(crate) fn from_api(m: api::Message) -> Self {
        Message {
            offset: m.offset,
            key: (!m.key.is_empty()).then_some(m.key),
            value: m.value,
            timestamp: m.timestamp,
            headers: m.headers,
            subject: m.subject,
            reply_subject: m.reply_subject,
            stream: m.stream,
            partition: m.partition,
        }
    }

    /// The timestamp as a `SystemTime`.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.timestamp.max(0) as u64)
    }
}

/// A publish acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The stream written.
    pub stream: String,
    /// The stream's subject.
    pub partition_subject: String,
    /// The subject the message was published on.
    pub msg_subject: String,
    /// The message's offset.
    pub offset: i64,
    /// The inbox the ack was sent to.
    pub ack_inbox: String,
    /// The publish's correlation id.
    pub correlation_id: String,
    /// The ack policy it was published with.
    pub ack_policy: AckPolicy,
    /// When the leader received it (ns since the Unix epoch).
    pub reception_timestamp: i64,
    /// When it was acknowledged (ns since the Unix epoch).
    pub commit_timestamp: i64,
}

impl Ack {
    pub(crate) fn from_api(a: api::Ack) -> Self {
        Ack {
            stream: a.stream,
            partition_subject: a.partition_subject,
            msg_subject: a.msg_subject,
            offset: a.offset,
            ack_inbox: a.ack_inbox,
            correlation_id: a.correlation_id,
            ack_policy: AckPolicy::from_api(a.ack_policy),
            reception_timestamp: a.reception_timestamp,
            commit_timestamp: a.commit_timestamp,
        }
    }
}

/// A broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Its server id.
    pub id: String,
    /// Host clients connect to.
    pub host: String,
    /// Its gRPC port.
    pub port: u16,
    /// Partitions it holds.
    pub partition_count: i32,
    /// Partitions it leads.
    pub leader_count: i32,
    /// It leads the metadata group (`liftbridged` only; always false from the original).
    pub metadata_leader: bool,
}

impl BrokerInfo {
    /// `host:port`.
    pub fn addr(&self) -> String {
        // Looked up for every publish.
        text_and_number(&self.host, ':', self.port)
    }
}

/// `<text><sep><n>`, built without the formatting machinery: broker addresses and correlation
/// ids are made for every publish.
pub(crate) fn text_and_number(text: &str, sep: char, n: impl itoa::Integer) -> String {
    let mut digits = itoa::Buffer::new();
    let n = digits.format(n);
    let mut out = String::with_capacity(text.len() + sep.len_utf8() + n.len());
    out.push_str(text);
    out.push(sep);
    out.push_str(n);
    out
}

/// One partition, as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Its id.
    pub id: i32,
    /// The leading broker's id.
    pub leader: String,
    /// Brokers holding a replica.
    pub replicas: Vec<String>,
    /// In-sync replicas.
    pub isr: Vec<String>,
    /// Offset of the newest committed message (-1: none).
    pub high_watermark: i64,
    /// Offset of the newest message (-1: none).
    pub newest_offset: i64,
    /// Paused.
    pub paused: bool,
    /// Read-only.
    pub readonly: bool,
}

impl PartitionInfo {
    pub(crate) fn from_api(p: api::PartitionMetadata) -> Self {
        PartitionInfo {
            id: p.id,
            leader: p.leader,
            replicas: p.replicas,
            isr: p.isr,
            high_watermark: p.high_watermark,
            newest_offset: p.newest_offset,
            paused: p.paused,
            readonly: p.readonly,
        }
    }
}

/// One stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its name.
    pub name: String,
    /// Its NATS subject.
    pub subject: String,
    /// Its partitions by id.
    pub partitions: BTreeMap<i32, PartitionInfo>,
}

/// The cluster as the client last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The brokers.
    pub brokers: Vec<BrokerInfo>,
    /// The streams by name.
    pub streams: HashMap<String, StreamInfo>,
}

impl Metadata {
    pub(crate) fn from_api(m: api::FetchMetadataResponse) -> Self {
        Metadata {
            brokers: m
                .brokers
                .into_iter()
                .map(|b| BrokerInfo {
                    id: b.id,
                    host: b.host,
                    port: u16::try_from(b.port).unwrap_or(0),
                    partition_count: b.partition_count,
                    leader_count: b.leader_count,
                    metadata_leader: b.metadata_leader,
                })
                .collect(),
            streams: m
                .stream_metadata
                .into_iter()
                .filter(|s| s.error == api::stream_metadata::Error::Ok as i32)
                .map(|s| {
                    (
                        s.name.clone(),
                        StreamInfo {
                            name: s.name,
                            subject: s.subject,
                            partitions: s
                                .partitions
                                .into_iter()
                                .map(|(id, p)| (id, PartitionInfo::from_api(p)))
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// A broker's address by id.
    pub fn broker_addr(&self, id: &str) -> Option<String> {
        self.brokers
            .iter()
            .find(|b| b.id == id)
            .map(BrokerInfo::addr)
    }
}

/// Settings of a new stream. Every `None` takes the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Queue group: streams in one group share the subject's messages.
    pub group: Option<String>,
    /// Replicas per partition; -1 means every broker. Default 1.
    pub replication_factor: Option<i32>,
    /// Partitions. Default 1.
    pub partitions: Option<i32>,
    /// Retention by total size.
    pub retention_max_bytes: Option<i64>,
    /// Retention by message count.
    pub retention_max_messages: Option<i64>,
    /// Retention by age.
    pub retention_max_age: Option<Duration>,
    /// How often retention and compaction run.
    pub cleaner_interval: Option<Duration>,
    /// Segment size limit.
    pub segment_max_bytes: Option<i64>,
    /// Segment age limit.
    pub segment_max_age: Option<Duration>,
    /// Compaction parallelism.
    pub compact_max_goroutines: Option<i32>,
    /// Compaction by key.
    pub compact_enabled: Option<bool>,
    /// Pause partitions idle for this long.
    pub auto_pause_time: Option<Duration>,
    /// No auto-pause while a subscriber is attached.
    pub auto_pause_disable_if_subscribers: Option<bool>,
    /// Minimum in-sync replicas for a commit.
    pub min_isr: Option<i32>,
    /// Optimistic concurrency control (publishes may state an expected offset).
    pub optimistic_concurrency_control: Option<bool>,
    /// Encryption at rest.
    pub encryption: Option<bool>,
}

impl StreamOptions {
    /// Sets the partition count.
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = Some(n);
        self
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, n: i32) -> Self {
        self.replication_factor = Some(n);
        self
    }

    /// Sets the queue group.
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = Some(g.into());
        self
    }

    pub(crate) fn to_request(&self, subject: &str, name: &str) -> api::CreateStreamRequest {
        let ms = |d: Option<Duration>| {
            d.map(|d| api::NullableInt64 {
                value: d.as_millis().min(i64::MAX as u128) as i64,
            })
        };
        let i64n = |v: Option<i64>| v.map(|value| api::NullableInt64 { value });
        let i32n = |v: Option<i32>| v.map(|value| api::NullableInt32 { value });
        let b = |v: Option<bool>| v.map(|value| api::NullableBool { value });
        api::CreateStreamRequest {
            subject: subject.into(),
            name: name.into(),
            group: self.group.clone().unwrap_or_default(),
            replication_factor: self.replication_factor.unwrap_or(1),
            partitions: self.partitions.unwrap_or(1),
            retention_max_bytes: i64n(self.retention_max_bytes),
            retention_max_messages: i64n(self.retention_max_messages),
            retention_max_age: ms(self.retention_max_age),
            cleaner_interval: ms(self.cleaner_interval),
            segment_max_bytes: i64n(self.segment_max_bytes),
            segment_max_age: ms(self.segment_max_age),
            compact_max_goroutines: i32n(self.compact_max_goroutines),
            compact_enabled: b(self.compact_enabled),
            auto_pause_time: ms(self.auto_pause_time),
            auto_pause_disable_if_subscribers: b(self.auto_pause_disable_if_subscribers),
            min_isr: i32n(self.min_isr),
            optimistic_concurrency_control: b(self.optimistic_concurrency_control),
            encryption: b(self.encryption),
        }
    }
}

/// How a publish picks its partition when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// Partition 0, unless [`PublishOptions::partition`] says otherwise (the default).
    #[default]
    Explicit,
    /// CRC-32 (IEEE) of the key modulo the partition count, as go-liftbridge does, so that both
    /// clients place a key on the same partition. A message without a key goes to partition 0.
    Key,
    /// Each stream's partitions in turn.
    RoundRobin,
}

/// Options of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    /// The message key.
    pub key: Option<Bytes>,
    /// Headers.
    pub headers: HashMap<String, Bytes>,
    /// The partition, which wins over the partitioner.
    pub partition: Option<i32>,
    /// How to pick a partition when none is given.
    pub partitioner: Partitioner,
    /// When the ack comes. Default LEADER.
    pub ack_policy: AckPolicy,
    /// Optimistic concurrency: the offset this message must get. `None`: no expectation.
    pub expected_offset: Option<i64>,
    /// A correlation id (generated when empty). With `publish_async`, it must be unique among
    /// the messages in flight.
    pub correlation_id: Option<String>,
    /// How long to wait for the ack. Default 5 s.
    pub ack_wait: Duration,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            key: None,
            headers: HashMap::new(),
            partition: None,
            partitioner: Partitioner::Explicit,
            ack_policy: AckPolicy::Leader,
            expected_offset: None,
            correlation_id: None,
            ack_wait: Duration::from_secs(5),
        }
    }
}

impl PublishOptions {
    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the partition.
    pub fn partition(mut self, p: i32) -> Self {
        self.partition = Some(p);
        self
    }

    /// Sets the partitioner.
    pub fn partitioner(mut self, p: Partitioner) -> Self {
        self.partitioner = p;
        self
    }

    /// Sets the ack policy.
    pub fn ack_policy(mut self, p: AckPolicy) -> Self {
        self.ack_policy = p;
        self
    }

    /// Sets the expected offset (optimistic concurrency control).
    pub fn expected_offset(mut self, o: i64) -> Self {
        self.expected_offset = Some(o);
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets how long to wait for the ack.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only messages published from now on (the default).
    #[default]
    NewOnly,
    /// The oldest message.
    Earliest,
    /// The newest message.
    Latest,
    /// This offset.
    Offset(i64),
    /// The first message at or after this time (ns since the Unix epoch).
    Timestamp(i64),
}

/// Where a subscription stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopAt {
    /// Never: until the subscription is dropped (the default).
    #[default]
    Cancel,
    /// After this offset.
    Offset(i64),
    /// After the newest message at subscribe time.
    Latest,
    /// After the last message at or before this time (ns since the Unix epoch).
    Timestamp(i64),
}

/// Options of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The partition. Default 0.
    pub partition: i32,
    /// Where to start.
    pub start: StartAt,
    /// Where to stop.
    pub stop: StopAt,
    /// Newest first.
    pub reverse: bool,
    /// Resume the partition if it is paused.
    pub resume: bool,
    /// Read from any in-sync replica instead of the leader.
    pub read_isr_replica: bool,
}

impl SubscribeOptions {
    /// Sets the partition.
    pub fn partition(mut self, p: i32) -> Self {
        self.partition = p;
        self
    }

    /// Sets the start position.
    pub fn start(mut self, s: StartAt) -> Self {
        self.start = s;
        self
    }

    /// Sets the stop position.
    pub fn stop(mut self, s: StopAt) -> Self {
        self.stop = s;
        self
    }

    /// Reads newest first.
    pub fn reverse(mut self, r: bool) -> Self {
        self.reverse = r;
        self
    }

    /// Resumes a paused partition.
    pub fn resume(mut self, r: bool) -> Self {
        self.resume = r;
        self
    }

    /// Reads from any in-sync replica.
    pub fn read_isr_replica(mut self, r: bool) -> Self {
        self.read_isr_replica = r;
        self
    }

    pub(crate) fn to_request(&self, stream: &str) -> api::SubscribeRequest {
        let mut r = api::SubscribeRequest {
            stream: stream.into(),
            partition: self.partition,
            read_isr_replica: self.read_isr_replica,
            resume: self.resume,
            reverse: self.reverse,
            ..Default::default()
        };
        use api::{StartPosition as Sp, StopPosition as St};
        match self.start {
            StartAt::NewOnly => r.start_position = Sp::NewOnly as i32,
            StartAt::Earliest => r.start_position = Sp::Earliest as i32,
            StartAt::Latest => r.start_position = Sp::Latest as i32,
            StartAt::Offset(o) => {
                r.start_position = Sp::Offset as i32;
                r.start_offset = o;
            }
            StartAt::Timestamp(t) => {
                r.start_position = Sp::Timestamp as i32;
                r.start_timestamp = t;
            }
        }
        match self.stop {
            StopAt::Cancel => r.stop_position = St::StopOnCancel as i32,
            StopAt::Latest => r.stop_position = St::StopLatest as i32,
            StopAt::Offset(o) => {
                r.stop_position = St::StopOffset as i32;
                r.stop_offset = o;
            }
            StopAt::Timestamp(t) => {
                r.stop_position = St::StopTimestamp as i32;
                r.stop_timestamp = t;
            }
        }
        r
    }
}

/// Which partitions a pause or read-only change applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionSet(pub Vec<i32>);

impl PartitionSet {
    /// Every partition.
    pub fn all() -> Self {
        PartitionSet(Vec::new())
    }
}

/// The key partitioner: CRC-32 (IEEE) of `key` modulo `partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 1 {
        return 0;
    }
    (crc32fast::hash(key) % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_partitioner_is_crc32_ieee_modulo_count() {
        // CRC-32 (IEEE) of "123456789" is 0xCBF43926.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            partition_for_key(b"123456789", 7),
            (0xCBF4_3926u32 % 7) as i32
        );
        assert_eq!(partition_for_key(b"anything", 1), 0);
        assert_eq!(partition_for_key(b"anything", 0), 0);
    }

    #[test]
    fn a_broker_address_is_host_colon_port() {
        let b = BrokerInfo {
            id: "a".into(),
            host: "127.0.0.1".into(),
            port: 9292,
            partition_count: 0,
            leader_count: 0,
            metadata_leader: false,
        };
        assert_eq!(b.addr(), "127.0.0.1:9292");
    }

    #[test]
    fn options_map_to_the_wire() {
        let r = StreamOptions {
            retention_max_age: Some(Duration::from_secs(2)),
            ..StreamOptions::default().partitions(3).group("g")
        }
        .to_request("subj", "name");
        assert_eq!(
            (r.partitions, r.replication_factor, r.group.as_str()),
            (3, 1, "g")
        );
        assert_eq!(r.retention_max_age.unwrap().value, 2000);
        assert!(r.encryption.is_none());
        let s = SubscribeOptions::default()
            .start(StartAt::Offset(4))
            .stop(StopAt::Timestamp(9))
            .to_request("s");
        assert_eq!(
            (s.start_position, s.start_offset),
            (api::StartPosition::Offset as i32, 4)
        );
        assert_eq!(
            (s.stop_position, s.stop_timestamp),
            (api::StopPosition::StopTimestamp as i32, 9)
        );
    }
}
