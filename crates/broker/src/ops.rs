//! The operations behind each RPC, with Liftbridge's validation order and messages.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use commitlog::{Isolation, Reader, ReverseReader};
use futures_util::{FutureExt, Stream, StreamExt};
use liftbridge_proto::api::{self, AckPolicy, ack, publish_async_error};
use liftbridge_proto::internal::{self, Op, RaftLog};
use natsbridge::payload;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::broker::{Broker, CURSORS_STREAM, internal_message};
use crate::error::{BrokerError, Result};
use crate::partition::{Gather, Partition};

/// Names of the internal streams, which clients may not create or delete.
const RESERVED: [&str; 2] = [crate::broker::ACTIVITY_STREAM, CURSORS_STREAM];

/// How long a PublishAsync session waits for its outstanding acks once the client is done.
const ASYNC_DRAIN: Duration = Duration::from_secs(5);

/// A subscription: committed messages in order (or newest first when reversed), ending with an
/// error that says why it ended.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<api::Message>> + Send>>;

/// The most headers a published message may carry.
pub const MAX_HEADERS: usize = 1024;
/// The longest header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 1024;

/// Why a message got a `NOT_STORED` ack: its partition stopped on this leader first.
pub(crate) const NOT_STORED: &str =
    "the partition stopped on its leader before the message was stored";
/// Why a message got a `READONLY` ack.
pub(crate) const READONLY_NOT_STORED: &str = "readonly partition: the message was not stored";

/// A publish's headers: at most [`MAX_HEADERS`], with names of at most
/// [`MAX_HEADER_NAME_BYTES`]. Their values count toward the message's size like its value.
fn check_headers(headers: &std::collections::HashMap<String, bytes::Bytes>) -> Result<()> {
    if headers.len() > MAX_HEADERS {
        return Err(BrokerError::InvalidArgument(format!(
            "{} headers; at most {MAX_HEADERS} are allowed",
            headers.len()
        )));
    }
    if let Some(k) = headers.keys().find(|k| k.len() > MAX_HEADER_NAME_BYTES) {
        return Err(BrokerError::InvalidArgument(format!(
            "a header name of {} bytes; at most {MAX_HEADER_NAME_BYTES} are allowed",
            k.len()
        )));
    }
    Ok(())
}

fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(BrokerError::InvalidArgument("Name cannot be empty".into()));
    }
    // Names become folder names and NATS subject tokens.
    natsbridge::validate_stream_name(name)
        .map_err(|e| BrokerError::InvalidArgument(format!("Stream name is invalid: {e}")))
}

impl Broker {
    /// The first checks of a CreateStream, which come before its authorization: the name, the
    /// subject, and the reserved names.
    ///
    /// # Errors
    /// InvalidArgument.
    pub fn check_stream_names(&self, req: &api::CreateStreamRequest) -> Result<()> {
        check_stream_name(&req.name)?;
        if natsbridge::validate_subject(&req.subject).is_err() {
            return Err(BrokerError::InvalidArgument("Subject is invalid".into()));
        }
        self.check_outside_namespace("subject", &req.subject)?;
        // Partition n > 0 lives on `<subject>.<n>`: on the namespace's own subject (or a
        // wildcard matching it) that is inside the namespace.
        if req.partitions > 1 {
            self.check_outside_namespace("partition subject", &format!("{}.*", req.subject))?;
        }
        if RESERVED.contains(&req.name.as_str()) {
            return Err(BrokerError::InvalidArgument("Stream is reserved".into()));
        }
        Ok(())
    }

    /// Refuses a client-chosen subject inside the brokers' namespace, or a wildcard covering part
    /// of it, unless `streams.namespace.open` allows it.
    ///
    /// # Errors
    /// InvalidArgument.
    pub fn check_outside_namespace(&self, what: &str, subject: &str) -> Result<()> {
        if self.config().streams.namespace_open || !self.inner.subjects.reaches_namespace(subject) {
            return Ok(());
        }
        Err(BrokerError::InvalidArgument(format!(
            "{what} {subject:?} reaches the brokers' namespace {}.> (streams.namespace.open)",
            self.inner.subjects.namespace()
        )))
    }

    /// Checks a client-given ack inbox: empty (none), or a subject without wildcards outside
    /// the brokers' namespace.
    ///
    /// # Errors
    /// InvalidArgument.
    pub fn check_ack_inbox(&self, inbox: &str) -> Result<()> {
        if inbox.is_empty() {
            return Ok(());
        }
        natsbridge::validate_publish_subject(inbox)
            .map_err(|e| BrokerError::InvalidArgument(format!("ack inbox: {e}")))?;
        self.check_outside_namespace("ack inbox", inbox)
    }

    /// Whether a stream of that name exists.
    pub fn has_stream(&self, name: &str) -> bool {
        self.metadata().with_state(|f| f.stream(name).is_some())
    }

