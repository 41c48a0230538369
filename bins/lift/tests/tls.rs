//! `lift` against a server that requires TLS and a client certificate: the TLS flags work, and
//! without them the call fails with one line and exit code 1.

use std::time::Duration;

use assert_cmd::Command;

/// A CA, a server certificate for 127.0.0.1, and a client certificate, as files in `dir`.
fn pki(dir: &std::path::Path) {
    testkit::TestCa::new("lift test CA").write(dir, &["server", "client"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flags_reach_a_server_that_requires_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    pki(certs.path());
    let data = tempfile::tempdir().unwrap();
    let flags = liftbridged::Flags {
        data_dir: Some(data.path().to_path_buf()),
        host: Some("127.0.0.1".into()),
        port: Some(0),
        embedded_nats_port: Some(0),
        ..Default::default()
    };
    let mut cfg = liftbridged::Config::load(&flags).unwrap();
    cfg.api_security = liftbridged::ApiSecurity {
        cert_and_key: Some((
            certs.path().join("server.pem"),
            certs.path().join("server.key"),
        )),
        client_ca: Some(certs.path().join("ca.pem")),
        authz: None,
    };
    let running = liftbridged::start(cfg, slog::Logger::root(slog::Discard, slog::o!()))
        .await
        .unwrap();
    let addr = running.grpc_addr().to_string();
    let run = |extra: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            Command::cargo_bin("lift")
                .unwrap()
                .env_remove("LIFT_SERVER")
                .env("LIFT_CONFIG", "/nonexistent/lift-contexts.json")
                .args(["--server", &addr, "--timeout", "3s"])
                .args(&extra)
                .args(["stream", "create", "secure"])
                .timeout(Duration::from_secs(30))
                .output()
                .unwrap()
        })
    };
    let file = |n: &str| certs.path().join(n).to_string_lossy().into_owned();
    let with = run(vec![
        "--tls-ca".into(),
        file("ca.pem"),
        "--tls-cert".into(),
        file("client.pem"),
        "--tls-key".into(),
        file("client.key"),
    ])
    .await
    .unwrap();
    assert!(with.status.success(), "{with:?}");
    assert_eq!(
        String::from_utf8_lossy(&with.stdout),
        "created stream secure on subject secure (1 partition, replication factor 1)\n"
    );
    for extra in [vec![], vec!["--tls-ca".to_owned(), file("ca.pem")]] {
        let without = run(extra.clone()).await.unwrap();
        assert_eq!(without.status.code(), Some(1), "{extra:?}: {without:?}");
        let err = String::from_utf8_lossy(&without.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("lift: "), "{err}");
    }
    // A certificate without its key (a hand-edited contexts file; the flags require both) is
    // a usage error, not a connection without a certificate.
    let contexts = certs.path().join("contexts.json");
    std::fs::write(
        &contexts,
        serde_json::json!({
            "current": "half",
            "contexts": {"half": {
                "servers": [addr],
                "tls_ca": file("ca.pem"),
                "tls_cert": file("client.pem"),
            }},
        })
        .to_string(),
    )
    .unwrap();
    let half = tokio::task::spawn_blocking(move || {
        Command::cargo_bin("lift")
            .unwrap()
            .env_remove("LIFT_SERVER")
            .env("LIFT_CONFIG", &contexts)
            .args(["--timeout", "3s", "stream", "ls"])
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(half.status.code(), Some(2), "{half:?}");
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--tls-cert and --tls-key go together"),
        "{half:?}"
    );
    // A missing file is a usage error naming it.
    let missing = run(vec!["--tls-ca".into(), file("nope.pem")])
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.pem"));
    running.shutdown().await;
}
