//! `liftbridge-client`: an async Rust client for [Liftbridge](https://liftbridge.io) servers,
//! liftbridge-rs's `liftbridged` or the original. It speaks only the public gRPC API.
//!
//! - [`Client`]: connect to a list of brokers; create, delete, pause and make streams
//!   read-only; fetch metadata; set and fetch cursors. Each call goes to the broker that can
//!   serve it, and the metadata is refreshed when a leader moved.
//! - Publishing: [`Client::publish`] waits for one ack, [`Client::publish_async`] keeps
//!   thousands in flight on one stream per broker, [`Client::publish_to_subject`] publishes to a
//!   raw NATS subject. Partitions are chosen explicitly, by key (CRC-32 like go-liftbridge), or
//!   round-robin ([`Partitioner`]). When a partition's leader cannot be reached,
//!   `publish_async` refreshes the metadata and tries the leader it names, up to
//!   [`ClientBuilder::publish_retries`] times; a correlation id already in flight is refused,
//!   and a caller's id never goes on the wire (a unique one does; the ack carries the caller's
//!   back), so a message never gets the ack of an earlier one with the same id.
//! - Subscribing: [`Client::subscribe`] gives a [`Subscription`], a `futures::Stream` of
//!   [`Message`]s that resubscribes by itself when its broker goes away, from where it was:
//!   a start or stop that depends on the newest offset (NewOnly, Latest) is fixed as an offset
//!   when it first subscribes.
//! - Consumer groups: [`Client::consumer`] gives a [`GroupConsumer`], one member of a group
//!   that shares the partitions of its streams with the other members, commits positions
//!   (go-liftbridge's cursor id `__group:<group>`, so Go and Rust members share progress; only
//!   for the partitions it holds, so it never moves the group's cursor back over a partition
//!   another member took), and takes over partitions when members leave or die. [`Client::group_lag`] tells how far a
//!   group is behind.
//!
//! ```
//! use futures_util::StreamExt;
//! use liftbridge_client::{Client, PublishOptions, StartAt, StreamOptions, SubscribeOptions};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let server = liftbridged::start_local(dir.path()).await?;
//! # let addr = server.grpc_addr().to_string();
//! let client = Client::connect([addr]).await?;
//! client.create_stream("greetings", "greetings", StreamOptions::default()).await?;
//! client.publish("greetings", "hello", PublishOptions::default()).await?;
//!
//! let mut messages = client
//!     .subscribe("greetings", SubscribeOptions::default().start(StartAt::Earliest))
//!     .await?;
//! let first = messages.next().await.expect("a message")?;
//! assert_eq!((first.offset, first.value.as_ref()), (0, &b"hello"[..]));
//! # client.close(); server.shutdown().await; Ok(()) }
//! ```
//!
//! Connections are plain gRPC (HTTP/2), or TLS with [`ClientBuilder::tls`] and a [`ClientTls`]
//! (with a client certificate for servers that require one).
//!
//! # Servers it is checked against
//!
//! - **`liftbridged`** of this workspace: every feature, in the workspace's end-to-end tests
//!   (one server, restarts, replicated clusters).
//! - **The original Liftbridge (v1.9.0)**, through a test server that behaves as the original
//!   does where it differs from `liftbridged` (`tests/original_server.rs`), since the original
//!   does not run in the test suite:
//!   - Go's gRPC server sends a call's response headers only with its first response. A
//!     PublishAsync stream therefore never waits for headers before its first request (it
//!     would wait forever), including when that request asks for no ack.
//!   - A unary publish with a wrong expected offset fails with `Unknown "incorrect expected
//!     offset"` (ours: `Aborted`); both are [`Error::PublishRefused`] with code
//!     `INCORRECT_OFFSET`, and neither is retried.
//!   - A call its authorization denies fails with `Unknown "... not authorized ..."`; it is
//!     [`Error::PermissionDenied`], not retried.
//!   - A reverse subscription ends with `Unknown "EOF"`; the stream simply ends, as with ours.
//!   - A subscription to a partition whose leader has not opened it yet (just after
//!     CreateStream) gets `NotFound "No such partition"` (ours: `Unavailable`); while the
//!     metadata lists the partition, the client retries for up to `resubscribe_wait`.
//!
//! Differences that remain, against the original:
//! - A reverse subscription of an empty partition fails with `Internal "Failed to create
//!   stream reader"` (ours: the stream ends at once).
//! - Acks name the stream's subject in `partition_subject` on both servers; `msg_subject` is
//!   the partition's own subject.

mod client;
mod error;
mod group;
mod publish;
mod subscribe;
mod transport;
mod types;

pub use client::{Client, ClientBuilder, ClientTls};
pub use error::{Error, Result};
pub use group::{
    AutoOffset, ConsumerBuilder, GroupConsumer, GroupInfo, GroupMember, PartitionLag,
    group_cursor_id,
};
pub use publish::PendingAck;
pub use subscribe::Subscription;
pub use types::{
    Ack, AckPolicy, BrokerInfo, Message, Metadata, PartitionInfo, PartitionSet, Partitioner,
    PublishOptions, StartAt, StopAt, StreamInfo, StreamOptions, SubscribeOptions,
    partition_for_key,
};
