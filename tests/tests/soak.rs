//! A soak of the publish and subscribe paths, to run before changing them. Not in the default
//! suite: it runs only with `LIFTBRIDGE_SOAK=<seconds>` (and `LIFTBRIDGE_SOAK_SEED=<n>` to
//! repeat a run), e.g. `LIFTBRIDGE_SOAK=120 cargo nextest run -p liftbridge-tests --test soak`.
//!
//! Three brokers, a stream of two partitions replicated three times. Several PublishAsync
//! sessions publish unique values with random ack policies, each to a random broker;
//! subscribers read from random start offsets to random stop offsets; meanwhile partitions are
//! paused (the next publish resumes them) and brokers other than the seed are stopped and
//! started again, so leadership moves. Every message's outcome is recorded: acked (partition
//! and offset), refused (code and message), or no answer (a timeout, or its session was lost).
//!
//! The checker, at the end:
//! - every acked message is in the log exactly once, at the partition and offset of its ack;
//! - no message refused as not stored (read-only, not found, bad request, "not stored") is in
//!   the log; a message without an answer may be (docs/reliability.md: a leader lost after
//!   storing and before acking), and the count is printed;
//! - every subscriber saw consecutive offsets from its start, without duplicates, up to its
//!   stop or an error that says why it ended;
//! - the process's resident memory stayed below [`RSS_BOUND`];
//! - meanwhile two consumer-group members join and leave (closing or dying) over and over, and
//!   every move back of the group's cursors is printed (see the checker's comment).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::cluster::Cluster;
use common::*;
use futures_util::StreamExt;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use tonic::transport::Channel;

type Shared<T> = Arc<std::sync::Mutex<T>>;
/// Per correlation id: the ack policy, the first answer, and any later ones.
type Outcomes = Shared<HashMap<String, (i32, Outcome, Vec<Outcome>)>>;

/// The bound on the test process's resident memory (three brokers and their clients).
const RSS_BOUND: u64 = 2 << 30;
const PARTITIONS: i32 = 2;
const PUBLISHERS: usize = 4;
const SUBSCRIBERS: usize = 3;

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Acked(i32, i64),
    Refused(i32, String),
    NoAnswer,
}

/// xorshift64*: enough for choosing actions, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn connect_any(addrs: &Shared<Vec<String>>, rng: &mut Rng) -> Option<ApiClient<Channel>> {
    let list = addrs.lock().unwrap().clone();
    if list.is_empty() {
        return None;
    }
    let addr = &list[rng.below(list.len() as u64) as usize];
    let connect = ApiClient::connect(format!("http://{addr}"));
    tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()
}

/// A client of the partition's leader, as a live broker's metadata names it.
async fn leader_of(addrs: &Shared<Vec<String>>, partition: i32) -> Option<ApiClient<Channel>> {
    let list = addrs.lock().unwrap().clone();
    for addr in list {
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(2),
            ApiClient::connect(format!("http://{addr}")),
        )
        .await
        else {
            continue;
        };
        let Ok(md) = c
            .fetch_metadata(FetchMetadataRequest {
                streams: vec!["soak".into()],
                ..Default::default()
            })
            .await
        else {
            continue;
        };
        let md = md.into_inner();
        let leader = md
            .stream_metadata
            .first()
            .and_then(|s| s.partitions.get(&partition))
            .map(|p| p.leader.clone())?;
        let b = md.brokers.iter().find(|b| b.id == leader)?;
        let connect = ApiClient::connect(format!("http://{}:{}", b.host, b.port));
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            return Some(c);
        }
    }
    None
}

