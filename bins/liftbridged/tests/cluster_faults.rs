//! Three `liftbridged` processes on a real `nats-server`, each reaching NATS through a proxy the
//! test can sever. A stream with replication factor 3 takes a continuous stream of publishes with
//! ack policy ALL while the test kills the leader with SIGKILL and restarts it, stops the next
//! leader with SIGTERM (it hands the partition over first) and restarts it, cuts a follower
//! off NATS and heals it, and kills two of the three brokers. After each fault the cluster serves
//! again once it can; at the end every acked message is present exactly once, at its acked
//! offset, in the same order on every replica.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::Channel;

use common::{Proc, free_port, wait_port};
use testkit::RefNats;

const BIN: &str = env!("CARGO_BIN_EXE_liftbridged");
const STREAM: &str = "faults";

/// A TCP proxy from a local port to NATS. Severing it drops every connection and refuses new
/// ones until it is healed.
struct Proxy {
    port: u16,
    severed: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (severed, watch_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *watch_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = watch_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut ci, mut co) = client.into_split();
                    let (mut si, mut so) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut ci, &mut so) => {}
                        _ = tokio::io::copy(&mut si, &mut co) => {}
                        _ = cut.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            severed,
            task,
        }
    }

    fn sever(&self) {
        let _ = self.severed.send(true);
    }

    fn heal(&self) {
        let _ = self.severed.send(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.sever();
        self.task.abort();
    }
}

/// One broker process and what it needs to restart.
struct Broker {
    id: String,
    grpc: u16,
    data: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    proxy: Proxy,
    proc: Option<Proc>,
}

impl Broker {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.conf)
            .arg("--data-dir")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        wait_port(self.grpc);
    }

    /// SIGTERM, and the exit status once the process has stopped (within 60 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut p = self.proc.take().expect("running");
        p.terminate(Duration::from_secs(60))
    }

    /// SIGKILL: no clean shutdown, no flushing of anything.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }
}

/// Dropped in order: the brokers, then NATS, then the data.
struct Cluster {
    brokers: Vec<Broker>,
    _nats: RefNats,
    _dir: tempfile::TempDir,
}

fn write_config(path: &Path, id: &str, grpc: u16, proxy: u16, seed: bool) {
    let bootstrap = if seed {
        "clustering.raft.bootstrap.seed: true\n"
    } else {
        ""
    };
    std::fs::write(
        path,
        format!(
            "listen: 127.0.0.1:{grpc}\n\
             host: 127.0.0.1\n\
             nats.servers: [\"nats://127.0.0.1:{proxy}\"]\n\
             clustering.server.id: {id}\n\
             {bootstrap}\
             clustering.replica.max.lag.time: 2s\n\
             clustering.replica.max.leader.timeout: 2s\n\
             clustering.replica.max.idle.wait: 500ms\n\
             clustering.replica.fetch.timeout: 500ms\n\
             cursors.stream.partitions: 0\n\
             logging.level: info\n"
        ),
    )
    .unwrap();
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nats = RefNats::start("");
        let nats_port = nats.port();
        let mut brokers = Vec::new();
        for id in ["a", "b", "c"] {
            let proxy = Proxy::start(nats_port).await;
            let grpc = free_port();
            let conf = dir.path().join(format!("{id}.yaml"));
            write_config(&conf, id, grpc, proxy.port, id == "a");
            let mut b = Broker {
                id: id.into(),
                grpc,
                data: dir.path().join(id),
                conf,
                log: dir.path().join(format!("{id}.log")),
                proxy,
                proc: None,
            };
            b.start();
            brokers.push(b);
        }
        Cluster {
            _nats: nats,
            brokers,
            _dir: dir,
        }
    }

    fn broker(&mut self, id: &str) -> &mut Broker {
        self.brokers.iter_mut().find(|b| b.id == id).unwrap()
    }

    fn ports(&self) -> Vec<(String, u16)> {
        self.brokers
            .iter()
            .filter(|b| b.proc.is_some())
            .map(|b| (b.id.clone(), b.grpc))
            .collect()
    }

    /// The logs of every broker, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for b in &self.brokers {
            let text = std::fs::read_to_string(&b.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} ---\n", b.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

async fn client(port: u16) -> Option<ApiClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1));
    endpoint.connect().await.ok().map(ApiClient::new)
}

