//! The client: a pool of gRPC connections, one per broker, a metadata cache, and routing of
//! each call to the broker that can serve it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use liftbridge_proto::api;
use parking_lot::{Mutex, RwLock};
use tonic::transport::Endpoint;

use crate::error::{Error, Result};
use crate::publish::AsyncSession;
use crate::transport::{self, Conn};
use crate::types::{Metadata, PartitionSet, StreamOptions, partition_for_key, text_and_number};

/// The internal stream that stores cursors.
const CURSORS_STREAM: &str = "__cursors";

/// Builds a [`Client`].
///
/// ```
/// # use liftbridge_client::Client;
/// # use std::time::Duration;
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = liftbridged::start_local(dir.path()).await?;
/// # let addr = server.grpc_addr().to_string();
/// let client = Client::builder([addr.as_str()])
///     .connect_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # client.close(); server.shutdown().await; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addrs: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    resubscribe_wait: Duration,
    publish_retries: u32,
    tls: Option<ClientTls>,
}

/// TLS to the brokers: the CA that signed their certificates and, for servers that require
/// client certificates (mutual TLS, and authorization, which names the client by its
/// certificate's common name), this client's certificate and key. All PEM.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// The CA bundle that verifies the brokers' certificates.
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain and key, when the brokers ask for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the brokers' certificates against; default: the host of each
    /// address.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// TLS verifying the brokers with `ca_pem`.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        ClientTls {
            ca_pem: ca_pem.into(),
            ..Default::default()
        }
    }

    /// Presents this certificate and key (PEM) to the brokers.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Verifies the brokers' certificates against this name.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }
}

impl ClientBuilder {
    /// How long connecting to one broker may take. Default 5 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Deadline of each call other than publishes and subscriptions. Default 10 s.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// How long a subscription keeps trying to resubscribe after its broker went away.
    /// Default 30 s.
    pub fn resubscribe_wait(mut self, d: Duration) -> Self {
        self.resubscribe_wait = d;
        self
    }

    /// How many more times [`Client::publish_async`] looks for a partition's leader when it
    /// cannot reach the one it knows, or its stream to it ended: each time it refreshes the
    /// metadata, after a backoff from 50 ms doubling up to 1.6 s. Default 8 (about 6 s, enough
    /// for a failover). Messages that were in flight on a lost stream get its error; they may
    /// have been stored.
    pub fn publish_retries(mut self, n: u32) -> Self {
        self.publish_retries = n;
        self
    }

    /// Connects with TLS (and a client certificate, if `tls` has one).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connects to the first reachable broker and loads the metadata.
    ///
    /// # Errors
    /// [`Error::NoBrokers`] when none of the addresses answers.
    pub async fn connect(self) -> Result<Client> {
        if self.addrs.is_empty() {
            return Err(Error::NoBrokers("no broker addresses given".into()));
        }
        let client = Client {
            inner: Arc::new(Inner {
                seeds: self.addrs.clone(),
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
                resubscribe_wait: self.resubscribe_wait,
                publish_retries: self.publish_retries,
                tls: self.tls.clone(),
                pool: Mutex::new(HashMap::new()),
                metadata: RwLock::new(Metadata::default()),
                sessions: tokio::sync::Mutex::new(HashMap::new()),
                round_robin: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                id_prefix: id_prefix(),
                closed: AtomicBool::new(false),
            }),
        };
        client.refresh_metadata().await?;
        Ok(client)
    }
}

fn id_prefix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}{:x}", t, std::process::id())
}

/// `<prefix>-<n>`.
fn correlation_id(prefix: &str, n: u64) -> String {
    text_and_number(prefix, '-', n)
}

pub(crate) struct Inner {
    seeds: Vec<String>,
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) resubscribe_wait: Duration,
    pub(crate) publish_retries: u32,
    pool: Mutex<HashMap<String, Conn>>,
    metadata: RwLock<Metadata>,
    pub(crate) sessions: tokio::sync::Mutex<HashMap<String, AsyncSession>>,
    pub(crate) round_robin: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    id_prefix: String,
    closed: AtomicBool,
}

