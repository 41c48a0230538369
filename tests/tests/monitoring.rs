//! The operators' HTTP port: liveness, readiness, and Prometheus metrics whose names are the
//! ones `monitor::METRICS` lists (the names the deploy/ dashboard and alerts use).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET: the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let srv = TestServer::start_with(|c| c.http_listen = Some("127.0.0.1:0".into())).await;
    let addr = srv.running().http_addr().expect("the HTTP port is on");
    let mut c = srv.client().await;
    let mut r = stream("m", "m");
    r.partitions = 2;
    c.create_stream(r).await.unwrap();
    publish(&mut c, "m", "one").await;
    c.join_consumer_group(liftbridge_proto::api::JoinConsumerGroupRequest {
        group_id: "g".into(),
        consumer_id: "c".into(),
        streams: vec!["m".into()],
    })
    .await
    .unwrap();

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    let (code, metrics) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for name in monitor::METRICS
        .iter()
        .filter(|m| !monitor::SPARSE.contains(m))
    {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} is missing from:\n{metrics}"
        );
    }
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
            .to_owned()
    };
    // Two partitions of "m" and the one of __cursors, all led here, none under-replicated.
    assert_eq!(
        line("liftbridge_partitions_led "),
        "liftbridge_partitions_led 3"
    );
    assert_eq!(
        line("liftbridge_partitions_under_replicated "),
        "liftbridge_partitions_under_replicated 0"
    );
    assert_eq!(
        line("liftbridge_metadata_leader "),
        "liftbridge_metadata_leader 1"
    );
    let hw = metrics
        .lines()
        .filter(|l| l.starts_with("liftbridge_partition_high_watermark{"))
        .filter(|l| l.contains("stream=\"m\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .max();
    assert_eq!(hw, Some(0), "one message committed:\n{metrics}");
    srv.stop().await;
}

/// The value of the sample whose line starts with `prefix` (labels in registration order).
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_lag_errors_and_the_process_are_counted() {
    let srv = TestServer::start_with(|c| c.http_listen = Some("127.0.0.1:0".into())).await;
    let addr = srv.running().http_addr().expect("the HTTP port is on");
    let mut c = srv.client().await;
    c.create_stream(stream("t", "t.subject")).await.unwrap();
    for v in ["one", "two", "three"] {
        publish(&mut c, "t", v).await;
    }
    // A plain NATS message on the subject: source "nats".
    let nc = srv.nats().await;
    nc.publish("t.subject", bytes::Bytes::from_static(b"plain"))
        .await
        .unwrap();
    round_trip(&nc).await;
    // A publish to a stream that does not exist fails with NotFound.
    let missing = c
        .publish(liftbridge_proto::api::PublishRequest {
            stream: "nope".into(),
            value: b"x".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // A subscriber reads all four.
    let mut s = subscribe(
        &mut c,
        sub("t", liftbridge_proto::api::StartPosition::Earliest),
    )
    .await
    .unwrap();
    for _ in 0..4 {
        next(&mut s).await.unwrap();
    }
    // A group's cursor at offset 0: three committed messages past it.
    c.set_cursor(liftbridge_proto::api::SetCursorRequest {
        stream: "t".into(),
        partition: 0,
        cursor_id: format!("{}x", monitor::GROUP_CURSOR_PREFIX),
        offset: 0,
    })
    .await
    .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (code, m) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        // The plain message is recorded without an ack to wait for.
        if m.contains(
            "liftbridge_messages_in_total{stream=\"t\",partition=\"0\",source=\"nats\"} 1",
        ) || std::time::Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let p = "stream=\"t\",partition=\"0\"";
    assert_eq!(
        sample(
            &metrics,
            &format!("liftbridge_messages_in_total{{{p},source=\"api\"}}")
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("liftbridge_messages_in_total{{{p},source=\"nats\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("liftbridge_bytes_in_total{{{p},source=\"nats\"}}")
        ),
        5.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("liftbridge_messages_out_total{{{p},to=\"subscriber\"}}")
        ),
        4.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("liftbridge_bytes_out_total{{{p},to=\"subscriber\"}}")
        ),
        (3 + 3 + 5 + 5) as f64
    );
    assert_eq!(
        sample(
            &metrics,
            "liftbridge_publish_ack_seconds_count{ack_policy=\"leader\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            "liftbridge_publish_errors_total{code=\"NotFound\"}"
        ),
        1.0
    );
    assert!(sample(&metrics, "liftbridge_log_append_batch_messages_sum") >= 4.0);
    // The OS sync policy leaves syncing to the system: no sync round yet.
    assert_eq!(sample(&metrics, "liftbridge_log_fsync_seconds_count"), 0.0);
    assert!(sample(&metrics, "liftbridge_metadata_proposal_seconds_count") >= 1.0);
    assert_eq!(
        sample(
            &metrics,
            &format!("liftbridge_cursor_lag_messages{{{p},cursor=\"__group:x\"}}")
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            "liftbridge_consumer_group_lag_messages{group=\"x\"}"
        ),
        3.0
    );
    let connected: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("liftbridge_nats_connected{"))
        .collect();
    assert_eq!(connected.len(), 5, "one per connection: {connected:?}");
    assert!(connected.iter().all(|l| l.ends_with(" 1")), "{connected:?}");
    assert!(sample(&metrics, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&metrics, "process_open_fds") > 0.0);
    srv.stop().await;
}

/// Every metric the dashboard and the alerting rules in deploy/ use is one the port exposes: a
/// renamed metric fails here.
#[test]
fn the_dashboard_and_the_alerts_use_only_exposed_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/liftbridge.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut used = 0;
        for (i, _) in text.match_indices("liftbridge_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Counters and histograms are used through their series' suffixes.
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|b| monitor::METRICS.contains(b))
                })
                .unwrap_or(&name);
            // Alert names are CamelCase ("LiftbridgeNoMetadataLeader"); metric names are not.
            assert!(
                monitor::METRICS.contains(&base),
                "{file} uses {name}, which /metrics does not expose"
            );
            used += 1;
        }
        assert!(used > 5, "{file} uses {used} metrics");
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/liftbridge.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dash["schemaVersion"], 39);
    assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
}