/// The partition as the first live broker that answers sees it.
async fn partition(ports: &[(String, u16)]) -> Option<PartitionMetadata> {
    for (_, port) in ports {
        let Some(mut c) = client(*port).await else {
            continue;
        };
        let mut req = tonic::Request::new(FetchMetadataRequest {
            streams: vec![STREAM.into()],
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(5));
        if let Ok(md) = c.fetch_metadata(req).await
            && let Some(p) = md
                .into_inner()
                .stream_metadata
                .first()
                .and_then(|s| s.partitions.get(&0).cloned())
        {
            return Some(p);
        }
    }
    None
}

/// The partition as a majority of the brokers sees it (same leader and ISR): a broker that has
/// just restarted answers from metadata it has not caught up on yet, and one cut off from NATS
/// from metadata it cannot update.
async fn agreed(ports: &[(String, u16)]) -> Option<PartitionMetadata> {
    let mut seen = Vec::new();
    for p in ports {
        if let Some(md) = partition(std::slice::from_ref(p)).await {
            seen.push(md);
        }
    }
    let key = |p: &PartitionMetadata| {
        let mut isr = p.isr.clone();
        isr.sort();
        (p.leader.clone(), isr)
    };
    let majority = ports.len() / 2 + 1;
    seen.iter()
        .find(|p| seen.iter().filter(|q| key(q) == key(p)).count() >= majority)
        .cloned()
}

/// [`agreed`], waited for within 30 s.
async fn settled(cluster: &Cluster) -> PartitionMetadata {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = agreed(&cluster.ports()).await {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no majority of the brokers agreed on the partition\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the publisher got acked: value → offset.
type Acked = Arc<Mutex<HashMap<String, i64>>>;

/// Publishes unique values with ack policy ALL to whichever broker leads, until `stop`.
fn publisher(
    ports: Arc<Mutex<Vec<(String, u16)>>>,
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut attempts = 0u64;
        let mut leader: Option<ApiClient<Channel>> = None;
        // Bounded: the test ends long before this many attempts.
        while !stop.load(Ordering::Acquire) && attempts < 200_000 {
            let Some(c) = leader.as_mut() else {
                let live = ports.lock().clone();
                if let Some(p) = partition(&live).await
                    && let Some((_, port)) = live.iter().find(|(id, _)| *id == p.leader)
                {
                    leader = client(*port).await;
                }
                if leader.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            };
            attempts += 1;
            let value = format!("m{attempts}");
            let mut req = tonic::Request::new(PublishRequest {
                stream: STREAM.into(),
                value: value.clone().into(),
                ack_policy: AckPolicy::All as i32,
                expected_offset: -1,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(3));
            match c.publish(req).await {
                Ok(r) => {
                    let ack = r.into_inner().ack.expect("an ack");
                    acked.lock().insert(value, ack.offset);
                }
                Err(_) => {
                    leader = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        attempts
    })
}

/// Waits until `ok` holds for the partition and `more` new messages were acked since the call.
async fn until(
    cluster: &Cluster,
    acked: &Acked,
    what: &str,
    more: usize,
    ok: impl Fn(&PartitionMetadata) -> bool,
) {
    let start = acked.lock().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = agreed(&cluster.ports()).await;
        if p.as_ref().is_some_and(&ok) && acked.lock().len() >= start + more {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "never {what}: partition {p:?}, {} acked since\n{}",
                acked.lock().len() - start,
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every committed message on broker `port`, read as an ISR replica, up to offset `hw`.
async fn replica_log(port: u16, hw: i64) -> Vec<(i64, String)> {
    let mut c = client(port).await.expect("the broker answers");
    let req = SubscribeRequest {
        stream: STREAM.into(),
        start_position: StartPosition::Earliest as i32,
        read_isr_replica: true,
        ..Default::default()
    };
    let mut s = c.subscribe(req).await.expect("subscribe").into_inner();
    let first = s.next().await.expect("handshake").expect("handshake");
    assert_eq!(first, Message::default());
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.last().is_none_or(|(o, _)| *o < hw) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, s.next())
            .await
            .unwrap_or_else(|_| panic!("replica on {port} stopped at {:?} of {hw}", out.last()))
            .expect("the subscription did not end")
            .expect("a message");
        out.push((m.offset, String::from_utf8_lossy(&m.value).into_owned()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kills_and_severed_connections() {
    let mut cluster = Cluster::start().await;
    // The stream, once the three brokers have joined.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = client(cluster.brokers[0].grpc).await.unwrap();
        let md = c
            .fetch_metadata(FetchMetadataRequest::default())
            .await
            .unwrap()
            .into_inner();
        if md.brokers.len() == 3 {
            let mut req = CreateStreamRequest {
                name: STREAM.into(),
                subject: STREAM.into(),
                replication_factor: 3,
                ..Default::default()
            };
            req.partitions = 1;
            c.create_stream(req).await.expect("stream created");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the brokers never joined\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked: Acked = Arc::default();
    let ports = Arc::new(Mutex::new(cluster.ports()));
    let stop = Arc::new(AtomicBool::new(false));
    let pubs = publisher(ports.clone(), acked.clone(), stop.clone());
    until(&cluster, &acked, "three in-sync replicas", 20, |p| {
        p.isr.len() == 3
    })
    .await;

    // 1. SIGKILL the leader: a follower takes over; the old leader returns as a follower.
    let old = settled(&cluster).await.leader;
    cluster.broker(&old).kill();
    until(&cluster, &acked, "a new leader", 20, |p| {
        !p.leader.is_empty() && p.leader != old
    })
    .await;
    cluster.broker(&old).start();
    until(
        &cluster,
        &acked,
        "the old leader back in the ISR",
        20,
        |p| p.isr.len() == 3,
    )
    .await;

    // 1b. SIGTERM the leader: before it exits, it hands the partition to an in-sync follower
    // and leaves the ISR (the planned stop of a rolling restart); the acks go on.
    let old = settled(&cluster).await.leader;
    let status = cluster.broker(&old).terminate();
    assert!(status.success(), "{status:?}\n{}", cluster.logs());
    let log = std::fs::read_to_string(&cluster.broker(&old).log).unwrap();
    let handed = log.lines().find(|l| l.contains("handed off everything"));
    assert!(
        handed.is_some_and(|l| l.contains("partitions: 1")),
        "no hand-off before the exit\n{}",
        cluster.logs()
    );
    until(
        &cluster,
        &acked,
        "another leader, without the stopped one",
        20,
        |p| !p.leader.is_empty() && p.leader != old && !p.isr.contains(&old),
    )
    .await;
    cluster.broker(&old).start();
    until(
        &cluster,
        &acked,
        "the stopped leader back in the ISR",
        20,
        |p| p.isr.len() == 3,
    )
    .await;

    // 2. Cut a follower off NATS: it leaves the ISR; healed, it catches up and returns.
    let p = settled(&cluster).await;
    let cut = p.isr.iter().find(|r| **r != p.leader).unwrap().clone();
    cluster.broker(&cut).proxy.sever();
    until(
        &cluster,
        &acked,
        "the cut follower out of the ISR",
        20,
        |p| !p.isr.contains(&cut),
    )
    .await;
    cluster.broker(&cut).proxy.heal();
    until(
        &cluster,
        &acked,
        "the healed follower back in the ISR",
        20,
        |p| p.isr.len() == 3,
    )
    .await;

    // 3. SIGKILL two of three: nothing can commit; restarted, the cluster serves again.
    let p = settled(&cluster).await;
    let victims: Vec<String> = vec![
        p.leader.clone(),
        p.isr.iter().find(|r| **r != p.leader).unwrap().clone(),
    ];
    for v in &victims {
        cluster.broker(v).kill();
    }
    *ports.lock() = cluster.ports();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for v in &victims {
        cluster.broker(v).start();
    }
    *ports.lock() = cluster.ports();
    until(
        &cluster,
        &acked,
        "all three in the ISR after the double kill",
        20,
        |p| p.isr.len() == 3,
    )
    .await;

    stop.store(true, Ordering::Release);
    let attempts = pubs.await.unwrap();
    let acked = acked.lock().clone();
    assert!(acked.len() >= 120, "{} acked of {attempts}", acked.len());

    // Every replica holds the same log, and every acked message once, at its acked offset.
    let p = settled(&cluster).await;
    let (_, leader_port) = cluster
        .ports()
        .into_iter()
        .find(|(id, _)| *id == p.leader)
        .unwrap();
    let mut lc = client(leader_port).await.unwrap();
    let hw = lc
        .fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: STREAM.into(),
            partition: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap()
        .high_watermark;
    let logs: Vec<(String, Vec<(i64, String)>)> = {
        let mut v = Vec::new();
        for (id, port) in cluster.ports() {
            v.push((id, replica_log(port, hw).await));
        }
        v
    };
    let (first_id, reference) = &logs[0];
    let offsets: Vec<i64> = reference.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..=hw).collect::<Vec<i64>>(),
        "offsets without gaps"
    );
    for (id, log) in &logs[1..] {
        assert_eq!(
            &log[..=hw as usize],
            &reference[..=hw as usize],
            "{id} and {first_id} differ"
        );
    }
    let mut seen: HashMap<&str, i64> = HashMap::new();
    for (o, v) in reference {
        assert!(seen.insert(v, *o).is_none(), "{v} appears twice");
    }
    for (v, o) in &acked {
        assert_eq!(seen.get(v.as_str()), Some(o), "acked {v} at {o}");
    }
    drop(cluster);
}
