//! Subscriptions: a `Stream` of messages that survives leader changes and broken connections.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::Stream;
use liftbridge_proto::api;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::types::{Message, StartAt, StopAt, SubscribeOptions};

/// The messages of one stream partition, in offset order (newest first when reversed).
///
/// It ends after an error: [`Error::StopPositionReached`] at the stop position,
/// [`Error::EndOfReadonlyPartition`], [`Error::NoSuchPartition`] when the stream is deleted,
/// [`Error::PartitionPaused`]. A reverse subscription simply ends after the oldest message.
/// When the broker goes away or leadership moves, it resubscribes from the next offset by
/// itself, for up to the client's `resubscribe_wait`.
///
/// ```
/// # use liftbridge_client::{Client, Error, PublishOptions, StartAt, StopAt, StreamOptions, SubscribeOptions};
/// use futures_util::StreamExt;
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = liftbridged::start_local(dir.path()).await?;
/// # let client = Client::connect([server.grpc_addr().to_string()]).await?;
/// client.create_stream("logs", "logs", StreamOptions::default()).await?;
/// for line in ["a", "b", "c"] {
///     client.publish("logs", line, PublishOptions::default()).await?;
/// }
/// let opts = SubscribeOptions::default().start(StartAt::Offset(1)).stop(StopAt::Latest);
/// let mut sub = client.subscribe("logs", opts).await?;
/// assert_eq!(sub.next().await.unwrap()?.value.as_ref(), b"b");
/// assert_eq!(sub.next().await.unwrap()?.value.as_ref(), b"c");
/// assert!(matches!(sub.next().await, Some(Err(Error::StopPositionReached))));
/// assert!(sub.next().await.is_none());
/// # client.close(); server.shutdown().await; Ok(()) }
/// ```
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<Message>> + Send>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State {
    client: Client,
    stream: String,
    opts: SubscribeOptions,
    current: Option<tonic::Streaming<api::Message>>,
    last_offset: Option<i64>,
    done: bool,
    /// Set for a consumer-group member's subscription.
    consumer: Option<api::Consumer>,
}

/// Errors after which a subscription opens again rather than ending.
fn reconnectable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

