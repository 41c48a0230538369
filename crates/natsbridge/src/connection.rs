//! Named NATS connections with Liftbridge's reconnect policy, and the operations the broker uses.
//!
//! A broker opens one connection per role (`streams`, `raft`, `replication`, `acks`,
//! `publishes`), each named `LIFT.<namespace>.<server id>.<role>` so that they can be told apart in
//! NATS monitoring. Connections reconnect forever, 250 ms apart, as Liftbridge's do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

/// TLS to the NATS servers (`nats.tls.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTls {
    /// A client certificate and its key (PEM files), for servers that verify clients.
    pub cert_and_key: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The CA (PEM file) that signs the servers' certificates; default: the system's roots.
    pub ca: Option<std::path::PathBuf>,
}

/// Everything needed to reach NATS. Its `Debug` output leaves the secrets out.
#[derive(Clone)]
pub struct NatsConfig {
    /// Server URLs, e.g. `nats://127.0.0.1:4222`; any of them may be used.
    pub servers: Vec<String>,
    /// A user and password, if the servers require them.
    pub user_password: Option<(String, String)>,
    /// A token, if the servers require one.
    pub token: Option<String>,
    /// An NKey seed (`SU...`), if the servers authenticate users by NKey.
    pub nkey_seed: Option<String>,
    /// A credentials file (user JWT and NKey seed), for servers in operator mode.
    pub credentials_file: Option<std::path::PathBuf>,
    /// TLS to the servers: required when set.
    pub tls: Option<NatsTls>,
    /// Wait between reconnect attempts. Default 250 ms.
    pub reconnect_wait: Duration,
    /// Time allowed for the first connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Messages a subscription buffers before the client drops the next ones (a slow consumer
    /// on the client's side). Default 65,536, the client library's own.
    pub subscription_capacity: usize,
    /// Told of slow-consumer drops, disconnects, reconnects and errors; `None`: nobody.
    pub events: Option<EventHook>,
    /// The prefix of this connection's reply subjects (its requests' inboxes); `None`: NATS's
    /// `_INBOX`. The broker puts its own inside its namespace, so that the permissions that keep
    /// applications out of the namespace keep them away from the answers too (follower
    /// fetches carry every replicated message).
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |b: bool| if b { "(set)" } else { "(none)" };
        f.debug_struct("NatsConfig")
            .field(
                "servers",
                &self
                    .servers
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("password", &set(self.user_password.is_some()))
            .field("token", &set(self.token.is_some()))
            .field("nkey_seed", &set(self.nkey_seed.is_some()))
            .field("credentials_file", &self.credentials_file)
            .field("tls", &self.tls)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish_non_exhaustive()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            user_password: None,
            token: None,
            nkey_seed: None,
            credentials_file: None,
            tls: None,
            reconnect_wait: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(5),
            subscription_capacity: 64 * 1024,
            events: None,
            inbox_prefix: None,
        }
    }
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A subscription's buffer was full and the client dropped a message: NATS core keeps no
    /// copy, so the message is lost for this connection.
    SlowConsumer,
    /// The connection to the server was lost; it reconnects on its own.
    Disconnected,
    /// The connection is back after a disconnect. Messages published meanwhile did not reach
    /// its subscriptions.
    Reconnected,
    /// The server announced it will shut down soon (lame duck mode).
    LameDuck,
    /// The server sent an error.
    ServerError,
    /// The client reported an error.
    ClientError,
}

impl EventKind {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SlowConsumer => "slow consumer",
            EventKind::Disconnected => "disconnected",
            EventKind::Reconnected => "reconnected",
            EventKind::LameDuck => "lame duck mode",
            EventKind::ServerError => "server error",
            EventKind::ClientError => "client error",
        }
    }
}

