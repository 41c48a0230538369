//! Configuration: Liftbridge's keys from a YAML file (flat dotted keys, nested maps, or both),
//! then `LIFTBRIDGE_*` environment variables, then command-line flags, each winning over the one
//! before. An unknown key in the file is an error that names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::{Bootstrap, BrokerConfig};
use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use figment::value::Value;

/// What can be wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not YAML.
    #[error("cannot load the configuration: {0}")]
    Load(String),
    /// A key Liftbridge does not know.
    #[error("unknown configuration key {0:?}")]
    UnknownKey(String),
    /// A key with a value of the wrong type or range.
    #[error("configuration key {key:?}: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The command line. Flags win over the file and the environment.
#[derive(Debug, Default, Parser)]
#[command(
    name = "liftbridged",
    version,
    about = "A durable, replicated message log for NATS"
)]
pub struct Flags {
    /// Load configuration from this YAML file.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// This server's id (default: the stored id, else a new random one).
    #[arg(long = "id", visible_alias = "server-id")]
    pub id: Option<String>,
    /// The cluster namespace.
    #[arg(long = "namespace", visible_alias = "ns")]
    pub namespace: Option<String>,
    /// NATS servers to connect to, comma-separated or repeated.
    #[arg(short = 'n', long = "nats-servers", value_delimiter = ',')]
    pub nats_servers: Vec<String>,
    /// Run an embedded NATS server.
    #[arg(short = 'e', long = "embedded-nats")]
    pub embedded_nats: bool,
    /// Configuration file of the embedded NATS server (implies --embedded-nats).
    #[arg(long = "embedded-nats-config", visible_alias = "nc")]
    pub embedded_nats_config: Option<PathBuf>,
    /// Port of the embedded NATS server (default 4222).
    #[arg(long = "embedded-nats-port")]
    pub embedded_nats_port: Option<u16>,
    /// Where to keep data.
    #[arg(short = 'd', long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// The host clients are told to connect to (and, without `listen`, the bind address).
    #[arg(long)]
    pub host: Option<String>,
    /// The gRPC port (default 9292; 0 picks a free one).
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Log level: debug, info, warn or error.
    #[arg(short = 'l', long)]
    pub level: Option<String>,
    /// Start a new cluster with this server as its only member.
    #[arg(long = "raft-bootstrap-seed")]
    pub raft_bootstrap_seed: bool,
    /// Start a new cluster of exactly these server ids (comma-separated).
    #[arg(long = "raft-bootstrap-peers", value_delimiter = ',')]
    pub raft_bootstrap_peers: Vec<String>,
    /// TLS certificate of the API (PEM); with `--tls-key`.
    #[arg(long = "tls-cert")]
    pub tls_cert: Option<PathBuf>,
    /// TLS key of the API (PEM); with `--tls-cert`.
    #[arg(long = "tls-key")]
    pub tls_key: Option<PathBuf>,
    /// Serve metrics, liveness and readiness over HTTP on this address (`http.listen`), for
    /// example `127.0.0.1:9293`. Off by default.
    #[arg(long = "http")]
    pub http: Option<String>,
    /// Do not serve: ask the metadata leader, over the configured NATS and namespace, to remove
    /// this server id from the metadata group, then exit (for a member whose data was lost).
    #[arg(long = "raft-remove-member", value_name = "SERVER_ID")]
    pub raft_remove_member: Option<String>,
}

/// The embedded NATS server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedNats {
    /// Bind address. Default 127.0.0.1 (Liftbridge binds every interface).
    pub host: String,
    /// Port. Default 4222.
    pub port: u16,
    /// Largest payload, if set.
    pub max_payload: Option<usize>,
    /// Client connections at once (`max_connections`), if set.
    pub max_connections: Option<usize>,
    /// Subscriptions per connection (`max_subscriptions`, 0: no limit), if set.
    pub max_subscriptions: Option<usize>,
    /// Who may connect, and what each user may publish and subscribe to (`authorization`).
    pub auth: Option<natsd::Auth>,
    /// TLS for its clients (`tls`).
    pub tls: Option<natsd::tls::TlsFiles>,
}

/// The resolved configuration of one server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The broker's settings. The advertised port is fixed once the listener is bound.
    pub broker: BrokerConfig,
    /// Where the gRPC server binds.
    pub bind: String,
    /// Whether the advertised host was given (else it follows the bind host, or localhost).
    pub host_given: bool,
    /// The embedded NATS server, when one runs.
    pub embedded_nats: Option<EmbeddedNats>,
    /// The log level.
    pub log_level: slog::Level,
    /// Whether the server id came from the configuration (else it is generated or stored).
    pub id_given: bool,
    /// Whether a bootstrap mode was configured.
    pub bootstrap_given: bool,
    /// TLS and authorization of the API.
    pub api_security: ApiSecurity,
    /// Where the operators' HTTP port (metrics, health) listens; `None`: off.
    pub http_listen: Option<String>,
    /// `--raft-remove-member`: remove this server id from the metadata group instead of serving.
    pub remove_member: Option<String>,
}

/// TLS and authorization of the API (`tls.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiSecurity {
    /// `tls.cert` and `tls.key`: TLS is on when both are set.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// `tls.client.auth.enabled` with `tls.client.auth.ca`: clients need a certificate that
    /// CA signed.
    pub client_ca: Option<PathBuf>,
    /// `tls.client.authz.enabled` with `tls.client.authz.model` and `.policy`.
    pub authz: Option<(PathBuf, PathBuf)>,
}