/// One publisher: sessions to random brokers, one after another, until `stop`.
async fn publisher(
    id: usize,
    seed: u64,
    addrs: Shared<Vec<String>>,
    stop: Arc<AtomicBool>,
    outcomes: Outcomes,
) {
    let mut rng = Rng(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(mut c) = connect_any(&addrs, &mut rng).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(64);
        let input =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let Ok(out) = c.publish_async(input).await else {
            continue;
        };
        let mut out = out.into_inner();
        let mut pending: HashMap<String, i32> = HashMap::new();
        // A session lasts a random number of messages.
        let burst = 50 + rng.below(2000);
        for _ in 0..burst {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let policy = match rng.below(3) {
                0 => AckPolicy::Leader,
                1 => AckPolicy::All,
                _ => AckPolicy::None,
            };
            let cid = format!("p{id}-{n}");
            n += 1;
            let r = PublishRequest {
                stream: "soak".into(),
                partition: rng.below(PARTITIONS as u64) as i32,
                value: cid.clone().into(),
                correlation_id: cid.clone(),
                ack_policy: policy as i32,
                expected_offset: -1,
                ..Default::default()
            };
            outcomes
                .lock()
                .unwrap()
                .insert(cid.clone(), (policy as i32, Outcome::NoAnswer, Vec::new()));
            if policy != AckPolicy::None {
                pending.insert(cid, r.partition);
            }
            if tx.send(r).await.is_err() {
                break;
            }
            // Read what is there, without waiting.
            while let Some(Some(Ok(resp))) = futures_util::FutureExt::now_or_never(out.next()) {
                record(&outcomes, &mut pending, resp);
            }
        }
        drop(tx);
        // The session's answers, until it ends (it waits for its outstanding acks).
        while let Ok(Some(Ok(resp))) =
            tokio::time::timeout(Duration::from_secs(15), out.next()).await
        {
            record(&outcomes, &mut pending, resp);
        }
    }
}

fn record(outcomes: &Outcomes, pending: &mut HashMap<String, i32>, resp: PublishResponse) {
    let cid = resp.correlation_id.clone();
    let outcome = match (&resp.async_error, &resp.ack) {
        (Some(e), _) => Outcome::Refused(e.code, e.message.clone()),
        (None, Some(a)) => Outcome::Acked(pending.get(&cid).copied().unwrap_or(-1), a.offset),
        (None, None) => return,
    };
    let mut outcomes = outcomes.lock().unwrap();
    if let Some(entry) = outcomes.get_mut(&cid) {
        if entry.1 == Outcome::NoAnswer {
            entry.1 = outcome;
        } else {
            // A second answer: kept apart, judged by the checker.
            entry.2.push(outcome);
        }
    }
}

/// One subscriber: subscriptions from random offsets to random stops, until `stop`. Returns
/// what it found wrong.
async fn subscriber(seed: u64, addrs: Shared<Vec<String>>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut wrong = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let partition = rng.below(PARTITIONS as u64) as i32;
        let Some(mut c) = leader_of(&addrs, partition).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let newest = match c
            .fetch_partition_metadata(FetchPartitionMetadataRequest {
                stream: "soak".into(),
                partition,
            })
            .await
        {
            Ok(r) => r.into_inner().metadata.map_or(-1, |m| m.high_watermark),
            Err(_) => continue,
        };
        let start = rng.below((newest + 1).max(1) as u64) as i64;
        let mut req = sub("soak", StartPosition::Offset);
        req.partition = partition;
        req.start_offset = start;
        let stop_at = (rng.below(2) == 0).then(|| start + rng.below(500) as i64);
        if let Some(s) = stop_at {
            req.stop_position = StopPosition::StopOffset as i32;
            req.stop_offset = s;
        }
        let Ok(s) = c.subscribe(req).await else {
            continue;
        };
        let mut s = s.into_inner();
        let mut expected: Option<i64> = None;
        let mut first = true;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), s.next()).await {
                // Quiet: nothing more for now.
                Err(_) => break,
                Ok(None) => {
                    if stop_at.is_some() {
                        wrong.push(format!("p{partition} from {start}: ended without a reason"));
                    }
                    break;
                }
                // An error says why it ended (the stop, a pause, a leader change).
                Ok(Some(Err(_))) => break,
                Ok(Some(Ok(m))) if first => {
                    first = false;
                    if m != Message::default() {
                        wrong.push(format!("p{partition}: no handshake first"));
                        break;
                    }
                }
                Ok(Some(Ok(m))) => {
                    let want = expected.unwrap_or(start);
                    if m.offset != want {
                        wrong.push(format!(
                            "p{partition} from {start}: offset {} where {want} was due",
                            m.offset
                        ));
                        break;
                    }
                    if stop_at.is_some_and(|s| m.offset > s) {
                        wrong.push(format!("p{partition}: offset {} past the stop", m.offset));
                        break;
                    }
                    expected = Some(m.offset + 1);
                }
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
    }
    wrong
}