/// A connection to a Liftbridge cluster. Cheap to clone; clones share connections.
///
/// ```
/// use liftbridge_client::{Client, PublishOptions, StartAt, StopAt, StreamOptions, SubscribeOptions};
/// use futures_util::StreamExt;
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = liftbridged::start_local(dir.path()).await?;
/// # let addr = server.grpc_addr().to_string();
///
/// let client = Client::connect([addr.as_str()]).await?;
/// client.create_stream("orders", "orders-stream", StreamOptions::default()).await?;
/// let ack = client
///     .publish("orders-stream", "hello", PublishOptions::default().key("k"))
///     .await?
///     .expect("an ack, since the policy is LEADER");
/// assert_eq!(ack.offset, 0);
///
/// let mut sub = client
///     .subscribe(
///         "orders-stream",
///         SubscribeOptions::default().start(StartAt::Earliest).stop(StopAt::Latest),
///     )
///     .await?;
/// let msg = sub.next().await.expect("one message")?;
/// assert_eq!(msg.value.as_ref(), b"hello");
/// # client.close(); server.shutdown().await; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.inner.seeds)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the brokers at `addrs` (`host:port`, or `http://host:port`).
    pub fn builder<I, S>(addrs: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            addrs: addrs.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            resubscribe_wait: Duration::from_secs(30),
            publish_retries: 8,
            tls: None,
        }
    }

    /// Connects with the default settings; see [`ClientBuilder::connect`].
    ///
    /// # Errors
    /// [`Error::NoBrokers`] when none of the addresses answers.
    pub async fn connect<I, S>(addrs: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(addrs).connect().await
    }

    /// Closes the connections. Calls made afterwards fail with [`Error::Closed`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.pool.lock().clear();
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn next_correlation_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        correlation_id(&self.inner.id_prefix, n)
    }

    /// The connection to `addr`, made if needed.
    pub(crate) async fn conn(&self, addr: &str) -> Result<Conn> {
        self.check_open()?;
        if let Some(c) = self.inner.pool.lock().get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{scheme}://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::InvalidArgument(format!("broker address {addr:?}: {e}")))?
            .connect_timeout(self.inner.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.inner.tls {
            let mut c = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                c = c.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            if let Some(d) = &tls.domain {
                c = c.domain_name(d.clone());
            }
            endpoint = endpoint
                .tls_config(c)
                .map_err(|e| Error::InvalidArgument(format!("TLS settings: {e}")))?;
        }
        let c = transport::connect(endpoint)
            .await
            .map_err(|e| Error::NoBrokers(format!("{addr}: {e}")))?;
        self.inner.pool.lock().insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    pub(crate) fn forget(&self, addr: &str) {
        self.inner.pool.lock().remove(addr);
    }

    /// Some reachable broker: known brokers first, then the addresses given at connect.
    pub(crate) async fn any_conn(&self) -> Result<(String, Conn)> {
        let mut candidates: Vec<String> = self.inner.pool.lock().keys().cloned().collect();
        candidates.extend(self.inner.metadata.read().brokers.iter().map(|b| b.addr()));
        candidates.extend(self.inner.seeds.iter().cloned());
        let mut last = String::from("no addresses");
        for addr in candidates {
            match self.conn(&addr).await {
                Ok(c) => return Ok((addr, c)),
                Err(Error::Closed) => return Err(Error::Closed),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::NoBrokers(last))
    }

    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.inner.request_timeout);
        r
    }

    /// Fetches the cluster's metadata, and caches it for routing.
    ///
    /// # Errors
    /// [`Error::NoBrokers`], [`Error::Transport`].
    pub async fn refresh_metadata(&self) -> Result<Metadata> {
        let mut last = None;
        for _ in 0..3 {
            let (addr, mut c) = self.any_conn().await?;
            match c
                .fetch_metadata(self.request(api::FetchMetadataRequest::default()))
                .await
            {
                Ok(r) => {
                    let md = Metadata::from_api(r.into_inner());
                    *self.inner.metadata.write() = md.clone();
                    return Ok(md);
                }
                Err(s) => {
                    self.forget(&addr);
                    last = Some(s);
                }
            }
        }
        Err(last.map_or(
            Error::NoBrokers("no broker answered".into()),
            Error::from_status,
        ))
    }

    /// The metadata as last fetched (see [`refresh_metadata`](Client::refresh_metadata)).
    pub fn metadata(&self) -> Metadata {
        self.inner.metadata.read().clone()
    }

    /// The cluster's metadata, fetched now.
    ///
    /// # Errors
    /// As [`refresh_metadata`](Client::refresh_metadata).
    pub async fn fetch_metadata(&self) -> Result<Metadata> {
        self.refresh_metadata().await
    }

    /// The partition count of a stream, refreshing the metadata once if the stream is unknown.
    pub(crate) async fn partition_count(&self, stream: &str) -> Result<i32> {
        if let Some(s) = self.inner.metadata.read().streams.get(stream) {
            return Ok(s.partitions.len() as i32);
        }
        let md = self.refresh_metadata().await?;
        md.streams
            .get(stream)
            .map(|s| s.partitions.len() as i32)
            .ok_or(Error::NoSuchStream)
    }

    /// The address of a partition's leader (or of a random in-sync replica).
    pub(crate) async fn partition_addr(
        &self,
        stream: &str,
        partition: i32,
        isr: bool,
    ) -> Result<String> {
        for attempt in 0..2 {
            let found = {
                let md = self.inner.metadata.read();
                md.streams.get(stream).map(|s| {
                    s.partitions.get(&partition).map(|p| {
                        let id = if isr && !p.isr.is_empty() {
                            let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed) as usize;
                            p.isr[n % p.isr.len()].clone()
                        } else {
                            p.leader.clone()
                        };
                        md.broker_addr(&id)
                    })
                })
            };
            match found {
                Some(Some(Some(addr))) => return Ok(addr),
                Some(None) if attempt == 1 => return Err(Error::NoSuchPartition),
                None if attempt == 1 => return Err(Error::NoSuchStream),
                Some(Some(None)) if attempt == 1 => {
                    return Err(Error::NoBrokers(format!(
                        "the leader of {stream}/{partition} is not among the known brokers"
                    )));
                }
                _ => {
                    self.refresh_metadata().await?;
                }
            }
        }
        Err(Error::NoSuchStream)
    }

    /// Runs `call` on the partition's leader, refreshing the metadata and retrying when the
    /// leader moved or went away.
    pub(crate) async fn on_partition<T, F, Fut>(
        &self,
        stream: &str,
        partition: i32,
        isr: bool,
        call: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        const ATTEMPTS: u32 = 6;
        let mut last = Error::NotLeader;
        for attempt in 0..ATTEMPTS {
            let addr = self.partition_addr(stream, partition, isr).await?;
            let c = match self.conn(&addr).await {
                Ok(c) => c,
                Err(e @ Error::Closed) => return Err(e),
                Err(e) => {
                    last = e;
                    self.backoff(attempt).await;
                    let _ = self.refresh_metadata().await;
                    continue;
                }
            };
            match call(c).await {
                Ok(v) => return Ok(v),
                Err(s) => {
                    let unavailable = s.code() == tonic::Code::Unavailable;
                    let e = Error::from_status(s);
                    if !e.is_retriable() || attempt + 1 == ATTEMPTS {
                        return Err(e);
                    }
                    if unavailable {
                        self.forget(&addr);
                    }
                    last = e;
                    self.backoff(attempt).await;
                    let _ = self.refresh_metadata().await;
                }
            }
        }
        Err(last)
    }

    pub(crate) async fn backoff(&self, attempt: u32) {
        let ms = 50u64 << attempt.min(5);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Creates a stream on `subject`.
    ///
    /// # Errors
    /// [`Error::StreamExists`], [`Error::InvalidArgument`] for a bad name, subject or option.
    pub async fn create_stream(
        &self,
        subject: &str,
        name: &str,
        opts: StreamOptions,
    ) -> Result<()> {
        let (_, mut c) = self.any_conn().await?;
        c.create_stream(self.request(opts.to_request(subject, name)))
            .await
            .map_err(Error::from_status)?;
        let _ = self.refresh_metadata().await;
        Ok(())
    }

    /// Deletes a stream and its data.
    ///
    /// # Errors
    /// [`Error::NoSuchStream`].
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        let (_, mut c) = self.any_conn().await?;
        c.delete_stream(self.request(api::DeleteStreamRequest { name: name.into() }))
            .await
            .map_err(Error::from_status)?;
        let _ = self.refresh_metadata().await;
        Ok(())
    }

    /// Pauses partitions of a stream. With `resume_all`, a publish to any of them later
    /// resumes them all.
    ///
    /// # Errors
    /// [`Error::NoSuchStream`], [`Error::NoSuchPartition`].
    pub async fn pause_stream(
        &self,
        name: &str,
        partitions: PartitionSet,
        resume_all: bool,
    ) -> Result<()> {
        let (_, mut c) = self.any_conn().await?;
        c.pause_stream(self.request(api::PauseStreamRequest {
            name: name.into(),
            partitions: partitions.0,
            resume_all,
        }))
        .await
        .map_err(Error::from_status)?;
        Ok(())
    }

    /// Makes partitions of a stream read-only, or writable again.
    ///
    /// # Errors
    /// [`Error::NoSuchStream`], [`Error::NoSuchPartition`].
    pub async fn set_stream_readonly(
        &self,
        name: &str,
        partitions: PartitionSet,
        readonly: bool,
    ) -> Result<()> {
        let (_, mut c) = self.any_conn().await?;
        c.set_stream_readonly(self.request(api::SetStreamReadonlyRequest {
            name: name.into(),
            partitions: partitions.0,
            readonly,
        }))
        .await
        .map_err(Error::from_status)?;
        Ok(())
    }

    /// A partition's metadata from its leader: high watermark, newest offset and state.
    ///
    /// # Errors
    /// [`Error::NoSuchStream`], [`Error::NoSuchPartition`].
    pub async fn fetch_partition_metadata(
        &self,
        stream: &str,
        partition: i32,
    ) -> Result<crate::PartitionInfo> {
        let req = api::FetchPartitionMetadataRequest {
            stream: stream.into(),
            partition,
        };
        let md = self
            .on_partition(stream, partition, false, |mut c| {
                let r = self.request(req.clone());
                async move { c.fetch_partition_metadata(r).await }
            })
            .await?;
        md.into_inner()
            .metadata
            .map(crate::PartitionInfo::from_api)
            .ok_or(Error::NoSuchPartition)
    }

    fn cursor_key(cursor_id: &str, stream: &str, partition: i32) -> String {
        format!("{cursor_id},{stream},{partition}")
    }

    async fn cursor_partition(&self, key: &str) -> Result<i32> {
        let n = match self.partition_count(CURSORS_STREAM).await {
            Ok(n) => n,
            Err(Error::NoSuchStream) => {
                return Err(Error::Transport(tonic::Status::internal(
                    "Cursors stream does not exist",
                )));
            }
            Err(e) => return Err(e),
        };
        Ok(partition_for_key(key.as_bytes(), n))
    }

    /// Stores a consumer's position (`offset`) in a stream partition.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty id or stream; [`Error::Transport`] when the
    /// server keeps no cursors.
    pub async fn set_cursor(
        &self,
        cursor_id: &str,
        stream: &str,
        partition: i32,
        offset: i64,
    ) -> Result<()> {
        let key = Self::cursor_key(cursor_id, stream, partition);
        let p = self.cursor_partition(&key).await?;
        let req = api::SetCursorRequest {
            stream: stream.into(),
            partition,
            cursor_id: cursor_id.into(),
            offset,
        };
        self.on_partition(CURSORS_STREAM, p, false, |mut c| {
            let r = self.request(req.clone());
            async move { c.set_cursor(r).await }
        })
        .await?;
        Ok(())
    }

    /// A consumer's stored position, or -1 when it has none.
    ///
    /// # Errors
    /// As [`set_cursor`](Client::set_cursor).
    pub async fn fetch_cursor(&self, cursor_id: &str, stream: &str, partition: i32) -> Result<i64> {
        let key = Self::cursor_key(cursor_id, stream, partition);
        let p = self.cursor_partition(&key).await?;
        let req = api::FetchCursorRequest {
            stream: stream.into(),
            partition,
            cursor_id: cursor_id.into(),
        };
        let r = self
            .on_partition(CURSORS_STREAM, p, false, |mut c| {
                let r = self.request(req.clone());
                async move { c.fetch_cursor(r).await }
            })
            .await?;
        Ok(r.into_inner().offset)
    }

    /// The value bytes of anything convertible.
    pub(crate) fn bytes(v: impl Into<Bytes>) -> Bytes {
        v.into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn correlation_ids_are_the_prefix_and_a_decimal_count() {
        assert_eq!(super::correlation_id("18f3a", 0), "18f3a-0");
        assert_eq!(
            super::correlation_id("18f3a", u64::MAX),
            "18f3a-18446744073709551615"
        );
    }
}