/// Every key Liftbridge accepts.
const KNOWN: &[&str] = &[
    "listen",
    "host",
    "port",
    "data.dir",
    "data.min.free.bytes",
    "metadata.cache.max.age",
    "batch.max.messages",
    "batch.max.time",
    "batch.max.bytes",
    "publish.async.max.inflight",
    "logging.level",
    "logging.recovery",
    "logging.raft",
    "logging.nats",
    "tls.key",
    "tls.cert",
    "tls.client.auth.enabled",
    "tls.client.auth.ca",
    "tls.client.authz.enabled",
    "tls.client.authz.model",
    "tls.client.authz.policy",
    "nats.servers",
    "nats.user",
    "nats.password",
    "http.listen",
    "nats.token",
    "nats.nkey.seed.file",
    "nats.credentials",
    "nats.tls.cert",
    "nats.tls.key",
    "nats.tls.ca",
    "nats.embedded",
    "nats.embedded.config",
    "nats.embedded.port",
    "nats.ingest.max.pending.bytes",
    "shutdown.handoff.timeout",
    "streams.retention.max.bytes",
    "streams.retention.max.messages",
    "streams.retention.max.age",
    "streams.cleaner.interval",
    "streams.segment.max.bytes",
    "streams.segment.max.age",
    "streams.compact.enabled",
    "streams.compact.max.goroutines",
    "streams.auto.pause.time",
    "streams.auto.pause.disable.if.subscribers",
    "streams.concurrency.control",
    "streams.encryption",
    "streams.namespace.open",
    "streams.sync.policy",
    "streams.max.partitions",
    "clustering.server.id",
    "clustering.namespace",
    "clustering.raft.snapshot.retain",
    "clustering.raft.snapshot.threshold",
    "clustering.raft.cache.size",
    "clustering.raft.bootstrap.seed",
    "clustering.raft.bootstrap.peers",
    "clustering.raft.max.quorum.size",
    "clustering.replica.max.lag.time",
    "clustering.replica.max.leader.timeout",
    "clustering.replica.max.idle.wait",
    "clustering.replica.fetch.timeout",
    "clustering.min.insync.replicas",
    "clustering.replication.max.bytes",
    "activity.stream.enabled",
    "activity.stream.publish.timeout",
    "activity.stream.publish.ack.policy",
    "cursors.stream.partitions",
    "cursors.stream.replication.factor",
    "cursors.stream.auto.pause.time",
    "groups.consumer.timeout",
    "groups.coordinator.timeout",
    "telemetry.enabled",
    "telemetry.interval.seconds",
];

/// The metadata state machine's own cap on partitions per stream; the configured limit must
/// stay under it.
fn metastore_max_partitions() -> i32 {
    broker::MAX_PARTITIONS as i32
}

/// Flattens nested maps into dotted keys: `{a: {b: 1}}` and `{"a.b": 1}` both give `a.b`.
fn flatten(prefix: &str, v: Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Dict(_, d) => {
            for (k, v) in d {
                let key = if prefix.is_empty() {
                    k.to_lowercase()
                } else {
                    format!("{prefix}.{}", k.to_lowercase())
                };
                // `nats.embedded: true` and `nats.embedded.config: x` may both appear.
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other);
        }
    }
}

fn load_map(fig: Figment) -> Result<BTreeMap<String, Value>, ConfigError> {
    let dict = fig
        .extract::<figment::value::Dict>()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (k, v) in dict {
        flatten(&k.to_lowercase(), v, &mut out);
    }
    Ok(out)
}

/// Reads a Go-style duration: `500ms`, `5s`, `2m`, `168h`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(n * scale).ok()?;
    }
    Some(total)
}

struct Keys(BTreeMap<String, Value>);

impl Keys {
    fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(_, s)) => Ok(Some(s.clone())),
            Some(Value::Num(_, n)) => Ok(n
                .to_u128()
                .map(|n| n.to_string())
                .or_else(|| n.to_i128().map(|n| n.to_string()))),
            Some(Value::Bool(_, b)) => Ok(Some(b.to_string())),
            Some(_) => Err(Self::bad(key, "expected a string")),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Num(_, n)) => n
                .to_i128()
                .or_else(|| n.to_u128().and_then(|u| i128::try_from(u).ok()))
                .and_then(|n| i64::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| Self::bad(key, "expected an integer")),
            Some(Value::String(_, s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Self::bad(key, format!("expected an integer, not {s:?}"))),
            Some(_) => Err(Self::bad(key, "expected an integer")),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(_, b)) => Ok(Some(*b)),
            Some(Value::String(_, s)) => match s.trim().to_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(Some(true)),
                "false" | "0" | "no" => Ok(Some(false)),
                _ => Err(Self::bad(key, format!("expected true or false, not {s:?}"))),
            },
            Some(_) => Err(Self::bad(key, "expected true or false")),
        }
    }

    fn duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(_, s)) => parse_duration(s).map(Some).ok_or_else(|| {
                Self::bad(
                    key,
                    format!("{s:?} is not a duration such as 500ms, 5s, 2m or 168h"),
                )
            }),
            Some(Value::Num(_, n)) if n.to_i128() == Some(0) || n.to_u128() == Some(0) => {
                Ok(Some(Duration::ZERO))
            }
            Some(_) => Err(Self::bad(
                key,
                "a duration needs a unit, such as 500ms, 5s, 2m or 168h",
            )),
        }
    }

    fn list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(_, s)) => Ok(Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            )),
            Some(Value::Array(_, items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(_, s) => Ok(s.clone()),
                    _ => Err(Self::bad(key, "expected a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(Self::bad(key, "expected a list of strings")),
        }
    }
}

fn level(key: &str, s: &str) -> Result<slog::Level, ConfigError> {
    match s.to_lowercase().as_str() {
        "trace" => Ok(slog::Level::Trace),
        "debug" => Ok(slog::Level::Debug),
        "info" => Ok(slog::Level::Info),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "error" => Ok(slog::Level::Error),
        "fatal" | "panic" | "critical" => Ok(slog::Level::Critical),
        _ => Err(Keys::bad(key, format!("unknown log level {s:?}"))),
    }
}

/// Reads the settings of a NATS server configuration file the embedded server honours
/// (`natsd::conf`); any other key stops the start, naming it.
fn embedded_from_file(path: &Path, e: &mut EmbeddedNats) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError::Load(format!("{}: {err}", path.display())))?;
    let invalid = |what: String| ConfigError::Invalid {
        key: format!("nats.embedded.config ({})", path.display()),
        reason: what,
    };
    let root = natsd::conf::parse(&text).map_err(|err| invalid(err.to_string()))?;
    // A setting nats-server would honour and this server does not is an error, never ignored.
    natsd::conf::check_keys(&root).map_err(invalid)?;
    let scalar = |k: &str| root.get(k).and_then(natsd::conf::Value::text);
    let number = |k: &str| -> Result<Option<usize>, ConfigError> {
        scalar(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| invalid(format!("{k} is not a number: {v:?}")))
            })
            .transpose()
    };
    if let Some(h) = scalar("host").or(scalar("net")) {
        e.host = h.to_owned();
    }
    if let Some(p) = scalar("port") {
        e.port = p
            .parse()
            .map_err(|_| invalid(format!("port is not a port: {p:?}")))?;
    }
    if let Some(l) = scalar("listen") {
        let port = match l.rsplit_once(':') {
            Some((h, p)) => {
                e.host = h.to_owned();
                p
            }
            None => l,
        };
        e.port = port
            .parse()
            .map_err(|_| invalid(format!("listen is not host:port: {l:?}")))?;
    }
    if let Some(v) = number("max_payload")? {
        e.max_payload = Some(v);
    }
    if let Some(v) = number("max_connections")? {
        e.max_connections = Some(v);
    }
    if let Some(v) = number("max_subscriptions")?.or(number("max_subs")?) {
        e.max_subscriptions = Some(v);
    }
    e.auth = natsd::conf::authorization(&root).map_err(invalid)?;
    e.tls = natsd::conf::tls(&root).map_err(invalid)?;
    Ok(())
}

