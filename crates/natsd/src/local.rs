//! In-process subscriptions: code running beside the server receives messages without a socket
//! or a client library, and the server holds publishers back instead of dropping anything.
//!
//! A TCP subscriber's client library reads as fast as the socket gives and drops what its own
//! buffer cannot hold; the server never learns of it. A [`LocalSubscription`] has no such
//! buffer: a delivery goes into the subscription's queue, and once the queue holds more than
//! [`LocalOptions::max_pending`] bytes, every connection that delivered to it stops reading
//! from its socket until the queue has drained to half of that. Publishers then see TCP
//! back-pressure, exactly as from a slow server; the protocol they speak does not change.
//!
//! # Invariants
//! - A message delivered to a local subscription is never dropped, except one from a
//!   connection named in [`LocalOptions::never_wait`] while the queue holds more than twice
//!   `max_pending`; such drops are counted ([`LocalSubscription::dropped`]).
//! - The queue holds at most `max_pending` bytes plus what one read of each publisher delivers
//!   (a read is at most 64 KiB of input, a few times that for the largest payload), plus up to
//!   `max_pending` more from `never_wait` connections.
//! - Messages from one connection keep its publish order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::client::Conn;
use crate::server::Shared;
use crate::sublist::Subscription;

/// How an in-process subscription behaves.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The name it goes by, as a client names its connection in CONNECT.
    /// [`Handle::listened_by_others`](crate::Handle::listened_by_others) counts it under
    /// this name.
    pub name: String,
    /// Whether it receives messages published by connections of the same name. Off, a process
    /// that publishes on its own connection of that name does not get its own messages back,
    /// like a NATS client with echo off.
    pub echo: bool,
    /// Bytes queued before publishers wait. Default 16 MiB.
    pub max_pending: usize,
    /// Connections (by name) that never wait on this subscription: the process's own
    /// connections, whose publishing the consumer of this subscription may itself wait for.
    /// Their messages are dropped, and counted, once the queue holds twice `max_pending`.
    pub never_wait: Vec<String>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            name: String::new(),
            echo: true,
            max_pending: 16 * 1024 * 1024,
            never_wait: Vec::new(),
        }
    }
}

/// A message as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMessage {
    /// The subject it was published on.
    pub subject: Bytes,
    /// Its reply subject, if any.
    pub reply: Option<Bytes>,
    /// Its header block (`NATS/1.0` and header lines), if published with HPUB.
    pub headers: Option<Bytes>,
    /// Its payload, without headers.
    pub payload: Bytes,
}

impl LocalMessage {
    /// The bytes it takes in a queue, for the limits: its fields and a fixed overhead.
    fn cost(&self) -> usize {
        self.subject.len()
            + self.reply.as_ref().map_or(0, Bytes::len)
            + self.headers.as_ref().map_or(0, Bytes::len)
            + self.payload.len()
            + 64
    }
}

/// The receiving side of a local connection.
#[derive(Debug)]
pub(crate) struct LocalQueue {
    state: Mutex<State>,
    opts: LocalOptions,
    /// Woken when the queue falls to half of `max_pending`, or closes.
    drained: Notify,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    msgs: VecDeque<LocalMessage>,
    bytes: usize,
    waker: Option<Waker>,
    /// Some publisher waits for the queue to drain.
    waiting: bool,
    closed: bool,
}

/// What a delivery did.
pub(crate) enum Pushed {
    /// Queued; the publisher may go on.
    Queued,
    /// Queued, and the queue is over its limit: the publisher must wait before reading on.
    MustWait,
    /// Not queued (closed, or over the hard limit for a `never_wait` connection).
    Dropped,
}

