//! Replicated partitions across three in-process brokers on a standalone NATS server: followers
//! copy the leader's log, acks with policy ALL wait for every in-sync replica, followers serve
//! committed reads, and a leader that goes away is replaced by an in-sync follower without losing
//! an acknowledged message.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use tonic::Code;
use tonic::transport::Channel;

/// One broker of the test cluster.
struct Node {
    id: String,
    dir: tempfile::TempDir,
    running: Option<liftbridged::Running>,
}

/// Three brokers ("a" seeds, "b" and "c" join) on one NATS server.
struct Cluster {
    nats: Option<natsd::Server>,
    nodes: Vec<Node>,
}

fn node_config(dir: &std::path::Path, id: &str, nats_url: &str, seed: bool) -> liftbridged::Config {
    let mut cfg = config(dir);
    cfg.broker.server_id = id.into();
    cfg.embedded_nats = None;
    cfg.broker.nats.servers = vec![nats_url.to_owned()];
    cfg.broker.bootstrap = if seed {
        broker::Bootstrap::Seed
    } else {
        broker::Bootstrap::Join
    };
    cfg.broker.cursors.partitions = 0;
    // Quick timings, so failures are detected within seconds.
    cfg.broker.replica.max_lag_time = Duration::from_millis(1500);
    cfg.broker.replica.max_leader_timeout = Duration::from_millis(1500);
    cfg.broker.replica.max_idle_wait = Duration::from_millis(500);
    cfg.broker.replica.fetch_timeout = Duration::from_millis(500);
    cfg
}

