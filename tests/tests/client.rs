//! `liftbridge-client` against a real server: every feature, resubscription across a restart,
//! and thousands of acks in flight.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use liftbridge_client::*;

async fn connect(srv: &TestServer) -> Client {
    Client::builder([srv.running().grpc_addr().to_string()])
        .resubscribe_wait(Duration::from_secs(30))
        .connect()
        .await
        .unwrap()
}

async fn take(sub: &mut Subscription, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a message in time")
            .expect("not ended")
            .expect("no error");
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_metadata() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    let opts = StreamOptions {
        retention_max_messages: Some(1000),
        compact_enabled: Some(false),
        ..StreamOptions::default().partitions(3)
    };
    c.create_stream("sub.a", "a", opts).await.unwrap();
    assert!(matches!(
        c.create_stream("sub.a", "a", StreamOptions::default())
            .await,
        Err(Error::StreamExists)
    ));
    assert!(matches!(
        c.create_stream("bad subject", "b", StreamOptions::default())
            .await,
        Err(Error::InvalidArgument(_))
    ));
    let md = c.fetch_metadata().await.unwrap();
    let a = &md.streams["a"];
    assert_eq!((a.subject.as_str(), a.partitions.len()), ("sub.a", 3));
    assert_eq!(md.brokers.len(), 1);
    assert_eq!(
        md.broker_addr(&a.partitions[&0].leader),
        Some(srv.running().grpc_addr().to_string())
    );

    c.publish("a", "x", PublishOptions::default().partition(2))
        .await
        .unwrap();
    let p = c.fetch_partition_metadata("a", 2).await.unwrap();
    assert_eq!((p.high_watermark, p.newest_offset), (0, 0));
    assert!(matches!(
        c.fetch_partition_metadata("a", 7).await,
        Err(Error::NoSuchPartition)
    ));

    c.pause_stream("a", PartitionSet(vec![1]), false)
        .await
        .unwrap();
    assert!(c.fetch_partition_metadata("a", 1).await.unwrap().paused);
    c.set_stream_readonly("a", PartitionSet::all(), true)
        .await
        .unwrap();
    assert!(matches!(
        c.publish("a", "y", PublishOptions::default()).await,
        Err(Error::ReadonlyPartition)
    ));
    assert!(matches!(
        c.pause_stream("nope", PartitionSet::all(), false).await,
        Err(Error::NoSuchStream)
    ));
    c.delete_stream("a").await.unwrap();
    assert!(matches!(
        c.delete_stream("a").await,
        Err(Error::NoSuchStream)
    ));
    assert!(matches!(
        c.publish("a", "z", PublishOptions::default()).await,
        Err(Error::NoSuchStream)
    ));
    c.close();
    assert!(matches!(c.fetch_metadata().await, Err(Error::Closed)));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_options_and_partitioners() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("p", "p", StreamOptions::default().partitions(4))
        .await
        .unwrap();
    // By key: the same key always lands on CRC-32(key) % 4.
    for key in ["alpha", "beta", "gamma", "delta"] {
        let want = partition_for_key(key.as_bytes(), 4);
        let ack = c
            .publish(
                "p",
                "v",
                PublishOptions::default()
                    .key(key)
                    .partitioner(Partitioner::Key),
            )
            .await
            .unwrap()
            .unwrap();
        let expect_subject = if want == 0 {
            "p".to_string()
        } else {
            format!("p.{want}")
        };
        assert_eq!(ack.msg_subject, expect_subject, "key {key}");
    }
    // Round-robin visits every partition.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ack = c
            .publish(
                "p",
                "rr",
                PublishOptions::default().partitioner(Partitioner::RoundRobin),
            )
            .await
            .unwrap()
            .unwrap();
        seen.push(ack.msg_subject);
    }
    seen.sort();
    assert_eq!(seen, vec!["p", "p.1", "p.2", "p.3"]);
    // Headers, key and correlation id reach the subscriber and the ack.
    let ack = c
        .publish(
            "p",
            "full",
            PublishOptions::default()
                .partition(3)
                .key("k")
                .header("trace", "abc")
                .correlation_id("my-id")
                .ack_policy(AckPolicy::All),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ack.correlation_id.as_str(), ack.ack_policy),
        ("my-id", AckPolicy::All)
    );
    let mut sub = c
        .subscribe(
            "p",
            SubscribeOptions::default()
                .partition(3)
                .start(StartAt::Offset(ack.offset)),
        )
        .await
        .unwrap();
    let m = take(&mut sub, 1).await.remove(0);
    assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(
        m.headers.get("trace").map(|v| v.as_ref()),
        Some(&b"abc"[..])
    );
    assert_eq!((m.stream.as_str(), m.partition), ("p", 3));
    // Policy NONE: no ack.
    assert!(
        c.publish(
            "p",
            "n",
            PublishOptions::default().ack_policy(AckPolicy::None)
        )
        .await
        .unwrap()
        .is_none()
    );
    // To a raw subject.
    let ack = c
        .publish_to_subject("p.2", "raw", PublishOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.stream, "p");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_offsets() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    let opts = StreamOptions {
        optimistic_concurrency_control: Some(true),
        ..Default::default()
    };
    c.create_stream("occ", "occ", opts).await.unwrap();
    let at = |o: i64| PublishOptions::default().expected_offset(o);
    assert_eq!(
        c.publish("occ", "a", at(0)).await.unwrap().unwrap().offset,
        0
    );
    let err = c.publish("occ", "b", at(0)).await.unwrap_err();
    assert!(
        matches!(&err, Error::PublishRefused { code, .. } if code == "INCORRECT_OFFSET"),
        "{err}"
    );
    // The same error through PublishAsync.
    let err = c
        .publish_async("occ", "c", at(5))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PublishRefused { code, .. } if code == "INCORRECT_OFFSET"),
        "{err}"
    );
    assert_eq!(
        c.publish("occ", "d", PublishOptions::default())
            .await
            .unwrap()
            .unwrap()
            .offset,
        1
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_positions() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("s", "s", StreamOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        c.subscribe("s", SubscribeOptions::default().stop(StopAt::Latest))
            .await,
        Err(Error::StreamEmpty)
    ));
    let mut stamps = Vec::new();
    for i in 0..6 {
        c.publish("s", format!("m{i}"), PublishOptions::default())
            .await
            .unwrap();
    }
    let mut all = c
        .subscribe("s", SubscribeOptions::default().start(StartAt::Earliest))
        .await
        .unwrap();
    for m in take(&mut all, 6).await {
        stamps.push(m.timestamp);
    }
    let offsets = |msgs: Vec<Message>| msgs.into_iter().map(|m| m.offset).collect::<Vec<_>>();

    let mut sub = c
        .subscribe(
            "s",
            SubscribeOptions::default()
                .start(StartAt::Timestamp(stamps[2]))
                .stop(StopAt::Timestamp(stamps[4])),
        )
        .await
        .unwrap();
    assert_eq!(offsets(take(&mut sub, 3).await), vec![2, 3, 4]);
    assert!(matches!(
        sub.next().await,
        Some(Err(Error::StopPositionReached))
    ));
    assert!(sub.next().await.is_none());

    let mut sub = c
        .subscribe(
            "s",
            SubscribeOptions::default()
                .start(StartAt::Latest)
                .reverse(true),
        )
        .await
        .unwrap();
    assert_eq!(offsets(take(&mut sub, 6).await), vec![5, 4, 3, 2, 1, 0]);
    assert!(sub.next().await.is_none());

    let mut sub = c
        .subscribe("s", SubscribeOptions::default().stop(StopAt::Offset(6)))
        .await
        .unwrap();
    c.publish("s", "new", PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(offsets(take(&mut sub, 1).await), vec![6]);
    assert!(matches!(
        sub.next().await,
        Some(Err(Error::StopPositionReached))
    ));

    assert!(matches!(
        c.subscribe("s", SubscribeOptions::default().partition(1))
            .await,
        Err(Error::NoSuchPartition)
    ));
    assert!(matches!(
        c.subscribe("nope", SubscribeOptions::default()).await,
        Err(Error::NoSuchStream)
    ));

    // Paused: an error, unless the subscription resumes it.
    c.pause_stream("s", PartitionSet::all(), false)
        .await
        .unwrap();
    assert!(matches!(
        c.subscribe("s", SubscribeOptions::default()).await,
        Err(Error::PartitionPaused)
    ));
    let mut sub = c
        .subscribe(
            "s",
            SubscribeOptions::default()
                .start(StartAt::Offset(6))
                .resume(true),
        )
        .await
        .unwrap();
    assert_eq!(offsets(take(&mut sub, 1).await), vec![6]);
    // Reading from an in-sync replica (here the only one) works too.
    let mut sub = c
        .subscribe(
            "s",
            SubscribeOptions::default()
                .start(StartAt::Earliest)
                .read_isr_replica(true),
        )
        .await
        .unwrap();
    assert_eq!(offsets(take(&mut sub, 2).await), vec![0, 1]);

    // Read-only: drain, then the end.
    c.set_stream_readonly("s", PartitionSet::all(), true)
        .await
        .unwrap();
    let mut sub = c
        .subscribe("s", SubscribeOptions::default().start(StartAt::Offset(5)))
        .await
        .unwrap();
    assert_eq!(offsets(take(&mut sub, 2).await), vec![5, 6]);
    assert!(matches!(
        sub.next().await,
        Some(Err(Error::EndOfReadonlyPartition))
    ));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    assert_eq!(c.fetch_cursor("reader", "s", 0).await.unwrap(), -1);
    c.set_cursor("reader", "s", 0, 41).await.unwrap();
    c.set_cursor("reader", "s", 0, 42).await.unwrap();
    c.set_cursor("other", "s", 1, 7).await.unwrap();
    assert_eq!(c.fetch_cursor("reader", "s", 0).await.unwrap(), 42);
    assert_eq!(c.fetch_cursor("other", "s", 1).await.unwrap(), 7);
    assert!(matches!(
        c.set_cursor("", "s", 0, 1).await,
        Err(Error::InvalidArgument(_))
    ));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_async_publishes_are_acked_once_and_in_order() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("many", "many", StreamOptions::default().partitions(2))
        .await
        .unwrap();
    const N: usize = 5000;
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let opts = PublishOptions::default().partition((i % 2) as i32);
        pending.push(c.publish_async("many", format!("{i}"), opts).await.unwrap());
    }
    // An error for one message does not disturb the others.
    let bad = c
        .publish_async("many", "x", PublishOptions::default().partition(9))
        .await
        .unwrap();
    let mut per_partition: HashMap<String, Vec<i64>> = HashMap::new();
    for p in pending {
        let ack = p.await.unwrap().unwrap();
        per_partition
            .entry(ack.msg_subject)
            .or_default()
            .push(ack.offset);
    }
    assert!(matches!(bad.await, Err(Error::NoSuchPartition)));
    for (subject, offsets) in per_partition {
        assert_eq!(offsets.len(), N / 2, "{subject}");
        assert_eq!(
            offsets,
            (0..(N / 2) as i64).collect::<Vec<_>>(),
            "{subject}: once each, in order"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_a_broker_restart() {
    let mut srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("r", "r", StreamOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        c.publish("r", format!("m{i}"), PublishOptions::default())
            .await
            .unwrap();
    }
    let mut sub = c
        .subscribe("r", SubscribeOptions::default().start(StartAt::Earliest))
        .await
        .unwrap();
    let first: Vec<i64> = take(&mut sub, 3)
        .await
        .into_iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(first, vec![0, 1, 2]);
    srv.restart_in_place().await;
    // Publishing retries until the server is back.
    let mut ok = false;
    for _ in 0..50 {
        if c.publish("r", "m3", PublishOptions::default())
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "publish works again after the restart");
    let next = take(&mut sub, 1).await.remove(0);
    assert_eq!(
        (next.offset, next.value.as_ref()),
        (3, &b"m3"[..]),
        "no gap, no repeat"
    );
    srv.stop().await;
}

/// After a broker restarts, the client's calls work again without the application doing
/// anything: async publishes need a new stream, and the metadata a working connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_calls_after_a_broker_restart_work() {
    let mut srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("rc", "rc", StreamOptions::default())
        .await
        .unwrap();
    let first = c
        .publish_async("rc", "before", PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().expect("an ack").offset, 0);
    srv.restart_in_place().await;
    // Async publishes open a new stream on a new connection. The restarted server may take
    // a moment to lead its partition again, so a few attempts may fail meanwhile.
    let mut acked = None;
    for _ in 0..50 {
        let sent = c
            .publish_async("rc", "after", PublishOptions::default())
            .await;
        if let Ok(pending) = sent
            && let Ok(ack) = pending.await
        {
            acked = ack;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(acked.expect("an ack after the restart").offset, 1);
    let md = c.fetch_metadata().await.unwrap();
    assert!(md.streams.contains_key("rc"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_publish_whose_ack_never_comes_times_out() {
    // With min ISR 2 on a single broker nothing commits, so ALL acks never come.
    let srv = TestServer::start_with(|c| c.broker.min_insync_replicas = 2).await;
    let client = connect(&srv).await;
    client
        .create_stream("stuck", "stuck", StreamOptions::default())
        .await
        .unwrap();
    let all = client
        .publish_async(
            "stuck",
            "waits",
            PublishOptions::default()
                .ack_policy(AckPolicy::All)
                .ack_wait(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let leader = client
        .publish_async(
            "stuck",
            "acked",
            PublishOptions::default().ack_policy(AckPolicy::Leader),
        )
        .await
        .unwrap();
    assert_eq!(leader.await.unwrap().unwrap().offset, 1);
    let outcome = tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("the pending ack gives up by itself");
    match outcome {
        Err(Error::Timeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    client.close();
    srv.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_on_a_single_threaded_runtime_publishes_and_subscribes() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("own", "own", StreamOptions::default())
        .await
        .unwrap();
    let ack = c
        .publish("own", "unary", PublishOptions::default())
        .await
        .unwrap()
        .expect("an ack");
    assert_eq!(ack.offset, 0);
    let pending = c
        .publish_async("own", "async", PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(pending.await.unwrap().expect("an ack").offset, 1);
    let mut sub = c
        .subscribe("own", SubscribeOptions::default().start(StartAt::Earliest))
        .await
        .unwrap();
    let got = take(&mut sub, 2).await;
    assert_eq!(
        got.iter().map(|m| m.value.as_ref()).collect::<Vec<_>>(),
        [&b"unary"[..], b"async"]
    );
    c.close();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_outlives_the_client_handle_it_came_from() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("kept", "kept", StreamOptions::default())
        .await
        .unwrap();
    let mut sub = c
        .subscribe("kept", SubscribeOptions::default().start(StartAt::Earliest))
        .await
        .unwrap();
    drop(c);
    // The connection stays while the subscription does.
    let other = connect(&srv).await;
    for v in ["one", "two"] {
        other
            .publish("kept", v, PublishOptions::default())
            .await
            .unwrap();
    }
    let got = take(&mut sub, 2).await;
    assert_eq!(
        got.iter().map(|m| m.value.as_ref()).collect::<Vec<_>>(),
        [&b"one"[..], b"two"]
    );
    other.close();
    srv.stop().await;
}

/// A caller's correlation id reused while a message with it waits for its ack is refused: the
/// two acks would otherwise cross (the second message's waiter took the first one's ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correlation_id_in_flight_is_not_reused() {
    // With min ISR 2 on a single broker nothing commits, so ALL acks never come.
    let srv = TestServer::start_with(|c| c.broker.min_insync_replicas = 2).await;
    let client = connect(&srv).await;
    client
        .create_stream("dup", "dup", StreamOptions::default())
        .await
        .unwrap();
    let opts = || {
        PublishOptions::default()
            .ack_policy(AckPolicy::All)
            .correlation_id("same")
            .ack_wait(Duration::from_secs(10))
    };
    let first = client.publish_async("dup", "one", opts()).await.unwrap();
    match client.publish_async("dup", "two", opts()).await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("same"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(first);
    // Once the first is no longer awaited, the id is free again.
    let again = client
        .publish_async("dup", "three", opts().ack_wait(Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(matches!(again.await, Err(Error::Timeout(_))));
    client.close();
    srv.stop().await;
}

/// Publishes `value` to `stream`, trying again while a restarted broker comes back.
async fn publish_after_restart(c: &Client, stream: &str, value: &str) -> i64 {
    for _ in 0..50 {
        if let Ok(Some(ack)) = c
            .publish(stream, value.to_owned(), PublishOptions::default())
            .await
        {
            return ack.offset;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publishing never worked again after the restart");
}

/// A subscription that resubscribes after its broker went away, before it delivered anything
/// or before its stop: it goes on from where it first started (NewOnly, Latest) and stops
/// where it first would have (StopAt::Latest), instead of working both out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscription_keeps_its_first_start_and_stop() {
    let mut srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("rs", "rs", StreamOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        c.publish("rs", format!("m{i}"), PublishOptions::default())
            .await
            .unwrap();
    }
    let mut new_only = c
        .subscribe("rs", SubscribeOptions::default().start(StartAt::NewOnly))
        .await
        .unwrap();
    let mut latest = c
        .subscribe("rs", SubscribeOptions::default().start(StartAt::Latest))
        .await
        .unwrap();
    let mut until_latest = c
        .subscribe(
            "rs",
            SubscribeOptions::default()
                .start(StartAt::Earliest)
                .stop(StopAt::Latest),
        )
        .await
        .unwrap();
    assert_eq!(take(&mut until_latest, 1).await[0].offset, 0);
    srv.restart_in_place().await;
    assert_eq!(publish_after_restart(&c, "rs", "m3").await, 3);
    assert_eq!(publish_after_restart(&c, "rs", "m4").await, 4);
    let offsets = |ms: Vec<Message>| ms.into_iter().map(|m| m.offset).collect::<Vec<_>>();
    assert_eq!(offsets(take(&mut new_only, 2).await), vec![3, 4]);
    assert_eq!(offsets(take(&mut latest, 3).await), vec![2, 3, 4]);
    assert_eq!(offsets(take(&mut until_latest, 2).await), vec![1, 2]);
    let end = tokio::time::timeout(Duration::from_secs(10), until_latest.next())
        .await
        .expect("the end in time");
    assert!(
        matches!(end, Some(Err(Error::StopPositionReached))),
        "{end:?}"
    );
    c.close();
    srv.stop().await;
}

/// A caller's correlation id becomes free again as soon as the first message's ack future is
/// dropped, but the server still answers that first message: its ack, arriving after the id
/// was reused, must not be taken as the second message's ack (the second future resolved
/// with the offset of the first message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_after_its_ack_future_was_dropped_does_not_get_the_old_ack() {
    let srv = TestServer::start().await;
    let client = connect(&srv).await;
    client
        .create_stream("reuse", "reuse", StreamOptions::default())
        .await
        .unwrap();
    const PAIRS: usize = 200;
    let mut seconds = Vec::new();
    for i in 0..PAIRS {
        let opts = || {
            PublishOptions::default()
                .correlation_id(format!("id-{i}"))
                .ack_wait(Duration::from_secs(10))
        };
        let first = client
            .publish_async("reuse", format!("first-{i}"), opts())
            .await
            .unwrap();
        drop(first);
        let second = client
            .publish_async("reuse", format!("second-{i}"), opts())
            .await
            .unwrap();
        seconds.push((i, second));
    }
    let mut acked = Vec::new();
    for (i, p) in seconds {
        // A second may also time out (its own ack went to nobody): that is a wrong answer too.
        let ack = p.await;
        acked.push((i, ack));
    }
    let mut sub = client
        .subscribe(
            "reuse",
            SubscribeOptions::default().start(StartAt::Earliest),
        )
        .await
        .unwrap();
    let by_offset: HashMap<i64, String> = take(&mut sub, 2 * PAIRS)
        .await
        .into_iter()
        .map(|m| (m.offset, String::from_utf8_lossy(&m.value).into_owned()))
        .collect();
    let wrong: Vec<String> = acked
        .into_iter()
        .filter_map(|(i, ack)| match ack {
            Ok(Some(a)) if by_offset.get(&a.offset) == Some(&format!("second-{i}")) => None,
            other => Some(format!(
                "second-{i}: {other:?} ({:?})",
                other
                    .as_ref()
                    .ok()
                    .and_then(|a| a.as_ref())
                    .and_then(|a| by_offset.get(&a.offset))
            )),
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong acks, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    client.close();
    srv.stop().await;
}
