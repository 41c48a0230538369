//! TLS for the API, client certificates, and authorization of each call.
//!
//! - TLS with the server's certificate and key; with client authentication, every client
//!   presents a certificate signed by the configured CA (mutual TLS).
//! - Authorization reads Liftbridge's own Casbin model and policy files: a request
//!   `(subject, object, action)` is allowed when a policy line allows it. The subject is the
//!   common name of the client certificate; the object and action of each call are in
//!   [`crate::Service`] (Liftbridge's table, with the consumer-group calls added). The policy is
//!   reloaded with [`Authorizer::reload`] (on SIGHUP in `liftbridged`); a policy that fails to
//!   load leaves the previous one in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use casbin::CoreApi;
use tonic::{Request, Status};

/// Why a security setting cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

/// The API's TLS settings.
#[derive(Clone)]
pub struct TlsSettings {
    /// The server certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The server's private key, PEM.
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads the files: certificate, key and, for client authentication, the CA bundle.
    ///
    /// # Errors
    /// A file that cannot be read, or a CA file that holds no certificate.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, SecurityError> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p)
                .map_err(|e| SecurityError(format!("cannot read the {what} {}: {e}", p.display())))
        };
        let holds_certificate = |key: &str, p: &Path, pem: &[u8]| {
            if String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
                Ok(())
            } else {
                Err(SecurityError(format!(
                    "{key} {} holds no PEM certificate",
                    p.display()
                )))
            }
        };
        let cert_pem = read("TLS certificate (tls.cert)", cert)?;
        let key_pem = read("TLS key (tls.key)", key)?;
        holds_certificate("tls.cert", cert, &cert_pem)?;
        let client_ca_pem = match client_ca {
            Some(p) => {
                let pem = read("client CA (tls.client.auth.ca)", p)?;
                holds_certificate("tls.client.auth.ca", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        Ok(TlsSettings {
            cert_pem,
            key_pem,
            client_ca_pem,
        })
    }

    pub(crate) fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        let mut c = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem),
        );
        if let Some(ca) = &self.client_ca_pem {
            c = c
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        c
    }
}

/// Casbin authorization with Liftbridge's model and policy files.
pub struct Authorizer {
    model: PathBuf,
    policy: PathBuf,
    enforcer: parking_lot::RwLock<Arc<casbin::Enforcer>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("model", &self.model)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

async fn enforcer(model: &Path, policy: &Path) -> Result<casbin::Enforcer, SecurityError> {
    let (m, p) = (model.display().to_string(), policy.display().to_string());
    let bad = |e: casbin::Error| {
        SecurityError(format!(
            "cannot load the authorization model {m} and policy {p}: {e}"
        ))
    };
    if !policy.exists() {
        return Err(SecurityError(format!(
            "the authorization policy {p} does not exist"
        )));
    }
    let loaded = casbin::DefaultModel::from_file(model).await.map_err(bad)?;
    casbin::Enforcer::new(loaded, casbin::FileAdapter::new(policy.to_owned()))
        .await
        .map_err(bad)
}

impl Authorizer {
    /// Loads the model and the policy.
    ///
    /// # Errors
    /// Either file missing or malformed.
    pub async fn load(model: &Path, policy: &Path) -> Result<Authorizer, SecurityError> {
        let e = enforcer(model, policy).await?;
        Ok(Authorizer {
            model: model.to_owned(),
            policy: policy.to_owned(),
            enforcer: parking_lot::RwLock::new(Arc::new(e)),
        })
    }

    /// Reads the policy (and model) again; on failure the rules in force stay.
    ///
    /// # Errors
    /// Either file missing or malformed.
    pub async fn reload(&self) -> Result<(), SecurityError> {
        let e = enforcer(&self.model, &self.policy).await?;
        *self.enforcer.write() = Arc::new(e);
        Ok(())
    }

    /// Whether `subject` may do `action` on `object`.
    pub fn allows(&self, subject: &str, object: &str, action: &str) -> bool {
        let e = self.enforcer.read().clone();
        e.enforce((subject, object, action)).unwrap_or(false)
    }

    /// Allows the call, or refuses it with the original's message (as `PermissionDenied`,
    /// where the original says `Unknown`).
    pub(crate) fn check<T>(
        &self,
        req: &Request<T>,
        object: &str,
        action: &str,
    ) -> Result<(), Status> {
        let subject = client_id(req)
            .ok_or_else(|| Status::unauthenticated("api: Failed to retrieve client ID"))?;
        if self.allows(&subject, object, action) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "The client is not authorized to call {action} on resource {object}"
            )))
        }
    }
}

/// The common name of the client certificate's subject: the first CN when there are several
/// (Go's `x509`, the original's, takes the last; `docs/security.md` says to issue one).
pub(crate) fn client_id<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}
