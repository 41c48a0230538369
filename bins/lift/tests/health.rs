//! `lift cluster health` against three brokers: 0 while every partition is led and in sync,
//! 3 with a one-line reason once a broker is down and its partitions are under-replicated.

use std::time::{Duration, Instant};

use assert_cmd::Command;

fn broker(dir: &std::path::Path, id: &str, nats: &str, seed: bool) -> liftbridged::Config {
    let flags = liftbridged::Flags {
        data_dir: Some(dir.to_path_buf()),
        host: Some("127.0.0.1".into()),
        port: Some(0),
        id: Some(id.into()),
        ..Default::default()
    };
    let mut cfg = liftbridged::Config::load(&flags).expect("a configuration");
    cfg.embedded_nats = None;
    cfg.broker.nats.servers = vec![nats.to_owned()];
    cfg.broker.bootstrap = if seed {
        broker::Bootstrap::Seed
    } else {
        broker::Bootstrap::Join
    };
    cfg.broker.cursors.partitions = 0;
    cfg.broker.replica.max_lag_time = Duration::from_millis(1500);
    cfg.broker.replica.max_leader_timeout = Duration::from_millis(1500);
    cfg.broker.replica.fetch_timeout = Duration::from_millis(500);
    // Stopped without a hand-off, as a crash would leave it.
    cfg.broker.handoff_timeout = Duration::ZERO;
    cfg
}

async fn health(servers: &[String]) -> (i32, String, String) {
    let servers = servers.join(",");
    tokio::task::spawn_blocking(move || {
        let out = Command::cargo_bin("lift")
            .unwrap()
            .env("LIFT_CONFIG", "/nonexistent/lift-contexts.json")
            .args(["--server", &servers, "cluster", "health"])
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_with_a_broker_down() {
    let nats = natsd::Server::start(natsd::ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let url = nats.client_url();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut brokers = Vec::new();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let cfg = broker(dirs[i].path(), id, &url, i == 0);
        brokers.push(Some(liftbridged::start(cfg, slog_discard()).await.unwrap()));
    }
    let addrs: Vec<String> = brokers
        .iter()
        .map(|b| b.as_ref().unwrap().grpc_addr().to_string())
        .collect();
    let client = liftbridge_client::Client::connect(addrs.clone())
        .await
        .unwrap();
    // Wait until every broker is known, then a stream on all three.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.fetch_metadata().await.unwrap().brokers.len() < 3 {
        assert!(Instant::now() < deadline, "the brokers never all joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .create_stream(
            "h",
            "h",
            liftbridge_client::StreamOptions::default()
                .partitions(2)
                .replication_factor(3),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = health(&addrs).await;
        if code == 0 {
            assert!(
                out.starts_with("healthy: 3 broker(s), 2 partition(s)"),
                "{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {code} {out} {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // "c" goes away; the leaders drop it from the ISRs, each partition on its own leader's
    // timer: one may be reported before the other.
    brokers[2].take().unwrap().shutdown().await;
    let live = &addrs[..2];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = health(live).await;
        if code == 3 && err.contains("2 partition(s)") {
            assert_eq!(out, "");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(
                    "lift: unhealthy: 2 partition(s) with replicas out of sync: h/0, h/1"
                ),
                "{err}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "still {code}: {out} {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.close();
    for b in brokers.into_iter().flatten() {
        b.shutdown().await;
    }
    nats.shutdown().await;
}

fn slog_discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}
