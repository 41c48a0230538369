//! `liftbridged`: composition only. It reads the configuration, sets up logging, starts the
//! embedded NATS server when asked, the broker, and the gRPC API, and stops them in reverse
//! order on SIGINT or SIGTERM. It never calls home.

pub mod config;
mod embedded;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::Broker;
use prost::Message as _;
use slog::{Drain, Logger, info, o};

pub use config::{ApiSecurity, Config, ConfigError, EmbeddedNats, Flags};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The embedded NATS server could not start.
    #[error("cannot start the embedded NATS server on {addr}: {reason}")]
    Nats {
        /// Where it tried to listen.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// The gRPC port could not be bound.
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The data folder could not be used.
    #[error("data folder {path}: {reason}")]
    DataDir {
        /// The folder.
        path: String,
        /// Why.
        reason: String,
    },
    /// The broker failed to start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// A TLS or authorization file cannot be used.
    #[error(transparent)]
    Security(#[from] api::SecurityError),
}

/// A logger writing to standard error at `level`.
pub fn logger(level: slog::Level) -> Logger {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).chan_size(4096).build().fuse();
    Logger::root(drain.filter_level(level).fuse(), o!())
}

/// The server id kept in `<data>/liftbridge` (a `ServerState` protobuf, as Liftbridge). A stored
/// id wins over a configured one, so a restarted server keeps its identity.
fn server_id(cfg: &Config, log: &Logger) -> Result<String, StartError> {
    let dir = &cfg.broker.data_dir;
    let data_err = |e: std::io::Error| StartError::DataDir {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(data_err)?;
    let path = dir.join("liftbridge");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(state) = liftbridge_proto::internal::ServerState::decode(bytes.as_slice())
        && !state.server_id.is_empty()
    {
        if cfg.id_given && state.server_id != cfg.broker.server_id {
            slog::warn!(log, "using the stored server id instead of the configured one";
                "stored" => &state.server_id, "configured" => &cfg.broker.server_id);
        }
        return Ok(state.server_id);
    }
    let id = if cfg.id_given {
        cfg.broker.server_id.clone()
    } else {
        natsbridge::unique_id()
    };
    write_atomically(
        &path,
        &liftbridge_proto::internal::ServerState {
            server_id: id.clone(),
        }
        .encode_to_vec(),
    )
    .map_err(data_err)?;
    Ok(id)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A running server.
pub struct Running {
    broker: Broker,
    api: api::Server,
    nats: Option<natsd::Server>,
    grpc_addr: std::net::SocketAddr,
    nats_url: String,
    logger: Logger,
    authz: Option<Arc<api::Authorizer>>,
    monitor: Option<monitor::Server>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("grpc_addr", &self.grpc_addr)
            .field("nats_url", &self.nats_url)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Reads the authorization policy again (SIGHUP). A policy that does not load leaves the
    /// previous one in force, and says so; without authorization it does nothing.
    pub async fn reload_authorization(&self) {
        let Some(a) = &self.authz else {
            info!(
                self.logger,
                "SIGHUP received; no authorization policy to reload"
            );
            return;
        };
        match a.reload().await {
            Ok(()) => info!(self.logger, "reloaded the authorization policy"),
            Err(e) => {
                slog::error!(self.logger, "the authorization policy did not reload; the previous one stays in force";
                "error" => %e)
            }
        }
    }

    /// Where the gRPC API listens.
    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        self.grpc_addr
    }

    /// Where the operators' HTTP port listens, when it is on.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.monitor.as_ref().map(monitor::Server::local_addr)
    }

    /// The NATS server the broker uses.
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// A planned stop: hands off what this broker leads (see [`Broker::hand_off`]), then stops
    /// the API and the broker (closing every log cleanly), then the embedded NATS server.
    pub async fn shutdown(self) {
        info!(self.logger, "shutting down");
        // A planned stop: what this broker leads moves to peers first (bounded by
        // `shutdown.handoff.timeout`), so clients retry on a new leader instead of waiting
        // out a failover.
        self.broker.hand_off().await;
        // With embedded NATS, the other NATS clients go first: the broker then records what
        // the server had accepted from them before it closes its logs.
        if let Some(n) = &self.nats {
            let cfg = self.broker.config();
            let own = natsbridge::connection_name(&cfg.namespace, &cfg.server_id, "");
            n.close_clients(|name| name.starts_with(&own)).await;
        }
        // The API stops accepting calls while the broker closes its logs, which ends the open
        // subscriptions (with Unavailable, so clients resubscribe elsewhere or later).
        tokio::join!(self.api.shutdown(), self.broker.shutdown());
        if let Some(m) = self.monitor {
            m.shutdown().await;
        }
        if let Some(n) = self.nats {
            n.shutdown().await;
        }
        info!(self.logger, "stopped");
    }
}