impl LocalQueue {
    pub(crate) fn new(opts: LocalOptions) -> Self {
        LocalQueue {
            state: Mutex::new(State::default()),
            opts,
            drained: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn echo(&self) -> bool {
        self.opts.echo
    }

    /// Whether a connection of this name never waits on this queue.
    pub(crate) fn never_waits(&self, name: Option<&str>) -> bool {
        name.is_some_and(|n| self.opts.never_wait.iter().any(|w| w == n))
    }

    /// Queues a message from a publisher that waits (`may_wait`) or not.
    pub(crate) fn push(&self, msg: LocalMessage, may_wait: bool) -> Pushed {
        let cost = msg.cost();
        let waker = {
            let mut s = self.state.lock();
            if s.closed || (!may_wait && s.bytes + cost > 2 * self.opts.max_pending) {
                drop(s);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Pushed::Dropped;
            }
            s.bytes += cost;
            s.msgs.push_back(msg);
            let over = may_wait && s.bytes > self.opts.max_pending;
            (s.waker.take(), over)
        };
        let (waker, over) = waker;
        if let Some(w) = waker {
            w.wake();
        }
        if over {
            Pushed::MustWait
        } else {
            Pushed::Queued
        }
    }

    /// Waits until the queue has drained to half of `max_pending`, or closed.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            {
                let mut s = self.state.lock();
                if s.closed || s.bytes <= self.opts.max_pending / 2 {
                    return;
                }
                s.waiting = true;
            }
            notified.await;
        }
    }

    /// Takes the next message, if any; releases waiting publishers once the queue has drained
    /// to half of `max_pending`.
    fn pop(&self, s: &mut State) -> Option<LocalMessage> {
        let m = s.msgs.pop_front()?;
        s.bytes -= m.cost();
        if s.waiting && s.bytes <= self.opts.max_pending / 2 {
            s.waiting = false;
            self.drained.notify_waiters();
        }
        Some(m)
    }

    fn try_pop(&self) -> Option<LocalMessage> {
        let mut s = self.state.lock();
        self.pop(&mut s)
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<LocalMessage>> {
        let mut s = self.state.lock();
        if let Some(m) = self.pop(&mut s) {
            return Poll::Ready(Some(m));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Stops taking messages; what is queued can still be received. Publishers waiting on it
    /// go on.
    pub(crate) fn close(&self) {
        let waker = {
            let mut s = self.state.lock();
            s.closed = true;
            s.waker.take()
        };
        self.drained.notify_waiters();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn discard(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        s.msgs.clear();
        s.bytes = 0;
        drop(s);
        self.drained.notify_waiters();
    }

    fn pending_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// A subscription of code in the server's process; see the [module docs](self). It is a
/// [`Stream`](futures_util::Stream) of [`LocalMessage`]s in delivery order, which ends when the
/// server shuts down. Dropping it unsubscribes, and releases the publishers waiting on it.
#[derive(Debug)]
pub struct LocalSubscription {
    pub(crate) conn: Arc<Conn>,
    pub(crate) sub: Arc<Subscription>,
    pub(crate) shared: Arc<Shared>,
}

impl LocalSubscription {
    fn queue(&self) -> &LocalQueue {
        self.conn
            .local()
            .expect("a local subscription has a local queue")
    }

    /// Messages not queued because they came from a `never_wait` connection while the queue
    /// was over twice its limit.
    pub fn dropped(&self) -> u64 {
        self.queue().dropped.load(Ordering::Relaxed)
    }

    /// Bytes waiting in the queue (by the measure of the limits).
    pub fn pending_bytes(&self) -> usize {
        self.queue().pending_bytes()
    }

    /// Unsubscribes, keeping what is queued: the stream yields it, then ends. Publishers
    /// waiting on it go on.
    pub fn close(&mut self) {
        self.shared.sublist.remove(&self.sub);
        self.queue().close();
    }

    /// The next message, if one is queued now.
    pub fn try_next(&mut self) -> Option<LocalMessage> {
        self.queue().try_pop()
    }
}

impl futures_util::Stream for LocalSubscription {
    type Item = LocalMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LocalMessage>> {
        self.queue().poll_pop(cx)
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.shared.sublist.remove(&self.sub);
        if let Some(q) = self.conn.local() {
            q.discard();
        }
        self.shared.forget_local(self.conn.id);
    }
}
