//! `broker`: a liftbridge-rs server's data plane, without its gRPC face.
//!
//! A [`Broker`] connects to NATS, runs this server's member of the metadata group
//! (`metastore`), and keeps one commit log (`commitlog`) per partition it holds. While it leads
//! a partition, it records the partition's NATS subject: every message published there, by a
//! Liftbridge client (an envelope with key, headers and ack details) or by any NATS client (a
//! plain payload), is appended, and acks go to the publisher's inbox by its ack policy. While
//! it follows, it copies the leader's log over NATS; the leader commits once every in-sync
//! replica holds a message, and a silent leader is replaced by an in-sync follower.
//!
//! Each RPC of the API has an operation here ([`Broker::create_stream`],
//! [`Broker::subscribe`], [`Broker::publish`], ...) that returns a [`BrokerError`] in the words
//! Liftbridge uses; the `api` crate maps those to gRPC status codes.
//!
//! This crate never knows gRPC, and never reads configuration files or flags.

mod acks;
mod activity;
mod broker;
mod budget;
mod config;
mod connections;
mod cursor_cache;
mod disk;
mod embedded;
mod encryption;
mod error;
mod groups;
mod handoff;
mod metrics;
mod monitor;
mod ops;
mod partition;
mod placement;
mod reconcile;
mod replica;
mod responders;
mod routing;

pub use broker::{ACTIVITY_STREAM, Broker, CURSORS_STREAM};
pub use config::{
    ActivityConfig, BrokerConfig, CursorsConfig, GroupsConfig, ReplicaConfig, StreamDefaults,
    StreamSettings,
};
pub use embedded::{EmbeddedNats, LocalSubscribe, LocalSubscription, NatsMessage};
pub use encryption::{EncryptionError, MasterKey, Sealer};
pub use error::{BrokerError, Result};
pub use handoff::HandOff;
pub use metastore::MAX_PARTITIONS;
pub use metastore::service::Bootstrap;
pub use metastore::service::remove_member;
pub use metrics::{Labels, MAX_PARTITION_SERIES, Metrics};
pub use monitor::{CursorLag, PartitionView, Snapshot};
pub use ops::{MAX_HEADER_NAME_BYTES, MAX_HEADERS, Subscription};
pub use partition::EventTimes;
