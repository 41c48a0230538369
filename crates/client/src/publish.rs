//! Publishing: one call at a time, or many in flight on one PublishAsync stream per broker.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use liftbridge_proto::api::{self, publish_async_error};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::transport::Conn;
use crate::types::{Ack, AckPolicy, Partitioner, PublishOptions, partition_for_key};

type Waiters = Arc<Mutex<WaitList>>;

/// Where a message's ack or error goes.
type AckTx = oneshot::Sender<Result<Option<Ack>>>;

/// The messages of a session that wait for their ack, by the correlation id sent on the wire.
/// That id is always unique (the client's own): a caller's id only comes back in the ack. The
/// server answers a message even after its caller stopped waiting (its future was dropped or
/// timed out), so a caller's id reused then, if sent as is, would take the older message's
/// ack.
#[derive(Default)]
struct WaitList {
    /// Wire id -> (the caller's id, the waiter).
    by_wire: HashMap<String, (String, AckTx)>,
    /// The callers' ids waiting, refused for another message meanwhile.
    ids: HashSet<String>,
}

impl WaitList {
    fn remove(&mut self, wire: &str) -> Option<(String, AckTx)> {
        let (id, w) = self.by_wire.remove(wire)?;
        self.ids.remove(&id);
        Some((id, w))
    }
}

/// One PublishAsync stream to a broker.
pub(crate) struct AsyncSession {
    tx: mpsc::Sender<api::PublishRequest>,
    waiters: Waiters,
    alive: Arc<AtomicBool>,
}

/// The ack of a message sent with [`Client::publish_async`]: a future of `Ok(Some(ack))`,
/// `Ok(None)` for ack policy NONE, or the error the server gave for this message.
#[must_use = "an ack future does nothing unless awaited"]
pub struct PendingAck {
    rx: Option<oneshot::Receiver<Result<Option<Ack>>>>,
    /// When the wait ends; the timer is armed only if the ack is not in at the first poll.
    deadline: tokio::time::Instant,
    timeout: Option<Pin<Box<tokio::time::Sleep>>>,
    wait: Duration,
    /// The session's waiters and this message's wire id.
    cleanup: Option<(Waiters, String)>,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAck").finish_non_exhaustive()
    }
}

impl Future for PendingAck {
    type Output = Result<Option<Ack>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        if let Poll::Ready(r) = Pin::new(rx).poll(cx) {
            self.cleanup = None;
            return Poll::Ready(r.unwrap_or(Err(Error::Closed)));
        }
        let deadline = self.deadline;
        let timeout = self
            .timeout
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timeout.as_mut().poll(cx).is_ready() {
            if let Some((w, id)) = self.cleanup.take() {
                w.lock().remove(&id);
            }
            return Poll::Ready(Err(Error::Timeout(self.wait)));
        }
        Poll::Pending
    }
}

impl Drop for PendingAck {
    fn drop(&mut self) {
        if let Some((w, id)) = self.cleanup.take() {
            w.lock().remove(&id);
        }
    }
}

fn refusal(e: &api::PublishAsyncError) -> Error {
    use publish_async_error::Code;
    match Code::try_from(e.code) {
        Ok(Code::NotFound) if e.message.to_lowercase().contains("partition") => {
            Error::NoSuchPartition
        }
        Ok(Code::NotFound) => Error::NoSuchStream,
        Ok(Code::Readonly) => Error::ReadonlyPartition,
        Ok(Code::BadRequest) => Error::InvalidArgument(e.message.clone()),
        Ok(code) => Error::PublishRefused {
            code: code.as_str_name().to_owned(),
            message: e.message.clone(),
        },
        Err(_) => Error::PublishRefused {
            code: e.code.to_string(),
            message: e.message.clone(),
        },
    }
}

impl Client {
    /// The publish's correlation id: the caller's, or a new unique one.
    fn correlation_id(&self, opts: &PublishOptions) -> String {
        opts.correlation_id
            .clone()
            .unwrap_or_else(|| self.next_correlation_id())
    }

