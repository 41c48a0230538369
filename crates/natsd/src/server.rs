//! The server: configuration, the accept loop, and what connections share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::client::{self, Conn};
use crate::local::{LocalOptions, LocalQueue, LocalSubscription};
use crate::sublist::{Sublist, Subscription, is_valid_subject};

/// The protocol version this server speaks to clients; it decides which features clients use.
pub const COMPATIBLE_VERSION: &str = "2.9.0";

/// How clients must authenticate. Its `Debug` output hides passwords and tokens.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `CONNECT {"auth_token": ...}`.
    Token(String),
    /// `CONNECT {"user": ..., "pass": ...}`.
    User {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// One of several users, each with its own permissions.
    Users(Vec<User>),
}

/// One user of [`Auth::Users`]. Its `Debug` output hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
    /// What it may publish and subscribe to; `None`: anything.
    pub permissions: Option<crate::perms::Permissions>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token(_) => f.debug_tuple("Token").field(&"***").finish(),
            Auth::User { user, .. } => f
                .debug_struct("User")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            Auth::Users(users) => f.debug_tuple("Users").field(users).finish(),
        }
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("user", &self.user)
            .field("password", &"***")
            .field("permissions", &self.permissions)
            .finish()
    }
}

/// Server settings. The defaults are nats-server's.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1`.
    pub host: String,
    /// Port to listen on; 0 picks a free one. Default 4222.
    pub port: u16,
    /// Largest message payload accepted, advertised in INFO. Default 1 MiB.
    pub max_payload: usize,
    /// Bytes queued for one client before it is cut off as a slow consumer. Default 64 MiB.
    pub max_pending: usize,
    /// Longest control line. Default 4096.
    pub max_control_line: usize,
    /// A write to a client that takes longer than this makes it a slow consumer. Default 10 s.
    pub write_deadline: Duration,
    /// Interval of server PINGs. Default 2 minutes.
    pub ping_interval: Duration,
    /// Unanswered PINGs before a client is stale and closed. Default 2.
    pub max_pings_out: u32,
    /// Authentication required of clients; `None` (the default) for none.
    pub auth: Option<Auth>,
    /// Time a client has to send its CONNECT when authentication is required. Default 2 s.
    pub auth_timeout: Duration,
    /// Name reported in INFO.
    pub name: String,
    /// Client connections at once; one more is told `maximum connections exceeded` and closed.
    /// Default 65,536, as nats-server's `max_connections`.
    pub max_connections: usize,
    /// Subscriptions per connection; 0 (the default, as nats-server's `max_subscriptions`)
    /// for no limit. A SUB beyond it is refused with `maximum subscriptions exceeded`.
    pub max_subscriptions: usize,
    /// TLS for every client (see [`crate::tls`]); `None` (the default): plain TCP.
    pub tls: Option<crate::tls::Tls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 4222,
            max_payload: 1024 * 1024,
            max_pending: 64 * 1024 * 1024,
            max_control_line: 4096,
            write_deadline: Duration::from_secs(10),
            ping_interval: Duration::from_secs(120),
            max_pings_out: 2,
            auth: None,
            auth_timeout: Duration::from_secs(2),
            name: "liftbridge-natsd".into(),
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            tls: None,
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
}

#[derive(Serialize)]
struct Info<'a> {
    server_id: &'a str,
    server_name: &'a str,
    version: &'a str,
    proto: u8,
    host: &'a str,
    port: u16,
    headers: bool,
    max_payload: usize,
    client_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    auth_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls_verify: bool,
}

/// State shared by the accept loop and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: ServerConfig,
    pub sublist: Sublist,
    server_id: String,
    port: u16,
    clients: Mutex<HashMap<u64, Arc<Conn>>>,
    /// In-process subscribers, closed when the server shuts down.
    locals: Mutex<HashMap<u64, Weak<Conn>>>,
    next_id: AtomicU64,
    all_gone: Notify,
    /// Ends the accept loop before the shutdown.
    stop_accepting: Notify,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn info_line(&self, client_id: u64, peer: Option<SocketAddr>) -> String {
        let info = Info {
            server_id: &self.server_id,
            server_name: &self.cfg.name,
            version: COMPATIBLE_VERSION,
            proto: 1,
            host: &self.cfg.host,
            port: self.port,
            headers: true,
            max_payload: self.cfg.max_payload,
            client_id,
            client_ip: peer.map(|p| p.ip().to_string()),
            auth_required: self.cfg.auth.is_some(),
            tls_required: self.cfg.tls.is_some(),
            tls_verify: self.cfg.tls.as_ref().is_some_and(|t| t.verify),
        };
        format!(
            "INFO {}\r\n",
            serde_json::to_string(&info).expect("INFO serializes")
        )
    }

    pub fn register(&self, conn: Arc<Conn>) {
        self.clients.lock().insert(conn.id, conn);
    }

    pub fn unregister(&self, id: u64) {
        let mut clients = self.clients.lock();
        clients.remove(&id);
        if clients.is_empty() {
            self.all_gone.notify_waiters();
        }
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// A new connection id; ids are never reused.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn forget_local(&self, id: u64) {
        self.locals.lock().remove(&id);
    }

    fn close_locals(&self) {
        let locals: Vec<Arc<Conn>> = self
            .locals
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for conn in locals {
            if let Some(q) = conn.local() {
                q.close();
            }
        }
    }
}

/// What code running beside the server can do with it: ask who listens on a subject, and
/// subscribe in process. Cloning it is cheap; it does not keep the server running.
#[derive(Debug, Clone)]
pub struct Handle(Arc<Shared>);