    /// Creates a stream; see the CreateStream RPC.
    ///
    /// # Errors
    /// InvalidArgument for a bad name, subject, replication factor or setting; AlreadyExists;
    /// FailedPrecondition for an encrypted stream on a server without the master key.
    pub async fn create_stream(&self, req: api::CreateStreamRequest) -> Result<()> {
        self.check_stream_names(&req)?;
        // The choice is recorded with the stream, so a later change of the server's default
        // never re-reads old data the other way (the original follows the current default).
        let encrypted = req
            .encryption
            .map_or(self.config().streams.encryption, |e| e.value);
        if encrypted && self.config().encryption_key.is_none() {
            return Err(BrokerError::FailedPrecondition(
                "Failed on preconditions for stream's encryption handler: \
                 LIFTBRIDGE_ENCRYPTION_KEY is not set on this server (16 or 32 bytes)"
                    .into(),
            ));
        }
        let n64 =
            |v: Option<api::NullableInt64>| v.map(|v| internal::NullableInt64 { value: v.value });
        let n32 =
            |v: Option<api::NullableInt32>| v.map(|v| internal::NullableInt32 { value: v.value });
        let nb =
            |v: Option<api::NullableBool>| v.map(|v| internal::NullableBool { value: v.value });
        let config = internal::StreamConfig {
            retention_max_bytes: n64(req.retention_max_bytes),
            retention_max_messages: n64(req.retention_max_messages),
            retention_max_age: n64(req.retention_max_age),
            cleaner_interval: n64(req.cleaner_interval),
            segment_max_bytes: n64(req.segment_max_bytes),
            segment_max_age: n64(req.segment_max_age),
            compact_max_goroutines: n32(req.compact_max_goroutines),
            compact_enabled: nb(req.compact_enabled),
            auto_pause_time: n64(req.auto_pause_time),
            auto_pause_disable_if_subscribers: nb(req.auto_pause_disable_if_subscribers),
            min_isr: n32(req.min_isr),
            optimistic_concurrency_control: nb(req.optimistic_concurrency_control),
            encryption: Some(internal::NullableBool { value: encrypted }),
        };
        // Refuse settings the log would refuse, before anything is recorded.
        let settings = self
            .config()
            .streams
            .settings(&config, self.config().min_insync_replicas);
        crate::partition::log_options(&settings, self.config().sync)
            .validate()
            .map_err(|e| BrokerError::InvalidArgument(e.to_string()))?;
        if settings.min_isr < 1 {
            return Err(BrokerError::InvalidArgument(format!(
                "minIsr must be at least 1, not {}",
                settings.min_isr
            )));
        }
        let max = self.config().max_partitions;
        if req.partitions < 0 || req.partitions > max {
            return Err(BrokerError::InvalidArgument(format!(
                "partitions must be from 0 (one) to {max} (streams.max.partitions), not {}",
                req.partitions
            )));
        }
        if req.partitions > 1
            && natsbridge::validate_subject(&natsbridge::partition_subject(&req.subject, 1))
                .is_err()
        {
            return Err(BrokerError::InvalidArgument(format!(
                "subject {:?} ends in '>', so it cannot be split into partitions (partition 1 \
                 would record {:?}); use one partition, or a subject without '>'",
                req.subject,
                natsbridge::partition_subject(&req.subject, 1)
            )));
        }
        for (what, v) in [
            ("retentionMaxBytes", settings.retention_max_bytes),
            ("retentionMaxMessages", settings.retention_max_messages),
        ] {
            if v < 0 {
                return Err(BrokerError::InvalidArgument(format!(
                    "{what} must not be negative, not {v}"
                )));
            }
        }
        for (what, v) in [
            ("retentionMaxAge", req.retention_max_age.map(|v| v.value)),
            ("segmentMaxBytes", req.segment_max_bytes.map(|v| v.value)),
            ("segmentMaxAge", req.segment_max_age.map(|v| v.value)),
            ("cleanerInterval", req.cleaner_interval.map(|v| v.value)),
            ("autoPauseTime", req.auto_pause_time.map(|v| v.value)),
        ] {
            if let Some(v) = v.filter(|v| *v < 0) {
                return Err(BrokerError::InvalidArgument(format!(
                    "{what} must not be negative, not {v}"
                )));
            }
        }
        let entry = self.create_stream_entry(&req, config)?;
        let rf = entry
            .create_stream_op
            .as_ref()
            .and_then(|o| o.stream.as_ref())
            .and_then(|s| s.partitions.first())
            .map_or(1, |p| p.replication_factor);
        // Only a stream's own minIsr is checked: the server-wide default
        // (`clustering.min.insync.replicas`) applies to every stream, of any replication
        // factor, as in Liftbridge.
        if req.min_isr.is_some() && settings.min_isr > rf {
            return Err(BrokerError::InvalidArgument(format!(
                "minIsr {} is more than the replication factor {rf}: nothing would ever commit",
                settings.min_isr
            )));
        }
        let applied = self.inner.ctx.propose(entry).await?;
        applied
            .result
            .map_err(metastore::service::MetaError::from)?;
        self.reconcile().await;
        for id in 0..req.partitions.max(1) {
            self.wait_partition_started(&req.name, id, Duration::from_secs(5))
                .await;
        }
        Ok(())
    }