    /// Picks the partition of a publish by its options.
    async fn choose_partition(&self, stream: &str, opts: &PublishOptions) -> Result<i32> {
        if let Some(p) = opts.partition {
            return Ok(p);
        }
        match opts.partitioner {
            Partitioner::Explicit => Ok(0),
            Partitioner::Key => {
                let n = self.partition_count(stream).await?;
                Ok(opts.key.as_ref().map_or(0, |k| partition_for_key(k, n)))
            }
            Partitioner::RoundRobin => {
                let n = self.partition_count(stream).await?.max(1);
                let mut rr = self.inner.round_robin.lock();
                let c = rr.entry(stream.to_owned()).or_insert(0);
                let p = (*c % n as u64) as i32;
                *c = c.wrapping_add(1);
                Ok(p)
            }
        }
    }

    async fn build_request(
        &self,
        stream: &str,
        value: Bytes,
        opts: &PublishOptions,
    ) -> Result<api::PublishRequest> {
        let partition = self.choose_partition(stream, opts).await?;
        Ok(api::PublishRequest {
            key: opts.key.clone().unwrap_or_default(),
            value,
            stream: stream.into(),
            partition,
            headers: opts.headers.clone(),
            ack_inbox: String::new(),
            correlation_id: self.correlation_id(opts),
            ack_policy: opts.ack_policy.to_api(),
            expected_offset: opts.expected_offset.unwrap_or(-1),
        })
    }