impl Cluster {
    async fn start() -> Cluster {
        let nats = natsd::Server::start(natsd::ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            ..Default::default()
        })
        .await
        .expect("NATS starts");
        let mut c = Cluster {
            nats: Some(nats),
            nodes: Vec::new(),
        };
        for id in ["a", "b", "c"] {
            let dir = tempfile::tempdir().unwrap();
            c.nodes.push(Node {
                id: id.into(),
                dir,
                running: None,
            });
            c.start_node(id).await;
        }
        c.wait_for_brokers(3).await;
        c
    }

    fn nats_url(&self) -> String {
        self.nats.as_ref().expect("NATS runs").client_url()
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("a node")
    }

    async fn start_node(&mut self, id: &str) {
        let url = self.nats_url();
        let n = self.nodes.iter_mut().find(|n| n.id == id).expect("a node");
        let cfg = node_config(n.dir.path(), id, &url, id == "a");
        n.running = Some(
            liftbridged::start(cfg, quiet())
                .await
                .expect("broker starts"),
        );
    }

    async fn stop_node(&mut self, id: &str) {
        let n = self.nodes.iter_mut().find(|n| n.id == id).expect("a node");
        if let Some(r) = n.running.take() {
            r.shutdown().await;
        }
    }

    async fn client(&self, id: &str) -> ApiClient<Channel> {
        let addr = self.node(id).running.as_ref().expect("running").grpc_addr();
        ApiClient::connect(format!("http://{addr}"))
            .await
            .expect("gRPC connect")
    }

    fn live(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.running.is_some())
            .map(|n| n.id.clone())
            .collect()
    }

    async fn wait_for_brokers(&self, n: usize) {
        let mut c = self.client(&self.live()[0]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let md = c
                .fetch_metadata(FetchMetadataRequest::default())
                .await
                .unwrap()
                .into_inner();
            if md.brokers.len() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} brokers",
                md.brokers.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The partition's metadata as a live broker sees it, once `ok` holds (within 30 s).
    async fn partition_until(
        &self,
        stream: &str,
        what: &str,
        ok: impl Fn(&PartitionMetadata) -> bool,
    ) -> PartitionMetadata {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            for id in self.live() {
                let mut c = self.client(&id).await;
                let md = c
                    .fetch_metadata(FetchMetadataRequest {
                        streams: vec![stream.into()],
                        ..Default::default()
                    })
                    .await;
                if let Ok(md) = md
                    && let Some(p) = md
                        .into_inner()
                        .stream_metadata
                        .first()
                        .and_then(|s| s.partitions.get(&0).cloned())
                {
                    if ok(&p) {
                        return p;
                    }
                    last = Some(p);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the partition never had {what}; last seen {last:?}");
    }

    async fn stop(mut self) {
        for id in self.live() {
            self.stop_node(&id).await;
        }
        if let Some(n) = self.nats.take() {
            n.shutdown().await;
        }
    }
}

/// Publishes `values` through `c` with ack policy ALL; every one must be acked, in order.
async fn publish_all(c: &mut ApiClient<Channel>, stream: &str, values: &[String]) -> Vec<i64> {
    let mut offsets = Vec::new();
    for v in values {
        let mut req = tonic::Request::new(PublishRequest {
            stream: stream.into(),
            value: v.clone().into(),
            ack_policy: AckPolicy::All as i32,
            expected_offset: -1,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(20));
        let ack = c
            .publish(req)
            .await
            .unwrap_or_else(|e| panic!("publishing {v}: {e}"))
            .into_inner()
            .ack
            .expect("an ack");
        assert_eq!(ack.ack_policy, AckPolicy::All as i32);
        offsets.push(ack.offset);
    }
    offsets
}

/// Reads offsets 0..n as committed on broker `c` (the leader, or an ISR follower).
async fn read_from(c: &mut ApiClient<Channel>, stream: &str, n: usize) -> Vec<(i64, String)> {
    let mut req = sub(stream, StartPosition::Earliest);
    req.read_isr_replica = true;
    let mut s = subscribe(c, req).await.expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, s.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages in time: {out:?}", out.len()))
            .expect("the subscription did not end")
            .expect("a message");
        out.push((m.offset, String::from_utf8_lossy(&m.value).into_owned()));
    }
    out
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn create(name: &str, rf: i32) -> CreateStreamRequest {
    let mut r = stream(name, name);
    r.replication_factor = rf;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_in_sync_replica_holds_what_was_acked_with_policy_all() {
    let cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("orders", 3)).await.unwrap();
    let p = cluster
        .partition_until("orders", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    let sent = values("m", 30);
    let offsets = publish_all(&mut leader, "orders", &sent).await;
    assert_eq!(offsets, (0..30).collect::<Vec<i64>>());
    let expected: Vec<(i64, String)> = offsets.into_iter().zip(sent).collect();
    // Every replica serves the committed log, byte for byte the same.
    for id in ["a", "b", "c"] {
        let mut c = cluster.client(id).await;
        assert_eq!(read_from(&mut c, "orders", 30).await, expected, "on {id}");
    }
    // Followers report the leader's high watermark in their own metadata.
    let md = partition_md(&mut leader, "orders", 0).await;
    assert_eq!(md.high_watermark, 29);
    let mut isr = md.isr.clone();
    isr.sort();
    assert_eq!(isr, vec!["a", "b", "c"]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_needs_an_in_sync_replica() {
    let cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("pair", 2)).await.unwrap();
    let p = cluster
        .partition_until("pair", "two in-sync replicas", |p| p.isr.len() == 2)
        .await;
    let outsider = ["a", "b", "c"]
        .into_iter()
        .find(|id| !p.replicas.iter().any(|r| r == id))
        .expect("one broker holds no replica");
    let mut c = cluster.client(outsider).await;
    let mut req = sub("pair", StartPosition::Earliest);
    req.read_isr_replica = true;
    let err = subscribe(&mut c, req).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "Server not in partition ISR")
    );
    // Without the flag, a non-leader refuses as always.
    let follower = p.isr.iter().find(|r| **r != p.leader).unwrap();
    let mut f = cluster.client(follower).await;
    let err = subscribe(&mut f, sub("pair", StartPosition::Earliest))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "Server not partition leader")
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_leader_is_replaced_and_no_acked_message_is_lost() {
    let mut cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("events", 3)).await.unwrap();
    let p = cluster
        .partition_until("events", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let old = p.leader.clone();
    let mut leader = cluster.client(&old).await;
    let first = values("before", 20);
    publish_all(&mut leader, "events", &first).await;

    // The leader goes away: its followers report it, and one of them takes over.
    cluster.stop_node(&old).await;
    let p = cluster
        .partition_until("events", "a new leader", |p| {
            !p.leader.is_empty() && p.leader != old
        })
        .await;
    let new = p.leader.clone();
    let mut leader = cluster.client(&new).await;
    // Publishing goes on; ALL acks wait until the old leader leaves the ISR.
    let second = values("after", 20);
    let offsets = publish_all(&mut leader, "events", &second).await;
    assert_eq!(offsets, (20..40).collect::<Vec<i64>>());
    let p = cluster
        .partition_until("events", "the old leader out of the ISR", |p| {
            !p.isr.contains(&old)
        })
        .await;
    assert_eq!(p.isr.len(), 2);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let expected: Vec<(i64, String)> = (0..40).zip(all).collect();
    for id in cluster.live() {
        let mut c = cluster.client(&id).await;
        assert_eq!(read_from(&mut c, "events", 40).await, expected, "on {id}");
    }

    // The old leader returns as a follower, catches up and is back in the ISR.
    cluster.start_node(&old).await;
    cluster
        .partition_until("events", "the old leader back in the ISR", |p| {
            p.isr.contains(&old) && p.leader == new
        })
        .await;
    let mut c = cluster.client(&old).await;
    assert_eq!(read_from(&mut c, "events", 40).await, expected, "on {old}");
    cluster.stop().await;
}