/// `/readyz` of a broker of `cluster` once it answers with `code` (within 30 s): the body.
async fn readyz_until(addr: std::net::SocketAddr, code: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = get(addr, "/readyz").await;
        if got == code {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed {got}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_stopping_and_without_a_metadata_leader() {
    let mut cluster = common::cluster::Cluster::start_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        c.broker.handoff_timeout = Duration::from_secs(5);
    })
    .await;
    let addr = |cluster: &common::cluster::Cluster, id: &str| {
        cluster
            .node(id)
            .running
            .as_ref()
            .and_then(|r| r.http_addr())
            .expect("the HTTP port is on")
    };
    for id in ["a", "b", "c"] {
        readyz_until(addr(&cluster, id), 200).await;
    }
    // A replicated partition: its leader reports each follower's lag.
    let mut c = cluster.client("a").await;
    let mut req = stream("lagged", "lagged");
    req.replication_factor = 3;
    c.create_stream(with_deadline(req)).await.unwrap();
    publish(&mut c, "lagged", "one").await;
    let leader = cluster
        .partition_until("lagged", "a leader", |p| !p.leader.is_empty())
        .await
        .leader;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = get(addr(&cluster, &leader), "/metrics").await;
        let lags: Vec<&str> = m
            .lines()
            .filter(|l| {
                l.starts_with("liftbridge_partition_follower_lag_messages{stream=\"lagged\"")
            })
            .collect();
        // Both followers, caught up.
        if lags.len() == 2 && lags.iter().all(|l| l.ends_with(" 0")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "follower lag: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broker handing off before it stops tells the load balancer at once.
    let b = addr(&cluster, "b");
    let running = cluster
        .nodes
        .iter_mut()
        .find(|n| n.id == "b")
        .and_then(|n| n.running.take())
        .unwrap();
    running.broker().hand_off().await;
    let (code, body) = get(b, "/readyz").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready: this broker is stopping\n")
    );
    assert_eq!(get(b, "/healthz").await.0, 200, "still alive");
    running.shutdown().await;
    // With two of three brokers gone, the last one knows no metadata leader.
    let last = cluster
        .live()
        .into_iter()
        .find(|id| {
            !cluster
                .node(id)
                .running
                .as_ref()
                .unwrap()
                .broker()
                .metadata()
                .is_leader()
        })
        .expect("a follower of the metadata group");
    let gone: Vec<String> = cluster
        .live()
        .into_iter()
        .filter(|id| *id != last)
        .collect();
    for id in gone {
        cluster.stop_node(&id).await;
    }
    let body = readyz_until(addr(&cluster, &last), 503).await;
    assert_eq!(body, "not ready: no metadata leader is known\n");
    cluster.stop().await;
}

