//! Replicated partitions across three in-process brokers on a standalone NATS server: followers
//! copy the leader's log, acks with policy ALL wait for every in-sync replica, followers serve
//! committed reads, and a leader that goes away is replaced by an in-sync follower without losing
//! an acknowledged message.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::groups::{OnError, drain, group_md, settled};
use common::*;
use futures_util::StreamExt;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use tonic::Code;
use tonic::transport::Channel;

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

/// Subscribes, retrying (as clients do) while the server answers `Unavailable` because its
/// replica is still opening, which happens right after a stream is created or a leader moves.
async fn subscribe_when_open(
    c: &mut ApiClient<Channel>,
    req: SubscribeRequest,
) -> tonic::Streaming<Message> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match subscribe(c, req.clone()).await {
            Ok(s) => return s,
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("subscribing to {}: {e:?}", req.stream),
        }
    }
}

/// Reads offsets 0..n as committed on broker `c` (the leader, or an ISR follower).
async fn read_from(c: &mut ApiClient<Channel>, stream: &str, n: usize) -> Vec<(i64, String)> {
    let mut req = sub(stream, StartPosition::Earliest);
    req.read_isr_replica = true;
    let mut s = subscribe_when_open(c, req).await;
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

    // Placement by load: two more such streams spread replicas and leaders evenly.
    a.create_stream(create("pair2", 2)).await.unwrap();
    a.create_stream(create("pair3", 2)).await.unwrap();
    let md = a
        .fetch_metadata(FetchMetadataRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut leaders = Vec::new();
    let mut held: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &md.stream_metadata {
        let p = &s.partitions[&0];
        leaders.push(p.leader.clone());
        for r in &p.replicas {
            *held.entry(r.clone()).or_default() += 1;
        }
    }
    leaders.sort();
    assert_eq!(leaders, vec!["a", "b", "c"], "one leader each");
    assert_eq!(held.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
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
    cluster
        .partition_until(
            "events",
            "the old leader out, both others in the ISR",
            |p| !p.isr.contains(&old) && p.isr.len() == 2,
        )
        .await;
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

/// A publish with policy `policy` that must be acked within `wait`.
async fn try_publish(
    c: &mut ApiClient<Channel>,
    stream: &str,
    value: &str,
    policy: AckPolicy,
    wait: Duration,
) -> Result<Ack, tonic::Status> {
    let mut req = tonic::Request::new(PublishRequest {
        stream: stream.into(),
        value: value.to_owned().into(),
        ack_policy: policy as i32,
        expected_offset: -1,
        ..Default::default()
    });
    req.set_timeout(wait);
    c.publish(req)
        .await
        .map(|r| r.into_inner().ack.expect("an ack"))
}

/// The replica of the partition that does not lead it, among `p`'s ISR.
fn a_follower(p: &PartitionMetadata) -> String {
    p.isr
        .iter()
        .find(|r| **r != p.leader)
        .expect("a follower in the ISR")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_with_policy_all_resume_once_a_dead_follower_leaves_the_isr() {
    let mut cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("shrink", 3)).await.unwrap();
    let p = cluster
        .partition_until("shrink", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    publish_all(&mut leader, "shrink", &values("x", 5)).await;
    let gone = a_follower(&p);
    cluster.stop_node(&gone).await;
    // Committed once the ISR no longer waits for the stopped follower.
    let offsets = publish_all(&mut leader, "shrink", &values("y", 5)).await;
    assert_eq!(offsets, (5..10).collect::<Vec<i64>>());
    cluster
        .partition_until("shrink", "the stopped follower out of the ISR", |p| {
            !p.isr.contains(&gone)
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_leader_acks_at_once_while_policy_all_waits_for_a_dead_follower() {
    // A follower stays in the ISR for a minute after it stops.
    let mut cluster = Cluster::start_with(|c| {
        c.broker.replica.max_lag_time = Duration::from_secs(60);
        c.broker.replica.max_leader_timeout = Duration::from_secs(60);
    })
    .await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("dead", 3)).await.unwrap();
    let p = cluster
        .partition_until("dead", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    cluster.stop_node(&a_follower(&p)).await;
    let ack = try_publish(
        &mut leader,
        "dead",
        "leader",
        AckPolicy::Leader,
        Duration::from_secs(10),
    )
    .await
    .expect("a LEADER ack despite the dead follower");
    assert_eq!(ack.offset, 0);
    let err = try_publish(
        &mut leader,
        "dead",
        "all",
        AckPolicy::All,
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    // Not acked: the server's deadline or the client's own ends the wait.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // Neither message is committed: the high watermark waits for the follower.
    assert_eq!(
        partition_md(&mut leader, "dead", 0).await.high_watermark,
        -1
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_follower_is_woken_by_new_data() {
    // Without the leader's notification, a follower would wait a minute between fetches.
    let cluster = Cluster::start_with(|c| {
        c.broker.replica.max_idle_wait = Duration::from_secs(60);
        c.broker.replica.max_leader_timeout = Duration::from_secs(120);
    })
    .await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("quiet", 2)).await.unwrap();
    let p = cluster
        .partition_until("quiet", "two in-sync replicas", |p| p.isr.len() == 2)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    // Let the follower find nothing and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&mut leader, "quiet", "wake up").await;
    let mut follower = cluster.client(&a_follower(&p)).await;
    assert_eq!(
        read_from(&mut follower, "quiet", 1).await,
        vec![(0, "wake up".to_string())]
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_isr_nothing_commits_until_the_follower_returns() {
    let mut cluster = Cluster::start_with(|c| c.broker.min_insync_replicas = 2).await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("strict", 2)).await.unwrap();
    let p = cluster
        .partition_until("strict", "two in-sync replicas", |p| p.isr.len() == 2)
        .await;
    let leader_id = p.leader.clone();
    let follower_id = a_follower(&p);
    let mut leader = cluster.client(&leader_id).await;
    publish_all(&mut leader, "strict", &values("c", 3)).await;
    cluster.stop_node(&follower_id).await;
    cluster
        .partition_until("strict", "the follower out of the ISR", |p| {
            p.isr.len() == 1
        })
        .await;
    // Appended and acked by the leader, but not committed with one in-sync replica.
    for v in values("u", 3) {
        try_publish(
            &mut leader,
            "strict",
            &v,
            AckPolicy::Leader,
            Duration::from_secs(10),
        )
        .await
        .expect("a LEADER ack");
    }
    assert_eq!(
        partition_md(&mut leader, "strict", 0).await.high_watermark,
        2
    );
    // The leader restarts, then the follower returns: everything commits.
    cluster.stop_node(&leader_id).await;
    cluster.start_node(&leader_id).await;
    cluster.start_node(&follower_id).await;
    cluster
        .partition_until("strict", "both replicas in the ISR", |p| p.isr.len() == 2)
        .await;
    let mut leader = cluster.client(&leader_id).await;
    let all: Vec<String> = values("c", 3).into_iter().chain(values("u", 3)).collect();
    let expected: Vec<(i64, String)> = (0..6).zip(all).collect();
    assert_eq!(read_from(&mut leader, "strict", 6).await, expected);
    cluster.stop().await;
}

/// A leader restarted before anyone failed it over may have lost records it never synced
/// (the default sync policy) that its followers copied; writing again at the same epoch would
/// let them keep those. It does not take writes at its old epoch: the partition moves to a new
/// epoch, on an in-sync follower (which holds everything acked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_does_not_write_at_its_old_epoch() {
    let mut cluster = Cluster::start_with(|c| {
        // No failover while it is away.
        c.broker.replica.max_leader_timeout = Duration::from_secs(120);
    })
    .await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("again", 3)).await.unwrap();
    let p = cluster
        .partition_until("again", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    publish_all(&mut leader, "again", &values("one", 3)).await;
    let generation = |cluster: &Cluster, on: &str| {
        let running = cluster.node(on).running.as_ref().expect("running");
        running.broker().metadata().with_state(|f| {
            f.partition("again", 0)
                .map(|p| (p.leader.clone(), p.leader_epoch))
        })
    };
    let other = a_follower(&p);
    let (old, epoch) = generation(&cluster, &other).expect("the partition");
    cluster.stop_node(&old).await;
    cluster.start_node(&old).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let now = generation(&cluster, &other).expect("the partition");
        if now.1 > epoch {
            break now.0;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted leader still leads at epoch {epoch}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(new, old, "an in-sync follower took over");
    // The partition takes writes again once it runs at the new epoch (a publish before that
    // reaches no subscriber and times out, as during any leader change: the client retries).
    let mut leader = cluster.client(&new).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    let value = loop {
        let value = format!("two-{attempt}");
        let mut req = tonic::Request::new(PublishRequest {
            stream: "again".into(),
            value: value.clone().into(),
            ack_policy: AckPolicy::All as i32,
            expected_offset: -1,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(2));
        if let Ok(r) = leader.publish(req).await {
            assert_eq!(r.into_inner().ack.expect("an ack").offset, 3);
            break value;
        }
        assert!(
            Instant::now() < deadline,
            "no publish acked at the new epoch"
        );
        attempt += 1;
    };
    let got = read_from(&mut leader, "again", 4).await;
    let one: Vec<(i64, String)> = (0..3).zip(values("one", 3)).collect();
    assert_eq!((&got[..3], &got[3]), (&one[..], &(3, value)));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_that_restart_and_take_over_at_once_keep_acked_messages() {
    let mut cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("fast", 3)).await.unwrap();
    let p = cluster
        .partition_until("fast", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    publish_all(&mut leader, "fast", &values("k", 2)).await;
    // Both followers restart, then the leader goes away at once.
    for f in p.isr.iter().filter(|r| **r != p.leader) {
        cluster.stop_node(f).await;
        cluster.start_node(f).await;
    }
    let old = p.leader.clone();
    cluster.stop_node(&old).await;
    let p = cluster
        .partition_until("fast", "a new leader", |p| {
            !p.leader.is_empty() && p.leader != old
        })
        .await;
    let mut leader = cluster.client(&p.leader).await;
    let expected: Vec<(i64, String)> = (0..2).zip(values("k", 2)).collect();
    assert_eq!(read_from(&mut leader, "fast", 2).await, expected);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_move_to_the_new_leader_after_a_failover() {
    use liftbridge_client as lc;
    let mut cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("moving", 3)).await.unwrap();
    let p = cluster
        .partition_until("moving", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let addrs = cluster.grpc_addrs();
    let client = lc::Client::builder(addrs.iter().map(String::as_str))
        .resubscribe_wait(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let mut from_leader = client
        .subscribe(
            "moving",
            lc::SubscribeOptions::default().start(lc::StartAt::Earliest),
        )
        .await
        .unwrap();
    // A raw subscription on a follower, to see the error the client hides.
    let follower = a_follower(&p);
    let mut f = cluster.client(&follower).await;
    let mut req = sub("moving", StartPosition::Earliest);
    req.read_isr_replica = true;
    // The follower may not have opened its replica yet, though the metadata lists it.
    let mut on_follower = subscribe_when_open(&mut f, req).await;

    let mut leader = cluster.client(&p.leader).await;
    publish_all(&mut leader, "moving", &values("one", 3)).await;
    for i in 0..3 {
        let m = next(&mut on_follower).await.unwrap();
        assert_eq!(m.offset, i);
        let m = tokio::time::timeout(Duration::from_secs(10), from_leader.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.offset, m.value.as_ref()),
            (i, format!("one-{i}").as_bytes())
        );
    }

    let old = p.leader.clone();
    cluster.stop_node(&old).await;
    let p = cluster
        .partition_until("moving", "a new leader", |p| {
            !p.leader.is_empty() && p.leader != old
        })
        .await;
    // The follower's partition runs again under the new leader: its subscribers are told to
    // subscribe again, with a code clients retry on.
    let err = next(&mut on_follower).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let mut leader = cluster.client(&p.leader).await;
    publish_all(&mut leader, "moving", &values("two", 3)).await;
    // The client's subscription found the new leader and goes on from where it was.
    for i in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(30), from_leader.next())
            .await
            .expect("the subscription resumed in time")
            .expect("it did not end")
            .expect("a message");
        assert_eq!(
            (m.offset, m.value.as_ref()),
            (3 + i, format!("two-{i}").as_bytes())
        );
    }
    client.close();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_apply_retention_as_the_leader_does() {
    let cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    let mut req = create("kept", 3);
    // Small segments, ten messages kept, the cleaner every 100 ms.
    req.segment_max_bytes = Some(NullableInt64 { value: 1024 });
    req.retention_max_messages = Some(NullableInt64 { value: 10 });
    req.cleaner_interval = Some(NullableInt64 { value: 100 });
    a.create_stream(req).await.unwrap();
    let p = cluster
        .partition_until("kept", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    publish_all(&mut leader, "kept", &values("r", 200)).await;
    // Every replica, followers included, drops its old segments: its earliest offset moves.
    for id in ["a", "b", "c"] {
        let mut c = cluster.client(id).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut req = sub("kept", StartPosition::Earliest);
            req.read_isr_replica = true;
            let mut s = subscribe_when_open(&mut c, req).await;
            let first = tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .expect("a message in time")
                .expect("not ended")
                .expect("a message");
            if first.offset > 150 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} still starts at offset {}",
                first.offset
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_largest_accepted_size_reaches_the_follower() {
    let cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    let mut req = create("large", 2);
    // Both replicas must hold a message for it to commit: a follower that cannot fetch it
    // leaves the ISR, and then the ALL ack never comes.
    req.min_isr = Some(NullableInt32 { value: 2 });
    a.create_stream(req).await.unwrap();
    let p = cluster
        .partition_until("large", "two in-sync replicas", |p| p.isr.len() == 2)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    // Plain NATS messages around NATS's 1 MiB max payload: the server takes each, and the
    // leader records it only if a follower's fetch can carry it (else it says so in its log).
    let nc = async_nats::connect(cluster.nats_url()).await.unwrap();
    for under in [0usize, 20, 40, 60, 80, 100, 150, 200, 400] {
        let size = 1024 * 1024 - under;
        nc.publish("large", vec![b'x'; size].into()).await.unwrap();
    }
    // A small plain message last: once it is recorded, the ingest has handled the large ones.
    nc.publish("large", "last".into()).await.unwrap();
    nc.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let newest = partition_md(&mut leader, "large", 0).await.newest_offset;
        if newest >= 0 {
            let mut req = sub("large", StartPosition::Offset);
            req.start_offset = newest;
            let mut s = subscribe_when_open(&mut leader, req).await;
            let m = tokio::time::timeout(Duration::from_secs(10), s.next()).await;
            if let Ok(Some(Ok(m))) = m
                && &m.value[..] == b"last"
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the last plain message was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A marker acked by both replicas: it commits only once the follower holds everything
    // before it, so a record the follower cannot fetch would leave it hanging.
    let marker = publish_all(&mut leader, "large", &["marker".to_string()]).await[0];
    assert!(
        marker >= 4,
        "only {} large messages were recorded",
        marker - 1
    );
    let follower = a_follower(&p);
    let mut f = cluster.client(&follower).await;
    let got = read_from(&mut f, "large", marker as usize + 1).await;
    let mut l = cluster.client(&p.leader).await;
    let want = read_from(&mut l, "large", marker as usize + 1).await;
    assert_eq!(got, want, "the follower holds what the leader holds");
    assert!(
        got[..marker as usize - 1]
            .iter()
            .all(|(_, v)| v.len() > 1024 * 1024 - 500)
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fails_hands_over_and_no_acked_message_is_lost() {
    use commitlog::faults::{self, FileOp, Plan, Rule};
    let cluster = Cluster::start_with(|cfg| cfg.broker.sync = commitlog::SyncPolicy::Always).await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("disk", 3)).await.unwrap();
    let p = cluster
        .partition_until("disk", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let old = p.leader.clone();
    let mut leader = cluster.client(&old).await;
    let first = values("before", 10);
    publish_all(&mut leader, "disk", &first).await;

    // The leader's disk stops syncing: the publish fails, and nothing of it is replicated.
    let dir = cluster.node(&old).dir.path().join("streams").join("disk");
    let fault = faults::inject(&dir, Plan::new().with(Rule::new(FileOp::Sync).on(".log")));
    let refused = try_publish(
        &mut leader,
        "disk",
        "lost",
        AckPolicy::All,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        refused.is_err(),
        "a publish the disk did not take: {refused:?}"
    );

    // The leader hands the partition to an in-sync follower, which takes it at the old end.
    let p = cluster
        .partition_until("disk", "a new leader", |p| {
            !p.leader.is_empty() && p.leader != old
        })
        .await;
    drop(fault);
    let mut leader = cluster.client(&p.leader).await;
    // The new leader serves once its replica is open, as clients wait for it: a publish sent
    // before it listens on the subject reaches no one and times out.
    drop(subscribe_when_open(&mut leader, sub("disk", StartPosition::Earliest)).await);
    let second = values("after", 10);
    let offsets = publish_all(&mut leader, "disk", &second).await;
    assert_eq!(offsets, (10..20).collect::<Vec<i64>>());

    // The old leader reopens its log as a follower, drops what it never acknowledged, and
    // catches up: every replica holds exactly what was acknowledged.
    cluster
        .partition_until("disk", "the old leader back in the ISR", |p| {
            p.isr.contains(&old) && p.isr.len() == 3
        })
        .await;
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let expected: Vec<(i64, String)> = (0..20).zip(all).collect();
    for id in cluster.live() {
        let mut c = cluster.client(&id).await;
        assert_eq!(read_from(&mut c, "disk", 20).await, expected, "on {id}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_group_coordinator_is_replaced_when_most_members_report_it() {
    let mut cluster = Cluster::start_with(|cfg| {
        cfg.broker.cursors.partitions = 1;
        cfg.broker.groups.coordinator_timeout = Duration::from_secs(30);
    })
    .await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("grouped", 3)).await.unwrap();
    cluster
        .partition_until("grouped", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut joined = None;
    for m in ["m1", "m2", "m3"] {
        let r = a
            .join_consumer_group(JoinConsumerGroupRequest {
                group_id: "g".into(),
                consumer_id: m.into(),
                streams: vec!["grouped".into()],
            })
            .await
            .unwrap()
            .into_inner();
        joined = Some((r.coordinator, r.epoch));
    }
    let (old, epoch) = joined.unwrap();
    cluster.stop_node(&old).await;
    let live = cluster.live();
    let mut c = cluster.client(&live[0]).await;

    // Reports go to any live broker and reach the metadata leader (elected anew if it was the
    // coordinator). One of three members is not enough; two are.
    let report = |m: &str, coordinator: &str, epoch: u64| ReportConsumerGroupCoordinatorRequest {
        group_id: "g".into(),
        consumer_id: m.into(),
        coordinator: coordinator.into(),
        epoch,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in ["m1", "m2"] {
        loop {
            match c
                .report_consumer_group_coordinator(report(m, &old, epoch))
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the report of {m} was never taken: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let md = group_md(&mut c, "g").await;
        if m == "m1" {
            assert_eq!((md.coordinator.as_str(), md.epoch), (old.as_str(), epoch));
        }
    }
    let md = loop {
        let md = group_md(&mut c, "g").await;
        if md.coordinator != old {
            break md;
        }
        assert!(Instant::now() < deadline, "no new coordinator: {md:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(live.contains(&md.coordinator), "{md:?}");
    assert!(md.epoch > epoch);
    // The new coordinator answers at the new epoch.
    let mut coord = cluster.client(&md.coordinator).await;
    let r = coord
        .fetch_consumer_group_assignments(FetchConsumerGroupAssignmentsRequest {
            group_id: "g".into(),
            consumer_id: "m1".into(),
            epoch: md.epoch,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.epoch, md.epoch);
    // A former witness's report of the new coordinator does not move it again at once.
    c.report_consumer_group_coordinator(report("m1", &md.coordinator, md.epoch))
        .await
        .unwrap();
    let again = group_md(&mut c, "g").await;
    assert_eq!(
        (again.coordinator.as_str(), again.epoch),
        (md.coordinator.as_str(), md.epoch)
    );
    cluster.stop().await;
}

/// Three brokers, a 4-partition stream, members with `liftbridge-client`: each message goes
/// to one member; a member that dies loses its partitions to the others within the consumer
/// timeout, and a coordinator broker that dies is replaced (the members report it) under a
/// higher epoch; nothing committed is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_on_three_brokers_survive_a_dead_member_and_a_dead_coordinator() {
    use liftbridge_client as lc;
    use std::collections::BTreeMap;
    /// How long members may take to settle, or to deliver what the test waits for.
    const WAIT: Duration = Duration::from_secs(60);
    let mut cluster = Cluster::start_with(|cfg| {
        cfg.broker.cursors.partitions = 1;
        // Long enough that a live member polling every 200 ms never expires on a loaded
        // machine (an expiry re-reads its partitions from the cursor: at-least-once, not the
        // once this test checks), short enough to see a dead one go.
        cfg.broker.groups.consumer_timeout = Duration::from_secs(6);
        cfg.broker.groups.coordinator_timeout = Duration::from_secs(4);
    })
    .await;
    let addrs = cluster.grpc_addrs();
    let client = lc::Client::connect(addrs.clone()).await.unwrap();
    client
        .create_stream(
            "jobs",
            "jobs",
            lc::StreamOptions::default()
                .partitions(4)
                .replication_factor(3),
        )
        .await
        .unwrap();
    cluster
        .partition_until("jobs", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let member = |id: &str| {
        client
            .consumer("g")
            .id(id)
            .auto_offset(lc::AutoOffset::Earliest)
            .auto_commit(None)
            .fetch_interval(Duration::from_millis(200))
    };
    let publish = |tag: &'static str| {
        let client = client.clone();
        async move {
            for i in 0..40 {
                let opts = lc::PublishOptions::default()
                    .partition(i % 4)
                    .ack_policy(lc::AckPolicy::All);
                client
                    .publish("jobs", format!("{tag}-{i}"), opts)
                    .await
                    .unwrap();
            }
        }
    };
    let once = |got: &BTreeMap<String, Vec<String>>, tag: &str| {
        assert!(
            got.keys().all(|v| v.starts_with(tag)),
            "nothing old again: {got:?}"
        );
        assert!(
            got.values().all(|who| who.len() == 1),
            "one member each: {got:?}"
        );
    };

    // The cursors stream was created when "a" was alone, so "a" is its only replica; a group
    // that "a" coordinates first makes "b" the coordinator of ours, which can then die
    // without taking the group's positions with it.
    let mut raw_a = cluster.client("a").await;
    let first = raw_a
        .join_consumer_group(JoinConsumerGroupRequest {
            group_id: "first".into(),
            consumer_id: "x".into(),
            streams: vec!["jobs".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.coordinator, "a");
    let mut m1 = member("m1").subscribe(["jobs"]).await.unwrap();
    let mut m2 = member("m2").subscribe(["jobs"]).await.unwrap();
    settled(&[&m1, &m2], 4, WAIT).await;
    publish("a").await;
    once(
        &drain(&mut [&mut m1, &mut m2], "a-", 40, WAIT, OnError::Skip).await,
        "a-",
    );
    for m in [&m1, &m2] {
        m.commit().await.unwrap();
    }
    let mut m3 = member("m3").subscribe(["jobs"]).await.unwrap();
    settled(&[&m1, &m2, &m3], 4, WAIT).await;
    publish("b").await;
    once(
        &drain(
            &mut [&mut m1, &mut m2, &mut m3],
            "b-",
            40,
            WAIT,
            OnError::Skip,
        )
        .await,
        "b-",
    );
    for m in [&m1, &m2, &m3] {
        m.commit().await.unwrap();
    }

    // m2 dies without leaving.
    drop(m2);
    settled(&[&m1, &m3], 4, WAIT).await;
    publish("c").await;
    once(
        &drain(&mut [&mut m1, &mut m3], "c-", 40, WAIT, OnError::Skip).await,
        "c-",
    );
    for m in [&m1, &m3] {
        m.commit().await.unwrap();
    }

    // The coordinator's broker dies: the members report it, a new one takes over at a higher
    // epoch, and consuming goes on.
    let mut raw = cluster.client(&cluster.live()[0]).await;
    let group = group_md(&mut raw, "g").await;
    assert_eq!(group.coordinator, "b");
    cluster.stop_node(&group.coordinator).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let epoch = loop {
        let e = settled(&[&m1, &m3], 4, WAIT).await;
        if e > group.epoch {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no new coordinator for the members"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(epoch > group.epoch);
    publish("d").await;
    once(
        &drain(&mut [&mut m1, &mut m3], "d-", 40, WAIT, OnError::Skip).await,
        "d-",
    );
    // The cursors partition may have been led by the dead broker: commits work again once
    // its followers have taken it over.
    for m in [&m1, &m3] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = m.commit().await {
            assert!(Instant::now() < deadline, "commits never worked again: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    m1.close().await.unwrap();
    m3.close().await.unwrap();
    client.close();
    cluster.stop().await;
}

/// An encrypted stream replicates: followers copy the sealed bytes as the leader stored them,
/// and serve them opened, as the leader does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_copy_encrypted_values_and_serve_them_opened() {
    let cluster = Cluster::start_with(|cfg| {
        cfg.broker.encryption_key = Some(broker::MasterKey::new(b"+KbPeShVmYq3t6w9").unwrap());
    })
    .await;
    let mut a = cluster.client("a").await;
    let mut req = create("sealed", 3);
    req.encryption = Some(NullableBool { value: true });
    a.create_stream(req).await.unwrap();
    let p = cluster
        .partition_until("sealed", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let mut leader = cluster.client(&p.leader).await;
    let sent = values("hidden", 10);
    publish_all(&mut leader, "sealed", &sent).await;
    let expected: Vec<(i64, String)> = (0..10).zip(sent).collect();
    for id in cluster.live() {
        let mut c = cluster.client(&id).await;
        assert_eq!(read_from(&mut c, "sealed", 10).await, expected, "on {id}");
    }
    cluster.stop().await;
}

/// `liftbridge-client`'s PublishAsync after its partition's leader went away: the client
/// refreshes the metadata and moves to the new leader within its bounded retries, where before
/// every call failed for as long as nothing else refreshed the metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_async_moves_to_the_new_leader_after_a_failover() {
    use liftbridge_client as lc;
    let mut cluster = Cluster::start().await;
    let mut a = cluster.client("a").await;
    a.create_stream(create("pa", 3)).await.unwrap();
    let p = cluster
        .partition_until("pa", "three in-sync replicas", |p| p.isr.len() == 3)
        .await;
    let addrs = cluster.grpc_addrs();
    let client = lc::Client::builder(addrs.iter().map(String::as_str))
        .publish_retries(10)
        .connect()
        .await
        .unwrap();
    let opts = || lc::PublishOptions::default().ack_wait(Duration::from_secs(5));
    // Replicated to every follower before the leader goes: it survives the failover.
    let all = opts().ack_policy(lc::AckPolicy::All);
    let ack = client.publish_async("pa", "before", all).await.unwrap();
    assert_eq!(ack.await.unwrap().unwrap().offset, 0);

    let old = p.leader.clone();
    cluster.stop_node(&old).await;
    // Each call retries within its bound; a call may fail while no leader is elected yet, or
    // because its message was in flight on the lost connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut errors = Vec::new();
    let stored = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish reached a new leader; errors: {errors:?}"
        );
        let r = match client.publish_async("pa", "after", opts()).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match r {
            Ok(Some(ack)) => break ack,
            Ok(None) => unreachable!("ack policy LEADER"),
            Err(e) => errors.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(stored.offset >= 1);
    assert!(errors.len() <= 3, "{errors:?}");
    client.close();
    cluster.stop().await;
}