impl Config {
    /// Loads the configuration: the file named by `--config`, the environment, then the flags.
    ///
    /// # Errors
    /// [`ConfigError`] for an unreadable file, an unknown key, or a bad value.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let mut map = BTreeMap::new();
        if let Some(path) = &flags.config {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            let file = load_map(Figment::from(Yaml::file(path)))?;
            if let Some(k) = file.keys().find(|k| !KNOWN.contains(&k.as_str())) {
                return Err(ConfigError::UnknownKey(k.clone()));
            }
            map.extend(file);
        }
        // LIFTBRIDGE_DATA_DIR → data.dir; variables that name no key are ignored, since the
        // environment holds other things too (LIFTBRIDGE_ENCRYPTION_KEY).
        let env = load_map(Figment::from(
            Env::prefixed("LIFTBRIDGE_").map(|k| k.as_str().replace('_', ".").into()),
        ))?;
        map.extend(env.into_iter().filter(|(k, _)| KNOWN.contains(&k.as_str())));
        Self::from_keys(Keys(map), flags)
    }

    fn from_keys(k: Keys, flags: &Flags) -> Result<Config, ConfigError> {
        let namespace = flags
            .namespace
            .clone()
            .or(k.string("clustering.namespace")?)
            .unwrap_or_else(|| "liftbridge-default".into());
        natsbridge::validate_name("namespace", &namespace)
            .map_err(|e| Keys::bad("clustering.namespace", e.to_string()))?;
        let data_dir = flags
            .data_dir
            .clone()
            .or(k.string("data.dir")?.map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/tmp/liftbridge").join(&namespace));
        let id = flags.id.clone().or(k.string("clustering.server.id")?);
        let id_given = id.is_some();
        let mut b = BrokerConfig::new(id.unwrap_or_default(), data_dir);
        b.namespace = namespace;

        let (bind, host) = addresses(&k, flags, &mut b)?;
        let log_level = general(&k, flags, &mut b)?;
        let api_security = security(&k, flags)?;
        let embedded_nats = nats(&k, flags, &mut b)?;
        streams(&k, &mut b)?;
        b.encryption_key = encryption_key()?;
        let bootstrap_given = clustering(&k, flags, &mut b, embedded_nats.is_some())?;
        internal_streams(&k, &mut b)?;

        Ok(Config {
            broker: b,
            bind,
            host_given: host.is_some(),
            embedded_nats,
            log_level,
            id_given,
            bootstrap_given,
            api_security,
            http_listen: flags
                .http
                .clone()
                .or(k.string("http.listen")?)
                .filter(|s| !s.is_empty()),
            remove_member: flags.raft_remove_member.clone(),
        })
    }
}

// One function per section of keys, each reading its keys next to their use.

/// `listen`, `host` and `port`: where the API binds, and the address it advertises.
fn addresses(
    k: &Keys,
    flags: &Flags,
    b: &mut BrokerConfig,
) -> Result<(String, Option<String>), ConfigError> {
    // Addresses.
    let listen = match k.0.get("listen") {
        Some(Value::Num(_, n)) => n.to_u128().map(|p| format!("0.0.0.0:{p}")),
        _ => k.string("listen")?,
    };
    let host = flags.host.clone().or(k.string("host")?);
    let port = match flags.port {
        Some(p) => p,
        None => match k.int("port")? {
            Some(p) => u16::try_from(p).map_err(|_| Keys::bad("port", "not a port number"))?,
            None => 9292,
        },
    };
    let bind = match (&listen, &host) {
        (Some(l), _) if flags.port.is_none() && flags.host.is_none() => l.clone(),
        (_, Some(h)) => format!("{h}:{port}"),
        (Some(l), None) => match l.rsplit_once(':') {
            Some((h, _)) => format!("{h}:{port}"),
            None => format!("0.0.0.0:{port}"),
        },
        (None, None) => format!("0.0.0.0:{port}"),
    };
    b.advertise_host = host
        .clone()
        .or_else(|| {
            listen
                .as_ref()
                .and_then(|l| l.rsplit_once(':').map(|(h, _)| h.to_owned()))
        })
        .filter(|h| !h.is_empty() && h != "0.0.0.0")
        .unwrap_or_else(|| "localhost".into());
    b.advertise_port = port;
    Ok((bind, host))
}

/// `logging.level`, `data.min.free.bytes`, `metadata.cache.max.age` and `batch.*`; returns the
/// log level.
fn general(k: &Keys, flags: &Flags, b: &mut BrokerConfig) -> Result<slog::Level, ConfigError> {
    let log_level = match &flags.level {
        Some(l) => level("--level", l)?,
        None => match k.string("logging.level")? {
            Some(l) => level("logging.level", &l)?,
            None => slog::Level::Info,
        },
    };
    if let Some(v) = k.int("data.min.free.bytes")? {
        b.min_free_bytes = u64::try_from(v)
            .map_err(|_| Keys::bad("data.min.free.bytes", "must not be negative"))?;
    }
    if let Some(v) = k.duration("metadata.cache.max.age")? {
        b.metadata_cache_max_age = v;
    }
    if let Some(v) = k.int("batch.max.messages")? {
        b.batch_max_messages = usize::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| Keys::bad("batch.max.messages", "must be at least 1"))?;
    }
    if let Some(v) = k.duration("batch.max.time")? {
        b.batch_max_time = v;
    }
    if let Some(v) = k.int("batch.max.bytes")? {
        b.batch_max_bytes = usize::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| Keys::bad("batch.max.bytes", "must be at least 1"))?;
    }
    if let Some(v) = k.int("publish.async.max.inflight")? {
        b.publish_async_max_inflight = usize::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| Keys::bad("publish.async.max.inflight", "must be at least 1"))?;
    }
    Ok(log_level)
}