impl State {
    /// Opens the subscription (again), from the message after the last one seen.
    async fn open(&mut self) -> Result<()> {
        let mut opts = self.opts.clone();
        if let Some(o) = self.last_offset {
            opts.start = StartAt::Offset(if opts.reverse { o - 1 } else { o + 1 });
        }
        let mut req = opts.to_request(&self.stream);
        req.consumer = self.consumer.clone();
        let deadline = Instant::now() + self.client.inner.resubscribe_wait;
        let mut attempt = 0u32;
        loop {
            let result = self
                .client
                .on_partition(
                    &self.stream,
                    opts.partition,
                    opts.read_isr_replica,
                    |mut c| {
                        let req = req.clone();
                        async move {
                            let mut s = c.subscribe(req).await?.into_inner();
                            // The first frame is the empty handshake, or the refusal.
                            match s.message().await? {
                                Some(_) => Ok(s),
                                None => {
                                    Err(tonic::Status::unavailable("subscription closed at once"))
                                }
                            }
                        }
                    },
                )
                .await;
            match result {
                Ok(s) => {
                    self.current = Some(s);
                    return Ok(());
                }
                Err(e) if e.is_retriable() && Instant::now() < deadline => {
                    self.client.backoff(attempt).await;
                    attempt = attempt.saturating_add(1);
                }
                // The original answers NotFound for a partition its leader has not opened
                // yet (just after CreateStream, or while it moves). While the metadata still
                // lists the partition, it is a moment away.
                Err(Error::NoSuchPartition)
                    if Instant::now() < deadline
                        && self.client.refresh_metadata().await.is_ok_and(|md| {
                            md.streams
                                .get(&self.stream)
                                .is_some_and(|s| s.partitions.contains_key(&opts.partition))
                        }) =>
                {
                    self.client.backoff(attempt).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(Error::NoBrokers(_)) if Instant::now() < deadline => {
                    self.client.backoff(attempt).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn next(&mut self) -> Option<Result<Message>> {
        if self.done {
            return None;
        }
        for _ in 0..1000 {
            if self.current.is_none()
                && let Err(e) = self.open().await
            {
                self.done = true;
                // Reopened after a message, a subscription with a stop timestamp is refused
                // only when the stop offset the server works out from it is before the new
                // start: the last message delivered was the stop (the connection was lost
                // before the end came).
                if matches!(e, Error::InvalidArgument(_))
                    && matches!(self.opts.stop, StopAt::Timestamp(_))
                    && self.last_offset.is_some()
                    && !self.opts.reverse
                {
                    return Some(Err(Error::StopPositionReached));
                }
                return Some(Err(e));
            }
            let s = self.current.as_mut()?;
            match s.message().await {
                Ok(Some(m)) => {
                    self.last_offset = Some(m.offset);
                    return Some(Ok(Message::from_api(m)));
                }
                Ok(None) => {
                    // A clean end: the end of a reverse read. A forward read never ends cleanly,
                    // so its server went away; read on from another.
                    self.current = None;
                    // A group subscription ends cleanly when a newer one of its group replaced
                    // it: the partition belongs to another member now.
                    if self.opts.reverse || self.consumer.is_some() {
                        self.done = true;
                        return None;
                    }
                }
                // The original ends a reverse read with Unknown "EOF" instead of a clean end.
                Err(st)
                    if self.opts.reverse
                        && st.code() == tonic::Code::Unknown
                        && st.message() == "EOF" =>
                {
                    self.current = None;
                    self.done = true;
                    return None;
                }
                Err(st) if reconnectable(&st) && !self.opts.reverse => {
                    self.current = None;
                    // Lost after the stop message, before the end: the end is all that was
                    // left (a new subscription from after the stop would be refused).
                    if let (StopAt::Offset(stop), Some(last)) = (self.opts.stop, self.last_offset)
                        && last >= stop
                    {
                        self.done = true;
                        return Some(Err(Error::StopPositionReached));
                    }
                    let _ = self.client.refresh_metadata().await;
                }
                Err(st) => {
                    self.done = true;
                    return Some(Err(Error::from_status(st)));
                }
            }
        }
        self.done = true;
        Some(Err(Error::NoBrokers("resubscribed too many times".into())))
    }
}

impl Client {
    /// Subscribes to a stream partition. The subscription is in place when this returns.
    ///
    /// # Errors
    /// [`Error::NoSuchStream`], [`Error::NoSuchPartition`], [`Error::StreamEmpty`] (stop at
    /// latest on an empty partition), [`Error::InvalidArgument`] (e.g. a stop offset before the
    /// start), [`Error::PartitionPaused`].
    pub async fn subscribe(&self, stream: &str, opts: SubscribeOptions) -> Result<Subscription> {
        self.subscribe_as(stream, opts, None).await
    }

    /// A forward subscription's start and stop as offsets, when they depend on the partition's
    /// newest offset (start NewOnly or Latest, stop Latest): a resubscription after its broker
    /// went away then goes on from where the first one started, and stops where it would have,
    /// instead of working them out again (and skipping what was published meanwhile). The
    /// newest offset is read just before subscribing, so a NewOnly subscription may also get
    /// messages published in between. Left as they are when the metadata cannot be read (the
    /// subscription then reports why).
    async fn pin_positions(&self, stream: &str, mut opts: SubscribeOptions) -> SubscribeOptions {
        let needs =
            matches!(opts.start, StartAt::NewOnly | StartAt::Latest) || opts.stop == StopAt::Latest;
        if opts.reverse || !needs {
            return opts;
        }
        let Ok(info) = self.fetch_partition_metadata(stream, opts.partition).await else {
            return opts;
        };
        let newest = info.newest_offset;
        match opts.start {
            StartAt::NewOnly => opts.start = StartAt::Offset(newest + 1),
            StartAt::Latest => opts.start = StartAt::Offset(newest.max(0)),
            _ => {}
        }
        // An empty partition: the server's refusal (StreamEmpty) is the answer.
        if opts.stop == StopAt::Latest && newest >= 0 {
            opts.stop = StopAt::Offset(newest);
        }
        opts
    }

    /// A subscription, as a member of a consumer group when `consumer` is set.
    pub(crate) async fn subscribe_as(
        &self,
        stream: &str,
        opts: SubscribeOptions,
        consumer: Option<api::Consumer>,
    ) -> Result<Subscription> {
        self.check_open()?;
        let opts = self.pin_positions(stream, opts).await;
        let mut state = State {
            client: self.clone(),
            stream: stream.to_owned(),
            opts,
            current: None,
            last_offset: None,
            done: false,
            consumer,
        };
        state.open().await?;
        let inner = futures_util::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        });
        Ok(Subscription {
            inner: Box::pin(inner),
        })
    }
}