/// A consumer-group member of `liftbridge-client` that joins, reads for a while, and leaves
/// (closing, or dying without a word), again and again until `stop`.
async fn group_member(id: usize, seed: u64, addrs: Shared<Vec<String>>, stop: Arc<AtomicBool>) {
    use liftbridge_client as lc;
    let mut rng = Rng(seed);
    let mut round = 0;
    while !stop.load(Ordering::SeqCst) {
        let list = addrs.lock().unwrap().clone();
        let Ok(client) = lc::Client::connect(list).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        round += 1;
        let member = client
            .consumer("soakg")
            .id(format!("m{id}-{round}"))
            .auto_offset(lc::AutoOffset::Earliest)
            .auto_commit(Some(Duration::from_millis(200)))
            .fetch_interval(Duration::from_millis(200))
            .subscribe(["soak"])
            .await;
        let Ok(mut member) = member else {
            client.close();
            continue;
        };
        let until = tokio::time::Instant::now() + Duration::from_millis(1000 + rng.below(3000));
        while tokio::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_millis(100), member.next()).await;
        }
        if rng.below(2) == 0 {
            let _ = member.close().await;
        } else {
            drop(member);
        }
        client.close();
    }
}

/// Watches the group's cursors until `stop`; returns every move back it saw.
async fn cursor_watch(addrs: Shared<Vec<String>>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut back = Vec::new();
    let mut last = [-1i64; PARTITIONS as usize];
    let mut rng = Rng(7);
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(mut c) = connect_any(&addrs, &mut rng).await else {
            continue;
        };
        for p in 0..PARTITIONS {
            let Ok(r) = c
                .fetch_cursor(FetchCursorRequest {
                    stream: "soak".into(),
                    partition: p,
                    cursor_id: "__group:soakg".into(),
                })
                .await
            else {
                continue;
            };
            let o = r.into_inner().offset;
            if o < last[p as usize] {
                back.push(format!("p{p}: {} -> {o}", last[p as usize]));
            }
            last[p as usize] = last[p as usize].max(o);
        }
    }
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let Some(secs) = std::env::var("LIFTBRIDGE_SOAK")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let seed = std::env::var("LIFTBRIDGE_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("soak: {secs} s, LIFTBRIDGE_SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    // The cursors stream, which groups need, replicated as the stream is.
    let mut cluster = Cluster::start_with(|cfg| {
        cfg.broker.cursors.partitions = 1;
        cfg.broker.cursors.replication_factor = 3;
    })
    .await;
    let mut a = cluster.client("a").await;
    let mut req = stream("soak", "soak");
    req.replication_factor = 3;
    req.partitions = PARTITIONS;
    a.create_stream(req).await.unwrap();
    cluster
        .partition_until("soak", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;

    let addrs: Shared<Vec<String>> = Arc::new(std::sync::Mutex::new(cluster.grpc_addrs()));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Outcomes = Arc::default();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            tokio::spawn(publisher(
                i,
                rng.next() | 1,
                addrs.clone(),
                stop.clone(),
                outcomes.clone(),
            ))
        })
        .collect();
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| tokio::spawn(subscriber(rng.next() | 1, addrs.clone(), stop.clone())))
        .collect();
    let members: Vec<_> = (0..2)
        .map(|i| tokio::spawn(group_member(i, rng.next() | 1, addrs.clone(), stop.clone())))
        .collect();
    let cursors = tokio::spawn(cursor_watch(addrs.clone(), stop.clone()));

    // Faults until the deadline: pauses, and brokers stopped and started again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut most_rss = 0;
    let mut actions = Vec::new();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
        most_rss = most_rss.max(rss());
        match rng.below(4) {
            0 => {
                let p = rng.below(PARTITIONS as u64) as i32;
                if let Some(mut c) = connect_any(&addrs, &mut rng).await {
                    let r = c
                        .pause_stream(PauseStreamRequest {
                            name: "soak".into(),
                            partitions: vec![p],
                            resume_all: false,
                        })
                        .await;
                    actions.push(format!("pause p{p}: {}", r.is_ok()));
                }
            }
            1 if cluster.live().len() == 3 => {
                let id = if rng.below(2) == 0 { "b" } else { "c" };
                cluster.stop_node(id).await;
                *addrs.lock().unwrap() = cluster.grpc_addrs();
                actions.push(format!("stop {id}"));
            }
            _ if cluster.live().len() < 3 => {
                for id in ["b", "c"] {
                    if !cluster.live().iter().any(|l| l == id) {
                        cluster.start_node(id).await;
                        actions.push(format!("start {id}"));
                    }
                }
                *addrs.lock().unwrap() = cluster.grpc_addrs();
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    for id in ["b", "c"] {
        if !cluster.live().iter().any(|l| l == id) {
            cluster.start_node(id).await;
        }
    }
    *addrs.lock().unwrap() = cluster.grpc_addrs();
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("publishers end")
            .unwrap();
    }
    let mut wrong = Vec::new();
    for s in subscribers {
        wrong.extend(
            tokio::time::timeout(Duration::from_secs(60), s)
                .await
                .expect("subscribers end")
                .unwrap(),
        );
    }
    for m in members {
        tokio::time::timeout(Duration::from_secs(60), m)
            .await
            .expect("group members end")
            .unwrap();
    }
    let cursor_back = cursors.await.unwrap();
    eprintln!("soak actions: {actions:?}");

    // The logs, read whole from each partition's leader once everything is in sync.
    cluster
        .partition_until("soak", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut stored: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for p in 0..PARTITIONS {
        let mut c = leader_of(&addrs, p).await.expect("a leader");
        let mut r = sub("soak", StartPosition::Earliest);
        r.partition = p;
        r.stop_position = StopPosition::StopLatest as i32;
        let Ok(mut s) = subscribe(&mut c, r).await else {
            continue; // an empty partition
        };
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            let v = String::from_utf8_lossy(&m.value).into_owned();
            stored.entry(v).or_default().push((p, m.offset));
        }
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let (mut acked, mut refused, mut unanswered, mut unanswered_stored) = (0, 0, 0, 0);
    // LEADER acks that a leader change made wrong: the old leader acked a write it had not
    // replicated (so it was cut), while the new leader also received and stored the message.
    let mut leader_acks_moved = Vec::new();
    for (cid, (policy, outcome, later)) in &outcomes {
        let at = stored.get(cid).cloned().unwrap_or_default();
        if at.len() > 1 {
            wrong.push(format!("{cid} stored {} times: {at:?}", at.len()));
        }
        let all = *policy == AckPolicy::All as i32;
        for o in later {
            let seen = format!("{cid} answered twice: {outcome:?}, then {o:?}; stored at {at:?}");
            if all {
                wrong.push(seen);
            } else {
                leader_acks_moved.push(seen);
            }
        }
        match outcome {
            Outcome::Acked(p, o) => {
                acked += 1;
                if at != [(*p, *o)] {
                    let seen = format!("{cid} acked at p{p} o{o}, stored at {at:?}");
                    if all {
                        wrong.push(seen);
                    } else {
                        leader_acks_moved.push(seen);
                    }
                }
            }
            Outcome::Refused(code, message) => {
                refused += 1;
                let not_stored = [
                    publish_async_error::Code::Readonly as i32,
                    publish_async_error::Code::NotFound as i32,
                    publish_async_error::Code::BadRequest as i32,
                ]
                .contains(code)
                    || message.contains("not stored")
                    || message.contains("before the message was stored");
                if not_stored && !at.is_empty() {
                    wrong.push(format!(
                        "{cid} refused ({code} {message}) but stored at {at:?}"
                    ));
                }
            }
            // Ack policy NONE: no answer is the answer.
            Outcome::NoAnswer if *policy == AckPolicy::None as i32 => {}
            Outcome::NoAnswer => {
                unanswered += 1;
                unanswered_stored += usize::from(!at.is_empty());
            }
        }
    }
    // A member commits only for partitions it holds as far as it knows; in the one poll
    // interval before it learns that a partition moved, a commit of its can still land after
    // the new owner's (docs/reliability.md): seen, and printed.
    if !cursor_back.is_empty() {
        eprintln!(
            "soak: the group cursor moved back {} times: {cursor_back:?}",
            cursor_back.len()
        );
    }
    if !leader_acks_moved.is_empty() {
        eprintln!(
            "soak: {} LEADER acks did not hold across leader changes, e.g. {:?}",
            leader_acks_moved.len(),
            leader_acks_moved.iter().take(5).collect::<Vec<_>>()
        );
    }
    eprintln!(
        "soak: {} messages: {acked} acked, {refused} refused, {unanswered} without an answer \
         ({unanswered_stored} of them stored); most RSS {} MiB",
        outcomes.len(),
        most_rss >> 20
    );
    assert!(acked > 0, "nothing was acked");
    assert!(
        most_rss < RSS_BOUND,
        "resident memory reached {most_rss} bytes"
    );
    assert!(wrong.is_empty(), "{} violations: {wrong:#?}", wrong.len());
    cluster.stop().await;
}