/// `tls.*` and `nats.tls.*`: refused until this version implements them.
/// The master key for encrypted streams: the raw bytes of `LIFTBRIDGE_ENCRYPTION_KEY`, as
/// Liftbridge reads it (16 or 32 bytes, not hex or base64). A value of another length stops
/// the start, where the original fails only when an encrypted stream is created.
fn encryption_key() -> Result<Option<broker::MasterKey>, ConfigError> {
    use std::os::unix::ffi::OsStrExt;
    match std::env::var_os("LIFTBRIDGE_ENCRYPTION_KEY") {
        None => Ok(None),
        Some(v) => broker::MasterKey::new(v.as_bytes())
            .map(Some)
            .map_err(|e| Keys::bad("LIFTBRIDGE_ENCRYPTION_KEY", e.to_string())),
    }
}

/// `tls.*`: the API's TLS, client certificates and authorization. Every combination that
/// cannot work stops the start with a message saying what is missing (the original ignores a
/// lone key or certificate, reads the authorization flag from the client-auth key, and answers
/// every call with an error when authorization lacks TLS or client certificates).
fn security(k: &Keys, flags: &Flags) -> Result<ApiSecurity, ConfigError> {
    let cert = flags
        .tls_cert
        .clone()
        .or(k.string("tls.cert")?.map(PathBuf::from))
        .filter(|s| !s.as_os_str().is_empty());
    let key = flags
        .tls_key
        .clone()
        .or(k.string("tls.key")?.map(PathBuf::from))
        .filter(|s| !s.as_os_str().is_empty());
    let cert_and_key = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Keys::bad(
                "tls.key",
                "tls.cert is set: TLS needs the key too",
            ));
        }
        (None, Some(_)) => {
            return Err(Keys::bad(
                "tls.cert",
                "tls.key is set: TLS needs the certificate too",
            ));
        }
    };
    let client_auth = k.boolean("tls.client.auth.enabled")?.unwrap_or(false);
    let ca = k.string("tls.client.auth.ca")?.filter(|s| !s.is_empty());
    let client_ca = match (client_auth, ca) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(Keys::bad(
                "tls.client.auth.ca",
                "set, but tls.client.auth.enabled is not true: enable client authentication or remove the CA",
            ));
        }
        (true, None) => {
            return Err(Keys::bad(
                "tls.client.auth.ca",
                "client authentication needs the CA that signs the client certificates",
            ));
        }
        (true, Some(ca)) => {
            if cert_and_key.is_none() {
                return Err(Keys::bad(
                    "tls.client.auth.enabled",
                    "client authentication needs TLS: set tls.cert and tls.key",
                ));
            }
            Some(PathBuf::from(ca))
        }
    };
    let authz_on = k.boolean("tls.client.authz.enabled")?.unwrap_or(false);
    let model = k
        .string("tls.client.authz.model")?
        .filter(|s| !s.is_empty());
    let policy = k
        .string("tls.client.authz.policy")?
        .filter(|s| !s.is_empty());
    let authz = if authz_on {
        if cert_and_key.is_none() || client_ca.is_none() {
            return Err(Keys::bad(
                "tls.client.authz.enabled",
                "authorization identifies clients by their certificate: it needs TLS (tls.cert, tls.key) and client authentication (tls.client.auth.enabled, tls.client.auth.ca)",
            ));
        }
        match (model, policy) {
            (Some(m), Some(p)) => Some((PathBuf::from(m), PathBuf::from(p))),
            _ => {
                return Err(Keys::bad(
                    "tls.client.authz.enabled",
                    "authorization needs tls.client.authz.model and tls.client.authz.policy",
                ));
            }
        }
    } else {
        if model.is_some() || policy.is_some() {
            return Err(Keys::bad(
                if model.is_some() {
                    "tls.client.authz.model"
                } else {
                    "tls.client.authz.policy"
                },
                "set, but tls.client.authz.enabled is not true: enable authorization or remove the key",
            ));
        }
        None
    };
    Ok(ApiSecurity {
        cert_and_key,
        client_ca,
        authz,
    })
}