/// A write batch closes once its values reach `batch.max.bytes`: bursts of 1 KiB messages,
/// from PublishAsync and from plain NATS publishes, under a 4 KiB limit are appended in
/// batches of at most four messages (without the limit they gather up to
/// `batch.max.messages`, 1024).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_batches_close_at_batch_max_bytes() {
    let srv = TestServer::start_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        c.broker.batch_max_bytes = 4096;
    })
    .await;
    let addr = srv.running().http_addr().expect("the HTTP port is on");
    let mut c = srv.client().await;
    c.create_stream(stream("b", "b.subject")).await.unwrap();
    const N: usize = 1000;
    let value = vec![b'x'; 1024];
    // Every request is there before the session starts, so that the broker could take them
    // in one go.
    let reqs: Vec<_> = (0..N)
        .map(|i| liftbridge_proto::api::PublishRequest {
            stream: "b".into(),
            value: value.clone().into(),
            correlation_id: format!("{i}"),
            ack_policy: liftbridge_proto::api::AckPolicy::Leader as i32,
            ..Default::default()
        })
        .collect();
    let mut out = c
        .publish_async(futures_util::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..N {
        let r = tokio::time::timeout(Duration::from_secs(10), out.message())
            .await
            .expect("an ack")
            .unwrap()
            .expect("the session is open");
        assert!(r.ack.is_some(), "{r:?}");
    }
    let nc = srv.nats().await;
    for _ in 0..N {
        nc.publish("b.subject", value.clone().into()).await.unwrap();
    }
    round_trip(&nc).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (code, m) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let nats = "liftbridge_messages_in_total{stream=\"b\",partition=\"0\",source=\"nats\"}";
        if sample(&m, nats) == N as f64 {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every NATS message was recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let batches = sample(&metrics, "liftbridge_log_append_batch_messages_count");
    let small = sample(
        &metrics,
        "liftbridge_log_append_batch_messages_bucket{le=\"4.0\"}",
    );
    assert!(
        sample(&metrics, "liftbridge_log_append_batch_messages_sum") >= (2 * N) as f64,
        "{metrics}"
    );
    assert_eq!(small, batches, "a batch of more than four messages");
}

/// Under the `always` sync policy, each sync round (group commit) is timed and counts the
/// messages it made durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_rounds_are_timed_and_counted() {
    let srv = TestServer::start_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        c.broker.sync = commitlog::SyncPolicy::Always;
    })
    .await;
    let addr = srv.running().http_addr().expect("the HTTP port is on");
    let mut c = srv.client().await;
    c.create_stream(stream("d", "d.subject")).await.unwrap();
    for v in ["one", "two", "three"] {
        publish(&mut c, "d", v).await;
    }
    let (code, metrics) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    // Acked with policy LEADER under `always`: each message was synced before its ack.
    assert!(sample(&metrics, "liftbridge_log_fsync_seconds_count") >= 1.0);
    assert!(sample(&metrics, "liftbridge_log_fsync_messages_sum") >= 3.0);
    assert_eq!(
        sample(&metrics, "liftbridge_log_fsync_seconds_count"),
        sample(&metrics, "liftbridge_log_fsync_messages_count"),
        "one observation of each per round"
    );
}