/// One report to an [`EventHook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The connection's name, `LIFT.<namespace>.<server id>.<role>` for a broker's.
    pub connection: String,
    /// What happened.
    pub kind: EventKind,
    /// How often it has happened to this connection so far. Slow-consumer drops are reported
    /// at most once a second, so the count can grow by more than one between reports; it
    /// counts the client's reports, which are themselves a lower bound when they come faster
    /// than the client can queue them.
    pub count: u64,
    /// The client's words, for errors.
    pub detail: String,
}

/// Receives a connection's [`Event`]s. It runs on the client's event task: keep it quick.
#[derive(Clone)]
pub struct EventHook(Arc<dyn Fn(&Event) + Send + Sync>);

impl EventHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> EventHook {
        EventHook(Arc::new(f))
    }

    /// Reports an event.
    pub fn call(&self, event: &Event) {
        (self.0)(event)
    }
}

impl std::fmt::Debug for EventHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventHook")
    }
}

/// Counts of what happened to a connection since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Messages a subscription's full buffer made the client drop (as reported, a lower bound).
    pub slow_consumer: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Connections regained.
    pub reconnects: u64,
    /// Connected to a NATS server now.
    pub connected: bool,
}

/// The counters behind [`ConnectionStats`], and the state of reporting.
#[derive(Debug, Default)]
struct Counters {
    slow_consumer: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    server_errors: AtomicU64,
    client_errors: AtomicU64,
    lame_duck: AtomicU64,
    /// When slow-consumer drops were last reported, and the count then.
    slow_reported: Mutex<Option<(Instant, u64)>>,
    /// Closed on purpose: what happens from now on is no news.
    closed: std::sync::atomic::AtomicBool,
}

impl Counters {
    /// Counts an event from the client, and says what to report of it, if anything.
    fn record(&self, event: &async_nats::Event) -> Option<(EventKind, u64, String)> {
        use async_nats::Event as E;
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let bump = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed) + 1;
        match event {
            E::SlowConsumer(_) => {
                let n = bump(&self.slow_consumer);
                let mut last = self.slow_reported.lock();
                if last.is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1)) {
                    return None;
                }
                *last = Some((Instant::now(), n));
                Some((EventKind::SlowConsumer, n, String::new()))
            }
            E::Disconnected => Some((
                EventKind::Disconnected,
                bump(&self.disconnects),
                String::new(),
            )),
            // The first connection is no news; any later one is a reconnect.
            E::Connected if self.disconnects.load(Ordering::Relaxed) > 0 => Some((
                EventKind::Reconnected,
                bump(&self.reconnects),
                String::new(),
            )),
            E::Connected | E::Draining | E::Closed => None,
            E::LameDuckMode => Some((EventKind::LameDuck, bump(&self.lame_duck), String::new())),
            E::ServerError(e) => Some((
                EventKind::ServerError,
                bump(&self.server_errors),
                e.to_string(),
            )),
            // While the connection is away, each failed reconnect attempt is a client error:
            // counted, but the disconnect said it already.
            E::ClientError(e) => {
                let n = bump(&self.client_errors);
                let away = self.disconnects.load(Ordering::Relaxed)
                    > self.reconnects.load(Ordering::Relaxed);
                (!away).then(|| (EventKind::ClientError, n, e.to_string()))
            }
        }
    }
}

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// No configured server could be reached in time.
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why it failed.
        reason: String,
    },
    /// A request got no answer in time.
    #[error("request on {subject} timed out after {timeout:?}")]
    Timeout {
        /// The request's subject.
        subject: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// Nobody is subscribed to a request's subject.
    #[error("no responders on {0}")]
    NoResponders(String),
    /// A subject NATS refuses.
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    /// Any other failure of the client.
    #[error("NATS {op} on {subject} failed: {reason}")]
    Client {
        /// The operation.
        op: &'static str,
        /// Its subject.
        subject: String,
        /// What the client said.
        reason: String,
    },
}

/// A received message.
pub type Message = async_nats::Message;
/// A stream of received messages; dropping it unsubscribes.
pub type Subscriber = async_nats::Subscriber;
/// Message headers.
pub type Headers = async_nats::HeaderMap;

