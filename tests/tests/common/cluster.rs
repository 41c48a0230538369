//! A cluster of three in-process brokers ("a" seeds, "b" and "c" join) on one NATS server.

use std::time::{Duration, Instant};

use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use tonic::transport::Channel;

use super::*;

/// One broker of the test cluster.
pub struct Node {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub running: Option<liftbridged::Running>,
}

/// Three brokers ("a" seeds, "b" and "c" join) on one NATS server.
pub struct Cluster {
    pub nats: Option<natsd::Server>,
    pub nodes: Vec<Node>,
    /// Applied to every broker's configuration.
    pub tweak: fn(&mut liftbridged::Config),
}

pub fn node_config(
    dir: &std::path::Path,
    id: &str,
    nats_url: &str,
    seed: bool,
) -> liftbridged::Config {
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
    // A stopped node goes without notice, so the failover paths are what gets tested; the
    // rolling-restart test turns the planned hand-off back on.
    cfg.broker.handoff_timeout = Duration::ZERO;
    cfg
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: fn(&mut liftbridged::Config)) -> Cluster {
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
            tweak,
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

    pub fn nats_url(&self) -> String {
        self.nats.as_ref().expect("NATS runs").client_url()
    }

    pub fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("a node")
    }

    pub async fn start_node(&mut self, id: &str) {
        let url = self.nats_url();
        let n = self.nodes.iter_mut().find(|n| n.id == id).expect("a node");
        let mut cfg = node_config(n.dir.path(), id, &url, id == "a");
        (self.tweak)(&mut cfg);
        n.running = Some(
            liftbridged::start(cfg, quiet())
                .await
                .expect("broker starts"),
        );
    }

    pub async fn stop_node(&mut self, id: &str) {
        let n = self.nodes.iter_mut().find(|n| n.id == id).expect("a node");
        if let Some(r) = n.running.take() {
            r.shutdown().await;
        }
    }

    pub async fn client(&self, id: &str) -> ApiClient<Channel> {
        let addr = self.node(id).running.as_ref().expect("running").grpc_addr();
        ApiClient::connect(format!("http://{addr}"))
            .await
            .expect("gRPC connect")
    }

    /// The gRPC addresses of the running brokers.
    pub fn grpc_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.running.as_ref())
            .map(|r| r.grpc_addr().to_string())
            .collect()
    }

    pub fn live(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.running.is_some())
            .map(|n| n.id.clone())
            .collect()
    }

    pub async fn wait_for_brokers(&self, n: usize) {
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
    pub async fn partition_until(
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

    pub async fn stop(mut self) {
        for id in self.live() {
            self.stop_node(&id).await;
        }
        if let Some(n) = self.nats.take() {
            n.shutdown().await;
        }
    }
}