/// Starts everything `cfg` describes and waits until the broker is ready to serve.
///
/// # Errors
/// [`StartError`] naming the part that failed.
pub async fn start(mut cfg: Config, logger: Logger) -> Result<Running, StartError> {
    cfg.broker.server_id = server_id(&cfg, &logger)?;
    let nats = match &cfg.embedded_nats {
        Some(e) => {
            let mut nc = natsd::ServerConfig {
                host: e.host.clone(),
                port: e.port,
                ..natsd::ServerConfig::default()
            };
            if let Some(m) = e.max_payload {
                nc.max_payload = m;
            }
            if let Some(m) = e.max_connections {
                nc.max_connections = m;
            }
            if let Some(m) = e.max_subscriptions {
                nc.max_subscriptions = m;
            }
            nc.auth = e.auth.clone();
            if let Some(files) = &e.tls {
                nc.tls = Some(
                    natsd::tls::Tls::load(files).map_err(|reason| StartError::Nats {
                        addr: format!("{}:{}", e.host, e.port),
                        reason: format!("TLS: {reason}"),
                    })?,
                );
            }
            let server = natsd::Server::start(nc)
                .await
                .map_err(|err| StartError::Nats {
                    addr: format!("{}:{}", e.host, e.port),
                    reason: err.to_string(),
                })?;
            cfg.broker.nats.servers = vec![server.client_url()];
            // The server is in this process: publishes nobody else wants can skip it, and
            // partitions record their subjects without a socket in between.
            cfg.broker.embedded_nats = Some(Arc::new(embedded::Embedded(server.handle())));
            info!(logger, "embedded NATS server started"; "url" => server.client_url());
            Some(server)
        }
        None => None,
    };
    let listener = match tokio::net::TcpListener::bind(&cfg.bind).await {
        Ok(l) => l,
        Err(source) => {
            if let Some(n) = nats {
                n.shutdown().await;
            }
            return Err(StartError::Listen {
                addr: cfg.bind.clone(),
                source,
            });
        }
    };
    let grpc_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: cfg.bind.clone(),
        source,
    })?;
    if cfg.broker.advertise_port == 0 {
        cfg.broker.advertise_port = grpc_addr.port();
    }
    let nats_url = cfg.broker.nats.servers.join(",");
    let broker = match Broker::start(cfg.broker.clone(), logger.clone()).await {
        Ok(b) => b,
        Err(e) => {
            if let Some(n) = nats {
                n.shutdown().await;
            }
            return Err(e.into());
        }
    };
    if !broker.wait_ready(Duration::from_secs(30)).await {
        slog::warn!(
            logger,
            "the metadata group is not ready yet; serving anyway"
        );
    }
    // From here on a failure stops what has started: the broker and the embedded server.
    let serving = async {
        let security = api_security(&cfg).await?;
        let authz = security.authz.clone();
        let monitor = match &cfg.http_listen {
            Some(addr) => {
                let listen = |source| StartError::Listen {
                    addr: addr.clone(),
                    source,
                };
                let l = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
                Some(monitor::serve(broker.clone(), l).await.map_err(listen)?)
            }
            None => None,
        };
        let api = api::serve_with(broker.clone(), listener, security)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.bind.clone(),
                source,
            });
        match api {
            Ok(api) => Ok((api, authz, monitor)),
            Err(e) => {
                if let Some(m) = monitor {
                    m.shutdown().await;
                }
                Err(e)
            }
        }
    };
    let (api, authz, monitor) = match serving.await {
        Ok(s) => s,
        Err(e) => {
            broker.shutdown().await;
            if let Some(n) = nats {
                n.shutdown().await;
            }
            return Err(e);
        }
    };
    info!(logger, "liftbridged started"; "id" => broker.id(), "grpc" => %grpc_addr,
        "advertised" => format!("{}:{}", cfg.broker.advertise_host, cfg.broker.advertise_port),
        "nats" => natsbridge::redact_urls(nats_url.split(',')));
    Ok(Running {
        broker,
        api,
        nats,
        grpc_addr,
        nats_url,
        logger,
        authz,
        monitor,
    })
}