    /// Deletes a stream and its data.
    ///
    /// # Errors
    /// InvalidArgument for a reserved stream, NotFound "stream does not exist".
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        if RESERVED.contains(&name) {
            return Err(BrokerError::InvalidArgument("Stream is reserved".into()));
        }
        let entry = RaftLog {
            op: Op::DeleteStream as i32,
            delete_stream_op: Some(internal::DeleteStreamOp {
                stream: name.into(),
            }),
            ..Default::default()
        };
        self.propose_stream_op(entry).await?;
        self.reconcile().await;
        Ok(())
    }

    async fn propose_stream_op(&self, entry: RaftLog) -> Result<()> {
        use metastore::OpError;
        use metastore::service::MetaError;
        // A refusal comes back either as the applied verdict or, forwarded, as an error.
        let verdict = match self.inner.ctx.propose(entry).await {
            Ok(a) => a.result,
            Err(MetaError::Op(e)) => Err(e),
            Err(e) => return Err(e.into()),
        };
        match verdict {
            Ok(()) => Ok(()),
            Err(OpError::NotFound(m)) => Err(BrokerError::NotFound(if m.contains("partition") {
                "partition does not exist".into()
            } else {
                "stream does not exist".into()
            })),
            Err(e) => Err(MetaError::from(e).into()),
        }
    }

    fn all_partitions(&self, name: &str, given: Vec<i32>) -> Result<Vec<i32>> {
        if !given.is_empty() {
            return Ok(given);
        }
        self.metadata()
            .with_state(|f| {
                f.stream(name)
                    .map(|s| s.partitions.keys().copied().collect())
            })
            .ok_or_else(|| BrokerError::NotFound("stream not found".into()))
    }

    /// Pauses partitions (all when `partitions` is empty).
    ///
    /// # Errors
    /// NotFound for an unknown stream or partition.
    pub async fn pause_stream(
        &self,
        name: &str,
        partitions: Vec<i32>,
        resume_all: bool,
    ) -> Result<()> {
        let partitions = self.all_partitions(name, partitions)?;
        let entry = RaftLog {
            op: Op::PauseStream as i32,
            pause_stream_op: Some(internal::PauseStreamOp {
                stream: name.into(),
                partitions,
                resume_all,
            }),
            ..Default::default()
        };
        self.propose_stream_op(entry).await?;
        self.reconcile().await;
        Ok(())
    }

    /// Sets or clears the read-only flag of partitions (all when `partitions` is empty).
    ///
    /// # Errors
    /// NotFound for an unknown stream or partition.
    pub async fn set_stream_readonly(
        &self,
        name: &str,
        partitions: Vec<i32>,
        readonly: bool,
    ) -> Result<()> {
        let partitions = self.all_partitions(name, partitions)?;
        let entry = RaftLog {
            op: Op::SetStreamReadonly as i32,
            set_stream_readonly_op: Some(internal::SetStreamReadonlyOp {
                stream: name.into(),
                partitions,
                readonly,
            }),
            ..Default::default()
        };
        self.propose_stream_op(entry).await?;
        self.reconcile().await;
        Ok(())
    }

    /// Starts a subscription. The caller sends the handshake frame first.
    ///
    /// # Errors
    /// As Liftbridge: InvalidArgument, NotFound "No such partition", FailedPrecondition
    /// "Server not partition leader", End "Stream is empty" for STOP_LATEST on an empty
    /// partition, InvalidArgument "Stop offset is before start offset"; Unavailable while
    /// the replica the metadata assigns here is still opening.
    pub async fn subscribe(&self, req: api::SubscribeRequest) -> Result<Subscription> {
        let consumer = req.consumer.clone().filter(|c| !c.group_id.is_empty());
        if let Some(c) = &consumer {
            if c.consumer_id.is_empty() {
                return Err(BrokerError::InvalidArgument(
                    "Consumer id cannot be empty when group id is provided".into(),
                ));
            }
            if req.read_isr_replica {
                return Err(BrokerError::InvalidArgument(
                    "Consumer groups not compatible with ReadISRReplica".into(),
                ));
            }
        }
        let meta = self
            .metadata()
            .with_state(|f| f.partition(&req.stream, req.partition).cloned());
        let Some(meta) = meta else {
            return Err(BrokerError::NotFound("No such partition".into()));
        };
        if meta.leader != self.id() {
            if !req.read_isr_replica {
                return Err(BrokerError::FailedPrecondition(
                    "Server not partition leader".into(),
                ));
            }
            // Liftbridge serves any replica here; only an in-sync one is known to be current.
            if !meta.isr.iter().any(|r| r == self.id()) {
                return Err(BrokerError::FailedPrecondition(
                    "Server not in partition ISR".into(),
                ));
            }
        }
        if meta.paused && req.resume {
            self.resume_for_publish(&req.stream, req.partition)
                .await
                .map_err(|e| BrokerError::Internal(format!("failed to resume partition: {e}")))?;
        }
        let refused = self
            .inner
            .refused
            .lock()
            .get(&(req.stream.clone(), req.partition))
            .cloned();
        if let Some(why) = refused {
            return Err(BrokerError::FailedPrecondition(why));
        }
        let Some(p) = self.opened(&req.stream, req.partition, &meta).await else {
            // The metadata lists this server, but its replica is not running yet (it is
            // starting, or restarting under a new leader): a retry will find it.
            return Err(BrokerError::Unavailable(
                "Partition is not open on this server yet; retry".into(),
            ));
        };
        if p.role.paused {
            return Err(BrokerError::FailedPrecondition(
                "Partition is paused".into(),
            ));
        }
        match consumer {
            Some(c) => {
                self.check_group_epoch(&c).await?;
                crate::groups::fence(&p, &c, || self.open_subscription(&p, &req))
            }
            None => self.open_subscription(&p, &req),
        }
    }

    /// The subscription itself, on an open replica.
    fn open_subscription(
        &self,
        p: &Arc<Partition>,
        req: &api::SubscribeRequest,
    ) -> Result<Subscription> {
        let p = p.clone();
        let (start, stop) = Broker::positions(&p, req)?;
        let guard = SubscriberGuard::new(&p);
        if req.reverse {
            let hw = p.log.high_watermark();
            let from = start.min(hw);
            if let Some(s) = stop
                && s > from
                && hw >= 0
            {
                return Err(BrokerError::InvalidArgument(format!(
                    "Stop offset is after start offset for a reverse subscription: {s} > {from}"
                )));
            }
            let reader = p.log.reverse_reader(from, Isolation::Committed);
            return Ok(reverse_stream(self.clone(), p, reader, stop, guard));
        }
        if let Some(s) = stop
            && s < start
        {
            return Err(BrokerError::InvalidArgument(format!(
                "Stop offset is before start offset: {s} < {start}"
            )));
        }
        let reader = p.log.reader(start, Isolation::Committed);
        Ok(forward_stream(self.clone(), p, reader, stop, guard))
    }

    /// The local replica of a partition, running in the role `meta` gives it. When the
    /// replica is missing or behind the metadata, reconciles once (the metadata may have
    /// changed a moment ago) before giving up.
    async fn opened(
        &self,
        stream: &str,
        id: i32,
        meta: &metastore::fsm::PartitionState,
    ) -> Option<Arc<Partition>> {
        let current = |p: &Arc<Partition>| {
            p.role.leader_id == meta.leader && p.role.leader_epoch == meta.leader_epoch
        };
        if let Some(p) = self.partition(stream, id).filter(current) {
            return Some(p);
        }
        self.reconcile().await;
        self.partition(stream, id).filter(current)
    }

    /// Why a subscription's log went away: deleted, paused, its leader changed, or closed.
    fn closed_reason(&self, p: &Partition) -> BrokerError {
        if self.is_shutting_down() {
            return BrokerError::Unavailable("the server is shutting down".into());
        }
        let state = self.metadata().with_state(|f| {
            f.partition(&p.stream, p.id)
                .map(|m| (m.paused, m.leader.clone(), m.leader_epoch))
        });
        match state {
            None => BrokerError::NotFound("Stream deleted".into()),
            Some((true, _, _)) => BrokerError::FailedPrecondition("Partition paused".into()),
            // A new leader or epoch: the partition runs again under it; clients resubscribe.
            Some((false, leader, epoch))
                if leader != p.role.leader_id || epoch != p.role.leader_epoch =>
            {
                BrokerError::Unavailable(format!(
                    "the partition's leader changed (now {leader}); subscribe again"
                ))
            }
            Some(_) => BrokerError::Internal("Partition closed".into()),
        }
    }

    fn read_error(&self, p: &Partition, e: commitlog::Error) -> BrokerError {
        match e {
            commitlog::Error::EndOfReadonly => BrokerError::End("End of readonly partition".into()),
            commitlog::Error::Closed => self.closed_reason(p),
            e => BrokerError::internal("reading the partition", e),
        }
    }

    /// Checks a publish and picks its subject; resumes a paused partition.
    async fn prepare_publish(&self, req: &api::PublishRequest) -> Result<String> {
        if req.stream.is_empty() {
            return Err(BrokerError::InvalidArgument("no stream provided".into()));
        }
        check_headers(&req.headers)?;
        self.check_ack_inbox(&req.ack_inbox)?;
        if self.inner.ctx.disk.is_low() {
            return Err(self.inner.ctx.disk.refusal());
        }
        let found = self.metadata().with_state(|f| {
            f.stream(&req.stream).map(|s| {
                (
                    s.subject.clone(),
                    s.partitions.get(&req.partition).map(|p| p.readonly),
                    s.config.optimistic_concurrency_control.map(|v| v.value),
                )
            })
        });
        let Some((subject, partition, occ)) = found else {
            return Err(BrokerError::NotFound(format!(
                "no such stream: {}",
                req.stream
            )));
        };
        let Some(readonly) = partition else {
            return Err(BrokerError::NotFound(format!(
                "no such partition: {}",
                req.partition
            )));
        };
        if readonly {
            return Err(BrokerError::FailedPrecondition(format!(
                "readonly partition: {}",
                req.partition
            )));
        }
        let occ = occ.unwrap_or(self.config().streams.concurrency_control);
        if occ && req.ack_policy == AckPolicy::None as i32 {
            return Err(BrokerError::InvalidArgument(
                "stream with concurrency control must have AckPolicy set".into(),
            ));
        }
        self.resume_for_publish(&req.stream, req.partition).await?;
        Ok(natsbridge::partition_subject(&subject, req.partition))
    }

    fn envelope_of(req: api::PublishRequest, subject: &str) -> api::Message {
        api::Message {
            key: req.key,
            value: req.value,
            stream: req.stream,
            partition: req.partition,
            subject: subject.into(),
            headers: req.headers,
            ack_inbox: req.ack_inbox,
            correlation_id: req.correlation_id,
            ack_policy: req.ack_policy,
            offset: req.expected_offset,
            ..Default::default()
        }
    }

    /// A unary publish. Returns the ack, or `None` when the policy is NONE or there is no
    /// deadline to wait within (as Liftbridge).
    ///
    /// # Errors
    /// InvalidArgument, NotFound, FailedPrecondition (read-only), Timeout, and
    /// [`BrokerError::AckRefused`] for an ack with an error (TOO_LARGE as InvalidArgument).
    pub async fn publish(
        &self,
        req: api::PublishRequest,
        deadline: Option<Duration>,
    ) -> Result<Option<api::Ack>> {
        let started = std::time::Instant::now();
        let policy = match AckPolicy::try_from(req.ack_policy) {
            Ok(AckPolicy::All) => "all",
            Ok(AckPolicy::None) => "none",
            _ => "leader",
        };
        let subject = self.prepare_publish(&req).await?;
        let msg = Self::envelope_of(req, &subject);
        let ack = self.publish_envelope(&subject, msg, deadline).await?;
        if ack
            .as_ref()
            .is_some_and(|a| a.ack_error == ack::Error::Ok as i32)
        {
            self.metrics()
                .acked(policy, started.elapsed().as_secs_f64());
        }
        match ack.as_ref().map(|a| ack::Error::try_from(a.ack_error)) {
            Some(Ok(ack::Error::TooLarge)) => Err(BrokerError::InvalidArgument(
                "Message exceeds maximum allowed size".into(),
            )),
            Some(Ok(ack::Error::IncorrectOffset)) => {
                Err(BrokerError::AckRefused("Incorrect expected offset".into()))
            }
            Some(Ok(ack::Error::Encryption)) => {
                Err(BrokerError::Internal("Failed to encrypt message".into()))
            }
            Some(Ok(ack::Error::Readonly)) => {
                Err(BrokerError::FailedPrecondition(READONLY_NOT_STORED.into()))
            }
            Some(Ok(ack::Error::NotStored)) => Err(BrokerError::Unavailable(NOT_STORED.into())),
            // This server sends UNKNOWN only when the leader could not store the message.
            Some(Ok(ack::Error::Unknown)) => Err(BrokerError::Unavailable(
                "the partition's leader could not store the message (a disk error; see its log)"
                    .into(),
            )),
            Some(Err(_)) => Err(BrokerError::AckRefused("Unknown ack error".into())),
            _ => Ok(ack),
        }
    }

    /// Publishes to a raw NATS subject. Returns the first ack, if waited for.
    ///
    /// # Errors
    /// InvalidArgument for a bad subject; Timeout.
    pub async fn publish_to_subject(
        &self,
        req: api::PublishToSubjectRequest,
        deadline: Option<Duration>,
    ) -> Result<Option<api::Ack>> {
        if natsbridge::validate_publish_subject(&req.subject).is_err() {
            return Err(BrokerError::InvalidArgument("Subject is invalid".into()));
        }
        self.check_outside_namespace("subject", &req.subject)?;
        self.check_ack_inbox(&req.ack_inbox)?;
        check_headers(&req.headers)?;
        let msg = api::Message {
            key: req.key,
            value: req.value,
            subject: req.subject.clone(),
            headers: req.headers,
            ack_inbox: req.ack_inbox,
            correlation_id: req.correlation_id,
            ack_policy: req.ack_policy,
            offset: -1,
            ..Default::default()
        };
        self.publish_envelope(&req.subject, msg, deadline).await
    }

    /// Runs one PublishAsync session: reads requests until `input` ends, answers each with an
    /// ack or an error on `out`, then waits up to 5 s for outstanding acks.
    ///
    /// At most `publish_async_max_inflight` messages of the session wait for their ack: at the
    /// bound no request is read until acks come in, so HTTP/2 flow control holds the publisher
    /// back. Every ack already in is forwarded in the same pass. A place whose ack never comes
    /// (an ALL ack the leader forgot after `all_ack_max_wait`) is freed after that wait and
    /// [`ASYNC_DRAIN`] more.
    pub async fn publish_async<S>(&self, mut input: S, out: mpsc::Sender<api::PublishResponse>)
    where
        S: Stream<Item = api::PublishRequest> + Send + Unpin,
    {
        let inbox = self.inner.subjects.ack_inbox();
        let mut acks = match self.inner.publishes.subscribe(&inbox).await {
            Ok(s) => s,
            Err(e) => {
                let _ = out
                    .send(async_error(
                        String::new(),
                        publish_async_error::Code::Internal,
                        format!("failed to subscribe to the ack inbox: {e}"),
                    ))
                    .await;
                return;
            }
        };
        // Acks from partitions this broker leads arrive in process; others through NATS.
        let (local_tx, mut local) = mpsc::unbounded_channel();
        self.inner.local_acks.open_session(&inbox, local_tx);
        let _session = SessionGuard(self.inner.local_acks.clone(), inbox.clone());
        let mut shutdown = self.shutdown_signal();
        let max_inflight = self.inner.cfg.publish_async_max_inflight.max(1);
        let forget_after = self.inner.cfg.all_ack_max_wait + ASYNC_DRAIN;
        let mut waiting = Waiting::default();
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Streams this session sent ack-policy NONE messages to: an error ack for one of those
        // holds no place but is forwarded; any other unawaited ack (another stream on the same
        // subject acks the same inbox) is no answer to this session's publishes.
        let mut none_streams: HashSet<String> = HashSet::new();
        let mut input_done = false;
        let drain_deadline = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
        tokio::pin!(drain_deadline);
        loop {
            if input_done && waiting.count == 0 {
                break;
            }
            tokio::select! {
                req = input.next(), if !input_done && waiting.count < max_inflight => {
                    // The requests already received go on together, so that they can be
                    // appended as one batch, within the in-flight bound.
                    let mut reqs = Vec::from_iter(req);
                    let mut ended = reqs.is_empty();
                    let cfg = &self.inner.cfg;
                    let mut fill = Gather::new(cfg.batch_max_messages, cfg.batch_max_bytes);
                    reqs.iter().for_each(|r| fill.add(r.value.len()));
                    while !ended && fill.room() && waiting.count + reqs.len() < max_inflight {
                        match input.next().now_or_never() {
                            Some(Some(req)) => {
                                fill.add(req.value.len());
                                reqs.push(req);
                            }
                            Some(None) => ended = true,
                            None => break,
                        }
                    }
                    match self.publish_session_batch(reqs, &inbox, &out, &mut none_streams).await {
                        Some(ids) => {
                            let now = tokio::time::Instant::now();
                            ids.into_iter().for_each(|(stream, ids)| waiting.add(stream, ids, now));
                        }
                        None => return,
                    }
                    if ended {
                        input_done = true;
                        drain_deadline.as_mut().reset(tokio::time::Instant::now() + ASYNC_DRAIN);
                    }
                },
                a = async {
                    tokio::select! {
                        a = local.recv() => a.map(Some),
                        m = acks.next() => m.map(|m| payload::decode::<api::Ack>(&m.payload).ok()),
                    }
                } => {
                    let Some(a) = a else { break };
                    // Every ack already in goes on in this pass, not one per pass.
                    let mut ready: Vec<api::Ack> = a.into_iter().collect();
                    while ready.len() < ACK_BURST {
                        if let Ok(a) = local.try_recv() {
                            ready.push(a);
                            continue;
                        }
                        match acks.next().now_or_never() {
                            Some(Some(m)) => ready.extend(payload::decode::<api::Ack>(&m.payload).ok()),
                            _ => break,
                        }
                    }
                    for a in ready {
                        // An error ack for a message with ack policy NONE is forwarded, but
                        // held no place; an ack this session awaits from no such stream is
                        // dropped.
                        if !waiting.answered(&a.correlation_id, &a.stream)
                            && (a.ack_error == ack::Error::Ok as i32
                                || !none_streams.contains(&a.stream))
                        {
                            continue;
                        }
                        if out.send(ack_response(a)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = expiry.tick(), if waiting.count > 0 => {
                    if let Some(before) = tokio::time::Instant::now().checked_sub(forget_after) {
                        waiting.expire(before);
                    }
                }
                _ = &mut drain_deadline, if input_done => break,
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Publishes a PublishAsync session's requests, in order, with acks to `inbox`. Runs of
    /// requests to the same subject are published together. Errors are answered on `out`.
    /// Returns the correlation ids of the messages that wait for an ack, or `None` once `out`
    /// is closed.
    async fn publish_session_batch(
        &self,
        reqs: Vec<api::PublishRequest>,
        inbox: &str,
        out: &mpsc::Sender<api::PublishResponse>,
        none_streams: &mut HashSet<String>,
    ) -> Option<Vec<(String, Vec<String>)>> {
        let mut run: Option<Run> = None;
        let mut waiting = Vec::new();
        let mut reqs = reqs.into_iter().peekable();
        while let Some(req) = reqs.next() {
            let cid = req.correlation_id.clone();
            let wants_ack = req.ack_policy != AckPolicy::None as i32;
            match self.prepare_publish(&req).await {
                Ok(subject) => {
                    let mut msg = Self::envelope_of(req, &subject);
                    msg.ack_inbox = inbox.to_owned();
                    let r = run.get_or_insert_with(|| Run {
                        subject,
                        msgs: Vec::new(),
                        replies: Vec::new(),
                    });
                    r.replies.push((cid, wants_ack));
                    r.msgs.push(msg);
                }
                Err(e) => {
                    let code = match &e {
                        BrokerError::InvalidArgument(_) => publish_async_error::Code::BadRequest,
                        BrokerError::NotFound(_) => publish_async_error::Code::NotFound,
                        BrokerError::FailedPrecondition(_) => publish_async_error::Code::Readonly,
                        _ => publish_async_error::Code::Internal,
                    };
                    out.send(async_error(cid, code, e.to_string())).await.ok()?;
                }
            }
            // The run goes on while the next request is for the same partition, hence the same
            // subject.
            let next_joins = match (&run, reqs.peek()) {
                (Some(r), Some(next)) => r
                    .msgs
                    .first()
                    .is_some_and(|m| m.stream == next.stream && m.partition == next.partition),
                _ => false,
            };
            if next_joins {
                continue;
            }
            if let Some(Run {
                subject,
                msgs,
                replies,
            }) = run.take()
            {
                let stream = msgs.first().map(|m| m.stream.clone()).unwrap_or_default();
                let results = self.nats_publish_all(&subject, msgs).await;
                let mut acked = Vec::new();
                for (r, (cid, wants_ack)) in results.into_iter().zip(replies) {
                    match r {
                        Ok(()) if wants_ack => acked.push(cid),
                        Ok(()) => {
                            if !none_streams.contains(&stream) {
                                none_streams.insert(stream.clone());
                            }
                        }
                        Err(e) => {
                            let r = async_error(
                                cid,
                                publish_async_error::Code::Internal,
                                e.to_string(),
                            );
                            out.send(r).await.ok()?;
                        }
                    }
                }
                if !acked.is_empty() {
                    waiting.push((stream, acked));
                }
            }
        }
        Some(waiting)
    }

    /// FetchMetadata: brokers, the requested streams (all when none), and groups.
    pub async fn fetch_metadata(
        &self,
        req: api::FetchMetadataRequest,
        deadline: Option<Duration>,
    ) -> api::FetchMetadataResponse {
        let mut brokers = self
            .brokers(deadline.unwrap_or(Duration::from_secs(3)))
            .await;
        if let Some(leader) = self.metadata().status().leader {
            for b in &mut brokers {
                b.metadata_leader = metastore::service::raft_id(&b.id) == leader;
            }
        }
        let stream_metadata = self.metadata().with_state(|f| {
            let names: Vec<String> = if req.streams.is_empty() {
                f.streams()
                    .values()
                    .filter(|s| !s.tombstoned)
                    .map(|s| s.name.clone())
                    .collect()
            } else {
                req.streams.clone()
            };
            names
                .into_iter()
                .map(|name| match f.stream(&name) {
                    None => api::StreamMetadata {
                        name,
                        error: api::stream_metadata::Error::UnknownStream as i32,
                        ..Default::default()
                    },
                    Some(s) => api::StreamMetadata {
                        name,
                        subject: s.subject.clone(),
                        error: 0,
                        creation_timestamp: s.creation_timestamp,
                        partitions: s
                            .partitions
                            .values()
                            .map(|p| (p.id, self.partition_metadata(&s.name, p)))
                            .collect(),
                    },
                })
                .collect()
        });
        let group_metadata = self.group_metadata(req.groups, req.all_groups);
        api::FetchMetadataResponse {
            brokers,
            stream_metadata,
            group_metadata,
        }
    }

    fn partition_metadata(
        &self,
        stream: &str,
        p: &metastore::PartitionState,
    ) -> api::PartitionMetadata {
        let mut m = api::PartitionMetadata {
            id: p.id,
            leader: p.leader.clone(),
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
            paused: p.paused,
            readonly: p.readonly,
            high_watermark: -1,
            newest_offset: -1,
            ..Default::default()
        };
        if let Some(local) = self.partition(stream, p.id) {
            m.high_watermark = local.log.high_watermark();
            m.newest_offset = local.log.newest_offset();
            let s = *local.stats.lock();
            m.messages_received_timestamps = Some(s.received.to_api());
            m.pause_timestamps = Some(s.paused.to_api());
            m.readonly_timestamps = Some(s.readonly.to_api());
        }
        m
    }

    /// FetchPartitionMetadata, answered by the partition's leader.
    ///
    /// # Errors
    /// NotFound "partition not found"; FailedPrecondition when this server does not lead it.
    pub fn fetch_partition_metadata(
        &self,
        stream: &str,
        id: i32,
    ) -> Result<api::PartitionMetadata> {
        let meta = self
            .metadata()
            .with_state(|f| f.partition(stream, id).cloned())
            .ok_or_else(|| BrokerError::NotFound("partition not found".into()))?;
        if meta.leader != self.id() {
            return Err(BrokerError::FailedPrecondition(
                "The request should be sent to partition leader".into(),
            ));
        }
        Ok(self.partition_metadata(stream, &meta))
    }

    /// The cursors partition of a cursor key, and checks that this server leads it.
    fn cursor_partition(&self, key: &str) -> Result<(i32, String)> {
        let found = self.metadata().with_state(|f| {
            f.stream(CURSORS_STREAM)
                .map(|s| (s.partitions.len() as u32, s.subject.clone()))
        });
        let Some((n, subject)) = found.filter(|(n, _)| *n > 0) else {
            return Err(BrokerError::Internal(
                "Cursors stream does not exist".into(),
            ));
        };
        let partition = (crc32fast::hash(key.as_bytes()) % n) as i32;
        let leads = self.metadata().with_state(|f| {
            f.partition(CURSORS_STREAM, partition)
                .is_some_and(|p| p.leader == self.id())
        });
        if !leads {
            return Err(BrokerError::FailedPrecondition(format!(
                "Server not leader for cursors partition {partition}"
            )));
        }
        Ok((
            partition,
            natsbridge::partition_subject(&subject, partition),
        ))
    }

    fn cursor_key(stream: &str, partition: i32, cursor_id: &str) -> Result<String> {
        if stream.is_empty() {
            return Err(BrokerError::InvalidArgument("No stream provided".into()));
        }
        if cursor_id.is_empty() {
            return Err(BrokerError::InvalidArgument("No cursorId provided".into()));
        }
        Ok(format!("{cursor_id},{stream},{partition}"))
    }

    /// Stores a cursor in `__cursors`, waiting for it to commit.
    ///
    /// # Errors
    /// InvalidArgument, Internal (no cursors stream, publish failure), FailedPrecondition (not
    /// this cursor's partition leader).
    pub async fn set_cursor(&self, req: api::SetCursorRequest) -> Result<()> {
        let key = Self::cursor_key(&req.stream, req.partition, &req.cursor_id)?;
        let (partition, subject) = self.cursor_partition(&key)?;
        self.resume_for_publish(CURSORS_STREAM, partition).await?;
        let of = (req.stream.clone(), req.partition, req.cursor_id.clone());
        let value = internal::Cursor {
            stream: req.stream,
            partition: req.partition,
            cursor_id: req.cursor_id,
            offset: req.offset,
        }
        .encode_to_vec();
        let msg = internal_message(
            CURSORS_STREAM,
            &subject,
            Bytes::from(key.clone()),
            Bytes::from(value),
            AckPolicy::All,
        );
        let ack = self
            .publish_envelope(&subject, msg, Some(Duration::from_secs(5)))
            .await
            .map_err(|e| BrokerError::Internal(format!("failed to set cursor: {e}")))?;
        match ack {
            Some(a) if a.ack_error == ack::Error::Ok as i32 => {
                self.cache_cursor(of, req.offset);
                Ok(())
            }
            _ => Err(BrokerError::Internal("failed to set cursor".into())),
        }
    }

    /// Reads a cursor; -1 when none is set.
    ///
    /// # Errors
    /// As [`set_cursor`](Broker::set_cursor).
    pub async fn fetch_cursor(&self, req: api::FetchCursorRequest) -> Result<i64> {
        let key = Self::cursor_key(&req.stream, req.partition, &req.cursor_id)?;
        let (partition, _) = self.cursor_partition(&key)?;
        let of = (req.stream, req.partition, req.cursor_id);
        if let Some(o) = self.inner.cursor_cache.lock().get(&of) {
            return Ok(o);
        }
        self.resume_for_publish(CURSORS_STREAM, partition).await?;
        self.wait_partition_started(CURSORS_STREAM, partition, Duration::from_secs(5))
            .await;
        let Some(p) = self.partition(CURSORS_STREAM, partition) else {
            return Err(BrokerError::Internal(
                "cursors partition is not running".into(),
            ));
        };
        let start = p.log.high_watermark();
        let key2 = key.clone();
        let found = tokio::task::spawn_blocking(move || -> commitlog::Result<i64> {
            let mut r = p.log.reverse_reader(start, Isolation::Committed);
            for _ in 0..u32::MAX {
                let Some(rec) = r.next()? else { break };
                if rec.key.as_deref() == Some(key2.as_bytes())
                    && let Ok(c) = internal::Cursor::decode(rec.value.as_ref())
                {
                    return Ok(c.offset);
                }
            }
            Ok(-1)
        })
        .await
        .map_err(|e| BrokerError::internal("reading cursors", e))?
        .map_err(|e| BrokerError::internal("reading cursors", e))?;
        if found >= 0 {
            self.cache_cursor(of, found);
        }
        Ok(found)
    }

    /// Remembers a cursor in the bounded cache.
    fn cache_cursor(&self, of: crate::cursor_cache::CursorOf, offset: i64) {
        self.inner.cursor_cache.lock().insert(of, offset);
    }
}

fn async_error(
    correlation_id: String,
    code: publish_async_error::Code,
    message: String,
) -> api::PublishResponse {
    api::PublishResponse {
        ack: None,
        async_error: Some(api::PublishAsyncError {
            code: code as i32,
            message,
        }),
        correlation_id,
    }
}

/// PublishAsync requests to one partition, prepared and waiting to be published together.
struct Run {
    subject: String,
    msgs: Vec<api::Message>,
    /// For each message, its correlation id and whether it waits for an ack. (A run's messages
    /// are of one stream and partition.)
    replies: Vec<(String, bool)>,
}

/// The most acks a PublishAsync session forwards in one pass of its loop.
const ACK_BURST: usize = 4096;

/// A PublishAsync session's answer to an ack: the ack, or its error.
fn ack_response(a: api::Ack) -> api::PublishResponse {
    match ack::Error::try_from(a.ack_error) {
        Ok(ack::Error::Ok) => api::PublishResponse {
            correlation_id: a.correlation_id.clone(),
            ack: Some(a),
            async_error: None,
        },
        other => {
            let (code, text) = match other {
                Ok(ack::Error::IncorrectOffset) => (
                    publish_async_error::Code::IncorrectOffset,
                    "incorrect expected offset",
                ),
                Ok(ack::Error::TooLarge) => (
                    publish_async_error::Code::BadRequest,
                    "message exceeds maximum allowed size",
                ),
                Ok(ack::Error::Encryption) => (
                    publish_async_error::Code::EncryptionFailed,
                    "failed to encrypt message",
                ),
                Ok(ack::Error::Readonly) => {
                    (publish_async_error::Code::Readonly, READONLY_NOT_STORED)
                }
                Ok(ack::Error::NotStored) => (publish_async_error::Code::Internal, NOT_STORED),
                _ => (publish_async_error::Code::Unknown, "unknown ack error"),
            };
            let cid = a.correlation_id.clone();
            let mut r = async_error(cid, code, text.into());
            r.ack = Some(api::Ack {
                correlation_id: String::new(),
                ..a
            });
            r
        }
    }
}

/// The messages of a PublishAsync session that wait for their ack, by correlation id, with
/// when each was sent.
#[derive(Default)]
struct Waiting {
    /// Send times of the messages awaiting an ack, by stream and correlation id.
    by_stream: HashMap<String, HashMap<String, std::collections::VecDeque<tokio::time::Instant>>>,
    count: usize,
}

impl Waiting {
    /// Messages of `stream` with correlation ids `ids`, sent at `sent`.
    fn add(&mut self, stream: String, ids: Vec<String>, sent: tokio::time::Instant) {
        self.count += ids.len();
        let by_id = self.by_stream.entry(stream).or_default();
        for id in ids {
            by_id.entry(id).or_default().push_back(sent);
        }
    }

    /// An ack for `id` from `stream` came: frees the oldest place a message with that id held
    /// there. False when none waited (an error ack for a message with ack policy NONE, or an
    /// ack from another stream on the same subject).
    fn answered(&mut self, id: &str, stream: &str) -> bool {
        let Some(by_id) = self.by_stream.get_mut(stream) else {
            return false;
        };
        let Some(sent) = by_id.get_mut(id) else {
            return false;
        };
        sent.pop_front();
        if sent.is_empty() {
            by_id.remove(id);
            if by_id.is_empty() {
                self.by_stream.remove(stream);
            }
        }
        self.count -= 1;
        true
    }

    /// Frees the places of messages sent before `before`, whose ack will not come.
    fn expire(&mut self, before: tokio::time::Instant) {
        let mut freed = 0;
        self.by_stream.retain(|_, by_id| {
            by_id.retain(|_, sent| {
                while sent.front().is_some_and(|t| *t < before) {
                    sent.pop_front();
                    freed += 1;
                }
                !sent.is_empty()
            });
            !by_id.is_empty()
        });
        self.count -= freed;
    }
}

/// Ends a PublishAsync session's in-process ack routing when the session ends.
struct SessionGuard(Arc<crate::acks::LocalAcks>, String);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.close_session(&self.1);
    }
}

/// Counts a partition's subscribers while alive (auto-pause may depend on it).
struct SubscriberGuard(Arc<std::sync::atomic::AtomicUsize>);

impl SubscriberGuard {
    fn new(p: &Partition) -> Self {
        p.subscribers.fetch_add(1, Ordering::AcqRel);
        SubscriberGuard(p.subscribers.clone())
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn forward_stream(
    broker: Broker,
    p: Arc<Partition>,
    mut reader: Reader,
    stop: Option<i64>,
    guard: SubscriberGuard,
) -> Subscription {
    let mut done = false;
    let mut reached = false;
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        let _ = &guard;
        if done {
            return Poll::Ready(None);
        }
        if reached {
            done = true;
            return Poll::Ready(Some(Err(BrokerError::End("Stop offset reached".into()))));
        }
        match reader.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(r)) => {
                // Past the stop offset: it was compacted away (or, for a stop timestamp, the
                // offset before the first later message was). The subscription ends there.
                if stop.is_some_and(|s| r.offset > s) {
                    done = true;
                    return Poll::Ready(Some(Err(BrokerError::End("Stop offset reached".into()))));
                }
                if stop.is_some_and(|s| r.offset >= s) {
                    reached = true;
                }
                let m = Broker::to_api(&p, r);
                done |= m.is_err();
                Poll::Ready(Some(m))
            }
            Poll::Ready(Err(e)) => {
                done = true;
                Poll::Ready(Some(Err(broker.read_error(&p, e))))
            }
        }
    }))
}

fn reverse_stream(
    broker: Broker,
    p: Arc<Partition>,
    mut reader: ReverseReader,
    stop: Option<i64>,
    guard: SubscriberGuard,
) -> Subscription {
    let mut done = false;
    Box::pin(futures_util::stream::poll_fn(move |_cx| {
        let _ = &guard;
        if done {
            return Poll::Ready(None);
        }
        match reader.next() {
            Ok(Some(r)) => {
                // Before the stop offset: it was compacted away; the subscription ends there.
                if stop.is_some_and(|s| r.offset < s) {
                    done = true;
                    return Poll::Ready(None);
                }
                if stop.is_some_and(|s| r.offset <= s) {
                    done = true;
                }
                let m = Broker::to_api(&p, r);
                done |= m.is_err();
                Poll::Ready(Some(m))
            }
            // Past the oldest message: a clean end.
            Ok(None) => {
                done = true;
                Poll::Ready(None)
            }
            Err(e) => {
                done = true;
                Poll::Ready(Some(Err(broker.read_error(&p, e))))
            }
        }
    }))
}
