//! Named contexts: connection settings kept in a small JSON file (`$LIFT_CONFIG`, else
//! `$XDG_CONFIG_HOME/lift/contexts.json`, else `~/.config/lift/contexts.json`), and how a
//! command's flags, the environment and the current context become one connection.

use std::collections::BTreeMap;
use std::path::PathBuf;

use liftbridge_client::{Client, ClientTls};
use serde::{Deserialize, Serialize};

use crate::cli::Conn;
use crate::output::Failure;

/// Where to connect and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Broker addresses.
    pub servers: Vec<String>,
    /// CA certificate file for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Client key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the brokers against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_domain: Option<String>,
}

/// The contexts file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Contexts {
    /// The current context's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// The file's path.
pub fn path() -> Result<PathBuf, Failure> {
    if let Some(p) = std::env::var_os("LIFT_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".config"),
            None => {
                return Err(Failure::usage(
                    "cannot find the contexts file: set LIFT_CONFIG or HOME",
                ));
            }
        },
    };
    Ok(base.join("lift").join("contexts.json"))
}

impl Contexts {
    /// Reads the file; a missing file is no contexts.
    pub fn load() -> Result<Contexts, Failure> {
        let p = path()?;
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Failure::usage(format!(
                    "reading contexts from {}: {e}; fix or remove the file",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(Failure::usage(format!(
                "reading contexts from {}: {e}",
                p.display()
            ))),
        }
    }

    /// Writes the file (and its folder).
    pub fn save(&self) -> Result<(), Failure> {
        let p = path()?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::usage(format!("creating {}: {e}", dir.display())))?;
        }
        let text = serde_json::to_string_pretty(self).expect("contexts serialize");
        std::fs::write(&p, text + "\n")
            .map_err(|e| Failure::usage(format!("writing {}: {e}", p.display())))
    }
}

/// The settings the flags give, on top of the named or current context.
pub fn resolve(conn: &Conn) -> Result<Context, Failure> {
    let contexts = Contexts::load()?;
    let base = match &conn.context {
        Some(name) => contexts.contexts.get(name).cloned().ok_or_else(|| {
            Failure::usage(format!(
                "no context named {name:?}; `lift context ls` lists them"
            ))
        })?,
        None => contexts
            .current
            .as_ref()
            .and_then(|c| contexts.contexts.get(c).cloned())
            .unwrap_or_default(),
    };
    // An empty LIFT_SERVER is no server given.
    let given: Vec<String> = conn
        .servers
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let mut ctx = Context {
        servers: if given.is_empty() {
            base.servers
        } else {
            given
        },
        tls_ca: conn.tls_ca.clone().or(base.tls_ca),
        tls_cert: conn.tls_cert.clone().or(base.tls_cert),
        tls_key: conn.tls_key.clone().or(base.tls_key),
        tls_domain: conn.tls_domain.clone().or(base.tls_domain),
    };
    if ctx.servers.is_empty() {
        ctx.servers = vec!["127.0.0.1:9292".into()];
    }
    Ok(ctx)
}

fn read(p: &PathBuf, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(p).map_err(|e| Failure::usage(format!("reading the {what} {}: {e}", p.display())))
}

/// Connects as `conn` says.
pub async fn connect(conn: &Conn) -> Result<Client, Failure> {
    let ctx = resolve(conn)?;
    let mut b = Client::builder(ctx.servers.clone())
        .connect_timeout(conn.timeout)
        .request_timeout(conn.timeout);
    if ctx.tls_ca.is_some() || ctx.tls_cert.is_some() {
        let Some(ca) = &ctx.tls_ca else {
            return Err(Failure::usage("--tls-cert needs --tls-ca"));
        };
        let mut tls = ClientTls::new(read(ca, "CA certificate")?);
        match (&ctx.tls_cert, &ctx.tls_key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(read(cert, "client certificate")?, read(key, "client key")?);
            }
            (None, None) => {}
            // Half an identity was silently dropped before: the server then saw no certificate.
            _ => return Err(Failure::usage("--tls-cert and --tls-key go together")),
        }
        if let Some(d) = &ctx.tls_domain {
            tls = tls.domain(d.clone());
        }
        b = b.tls(tls);
    }
    b.connect()
        .await
        .map_err(|e| Failure::server(format!("connecting to {}", ctx.servers.join(", ")), e))
}