impl Handle {
    /// Whether a message published now on the literal `subject` would reach a subscription of
    /// a connection not named `except` (the name a client gives in CONNECT). A subscription
    /// made after the answer gets only later messages, as with any publish.
    pub fn listened_by_others(&self, subject: &str, except: &str) -> bool {
        self.0.sublist.any(subject, |s| {
            s.conn.name.get().map(String::as_str) != Some(except)
        })
    }

    /// Subscribes code in this process to `subject` (wildcards allowed), in queue group
    /// `queue` if given. Publishers wait rather than lose a message when it falls behind; see
    /// [`LocalSubscription`].
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid subject or an empty queue group.
    pub fn subscribe_local(
        &self,
        subject: &str,
        queue: Option<&str>,
        opts: LocalOptions,
    ) -> Result<LocalSubscription, Error> {
        if !is_valid_subject(subject) {
            return Err(Error::Config(format!("invalid subject {subject:?}")));
        }
        if queue.is_some_and(str::is_empty) {
            return Err(Error::Config("empty queue group".into()));
        }
        let shared = &self.0;
        let id = shared.next_id();
        let name = opts.name.clone();
        let conn = Arc::new(Conn::new_local(id, LocalQueue::new(opts), name));
        let sub = Arc::new(Subscription {
            conn: conn.clone(),
            sid: bytes::Bytes::from(id.to_string()),
            subject: subject.to_owned(),
            queue: queue.map(str::to_owned),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        });
        shared.locals.lock().insert(id, Arc::downgrade(&conn));
        // Registered first, so that a shutdown from now on closes it.
        if *shared.shutdown.borrow()
            && let Some(q) = conn.local()
        {
            q.close();
        }
        shared.sublist.insert(sub.clone());
        Ok(LocalSubscription {
            conn,
            sub,
            shared: shared.clone(),
        })
    }
}

/// A running server. Stop it with [`shutdown`](Server::shutdown); dropping it stops it too.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// The accept loop, which owns the listener.
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds the listener and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be listened on; [`Error::Config`] for a bad setting.
    pub async fn start(cfg: ServerConfig) -> Result<Server, Error> {
        if cfg.max_payload == 0 || cfg.max_pending < cfg.max_payload {
            return Err(Error::Config(format!(
                "max_payload ({}) must be positive and at most max_pending ({})",
                cfg.max_payload, cfg.max_pending
            )));
        }
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| Error::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            server_id: server_id(),
            port: local.port(),
            sublist: Sublist::default(),
            clients: Mutex::new(HashMap::new()),
            locals: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            all_gone: Notify::new(),
            stop_accepting: Notify::new(),
            shutdown,
            cfg,
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(Server {
            shared,
            addr: local,
            stop,
            accept: Some(accept),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to, e.g. `nats://127.0.0.1:4222`.
    pub fn client_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.shared.clients.lock().len()
    }

    /// Subscriptions across all connections.
    pub fn subscriptions(&self) -> u64 {
        self.shared.sublist.len()
    }

    /// A handle for code running beside the server.
    pub fn handle(&self) -> Handle {
        Handle(self.shared.clone())
    }

    /// Subscribes code in this process; see [`Handle::subscribe_local`].
    ///
    /// # Errors
    /// As [`Handle::subscribe_local`].
    pub fn subscribe_local(
        &self,
        subject: &str,
        queue: Option<&str>,
        opts: LocalOptions,
    ) -> Result<LocalSubscription, Error> {
        self.handle().subscribe_local(subject, queue, opts)
    }

    /// The first step of a stop that loses nothing: stops accepting connections, and closes
    /// every client connection whose name (from CONNECT) `keep` refuses, after flushing what
    /// is queued for it. Returns once those connections have ended (up to 5 s), so everything
    /// they published has been handed to its subscribers, in-process ones included.
    pub async fn close_clients(&self, keep: impl Fn(&str) -> bool) {
        self.shared.stop_accepting.notify_one();
        let closing: Vec<u64> = {
            let clients = self.shared.clients.lock();
            clients
                .values()
                .filter(|c| !c.name.get().is_some_and(|n| keep(n)))
                .map(|c| {
                    c.close(false);
                    c.id
                })
                .collect()
        };
        let wait = async {
            loop {
                let gone = self.shared.all_gone.notified();
                {
                    let clients = self.shared.clients.lock();
                    if closing.iter().all(|id| !clients.contains_key(id)) {
                        return;
                    }
                }
                // Woken by each connection that ends, or checked again shortly.
                let _ = tokio::time::timeout(Duration::from_millis(10), gone).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }

    /// Stops accepting, flushes and closes every connection, and waits (up to 5 s) for them.
    /// In-process subscriptions end once their queues are read.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.shared.close_locals();
        // The port is free once the accept loop has dropped the listener; a restart on the
        // same port right after this returns must find it free.
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        let wait = async {
            loop {
                let gone = self.shared.all_gone.notified();
                if self.shared.clients.lock().is_empty() {
                    return;
                }
                gone.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.shared.close_locals();
    }
}

fn server_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (std::process::id() as u64) << 32 ^ SEQ.fetch_add(1, Ordering::Relaxed);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % 32) as usize] as char
        })
        .collect()
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown_signal();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        if shared.clients.lock().len() >= shared.cfg.max_connections {
                            tokio::spawn(client::refuse(stream, "maximum connections exceeded"));
                            continue;
                        }
                        let id = shared.next_id();
                        tokio::spawn(client::serve(shared.clone(), stream, id));
                    }
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            _ = shutdown.changed() => return,
            _ = shared.stop_accepting.notified() => return,
        }
    }
}
