//! Test certificates, made fresh by each test: a throw-away certificate authority and leaf
//! certificates it signs, valid for `localhost` and `127.0.0.1`. The keys are generated in
//! memory and never leave the test's temporary folders.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A certificate authority made for one test.
pub struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, signed by the CA.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl TestCa {
    /// A new CA whose common name is `name`.
    ///
    /// # Panics
    /// When rcgen cannot make a key or a certificate, which a test may treat as fatal.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("a CA certificate").pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `localhost` and `127.0.0.1` whose common name is `cn` (the identity a
    /// server that checks client certificates sees).
    ///
    /// # Panics
    /// As [`TestCa::new`].
    pub fn leaf(&self, cn: &str) -> Leaf {
        let key = KeyPair::generate().expect("a leaf key");
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf parameters");
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).expect("a leaf certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, and `<name>.pem` and `<name>.key` for a leaf of each name (its common
    /// name), into `dir`.
    ///
    /// # Panics
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path, names: &[&str]) {
        std::fs::write(dir.join("ca.pem"), &self.pem).expect("ca.pem written");
        for name in names {
            let leaf = self.leaf(name);
            std::fs::write(dir.join(format!("{name}.pem")), leaf.cert).expect("a certificate");
            std::fs::write(dir.join(format!("{name}.key")), leaf.key).expect("a key");
        }
    }
}
