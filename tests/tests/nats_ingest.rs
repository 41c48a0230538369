//! The NATS ingest path loses nothing: plain NATS publishers that outrun the ingest are slowed
//! down by the embedded server, never dropped, and every message is recorded once, in each
//! publisher's order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use liftbridge_proto::api::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A bare NATS publisher: it writes PUB lines as fast as the socket takes them, with no client
/// library in between, then waits for the server to have read everything (a PING's PONG).
async fn raw_publish(url: &str, subjects: Vec<String>, count: usize, size: usize, tag: u32) {
    let addr = url.trim_start_matches("nats://");
    let stream = TcpStream::connect(addr).await.expect("NATS connect");
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    rd.read_line(&mut line).await.expect("INFO");
    assert!(line.starts_with("INFO "), "{line}");
    wr.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .await
        .unwrap();
    let mut buf = Vec::with_capacity(256 * 1024);
    for i in 0..count {
        let subject = &subjects[i % subjects.len()];
        // The value: publisher tag and sequence number, padded to `size`.
        let mut value = format!("{tag}:{i}:").into_bytes();
        value.resize(size.max(value.len()), b'x');
        buf.extend_from_slice(format!("PUB {subject} {}\r\n", value.len()).as_bytes());
        buf.extend_from_slice(&value);
        buf.extend_from_slice(b"\r\n");
        if buf.len() >= 128 * 1024 {
            wr.write_all(&buf).await.expect("publish");
            buf.clear();
        }
    }
    buf.extend_from_slice(b"PING\r\n");
    wr.write_all(&buf).await.expect("publish");
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read_line(&mut line))
            .await
            .expect("PONG within 60 s")
            .expect("read");
        assert!(n > 0, "the server closed the publisher's connection");
        if line == "PONG\r\n" {
            break;
        }
        assert!(!line.starts_with("-ERR"), "{line}");
    }
}

