//! `natsbridge`: Liftbridge's NATS layer.
//!
//! - [`envelope`]: the frame around structured messages (publishes with keys and acks, acks,
//!   replication, Raft join, metadata propagation and more: 15 message types), with an optional
//!   CRC-32C. Decoding arbitrary bytes never panics.
//! - [`payload`]: which protobuf message each type carries, so encoding picks the type for you.
//! - [`subjects`]: every subject under a namespace, and subject validation with clear errors.
//! - [`connection`]: named NATS connections with Liftbridge's reconnect policy, publish with
//!   headers, subscribe and queue subscribe, and requests with timeouts.
//!
//! It works with any NATS server: the embedded one (`natsd`) or a real `nats-server` cluster.

pub mod connection;
pub mod envelope;
pub mod payload;
pub mod subjects;

pub use connection::{
    Connection, ConnectionStats, Event, EventHook, EventKind, Headers, Message, NatsConfig,
    NatsError, NatsTls, Subscriber, connection_name, redact_url, redact_urls, url_has_credentials,
};
pub use envelope::{EnvelopeError, MsgType, ReplicationResponse};
pub use subjects::{
    MAX_STREAM_NAME_BYTES, MAX_SUBJECT_BYTES, SubjectError, Subjects, has_wildcards,
    partition_subject, subject_matches, unique_id, validate_name, validate_publish_subject,
    validate_stream_name, validate_subject,
};
