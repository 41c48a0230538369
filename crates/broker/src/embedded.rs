//! What the broker can do when the NATS server runs in its own process: ask who listens on a
//! subject, and record a partition's subject through an in-process subscription that never
//! drops a message.
//!
//! Over TCP, the broker's NATS client reads as fast as the server writes and drops what its
//! subscription buffer cannot hold; neither side can slow the publishers. In process, the
//! server queues deliveries for the ingest and stops reading from a publisher's connection
//! while the queue is full, so a message the server accepted always reaches the partition.
//! The binary implements this trait over its embedded server; the broker names no server crate.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

/// A message as a NATS publisher sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsMessage {
    /// The subject it was published on.
    pub subject: Bytes,
    /// Its reply subject, if any.
    pub reply: Option<Bytes>,
    /// Its payload, without NATS headers.
    pub payload: Bytes,
}

/// An in-process subscription: the messages in the server's delivery order.
pub trait LocalSubscription: Stream<Item = NatsMessage> + Send + Unpin {
    /// Messages it did not take: from the broker's own connections (named in
    /// [`LocalSubscribe::never_wait`]) while its queue was over twice its limit.
    fn dropped(&self) -> u64;

    /// Takes no more messages: what is queued can still be read, then the stream ends.
    fn close(&mut self);
}

/// A subscription to open in process.
#[derive(Debug, Clone)]
pub struct LocalSubscribe<'a> {
    /// The subject, wildcards allowed.
    pub subject: &'a str,
    /// A queue group to join, if any.
    pub queue: Option<&'a str>,
    /// The connection name it goes by; it gets no message published by a connection of this
    /// name (the broker's `streams` connection, which publishes what the broker takes itself).
    pub name: &'a str,
    /// The broker's connections that must never wait on it (the ones the ingest itself
    /// publishes on: acks, replication).
    pub never_wait: &'a [String],
    /// Bytes queued before publishers wait.
    pub max_pending: usize,
}

/// The NATS server in this process, as the broker uses it.
pub trait EmbeddedNats: Send + Sync + 'static {
    /// Whether a message published now on the literal `subject` would reach a subscriber
    /// other than connections (or local subscriptions) named `except`.
    fn listened_by_others(&self, subject: &str, except: &str) -> bool;

    /// Subscribes in process.
    ///
    /// # Errors
    /// A text saying why the server refused (an invalid subject or queue group).
    fn subscribe(&self, req: LocalSubscribe<'_>)
    -> Result<Pin<Box<dyn LocalSubscription>>, String>;
}