/// Waits until the partition's newest offset stops moving at `want - 1`, or for 60 s at most;
/// returns the newest offset seen.
async fn wait_recorded(
    c: &mut api_client::ApiClient<tonic::transport::Channel>,
    stream: &str,
    partition: i32,
    want: i64,
) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = -1;
    let mut still = 0;
    while tokio::time::Instant::now() < deadline {
        let newest = partition_md(c, stream, partition).await.newest_offset;
        if newest >= want - 1 {
            return newest;
        }
        still = if newest == last { still + 1 } else { 0 };
        last = newest;
        // Nothing new for 3 s: the rest is not coming.
        if still >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// Reads a whole partition and returns, per publisher tag, the sequence numbers in log order.
async fn read_all(
    c: &mut api_client::ApiClient<tonic::transport::Channel>,
    stream: &str,
    partition: i32,
    count: i64,
) -> HashMap<u32, Vec<usize>> {
    let mut req = sub(stream, StartPosition::Earliest);
    req.partition = partition;
    let mut s = subscribe(c, req).await.unwrap();
    let mut seen: HashMap<u32, Vec<usize>> = HashMap::new();
    for expect in 0..count {
        let m = next(&mut s).await.unwrap();
        assert_eq!(m.offset, expect);
        let text = std::str::from_utf8(&m.value).unwrap();
        let mut parts = text.split(':');
        let tag: u32 = parts.next().unwrap().parse().unwrap();
        let seq: usize = parts.next().unwrap().parse().unwrap();
        seen.entry(tag).or_default().push(seq);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_outruns_the_ingest_is_recorded_whole_and_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("burst", "burst")).await.unwrap();
    let url = srv.running().nats_url().to_owned();
    const N: usize = 200_000;
    raw_publish(&url, vec!["burst".into()], N, 100, 1).await;
    let newest = wait_recorded(&mut c, "burst", 0, N as i64).await;
    assert_eq!(newest, N as i64 - 1, "messages were lost");
    let seen = read_all(&mut c, "burst", 0, N as i64).await;
    assert_eq!(seen[&1], (0..N).collect::<Vec<_>>());
    srv.stop().await;
}

/// Publishes `count` messages from each of `publishers` bare connections at once, publisher `k`
/// tagged `k`, cycling over `subjects`.
async fn raw_publishers(url: &str, subjects: &[&str], publishers: u32, count: usize, size: usize) {
    let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
    let tasks: Vec<_> = (0..publishers)
        .map(|k| {
            tokio::spawn(raw_publish_owned(
                url.to_owned(),
                subjects.clone(),
                count,
                size,
                k,
            ))
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher");
    }
}

async fn raw_publish_owned(
    url: String,
    subjects: Vec<String>,
    count: usize,
    size: usize,
    tag: u32,
) {
    raw_publish(&url, subjects, count, size, tag).await
}

/// Checks that `seen` holds, for each of `publishers` tags, exactly the sequence numbers
/// `want(i)` selects, in publish order.
fn assert_complete(
    seen: &HashMap<u32, Vec<usize>>,
    publishers: u32,
    count: usize,
    want: impl Fn(usize) -> bool,
) {
    for k in 0..publishers {
        let expected: Vec<usize> = (0..count).filter(|&i| want(i)).collect();
        let got = seen.get(&k).cloned().unwrap_or_default();
        assert_eq!(got.len(), expected.len(), "publisher {k}: count");
        assert!(got == expected, "publisher {k}: order or content differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_publishers_on_four_partitions_lose_nothing() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut req = stream("quad", "quad");
    req.partitions = 4;
    c.create_stream(req).await.unwrap();
    let url = srv.running().nats_url().to_owned();
    // 70,000 a partition: more than a NATS client library buffers for one subscription.
    const N: usize = 70_000;
    raw_publishers(&url, &["quad", "quad.1", "quad.2", "quad.3"], 4, N, 32).await;
    for p in 0..4 {
        let want = N as i64;
        assert_eq!(
            wait_recorded(&mut c, "quad", p, want).await,
            want - 1,
            "partition {p}"
        );
        let seen = read_all(&mut c, "quad", p, want).await;
        assert_complete(&seen, 4, N, |i| i % 4 == p as usize);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_stream_records_every_subject_whole() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("wild", "wild.>")).await.unwrap();
    let url = srv.running().nats_url().to_owned();
    const N: usize = 60_000;
    raw_publishers(&url, &["wild.a", "wild.b.c"], 2, N, 32).await;
    let want = 2 * N as i64;
    assert_eq!(wait_recorded(&mut c, "wild", 0, want).await, want - 1);
    let seen = read_all(&mut c, "wild", 0, want).await;
    assert_complete(&seen, 2, N, |_| true);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sharing_a_subject_and_a_group_split_a_burst_without_loss() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    for name in ["g1", "g2"] {
        let mut req = stream(name, "shared");
        req.group = "workers".into();
        c.create_stream(req).await.unwrap();
    }
    c.create_stream(stream("everything", "shared"))
        .await
        .unwrap();
    let url = srv.running().nats_url().to_owned();
    const N: usize = 100_000;
    raw_publish(&url, vec!["shared".into()], N, 32, 0).await;
    // The stream outside the group records everything.
    assert_eq!(
        wait_recorded(&mut c, "everything", 0, N as i64).await,
        N as i64 - 1
    );
    let all = read_all(&mut c, "everything", 0, N as i64).await;
    assert_complete(&all, 1, N, |_| true);
    // The group's members record each message once between them, each in publish order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (a, b) = loop {
        let a = partition_md(&mut c, "g1", 0).await.newest_offset + 1;
        let b = partition_md(&mut c, "g2", 0).await.newest_offset + 1;
        if a + b >= N as i64 || tokio::time::Instant::now() > deadline {
            break (a, b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a + b, N as i64, "the group lost or duplicated messages");
    assert!(a > 0 && b > 0, "both members take a share: {a} and {b}");
    let first = read_all(&mut c, "g1", 0, a).await;
    let second = read_all(&mut c, "g2", 0, b).await;
    let (x, y) = (&first[&0], &second[&0]);
    assert!(x.windows(2).all(|w| w[0] < w[1]) && y.windows(2).all(|w| w[0] < w[1]));
    let mut both: Vec<usize> = x.iter().chain(y).copied().collect();
    both.sort_unstable();
    assert_eq!(both, (0..N).collect::<Vec<_>>());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_and_regaining_an_external_nats_is_logged_per_connection_and_counted() {
    let nats = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let port = nats.local_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.embedded_nats = None;
    cfg.broker.nats.servers = vec![nats.client_url()];
    cfg.broker.nats.reconnect_wait = Duration::from_millis(50);
    let (logger, lines) = capturing();
    let running = liftbridged::start(cfg, logger)
        .await
        .expect("server starts");
    assert!(running.broker().nats_stats().iter().all(|(_, s)| *s
        == natsbridge::ConnectionStats {
            connected: true,
            ..Default::default()
        }));
    nats.shutdown().await;
    for role in ["raft", "streams", "acks", "replication", "publishes"] {
        wait_logged(
            &lines,
            &[
                "WARN NATS connection event",
                "event=disconnected",
                &format!("role={role}"),
                "count=1",
            ],
        )
        .await;
    }
    assert!(
        running
            .broker()
            .nats_stats()
            .iter()
            .all(|(_, s)| !s.connected),
        "every connection is down"
    );
    let again = natsd::Server::start(natsd::ServerConfig {
        port,
        ..Default::default()
    })
    .await
    .unwrap();
    wait_logged(&lines, &["event=reconnected", "role=streams", "count=1"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = running.broker().nats_stats();
        assert_eq!(stats.len(), 5);
        if stats
            .iter()
            .all(|(_, s)| s.disconnects == 1 && s.reconnects == 1 && s.connected)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_records_everything_the_server_had_accepted() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("stop", "stop")).await.unwrap();
    let url = srv.running().nats_url().to_owned();
    const N: usize = 200_000;
    // The server has read every message once the publisher has its PONG; the ingest is
    // usually well behind at that point.
    raw_publish(&url, vec!["stop".into()], N, 100, 7).await;
    srv.restart_with(|_| {}).await;
    let mut c = srv.client().await;
    assert_eq!(
        wait_recorded(&mut c, "stop", 0, N as i64).await,
        N as i64 - 1,
        "messages accepted before the stop were lost"
    );
    let seen = read_all(&mut c, "stop", 0, N as i64).await;
    assert_eq!(seen[&7], (0..N).collect::<Vec<_>>());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_under_load_records_everything_the_server_acknowledged() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("busy", "busy")).await.unwrap();
    let addr = srv
        .running()
        .nats_url()
        .trim_start_matches("nats://")
        .to_owned();
    let stream_conn = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = stream_conn.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    rd.read_line(&mut line).await.unwrap();
    wr.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .await
        .unwrap();
    // Batches of 1,000 messages, each followed by a PING: a PONG says the server has read
    // every message before it.
    const BATCH: usize = 1000;
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pongs = acknowledged.clone();
    let reader = tokio::spawn(async move {
        let mut line = String::new();
        loop {
            line.clear();
            match rd.read_line(&mut line).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            if line == "PONG\r\n" {
                pongs.fetch_add(BATCH, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        // At most 2,000 batches: the stop comes long before.
        for b in 0..2000 {
            buf.clear();
            for i in b * BATCH..(b + 1) * BATCH {
                buf.extend_from_slice(format!("PUB busy 12\r\n{i:>12}\r\n").as_bytes());
            }
            buf.extend_from_slice(b"PING\r\n");
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    // Stop while the publisher runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 50_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the publisher is stuck"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.restart_with(|_| {}).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let acked = acknowledged.load(std::sync::atomic::Ordering::SeqCst) as i64;
    let mut c = srv.client().await;
    let recorded = wait_recorded(&mut c, "busy", 0, acked).await + 1;
    assert!(
        recorded >= acked,
        "the server acknowledged {acked} messages, the log holds {recorded}"
    );
    // What is recorded is the publisher's sequence from its start, without a gap.
    let mut req = sub("busy", StartPosition::Earliest);
    req.partition = 0;
    let mut s = subscribe(&mut c, req).await.unwrap();
    for expect in 0..recorded {
        let m = next(&mut s).await.unwrap();
        let n: i64 = std::str::from_utf8(&m.value)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(n, expect);
    }
    srv.stop().await;
}