/// `nats.*`: the servers, the embedded server if any, credentials and the ingest queue.
fn nats(
    k: &Keys,
    flags: &Flags,
    b: &mut BrokerConfig,
) -> Result<Option<EmbeddedNats>, ConfigError> {
    // NATS.
    let mut servers = flags.nats_servers.clone();
    if servers.is_empty() {
        servers = k.list("nats.servers")?.unwrap_or_default();
    }
    let embedded_config = flags
        .embedded_nats_config
        .clone()
        .or(k.string("nats.embedded.config")?.map(PathBuf::from));
    let embedded_port = match flags.embedded_nats_port {
        Some(p) => Some(p),
        None => k
            .int("nats.embedded.port")?
            .map(|p| {
                u16::try_from(p).map_err(|_| Keys::bad("nats.embedded.port", "not a port number"))
            })
            .transpose()?,
    };
    // Embedded unless NATS servers are given, or when asked for explicitly.
    let embedded = flags.embedded_nats
        || embedded_config.is_some()
        || k.boolean("nats.embedded")?.unwrap_or(false)
        || servers.is_empty();
    let embedded_nats = if embedded {
        let mut e = EmbeddedNats {
            host: "127.0.0.1".into(),
            port: 4222,
            max_payload: None,
            max_connections: None,
            max_subscriptions: None,
            auth: None,
            tls: None,
        };
        if let Some(path) = &embedded_config {
            embedded_from_file(path, &mut e)?;
        }
        if let Some(p) = embedded_port {
            e.port = p;
        }
        Some(e)
    } else {
        None
    };
    // Credentials go in their own keys, which no log shows; a URL is logged. The error shows
    // the URL without them.
    if let Some(u) = servers.iter().find(|u| natsbridge::url_has_credentials(u)) {
        return Err(Keys::bad(
            "nats.servers",
            format!(
                "{} carries credentials; give them as nats.user and nats.password, or \
                 nats.token, and the URL without them",
                natsbridge::redact_url(u)
            ),
        ));
    }
    b.nats.servers = servers;
    if let Some(v) = k.int("nats.ingest.max.pending.bytes")? {
        // At least one largest message, at most 4 GiB.
        b.ingest_max_pending_bytes = usize::try_from(v)
            .ok()
            .filter(|v| (1024 * 1024..=4 << 30).contains(v))
            .ok_or_else(|| {
                Keys::bad(
                    "nats.ingest.max.pending.bytes",
                    "must be from 1 MiB to 4 GiB",
                )
            })?;
    }
    if let Some(t) = k.string("nats.token")?.filter(|t| !t.is_empty()) {
        b.nats.token = Some(t);
    }
    if let Some(path) = k.string("nats.nkey.seed.file")? {
        let seed = std::fs::read_to_string(&path)
            .map_err(|e| Keys::bad("nats.nkey.seed.file", format!("cannot read {path}: {e}")))?;
        let seed = seed
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SU"))
            .ok_or_else(|| {
                Keys::bad(
                    "nats.nkey.seed.file",
                    format!("{path} holds no user NKey seed (SU...)"),
                )
            })?;
        b.nats.nkey_seed = Some(seed.to_owned());
    }
    if let Some(path) = k.string("nats.credentials")? {
        let path = PathBuf::from(path);
        if !path.exists() {
            return Err(Keys::bad(
                "nats.credentials",
                format!("{} does not exist", path.display()),
            ));
        }
        b.nats.credentials_file = Some(path);
    }
    let tls_cert = k.string("nats.tls.cert")?.map(PathBuf::from);
    let tls_key = k.string("nats.tls.key")?.map(PathBuf::from);
    let tls_ca = k.string("nats.tls.ca")?.map(PathBuf::from);
    let cert_and_key = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(Keys::bad(
                "nats.tls.cert",
                "nats.tls.cert and nats.tls.key go together",
            ));
        }
    };
    let named = cert_and_key
        .iter()
        .flat_map(|(c, k)| [("nats.tls.cert", c), ("nats.tls.key", k)])
        .chain(tls_ca.iter().map(|c| ("nats.tls.ca", c)));
    for (key, p) in named {
        if !p.exists() {
            return Err(Keys::bad(key, format!("{} does not exist", p.display())));
        }
    }
    if cert_and_key.is_some() || tls_ca.is_some() {
        b.nats.tls = Some(natsbridge::NatsTls {
            cert_and_key,
            ca: tls_ca,
        });
    }
    match (k.string("nats.user")?, k.string("nats.password")?) {
        (Some(u), Some(p)) => b.nats.user_password = Some((u, p)),
        (None, None) => {}
        // Either alone would connect without credentials: a mistake, not a choice.
        (Some(_), None) | (None, Some(_)) => {
            return Err(Keys::bad(
                "nats.user",
                "nats.user and nats.password go together: one without the other is refused",
            ));
        }
    }
    Ok(embedded_nats)
}

/// `streams.*`: the stream defaults, the sync policy and the partition limit.
fn streams(k: &Keys, b: &mut BrokerConfig) -> Result<(), ConfigError> {
    if let Some(v) = k.int("streams.max.partitions")? {
        b.max_partitions = i32::try_from(v)
            .ok()
            .filter(|v| (1..=metastore_max_partitions()).contains(v))
            .ok_or_else(|| {
                Keys::bad(
                    "streams.max.partitions",
                    format!("must be from 1 to {}", metastore_max_partitions()),
                )
            })?;
    }
    // Streams.
    let s = &mut b.streams;
    if let Some(v) = k.int("streams.retention.max.bytes")? {
        s.retention_max_bytes = v;
    }
    if let Some(v) = k.int("streams.retention.max.messages")? {
        s.retention_max_messages = v;
    }
    if let Some(v) = k.duration("streams.retention.max.age")? {
        s.retention_max_age = v;
    }
    if let Some(v) = k.duration("streams.cleaner.interval")? {
        s.cleaner_interval = v;
    }
    if let Some(v) = k.int("streams.segment.max.bytes")? {
        s.segment_max_bytes = v;
    }
    if let Some(v) = k.duration("streams.segment.max.age")? {
        s.segment_max_age = Some(v);
    }
    if let Some(v) = k.boolean("streams.compact.enabled")? {
        s.compact_enabled = v;
    }
    if let Some(v) = k.int("streams.compact.max.goroutines")? {
        s.compact_max_goroutines = v as i32;
    }
    if let Some(v) = k.duration("streams.auto.pause.time")? {
        s.auto_pause_time = v;
    }
    if let Some(v) = k.boolean("streams.auto.pause.disable.if.subscribers")? {
        s.auto_pause_disable_if_subscribers = v;
    }
    if let Some(v) = k.boolean("streams.concurrency.control")? {
        s.concurrency_control = v;
    }
    if let Some(v) = k.boolean("streams.encryption")? {
        s.encryption = v;
    }
    if let Some(v) = k.boolean("streams.namespace.open")? {
        s.namespace_open = v;
    }
    if let Some(v) = k.string("streams.sync.policy")? {
        b.sync = match v.as_str() {
            "os" => commitlog::SyncPolicy::Os,
            "always" => commitlog::SyncPolicy::Always,
            other => match parse_duration(other) {
                Some(d) if !d.is_zero() => commitlog::SyncPolicy::Interval(d),
                _ => {
                    return Err(Keys::bad(
                        "streams.sync.policy",
                        format!("{other:?}: expected os, always, or an interval such as 100ms"),
                    ));
                }
            },
        };
    }
    Ok(())
}

