//! A rolling restart loses nothing: three brokers, publishers with ack policy ALL that retry as
//! an application would, and each broker stopped in turn (the SIGTERM path: hand-off, then a
//! clean stop) and started again. Every acked message is in the stream, every publish
//! eventually succeeds, and every replica ends identical.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use futures_util::StreamExt;
use liftbridge_proto::api::*;
use tonic::Code;

const STREAM: &str = "rolling";
const PARTITIONS: i32 = 3;

/// Waits until every partition of the stream has a leader and all three replicas in sync, as
/// the metadata leader (reached through `via`) sees it.
async fn fully_in_sync(cluster: &Cluster, via: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        let mut c = cluster.client(via).await;
        if let Ok(md) = c
            .fetch_metadata(FetchMetadataRequest {
                streams: vec![STREAM.into()],
                ..Default::default()
            })
            .await
        {
            let md = md.into_inner();
            if let Some(s) = md.stream_metadata.first() {
                let ok = s.partitions.len() == PARTITIONS as usize
                    && s.partitions
                        .values()
                        .all(|p| !p.leader.is_empty() && p.isr.len() == 3);
                if ok {
                    return;
                }
                last = Some(s.partitions.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the stream never was fully in sync; last seen {last:?}");
}

/// A publisher: values `<tag>-<n>` in order, ack policy ALL, each retried (with a metadata
/// refresh) until acked. Returns the acked values and the number of retries.
async fn publisher(
    client: liftbridge_client::Client,
    tag: String,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicUsize>,
) -> (Vec<String>, usize) {
    let mut acked = Vec::new();
    let mut retries = 0;
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let value = format!("{tag}-{n}");
        let opts = liftbridge_client::PublishOptions::default()
            .partition(n % PARTITIONS)
            .ack_policy(liftbridge_client::AckPolicy::All)
            .ack_wait(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.publish(STREAM, value.clone(), opts.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{value} was never acked; last error: {e}"
                    );
                    retries += 1;
                    let _ = client.refresh_metadata().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        acked.push(value);
        acked_total.fetch_add(1, Ordering::Relaxed);
    }
    (acked, retries)
}

/// Waits until the publishers have had `more` acks beyond `from`.
async fn acks_grow(acked: &AtomicUsize, from: usize, more: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < from + more {
        assert!(
            Instant::now() < deadline,
            "publishing stalled at {} acks",
            acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything committed in one partition as broker `id` serves it (leader or ISR follower).
async fn replica_contents(cluster: &Cluster, id: &str, partition: i32) -> Vec<(i64, Vec<u8>)> {
    let mut c = cluster.client(id).await;
    let mut req = sub(STREAM, StartPosition::Earliest);
    req.partition = partition;
    req.read_isr_replica = true;
    req.stop_position = StopPosition::StopLatest as i32;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match subscribe(&mut c, req.clone()).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reading partition {partition} on {id}: {e}"),
        }
    };
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(Ok(m))) => out.push((m.offset, m.value.to_vec())),
            // The stop position was reached.
            Ok(Some(Err(e))) if e.code() == Code::ResourceExhausted => return out,
            Ok(None) => return out,
            Ok(Some(Err(e))) => panic!("reading partition {partition} on {id}: {e}"),
            Err(_) => panic!("reading partition {partition} on {id} stalled"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_acked_message_and_every_publish_succeeds() {
    let mut cluster = Cluster::start_with(|c| {
        c.broker.handoff_timeout = Duration::from_secs(10);
        // Long enough that only the stopping broker itself can take it out of the ISRs
        // before the check below.
        c.broker.replica.max_lag_time = Duration::from_secs(30);
    })
    .await;
    let mut c = cluster.client("a").await;
    let mut req = stream(STREAM, STREAM);
    req.partitions = PARTITIONS;
    req.replication_factor = 3;
    c.create_stream(with_deadline(req)).await.unwrap();
    fully_in_sync(&cluster, "a").await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for p in 0..2 {
        let client = liftbridge_client::Client::connect(cluster.grpc_addrs())
            .await
            .unwrap();
        publishers.push(tokio::spawn(publisher(
            client,
            format!("p{p}"),
            stop.clone(),
            acked.clone(),
        )));
    }
    acks_grow(&acked, 0, 50).await;

    for id in ["a", "b", "c"] {
        let running = cluster
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .and_then(|n| n.running.take())
            .expect("running");
        // What SIGTERM runs: the hand-off, then the clean stop (which hands off again, finding
        // nothing left to move).
        let handed = running.broker().hand_off().await;
        assert!(
            handed.partitions_kept.is_empty(),
            "{id} kept leading {:?}",
            handed.partitions_kept
        );
        assert!(handed.metadata_moved, "{id} still leads the metadata group");
        running.shutdown().await;
        // The stopped broker left every ISR at once, as the metadata leader sees it.
        let others: Vec<String> = cluster.live();
        let leader_view = cluster
            .nodes
            .iter()
            .filter_map(|n| n.running.as_ref())
            .find(|r| r.broker().metadata().is_leader())
            .map(|r| {
                r.broker().metadata().with_state(|f| {
                    f.stream(STREAM)
                        .map(|s| {
                            s.partitions
                                .values()
                                .map(|p| (p.leader.clone(), p.isr.clone()))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                })
            })
            .expect("a live broker leads the metadata group");
        assert_eq!(leader_view.len(), PARTITIONS as usize);
        for (leader, isr) in leader_view {
            assert_ne!(leader, id, "{id} still leads after stopping");
            assert!(
                !isr.contains(&id.to_owned()),
                "{id} is still in an ISR: {isr:?}"
            );
        }
        // Publishing goes on without it.
        let now = acked.load(Ordering::Relaxed);
        acks_grow(&acked, now, 30).await;
        cluster.start_node(id).await;
        fully_in_sync(&cluster, &others[0]).await;
        let now = acked.load(Ordering::Relaxed);
        acks_grow(&acked, now, 30).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut all_acked = BTreeSet::new();
    let mut retries = 0;
    for p in publishers {
        let (values, r) = p.await.expect("the publisher finished");
        retries += r;
        all_acked.extend(values);
    }
    eprintln!(
        "rolling restart: {} publishes acked, {retries} needed a retry",
        all_acked.len()
    );

    // Every replica of every partition ends identical, and holds every acked value.
    let mut stored = BTreeSet::new();
    for partition in 0..PARTITIONS {
        let deadline = Instant::now() + Duration::from_secs(30);
        let contents = loop {
            let mut seen = Vec::new();
            for id in ["a", "b", "c"] {
                seen.push(replica_contents(&cluster, id, partition).await);
            }
            if seen.iter().all(|s| *s == seen[0]) {
                break seen.swap_remove(0);
            }
            // Followers' high watermarks may trail the leader's by a fetch.
            assert!(
                Instant::now() < deadline,
                "the replicas of partition {partition} differ: {:?}",
                seen.iter().map(Vec::len).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for (i, (offset, _)) in contents.iter().enumerate() {
            assert_eq!(*offset, i as i64, "a gap in partition {partition}");
        }
        stored.extend(
            contents
                .into_iter()
                .map(|(_, v)| String::from_utf8(v).expect("UTF-8")),
        );
    }
    let lost: Vec<&String> = all_acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acked but not stored: {lost:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_coordinator_hands_its_consumer_group_to_another_broker() {
    let mut cluster = Cluster::start_with(|c| {
        c.broker.handoff_timeout = Duration::from_secs(10);
        c.broker.cursors.partitions = 1;
        // The member below does not poll; it must not expire during the test.
        c.broker.groups.consumer_timeout = Duration::from_secs(300);
    })
    .await;
    let mut c = cluster.client("a").await;
    let mut req = stream(STREAM, STREAM);
    req.replication_factor = 3;
    c.create_stream(with_deadline(req)).await.unwrap();
    let joined = c
        .join_consumer_group(JoinConsumerGroupRequest {
            group_id: "g".into(),
            consumer_id: "m1".into(),
            streams: vec![STREAM.into()],
        })
        .await
        .unwrap()
        .into_inner();
    let old = joined.coordinator.clone();

    // A client cannot send the coordinator's own resignation.
    let forged = c
        .report_consumer_group_coordinator(ReportConsumerGroupCoordinatorRequest {
            group_id: "g".into(),
            consumer_id: old.clone(),
            coordinator: old.clone(),
            epoch: joined.epoch,
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);

    let running = cluster
        .nodes
        .iter_mut()
        .find(|n| n.id == old)
        .and_then(|n| n.running.take())
        .expect("running");
    let handed = running.broker().hand_off().await;
    assert_eq!(handed.groups_moved, 1, "{handed:?}");
    let group = running
        .broker()
        .metadata()
        .with_state(|f| f.groups().get("g").cloned())
        .expect("the group");
    assert_ne!(group.coordinator, old);
    assert!(group.epoch > joined.epoch);
    assert!(group.members.contains_key("m1"), "the member stays");
    running.shutdown().await;
    cluster.stop().await;
}
