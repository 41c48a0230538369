//! TLS for the client port, as nats-server does it: the server sends its INFO in the clear,
//! with `tls_required`, and the client then starts the TLS handshake. With `verify`, clients
//! must present a certificate the CA signed (`tls_verify`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server's certificate, key and client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA of the client certificates (PEM); needed with `verify`.
    pub ca: Option<PathBuf>,
    /// Clients must present a certificate the CA signed.
    pub verify: bool,
}

/// A loaded TLS setting.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The rustls settings.
    pub config: Arc<rustls::ServerConfig>,
    /// Whether clients must present a certificate.
    pub verify: bool,
}

impl Tls {
    /// Reads the files.
    ///
    /// # Errors
    /// A sentence naming the file or setting that cannot be used.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("reading the certificate {}: {e}", files.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", files.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| format!("reading the key {}: {e}", files.key.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if files.verify {
            let ca = files
                .ca
                .as_ref()
                .ok_or("verify needs ca_file: the CA of the client certificates")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("reading the CA {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("reading the CA {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("the CA {}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no certificate", ca.display()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("the client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        Ok(Tls {
            config: Arc::new(config),
            verify: files.verify,
        })
    }
}