/// `clustering.*` and `groups.*`, `embedded` saying whether NATS runs in this process; returns
/// whether a bootstrap was asked for.
fn clustering(
    k: &Keys,
    flags: &Flags,
    b: &mut BrokerConfig,
    embedded: bool,
) -> Result<bool, ConfigError> {
    // Clustering.
    let seed = flags.raft_bootstrap_seed
        || k.boolean("clustering.raft.bootstrap.seed")?
            .unwrap_or(false);
    let mut peers = flags.raft_bootstrap_peers.clone();
    if peers.is_empty() {
        peers = k
            .list("clustering.raft.bootstrap.peers")?
            .unwrap_or_default();
    }
    if seed && !peers.is_empty() {
        return Err(Keys::bad(
            "clustering.raft.bootstrap.seed",
            "a seed and a peer list exclude each other",
        ));
    }
    let bootstrap_given = seed || !peers.is_empty();
    b.bootstrap = if seed {
        Bootstrap::Seed
    } else if !peers.is_empty() {
        Bootstrap::Peers(peers)
    } else if embedded {
        // Alone on a private NATS server: a cluster of one.
        Bootstrap::Seed
    } else {
        Bootstrap::Join
    };
    if let Some(v) = k.int("clustering.raft.snapshot.threshold")? {
        b.raft_snapshot_threshold = v.max(0) as u64;
    }
    if let Some(v) = k.int("clustering.raft.max.quorum.size")? {
        b.max_quorum_size = v.max(0) as usize;
    }
    if let Some(v) = k.int("clustering.min.insync.replicas")? {
        b.min_insync_replicas = i32::try_from(v)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| Keys::bad("clustering.min.insync.replicas", "must be at least 1"))?;
    }
    if let Some(v) = k.int("clustering.replication.max.bytes")? {
        b.replication_max_bytes = u64::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| Keys::bad("clustering.replication.max.bytes", "must be positive"))?;
    }
    let positive = |key: &str, v: Duration| {
        if v.is_zero() {
            Err(Keys::bad(key, "must be positive"))
        } else {
            Ok(v)
        }
    };
    if let Some(v) = k.duration("clustering.replica.max.lag.time")? {
        b.replica.max_lag_time = positive("clustering.replica.max.lag.time", v)?;
    }
    if let Some(v) = k.duration("clustering.replica.max.leader.timeout")? {
        b.replica.max_leader_timeout = positive("clustering.replica.max.leader.timeout", v)?;
    }
    if let Some(v) = k.duration("clustering.replica.max.idle.wait")? {
        b.replica.max_idle_wait = positive("clustering.replica.max.idle.wait", v)?;
    }
    if let Some(v) = k.duration("clustering.replica.fetch.timeout")? {
        b.replica.fetch_timeout = positive("clustering.replica.fetch.timeout", v)?;
    }
    if let Some(v) = k.duration("shutdown.handoff.timeout")? {
        b.handoff_timeout = v;
    }
    if let Some(v) = k.duration("groups.consumer.timeout")? {
        b.groups.consumer_timeout = positive("groups.consumer.timeout", v)?;
    }
    if let Some(v) = k.duration("groups.coordinator.timeout")? {
        b.groups.coordinator_timeout = positive("groups.coordinator.timeout", v)?;
    }
    Ok(bootstrap_given)
}