/// One named connection.
#[derive(Debug, Clone)]
pub struct Connection {
    client: async_nats::Client,
    name: String,
    counters: Arc<Counters>,
}

/// Where a URL's user information (`user:password@` or `token@`) is, if it has one: up to the
/// last `@` after the scheme. Not only before the first `/`, `?` or `#`: a password written
/// unencoded may hold those, and a NATS server URL has no use for an `@` in a path.
fn userinfo(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let at = url[start..].rfind('@')?;
    Some(start..start + at)
}

/// Server URLs joined with commas, each with its credentials hidden (see [`redact_url`]).
pub fn redact_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> String {
    urls.into_iter()
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// A server URL as it may be shown: its user information, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match userinfo(url) {
        Some(r) => format!("{}***{}", &url[..r.start], &url[r.end..]),
        None => url.to_owned(),
    }
}

/// Whether a server URL carries credentials (`user:password@` or `token@`).
pub fn url_has_credentials(url: &str) -> bool {
    userinfo(url).is_some()
}

/// The connection name Liftbridge uses: `LIFT.<namespace>.<server id>.<role>`.
pub fn connection_name(namespace: &str, server_id: &str, role: &str) -> String {
    format!("LIFT.{namespace}.{server_id}.{role}")
}

impl Connection {
    /// Connects with the given name.
    ///
    /// # Errors
    /// [`NatsError::Connect`] when no server answers within `connect_timeout`.
    pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<Connection, NatsError> {
        Self::open(cfg, name, true).await
    }

    /// Connects with the given name, asking the server never to deliver this connection's
    /// own publishes to its own subscriptions (NATS `echo: false`).
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub async fn connect_without_echo(
        cfg: &NatsConfig,
        name: &str,
    ) -> Result<Connection, NatsError> {
        Self::open(cfg, name, false).await
    }