    /// Publishes one message to a stream and waits for its ack (`None` for ack policy NONE).
    ///
    /// ```
    /// # use liftbridge_client::{Client, PublishOptions, Partitioner, StreamOptions};
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = liftbridged::start_local(dir.path()).await?;
    /// # let client = Client::connect([server.grpc_addr().to_string()]).await?;
    /// client.create_stream("events", "events", StreamOptions::default().partitions(4)).await?;
    /// let opts = PublishOptions::default()
    ///     .key("user-42")
    ///     .partitioner(Partitioner::Key)
    ///     .header("source", "docs");
    /// let ack = client.publish("events", "signed up", opts).await?.unwrap();
    /// assert_eq!(ack.stream, "events");
    /// # client.close(); server.shutdown().await; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoSuchStream`], [`Error::NoSuchPartition`], [`Error::ReadonlyPartition`],
    /// [`Error::Timeout`] when no ack came within `ack_wait`, and [`Error::PublishRefused`]
    /// for a wrong expected offset.
    pub async fn publish(
        &self,
        stream: &str,
        value: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<Option<Ack>> {
        let req = self
            .build_request(stream, Self::bytes(value), &opts)
            .await?;
        let mut last = None;
        for attempt in 0..3 {
            let (addr, mut c) = self.publish_conn(stream, req.partition).await?;
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(opts.ack_wait);
            match c.publish(r).await {
                Ok(resp) => return Ok(resp.into_inner().ack.map(Ack::from_api)),
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                    return Err(Error::Timeout(opts.ack_wait));
                }
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    self.forget(&addr);
                    last = Some(s);
                    self.backoff(attempt).await;
                }
                Err(s) => return Err(Error::from_status(s)),
            }
        }
        Err(last.map_or(Error::Closed, Error::from_status))
    }

    /// Publishes to a NATS subject (streams attached to it record the message) and waits for the
    /// first ack, if any (`None` for ack policy NONE).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad subject, [`Error::Timeout`].
    pub async fn publish_to_subject(
        &self,
        subject: &str,
        value: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<Option<Ack>> {
        let (_, mut c) = self.any_conn().await?;
        let mut r = tonic::Request::new(api::PublishToSubjectRequest {
            key: opts.key.clone().unwrap_or_default(),
            value: Self::bytes(value),
            subject: subject.into(),
            headers: opts.headers.clone(),
            ack_inbox: String::new(),
            correlation_id: self.correlation_id(&opts),
            ack_policy: opts.ack_policy.to_api(),
        });
        r.set_timeout(opts.ack_wait);
        match c.publish_to_subject(r).await {
            Ok(resp) => Ok(resp.into_inner().ack.map(Ack::from_api)),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                Err(Error::Timeout(opts.ack_wait))
            }
            Err(s) => Err(Error::from_status(s)),
        }
    }

    /// Sends a message on the PublishAsync stream to the partition's leader and returns at once
    /// with a future of its ack. Thousands may be in flight; each gets its own ack or error.
    ///
    /// ```
    /// # use liftbridge_client::{Client, PublishOptions, StreamOptions};
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = liftbridged::start_local(dir.path()).await?;
    /// # let client = Client::connect([server.grpc_addr().to_string()]).await?;
    /// client.create_stream("metrics", "metrics", StreamOptions::default()).await?;
    /// let mut pending = Vec::new();
    /// for i in 0..100 {
    ///     pending.push(client.publish_async("metrics", format!("m{i}"), PublishOptions::default()).await?);
    /// }
    /// for (i, ack) in pending.into_iter().enumerate() {
    ///     assert_eq!(ack.await?.unwrap().offset, i as i64);
    /// }
    /// # client.close(); server.shutdown().await; Ok(()) }
    /// ```
    ///
    /// When the partition's leader cannot be reached, or the stream to it ended, the call
    /// refreshes the metadata and tries the leader it names, up to
    /// [`ClientBuilder::publish_retries`](crate::ClientBuilder::publish_retries) times.
    ///
    /// # Errors
    /// Routing errors ([`Error::NoSuchStream`], [`Error::NoBrokers`]) at once;
    /// [`Error::InvalidArgument`] for a correlation id given in the options while a message with
    /// it still waits for its ack; the message's own errors through the returned future.
    pub async fn publish_async(
        &self,
        stream: &str,
        value: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<PendingAck> {
        let mut req = self
            .build_request(stream, Self::bytes(value), &opts)
            .await?;
        let none = opts.ack_policy == AckPolicy::None;
        let id = req.correlation_id.clone();
        // On the wire, a caller's id is replaced by a unique one (see `WaitList`).
        let wire = if opts.correlation_id.is_some() && !none {
            let wire = self.next_correlation_id();
            req.correlation_id = wire.clone();
            wire
        } else {
            id.clone()
        };
        let deadline = tokio::time::Instant::now() + opts.ack_wait;
        let mut req = Some(req);
        let mut last = None;
        let retries = self.inner.publish_retries;
        for attempt in 0..=retries {
            if attempt > 0 {
                // The leader known may be gone: look for it again.
                self.backoff(attempt - 1).await;
                let _ = self.refresh_metadata().await;
            }
            let partition = req.as_ref().map_or(0, |r| r.partition);
            let addr = match self.partition_addr(stream, partition, false).await {
                Ok(a) => a,
                // Any broker takes publishes; the error will come back on the stream.
                Err(_) => match self.any_conn().await {
                    Ok((a, _)) => a,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                },
            };
            let (tx, waiters) = match self.session(&addr).await {
                Ok(s) => s,
                Err(Error::Closed) => return Err(Error::Closed),
                Err(e) => {
                    self.forget(&addr);
                    last = Some(e);
                    continue;
                }
            };
            let rx = if none {
                None
            } else {
                let (ack_tx, ack_rx) = oneshot::channel();
                let mut w = waiters.lock();
                // Two messages with one id in flight could not be told apart by the caller.
                if w.ids.contains(&id) {
                    return Err(Error::InvalidArgument(format!(
                        "correlation id {id:?} is already in flight"
                    )));
                }
                w.ids.insert(id.clone());
                w.by_wire.insert(wire.clone(), (id.clone(), ack_tx));
                Some(ack_rx)
            };
            match tx.send(req.take().expect("kept for a retry")).await {
                Ok(()) => {
                    return Ok(PendingAck {
                        rx,
                        deadline,
                        timeout: None,
                        wait: opts.ack_wait,
                        cleanup: (!none).then(|| (waiters.clone(), wire.clone())),
                    });
                }
                // Sending hands the request back when the session is gone.
                Err(mpsc::error::SendError(back)) => req = Some(back),
            }
            // The session died under us: forget it and its connection, and open a new one,
            // to the leader the metadata names then.
            waiters.lock().remove(&wire);
            self.inner.sessions.lock().await.remove(&addr);
            self.forget(&addr);
            last = Some(Error::NoBrokers(format!(
                "cannot open a publish stream to {addr}"
            )));
        }
        Err(last.unwrap_or_else(|| Error::NoBrokers("no broker took the publish".into())))
    }

    /// Where a publish to `stream`/`partition` goes: its leader, which appends without a trip
    /// through NATS, else any broker, since every broker takes publishes.
    async fn publish_conn(&self, stream: &str, partition: i32) -> Result<(String, Conn)> {
        if let Ok(addr) = self.partition_addr(stream, partition, false).await {
            match self.conn(&addr).await {
                Ok(c) => return Ok((addr, c)),
                Err(Error::Closed) => return Err(Error::Closed),
                Err(_) => {}
            }
        }
        self.any_conn().await
    }

    async fn session(&self, addr: &str) -> Result<(mpsc::Sender<api::PublishRequest>, Waiters)> {
        let mut sessions = self.inner.sessions.lock().await;
        if let Some(s) = sessions.get(addr) {
            if s.alive.load(Ordering::Acquire) {
                return Ok((s.tx.clone(), s.waiters.clone()));
            }
            // Its stream ended with an error: the connection may be to a broker gone away.
            sessions.remove(addr);
            self.forget(addr);
        }
        let mut c = self.conn(addr).await?;
        let (tx, rx) = mpsc::channel::<api::PublishRequest>(8192);
        let outgoing =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let waiters: Waiters = Arc::new(Mutex::new(WaitList::default()));
        let alive = Arc::new(AtomicBool::new(true));
        let (w, a) = (waiters.clone(), alive.clone());
        // The call runs in a task of its own, and requests flow into it at once. A server may
        // send its response headers only with its first response, after a request (Go's gRPC
        // server, so the original Liftbridge, does): awaiting the headers before queueing the
        // first request would leave both sides waiting for each other.
        tokio::spawn(async move {
            let end = match c.publish_async(outgoing).await {
                Err(s) => Error::from_status(s),
                Ok(response) => {
                    let mut responses = response.into_inner();
                    loop {
                        match responses.next().await {
                            Some(Ok(r)) => {
                                let Some((id, waiter)) = w.lock().remove(&r.correlation_id) else {
                                    continue;
                                };
                                let result = match (&r.async_error, r.ack) {
                                    (Some(e), _) => Err(refusal(e)),
                                    (None, Some(ack)) => Ok(Some(Ack::from_api(api::Ack {
                                        correlation_id: id,
                                        ..ack
                                    }))),
                                    (None, None) => Ok(None),
                                };
                                let _ = waiter.send(result);
                            }
                            Some(Err(s)) => break Error::from_status(s),
                            None => {
                                break Error::Transport(tonic::Status::unavailable(
                                    "publish stream ended",
                                ));
                            }
                        }
                    }
                }
            };
            // The request stream is gone with the call, so a later send fails and opens a new
            // session; whoever was waiting gets the error.
            a.store(false, Ordering::Release);
            let pending: Vec<_> = {
                let mut w = w.lock();
                w.ids.clear();
                w.by_wire.drain().collect()
            };
            for (_, (_, waiter)) in pending {
                let _ = waiter.send(Err(end.clone()));
            }
        });
        sessions.insert(
            addr.to_owned(),
            AsyncSession {
                tx: tx.clone(),
                waiters: waiters.clone(),
                alive,
            },
        );
        Ok((tx, waiters))
    }
}