/// `activity.*` and `cursors.*`.
fn internal_streams(k: &Keys, b: &mut BrokerConfig) -> Result<(), ConfigError> {
    // Internal streams.
    if let Some(v) = k.boolean("activity.stream.enabled")? {
        b.activity.enabled = v;
    }
    if let Some(v) = k.duration("activity.stream.publish.timeout")? {
        b.activity.publish_timeout = v;
    }
    if let Some(v) = k.string("activity.stream.publish.ack.policy")? {
        use liftbridge_proto::api::AckPolicy;
        b.activity.publish_ack_policy = match v.to_lowercase().as_str() {
            "all" => AckPolicy::All,
            "leader" => AckPolicy::Leader,
            "none" => AckPolicy::None,
            _ => {
                return Err(Keys::bad(
                    "activity.stream.publish.ack.policy",
                    format!("{v:?}: expected all, leader or none"),
                ));
            }
        };
    }
    if let Some(v) = k.int("cursors.stream.partitions")? {
        b.cursors.partitions = v.max(0) as i32;
    }
    if let Some(v) = k.int("cursors.stream.replication.factor")? {
        b.cursors.replication_factor = v as i32;
    }
    if let Some(v) = k.duration("cursors.stream.auto.pause.time")? {
        b.cursors.auto_pause_time = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_yaml(yaml: &str, flags: &Flags) -> Result<Config, ConfigError> {
        let map = load_map(Figment::from(Yaml::string(yaml)))?;
        if let Some(k) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey(k.clone()));
        }
        Config::from_keys(Keys(map), flags)
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_duration("168h"),
            Some(Duration::from_secs(168 * 3600))
        );
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn flat_and_nested_keys_mean_the_same() {
        let flags = Flags::default();
        let flat = from_yaml(
            "cursors.stream.partitions: 3\nstreams.retention.max.age: 2h\n",
            &flags,
        )
        .unwrap();
        let nested = from_yaml(
            "cursors:\n  stream:\n    partitions: 3\nstreams:\n  retention.max.age: 2h\n",
            &flags,
        )
        .unwrap();
        for c in [flat, nested] {
            assert_eq!(c.broker.cursors.partitions, 3);
            assert_eq!(
                c.broker.streams.retention_max_age,
                Duration::from_secs(7200)
            );
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = from_yaml("streams:\n  retention.max.agee: 2h\n", &Flags::default()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownKey(k) if k == "streams.retention.max.agee"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let err = from_yaml("batch.max.time: 5\n", &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("batch.max.time"), "{err}");
        let err = from_yaml("port: many\n", &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn security_settings_that_cannot_work_are_refused_not_ignored() {
        for (yaml, says) in [
            ("tls.client.auth.enabled: true\n", "needs the CA"),
            ("tls.client.authz.enabled: true\n", "it needs TLS"),
            (
                "tls.client.auth.ca: /etc/ca.pem\n",
                "tls.client.auth.enabled is not true",
            ),
            (
                "tls.client.authz.model: model.conf\n",
                "tls.client.authz.enabled is not true",
            ),
            (
                "tls.client.authz.policy: policy.csv\n",
                "tls.client.authz.enabled is not true",
            ),
            ("tls.cert: c.pem\n", "needs the key too"),
            ("tls.key: k.pem\n", "needs the certificate too"),
            ("nats.tls.cert: c.pem\n", "go together"),
            ("nats:\n  tls:\n    key: k.pem\n", "go together"),
            ("nats.tls.ca: /nonexistent/ca.pem\n", "does not exist"),
            (
                "nats.credentials: /nonexistent/user.creds\n",
                "does not exist",
            ),
            ("nats.nkey.seed.file: /nonexistent/seed\n", "cannot read"),
        ] {
            let key = yaml.split(':').next().unwrap();
            let err = from_yaml(yaml, &Flags::default()).unwrap_err().to_string();
            assert!(err.contains(says), "{yaml}: {err}");
            if !key.contains('\n') && key != "nats" && !says.contains("needs the") {
                assert!(err.contains(key), "{yaml}: {err}");
            }
        }
        // Turning them off explicitly is harmless; a complete set is read.
        from_yaml(
            "tls.client.auth.enabled: false\ntls.client.authz.enabled: false\n",
            &Flags::default(),
        )
        .unwrap();
        let c = from_yaml(
            "tls.cert: c.pem\ntls.key: k.pem\ntls.client.auth.enabled: true\ntls.client.auth.ca: ca.pem\n\
             tls.client.authz.enabled: true\ntls.client.authz.model: m.conf\ntls.client.authz.policy: p.csv\n",
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(
            c.api_security,
            ApiSecurity {
                cert_and_key: Some(("c.pem".into(), "k.pem".into())),
                client_ca: Some("ca.pem".into()),
                authz: Some(("m.conf".into(), "p.csv".into())),
            }
        );
    }

    #[test]
    fn the_free_space_floor_is_read() {
        let c = from_yaml("data.min.free.bytes: 1048576\n", &Flags::default()).unwrap();
        assert_eq!(c.broker.min_free_bytes, 1 << 20);
        let d = from_yaml("", &Flags::default()).unwrap();
        assert_eq!(d.broker.min_free_bytes, 128 << 20);
        let err = from_yaml("data.min.free.bytes: -1\n", &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("data.min.free.bytes"), "{err}");
    }

    #[test]
    fn the_partition_limit_is_read_and_bounded() {
        let c = from_yaml("streams.max.partitions: 64\n", &Flags::default()).unwrap();
        assert_eq!(c.broker.max_partitions, 64);
        assert_eq!(
            from_yaml("", &Flags::default())
                .unwrap()
                .broker
                .max_partitions,
            1024
        );
        for bad in ["0", "-1", "65537"] {
            let yaml = format!("streams.max.partitions: {bad}\n");
            let err = from_yaml(&yaml, &Flags::default()).unwrap_err();
            assert!(err.to_string().contains("streams.max.partitions"), "{err}");
        }
    }

    #[test]
    fn batch_limits_are_read_and_bounded() {
        let c = from_yaml(
            "batch.max.messages: 10\nbatch.max.bytes: 65536\npublish.async.max.inflight: 7\n",
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(c.broker.batch_max_messages, 10);
        assert_eq!(c.broker.publish_async_max_inflight, 7);
        assert_eq!(c.broker.batch_max_bytes, 64 << 10);
        let d = from_yaml("", &Flags::default()).unwrap();
        assert_eq!(d.broker.batch_max_messages, 1024);
        assert_eq!(d.broker.batch_max_bytes, 1 << 20);
        for (key, bad) in [
            ("publish.async.max.inflight", "0"),
            ("batch.max.messages", "0"),
            ("batch.max.bytes", "0"),
            ("batch.max.bytes", "-1"),
        ] {
            let err = from_yaml(&format!("{key}: {bad}\n"), &Flags::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn the_ingest_queue_limit_is_read_and_bounded() {
        let c = from_yaml(
            "nats.ingest.max.pending.bytes: 33554432\n",
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(c.broker.ingest_max_pending_bytes, 32 << 20);
        let d = from_yaml("", &Flags::default()).unwrap();
        assert_eq!(d.broker.ingest_max_pending_bytes, 16 << 20);
        for bad in ["0", "1000", "-5", "8589934592"] {
            let yaml = format!("nats.ingest.max.pending.bytes: {bad}\n");
            let err = from_yaml(&yaml, &Flags::default()).unwrap_err();
            assert!(
                err.to_string().contains("nats.ingest.max.pending.bytes"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_handoff_timeout_is_read_and_zero_turns_it_off() {
        let c = from_yaml("shutdown.handoff.timeout: 3s\n", &Flags::default()).unwrap();
        assert_eq!(c.broker.handoff_timeout, Duration::from_secs(3));
        let c = from_yaml("shutdown:\n  handoff.timeout: 0\n", &Flags::default()).unwrap();
        assert_eq!(c.broker.handoff_timeout, Duration::ZERO);
        let d = from_yaml("{}", &Flags::default()).unwrap();
        assert_eq!(d.broker.handoff_timeout, Duration::from_secs(10));
        assert!(from_yaml("shutdown.handoff.timeout: soon\n", &Flags::default()).is_err());
    }

    #[test]
    fn replica_timings_are_read_and_must_be_positive() {
        let c = from_yaml(
            "clustering:\n  replica.max.lag.time: 2s\n  replica.max.leader.timeout: 3s\n  replica.max.idle.wait: 250ms\n  replica.fetch.timeout: 1s\n",
            &Flags::default(),
        )
        .unwrap();
        let r = c.broker.replica;
        assert_eq!(r.max_lag_time, Duration::from_secs(2));
        assert_eq!(r.max_leader_timeout, Duration::from_secs(3));
        assert_eq!(r.max_idle_wait, Duration::from_millis(250));
        assert_eq!(r.fetch_timeout, Duration::from_secs(1));
        let d = from_yaml("{}", &Flags::default()).unwrap().broker.replica;
        assert_eq!(d, broker::ReplicaConfig::default());
        assert_eq!(d.max_lag_time, Duration::from_secs(15));
        let err =
            from_yaml("clustering.replica.fetch.timeout: 0\n", &Flags::default()).unwrap_err();
        assert!(
            err.to_string().contains("clustering.replica.fetch.timeout"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_embedded_nats_and_a_seed() {
        let c = from_yaml("{}", &Flags::default()).unwrap();
        assert_eq!(c.embedded_nats.as_ref().map(|e| e.port), Some(4222));
        assert_eq!(c.broker.bootstrap, Bootstrap::Seed);
        assert_eq!(c.bind, "0.0.0.0:9292");
        assert_eq!(c.broker.advertise_host, "localhost");
        assert_eq!(
            c.broker.data_dir,
            PathBuf::from("/tmp/liftbridge/liftbridge-default")
        );
        assert_eq!(c.log_level, slog::Level::Info);
    }

    #[test]
    fn external_nats_joins_unless_told_to_bootstrap() {
        let c = from_yaml(
            "nats.servers: [\"nats://10.0.0.1:4222\"]\n",
            &Flags::default(),
        )
        .unwrap();
        assert!(c.embedded_nats.is_none());
        assert_eq!(c.broker.bootstrap, Bootstrap::Join);
        assert_eq!(
            c.broker.nats.servers,
            vec!["nats://10.0.0.1:4222".to_string()]
        );
        let flags = Flags {
            raft_bootstrap_seed: true,
            ..Flags::default()
        };
        let c = from_yaml("nats.servers: [\"nats://10.0.0.1:4222\"]\n", &flags).unwrap();
        assert_eq!(c.broker.bootstrap, Bootstrap::Seed);
    }

    #[test]
    fn flags_win_over_the_file() {
        let flags = Flags {
            port: Some(7000),
            embedded_nats_port: Some(4333),
            host: Some("example.org".into()),
            level: Some("debug".into()),
            ..Flags::default()
        };
        let c = from_yaml(
            "port: 9000\nnats.embedded.port: 4999\nlogging.level: error\n",
            &flags,
        )
        .unwrap();
        assert_eq!(c.broker.advertise_port, 7000);
        assert_eq!(c.bind, "example.org:7000");
        assert_eq!(c.broker.advertise_host, "example.org");
        assert_eq!(c.embedded_nats.unwrap().port, 4333);
        assert_eq!(c.log_level, slog::Level::Debug);
    }

    #[test]
    fn credentials_in_nats_urls_and_a_lone_user_are_refused_without_echoing_secrets() {
        for yaml in [
            "nats.servers: [\"nats://lb:s3cretpw@10.0.0.1:4222\"]\n",
            "nats.servers: [\"nats://10.0.0.2:4222\", \"tls://s3cretpw@10.0.0.1:4222\"]\n",
        ] {
            let e = from_yaml(yaml, &Flags::default()).unwrap_err().to_string();
            assert!(e.contains("nats.servers"), "{e}");
            assert!(!e.contains("s3cretpw"), "{e}");
        }
        let flags = Flags {
            nats_servers: vec!["nats://lb:s3cretpw@10.0.0.1:4222".into()],
            ..Flags::default()
        };
        let e = from_yaml("{}", &flags).unwrap_err().to_string();
        assert!(!e.contains("s3cretpw"), "{e}");
        // A user without a password (or the reverse) is a mistake, not an anonymous connection.
        for yaml in ["nats.user: lb\n", "nats.password: pw\n"] {
            let yaml = format!("nats.servers: [\"nats://10.0.0.1:4222\"]\n{yaml}");
            let e = from_yaml(&yaml, &Flags::default()).unwrap_err().to_string();
            assert!(
                e.contains("nats.user") && e.contains("nats.password"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_embedded_nats_file_gives_host_port_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats.conf");
        std::fs::write(
            &path,
            "# comment\nlisten: 127.0.0.1:4333\nmax_payload = 2048\nmax_connections: 10\nmax_subscriptions: 20\n",
        )
        .unwrap();
        let flags = Flags {
            embedded_nats_config: Some(path.clone()),
            ..Flags::default()
        };
        let c = from_yaml("nats.servers: [\"nats://10.0.0.1:4222\"]\n", &flags).unwrap();
        let e = c
            .embedded_nats
            .expect("a config file implies embedded NATS");
        assert_eq!(
            (e.host.as_str(), e.port, e.max_payload),
            ("127.0.0.1", 4333, Some(2048))
        );
        assert_eq!(
            (e.max_connections, e.max_subscriptions),
            (Some(10), Some(20))
        );
        std::fs::write(&path, "port: lots\n").unwrap();
        assert!(from_yaml("{}", &flags).is_err());
        // A nats-server setting this server does not implement stops the start, named.
        std::fs::write(&path, "port: 4333\ndebug: true\n").unwrap();
        let e = from_yaml("{}", &flags).unwrap_err().to_string();
        assert!(e.contains("debug is a nats-server setting"), "{e}");
        // nats-server's authorization block: users and their permissions.
        std::fs::write(
            &path,
            "authorization {\n  users = [\n    {user: broker, password: b}\n    {user: app, password: a, permissions: {publish: \"orders.>\"}}\n  ]\n}\n",
        )
        .unwrap();
        let e = from_yaml("{}", &flags).unwrap().embedded_nats.unwrap();
        let Some(natsd::Auth::Users(users)) = e.auth else {
            panic!("users: {:?}", e.auth)
        };
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[1].permissions.as_ref().unwrap().publish.allow,
            ["orders.>"]
        );
        std::fs::write(&path, "authorization {\n  users = [ {user: x} ]\n}\n").unwrap();
        let err = from_yaml("{}", &flags).unwrap_err().to_string();
        assert!(err.contains("user x has no password"), "{err}");
        std::fs::write(&path, "authorization {\n  token: t\n").unwrap();
        let err = from_yaml("{}", &flags).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn listen_sets_the_bind_address_and_advertised_host() {
        let c = from_yaml("listen: 127.0.0.1:9555\n", &Flags::default()).unwrap();
        assert_eq!(c.bind, "127.0.0.1:9555");
        assert_eq!(c.broker.advertise_host, "127.0.0.1");
        let c = from_yaml(
            "listen: 0.0.0.0:9555\nhost: broker1\nport: 9555\n",
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(c.broker.advertise_host, "broker1");
    }
}
