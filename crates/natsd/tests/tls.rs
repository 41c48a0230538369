//! TLS on the client port: INFO in the clear with `tls_required`, then the handshake; clients
//! that trust the CA get in, plain ones do not; with `verify`, only clients with a certificate
//! the CA signed.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;

/// A CA, a certificate for 127.0.0.1 and localhost (server and client), in `dir`.
fn pki(dir: &Path) {
    testkit::TestCa::new("natsd test CA").write(dir, &["server", "client"]);
}

async fn server(dir: &Path, verify: bool) -> natsd::Server {
    let files = natsd::tls::TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: Some(dir.join("ca.pem")),
        verify,
    };
    natsd::Server::start(natsd::ServerConfig {
        port: 0,
        tls: Some(natsd::tls::Tls::load(&files).unwrap()),
        auth_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn round_trip(c: &async_nats::Client) {
    let mut sub = c.subscribe("t").await.unwrap();
    c.publish("t", Bytes::from_static(b"sealed")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"sealed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trust_the_ca_get_in_and_plain_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let s = server(dir.path(), false).await;
    let url = s.client_url();
    // INFO comes in the clear and says TLS is required.
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(tcp)
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(line.starts_with("INFO "), "{line}");
    assert!(line.contains("\"tls_required\":true"), "{line}");
    assert!(!line.contains("tls_verify"), "{line}");

    let c = async_nats::ConnectOptions::new()
        .add_root_certificates(dir.path().join("ca.pem"))
        .require_tls(true)
        .connect(url.as_str())
        .await
        .unwrap();
    round_trip(&c).await;
    // Without the CA, the server's certificate is not trusted.
    assert!(
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .connect(url.as_str())
            .await
            .is_err()
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verify_only_clients_with_a_certificate_get_in() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let s = server(dir.path(), true).await;
    let url = s.client_url();
    let without = async_nats::ConnectOptions::new()
        .add_root_certificates(dir.path().join("ca.pem"))
        .require_tls(true)
        .connect(url.as_str())
        .await;
    assert!(without.is_err(), "a client without a certificate got in");
    let with = async_nats::ConnectOptions::new()
        .add_root_certificates(dir.path().join("ca.pem"))
        .add_client_certificate(dir.path().join("client.pem"), dir.path().join("client.key"))
        .require_tls(true)
        .connect(url.as_str())
        .await
        .unwrap();
    round_trip(&with).await;
    s.shutdown().await;
}

#[test]
fn unusable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let files = |cert: &str, key: &str, verify: bool, ca: Option<&str>| natsd::tls::TlsFiles {
        cert: dir.path().join(cert),
        key: dir.path().join(key),
        ca: ca.map(|c| dir.path().join(c)),
        verify,
    };
    let err = natsd::tls::Tls::load(&files("nope.pem", "server.key", false, None)).unwrap_err();
    assert!(err.contains("nope.pem"), "{err}");
    let err = natsd::tls::Tls::load(&files("server.pem", "client.key", false, None)).unwrap_err();
    assert!(err.contains("do not go together"), "{err}");
    let err = natsd::tls::Tls::load(&files("server.pem", "server.key", true, None)).unwrap_err();
    assert!(err.contains("ca_file"), "{err}");
}
