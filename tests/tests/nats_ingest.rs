//! The NATS ingest path loses nothing: plain NATS publishers that outrun the ingest are slowed
//! down by the embedded server, never dropped, and every message is recorded once, in each
//! publisher's order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
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