/// Starts a single-node server keeping its data in `data_dir`, listening on 127.0.0.1 only, with
/// its embedded NATS server; both ports are picked free. Cursors are on. Meant for tests and
/// examples; it logs nothing.
///
/// # Errors
/// As [`start`].
pub async fn start_local(data_dir: &Path) -> Result<Running, StartError> {
    let flags = Flags {
        data_dir: Some(data_dir.to_path_buf()),
        host: Some("127.0.0.1".into()),
        port: Some(0),
        embedded_nats_port: Some(0),
        ..Flags::default()
    };
    let mut cfg = Config::load(&flags)?;
    cfg.broker.cursors.partitions = 1;
    start(cfg, Logger::root(slog::Discard, o!())).await
}

/// Reads the API's TLS and authorization files.
async fn api_security(cfg: &Config) -> Result<api::Security, api::SecurityError> {
    let s = &cfg.api_security;
    let tls = match &s.cert_and_key {
        Some((cert, key)) => Some(api::TlsSettings::load(cert, key, s.client_ca.as_deref())?),
        None => None,
    };
    let authz = match &s.authz {
        Some((model, policy)) => Some(Arc::new(api::Authorizer::load(model, policy).await?)),
        None => None,
    };
    Ok(api::Security { tls, authz })
}

/// Runs until SIGINT or SIGTERM, then stops cleanly; SIGHUP reloads the authorization policy.
/// Returns the process exit code.
pub async fn run(cfg: Config) -> i32 {
    if let Some(member) = &cfg.remove_member {
        return remove_member(&cfg, member).await;
    }
    let logger = logger(cfg.log_level);
    // The handlers go in before anything listens: a SIGHUP or SIGTERM that comes while the
    // server starts is then handled, not fatal.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("liftbridged: cannot install the SIGTERM handler: {e}");
            return 1;
        }
    };
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("liftbridged: cannot install the SIGHUP handler: {e}");
            return 1;
        }
    };
    // A start can take minutes (a join retries for about a minute, then waits for readiness):
    // a SIGTERM or SIGINT meanwhile abandons it. What it had opened is left as after a crash,
    // which every store recovers from.
    let started = tokio::select! {
        r = start(cfg, logger.clone()) => r,
        _ = term.recv() => {
            info!(logger, "SIGTERM received while starting: the start is abandoned");
            return stop_during_start(logger).await;
        }
        _ = tokio::signal::ctrl_c() => {
            info!(logger, "SIGINT received while starting: the start is abandoned");
            return stop_during_start(logger).await;
        }
    };
    let running = match started {
        Ok(r) => r,
        Err(e) => {
            slog::crit!(logger, "cannot start"; "error" => %e);
            // Let the asynchronous drain print the message.
            drop(logger);
            tokio::time::sleep(Duration::from_millis(100)).await;
            eprintln!("liftbridged: {e}");
            return 1;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                info!(logger, "SIGINT received");
                break;
            }
            _ = term.recv() => {
                info!(logger, "SIGTERM received");
                break;
            }
            _ = hup.recv() => running.reload_authorization().await,
        }
    }
    running.shutdown().await;
    drop(logger);
    tokio::time::sleep(Duration::from_millis(50)).await;
    0
}

/// Ends the process after a signal that came during the start: lets the log line out.
async fn stop_during_start(logger: Logger) -> i32 {
    drop(logger);
    tokio::time::sleep(Duration::from_millis(100)).await;
    0
}

/// `--raft-remove-member`: asks the metadata leader to remove `member` from the group, prints
/// the outcome and returns the exit code.
async fn remove_member(cfg: &Config, member: &str) -> i32 {
    let result = async {
        let subjects = natsbridge::Subjects::new(&cfg.broker.namespace)
            .map_err(|e| format!("namespace: {e}"))?;
        // Answers come inside the namespace, as the brokers' own do, never on the `_INBOX.`
        // prefix applications may read.
        let mut nats = cfg.broker.nats.clone();
        nats.inbox_prefix = Some(subjects.inbox_prefix());
        let conn = natsbridge::Connection::connect(&nats, "liftbridged-remove-member")
            .await
            .map_err(|e| e.to_string())?;
        let removed = broker::remove_member(&conn, &subjects, member, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string());
        conn.close().await;
        removed
    }
    .await;
    match result {
        Ok(()) => {
            println!(
                "liftbridged: server {member} is not a member of the metadata group (any more)"
            );
            0
        }
        Err(e) => {
            eprintln!("liftbridged: {e}");
            1
        }
    }
}