    async fn open(cfg: &NatsConfig, name: &str, echo: bool) -> Result<Connection, NatsError> {
        let wait = cfg.reconnect_wait;
        let counters = Arc::new(Counters::default());
        let (c, hook, conn_name) = (counters.clone(), cfg.events.clone(), name.to_owned());
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .reconnect_delay_callback(move |_| wait)
            .connection_timeout(cfg.connect_timeout)
            .subscription_capacity(cfg.subscription_capacity.max(1))
            .event_callback(move |event| {
                if let (Some((kind, count, detail)), Some(hook)) = (c.record(&event), &hook) {
                    hook.call(&Event {
                        connection: conn_name.clone(),
                        kind,
                        count,
                        detail,
                    });
                }
                std::future::ready(())
            });
        if !echo {
            opts = opts.no_echo();
        }
        if let Some(prefix) = &cfg.inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix.clone());
        }
        if let Some((user, password)) = &cfg.user_password {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &cfg.token {
            opts = opts.token(token.clone());
        }
        if let Some(seed) = &cfg.nkey_seed {
            opts = opts.nkey(seed.clone());
        }
        let servers_text = redact_urls(cfg.servers.iter().map(String::as_str));
        let failed = |reason: String| NatsError::Connect {
            servers: servers_text.clone(),
            reason,
        };
        // Credentials belong in their own settings, which the logs never show; a URL is shown
        // everywhere.
        if cfg.servers.iter().any(|u| url_has_credentials(u)) {
            return Err(failed(
                "credentials in a server URL are refused: give them as a user and password, \
                 a token, an NKey or a credentials file"
                    .into(),
            ));
        }
        if let Some(path) = &cfg.credentials_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                failed(format!(
                    "cannot use the NATS credentials file {}: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(tls) = &cfg.tls {
            opts = opts.require_tls(true);
            if let Some((cert, key)) = &tls.cert_and_key {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
            if let Some(ca) = &tls.ca {
                opts = opts.add_root_certificates(ca.clone());
            }
        }
        let servers = servers_text.clone();
        let connect = opts.connect(cfg.servers.as_slice());
        let client = match tokio::time::timeout(cfg.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(NatsError::Connect {
                    servers,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(NatsError::Connect {
                    servers,
                    reason: format!("no answer within {:?}", cfg.connect_timeout),
                });
            }
        };
        Ok(Connection {
            client,
            name: name.to_owned(),
            counters,
        })
    }

    /// Closes the connection for every clone of it: subscriptions end after what they have
    /// received, and nothing more is reported to the event hook.
    pub async fn close(&self) {
        self.counters.closed.store(true, Ordering::Release);
        let _ = self.client.drain().await;
    }

    /// What happened to this connection so far.
    pub fn stats(&self) -> ConnectionStats {
        let c = &self.counters;
        ConnectionStats {
            slow_consumer: c.slow_consumer.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            connected: self.client.connection_state() == async_nats::connection::State::Connected,
        }
    }

    /// The connection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying client, for anything this wrapper does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publishes a message.
    ///
    /// # Errors
    /// [`NatsError::Client`] if the client is closed or the payload is too large.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), NatsError> {
        self.client
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|e| client_error("publish", subject, e))
    }

    /// Publishes a message with headers and an optional reply subject.
    ///
    /// # Errors
    /// As [`publish`](Connection::publish).
    pub async fn publish_with(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), NatsError> {
        let result = match reply {
            Some(r) => {
                self.client
                    .publish_with_reply_and_headers(
                        subject.to_owned(),
                        r.to_owned(),
                        headers,
                        payload,
                    )
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(subject.to_owned(), headers, payload)
                    .await
            }
        };
        result.map_err(|e| client_error("publish", subject, e))
    }

    /// Subscribes to a subject (wildcards allowed).
    ///
    /// # Errors
    /// [`NatsError::InvalidSubject`], or [`NatsError::Client`] if the client is closed.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscriber, NatsError> {
        crate::subjects::validate_subject(subject)
            .map_err(|_| NatsError::InvalidSubject(subject.to_owned()))?;
        self.client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| client_error("subscribe", subject, e))
    }

    /// Joins queue group `group` on a subject: each message goes to one member of the group.
    /// An empty group is a plain subscription, as in Liftbridge.
    ///
    /// # Errors
    /// As [`subscribe`](Connection::subscribe).
    pub async fn queue_subscribe(
        &self,
        subject: &str,
        group: &str,
    ) -> Result<Subscriber, NatsError> {
        if group.is_empty() {
            return self.subscribe(subject).await;
        }
        crate::subjects::validate_subject(subject)
            .map_err(|_| NatsError::InvalidSubject(subject.to_owned()))?;
        self.client
            .queue_subscribe(subject.to_owned(), group.to_owned())
            .await
            .map_err(|e| client_error("queue subscribe", subject, e))
    }

    /// Sends a request and waits up to `timeout` for the first reply.
    ///
    /// # Errors
    /// [`NatsError::Timeout`], [`NatsError::NoResponders`], or [`NatsError::Client`].
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, NatsError> {
        let req = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        match self.client.send_request(subject.to_owned(), req).await {
            Ok(m) => Ok(m),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::TimedOut => NatsError::Timeout {
                    subject: subject.to_owned(),
                    timeout,
                },
                async_nats::RequestErrorKind::NoResponders => {
                    NatsError::NoResponders(subject.to_owned())
                }
                _ => client_error("request", subject, e),
            }),
        }
    }

    /// Waits until everything published so far has been handed to the server.
    ///
    /// # Errors
    /// [`NatsError::Client`] if the connection is closed.
    pub async fn flush(&self) -> Result<(), NatsError> {
        self.client
            .flush()
            .await
            .map_err(|e| client_error("flush", "", e))
    }
}

fn client_error(op: &'static str, subject: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Client {
        op,
        subject: subject.to_owned(),
        reason: e.to_string(),
    }
}
