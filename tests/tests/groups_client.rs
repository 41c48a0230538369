//! `liftbridge-client`'s group consumer on one broker: members split the partitions, a member
//! that leaves or dies hands its partitions over from the committed position, lag is reported,
//! and a member that speaks the RPCs the way go-liftbridge does shares the group with a Rust
//! member.

mod common;

use std::time::{Duration, Instant};

use common::groups::{OnError, drain, group_md, settled};
use common::*;
use futures_util::StreamExt;
use liftbridge_client::*;
use liftbridge_proto::api;

/// How long members may take to settle, or to deliver what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

async fn connect(srv: &TestServer) -> Client {
    Client::connect([srv.running().grpc_addr().to_string()])
        .await
        .unwrap()
}

/// Publishes `n` messages round-robin over `partitions`, values `<tag>-<i>`.
async fn publish_n(c: &Client, stream: &str, tag: &str, n: usize, partitions: i32) {
    for i in 0..n {
        c.publish(
            stream,
            format!("{tag}-{i}"),
            PublishOptions::default().partition(i as i32 % partitions),
        )
        .await
        .unwrap();
    }
}

fn member(c: &Client, id: &str) -> ConsumerBuilder {
    c.consumer("g")
        .id(id)
        .auto_offset(AutoOffset::Earliest)
        .auto_commit(None)
        .fetch_interval(Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_partitions_and_hand_them_over_from_the_committed_position() {
    let srv =
        TestServer::start_with(|c| c.broker.groups.consumer_timeout = Duration::from_secs(1)).await;
    let c = connect(&srv).await;
    c.create_stream("work", "work", StreamOptions::default().partitions(4))
        .await
        .unwrap();
    publish_n(&c, "work", "a", 40, 4).await;
    let mut m1 = member(&c, "m1").subscribe(["work"]).await.unwrap();
    let mut m2 = member(&c, "m2").subscribe(["work"]).await.unwrap();
    settled(&[&m1, &m2], 4, WAIT).await;
    let got = drain(&mut [&mut m1, &mut m2], "a-", 40, WAIT, OnError::Fail).await;
    assert_eq!(got.len(), 40);
    assert!(
        got.values().all(|who| who.len() == 1),
        "each message to one member: {got:?}"
    );
    assert_eq!(m1.assignments().1.len(), 2);
    m1.commit().await.unwrap();
    m2.commit().await.unwrap();
    let lag = c.group_lag("g", ["work"]).await.unwrap();
    assert_eq!(lag.iter().map(|l| l.lag).sum::<i64>(), 0, "{lag:?}");
    assert!(
        lag.iter()
            .all(|l| l.committed == 9 && l.high_watermark == 9),
        "{lag:?}"
    );

    // A third member: partitions move, and reading goes on from the committed position.
    let mut m3 = member(&c, "m3").subscribe(["work"]).await.unwrap();
    settled(&[&m1, &m2, &m3], 4, WAIT).await;
    publish_n(&c, "work", "b", 40, 4).await;
    let got = drain(
        &mut [&mut m1, &mut m2, &mut m3],
        "b-",
        40,
        WAIT,
        OnError::Fail,
    )
    .await;
    assert!(
        got.keys().all(|v| v.starts_with("b-")),
        "nothing committed comes again: {got:?}"
    );
    assert!(got.values().all(|who| who.len() == 1), "{got:?}");
    for m in [&m1, &m2, &m3] {
        m.commit().await.unwrap();
    }
    let lag = c.group_lag("g", ["work"]).await.unwrap();
    assert_eq!(lag.iter().map(|l| l.lag).sum::<i64>(), 0, "{lag:?}");

    // m2 dies (no leave): the coordinator removes it after the consumer timeout, and the
    // others take its partitions from where it committed.
    drop(m2);
    settled(&[&m1, &m3], 4, WAIT).await;
    publish_n(&c, "work", "c", 40, 4).await;
    let got = drain(&mut [&mut m1, &mut m3], "c-", 40, WAIT, OnError::Fail).await;
    assert!(got.keys().all(|v| v.starts_with("c-")), "{got:?}");
    assert!(got.values().all(|who| who.len() == 1), "{got:?}");

    // m3 closes (commits and leaves): m1 has everything; the group shows no lag.
    m3.close().await.unwrap();
    settled(&[&m1], 4, WAIT).await;
    m1.commit().await.unwrap();
    let lag = c.group_lag("g", ["work"]).await.unwrap();
    assert_eq!(lag.iter().map(|l| l.lag).sum::<i64>(), 0, "{lag:?}");
    m1.close().await.unwrap();
    let md = c.fetch_metadata().await.unwrap();
    assert!(md.streams.contains_key("work"));
    c.close();
    srv.stop().await;
}

/// A member that uses the RPCs as go-liftbridge's `Consumer` does: Join on any broker,
/// FetchConsumerGroupAssignments on the coordinator, FetchCursor `__group:<g>`, Subscribe with
/// the consumer fields from cursor + 1, SetCursor after handling, Leave on close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_member_and_a_go_style_member_share_a_group_and_its_progress() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    c.create_stream("shared", "shared", StreamOptions::default().partitions(2))
        .await
        .unwrap();
    publish_n(&c, "shared", "x", 20, 2).await;
    let mut raw = srv.client().await;
    let j = raw
        .join_consumer_group(api::JoinConsumerGroupRequest {
            group_id: "g".into(),
            consumer_id: "go".into(),
            streams: vec!["shared".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut rust = member(&c, "rust").subscribe(["shared"]).await.unwrap();
    // The go-style member polls until it sees the epoch of the Rust member's join.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (epoch, mine) = loop {
        let md = group_md(&mut raw, "g").await;
        assert_eq!(md.coordinator, j.coordinator);
        if let Ok(r) = raw
            .fetch_consumer_group_assignments(api::FetchConsumerGroupAssignmentsRequest {
                group_id: "g".into(),
                consumer_id: "go".into(),
                epoch: md.epoch,
            })
            .await
        {
            let r = r.into_inner();
            if md.epoch > j.epoch {
                assert_eq!(r.assignments.len(), 1);
                break (r.epoch, r.assignments[0].partitions.clone());
            }
        }
        assert!(Instant::now() < deadline, "no rebalance seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(mine.len(), 1, "one partition each");
    let p = mine[0];
    // Its partition from cursor + 1 (none yet: from the start), with the consumer fields.
    let cursor = c.fetch_cursor("__group:g", "shared", p).await.unwrap();
    assert_eq!(cursor, -1);
    let mut req = sub("shared", api::StartPosition::Earliest);
    req.partition = p;
    req.consumer = Some(api::Consumer {
        group_id: "g".into(),
        group_epoch: epoch,
        consumer_id: "go".into(),
    });
    let mut s = subscribe(&mut raw, req).await.unwrap();
    let mut go_got = Vec::new();
    for _ in 0..10 {
        let m = next(&mut s).await.unwrap();
        go_got.push(String::from_utf8(m.value.to_vec()).unwrap());
    }
    // It handled offset 4 of its partition and commits that, as go-liftbridge's checkpoint.
    c.set_cursor("__group:g", "shared", p, 4).await.unwrap();

    let rust_got = drain(&mut [&mut rust], "x-", 10, WAIT, OnError::Fail).await;
    let all: Vec<String> = go_got
        .iter()
        .cloned()
        .chain(rust_got.keys().cloned())
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        20,
        "every message to exactly one member: {all:?}"
    );

    // The go-style member leaves; the Rust member takes its partition from offset 5.
    raw.leave_consumer_group(api::LeaveConsumerGroupRequest {
        group_id: "g".into(),
        consumer_id: "go".into(),
    })
    .await
    .unwrap();
    let more = drain(&mut [&mut rust], "x-", 5, WAIT, OnError::Fail).await;
    let expected: Vec<String> = go_got[5..].to_vec();
    let mut taken: Vec<String> = more.keys().cloned().collect();
    taken.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(
        taken, want,
        "from the go-style member's committed offset + 1"
    );
    rust.close().await.unwrap();
    c.close();
    srv.stop().await;
}

/// go-liftbridge's auto-offset tests: with no committed position, a member starts where it
/// is told (earliest, latest, only new messages), or reports that it has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_committed_position_a_member_starts_where_its_auto_offset_says() {
    let srv = TestServer::start().await;
    let c = connect(&srv).await;
    for (i, name) in ["e", "l", "n", "x"].iter().enumerate() {
        c.create_stream(name, name, StreamOptions::default())
            .await
            .unwrap();
        publish_n(&c, name, "old", 3, 1).await;
        let mode = [
            AutoOffset::Earliest,
            AutoOffset::Latest,
            AutoOffset::NewOnly,
            AutoOffset::None,
        ][i];
        let mut m = c
            .consumer(format!("g-{name}"))
            .id("m")
            .auto_offset(mode)
            .fetch_interval(Duration::from_millis(100))
            .subscribe([*name])
            .await
            .unwrap();
        settled(&[&m], 1, WAIT).await;
        if mode == AutoOffset::None {
            let e = tokio::time::timeout(Duration::from_secs(10), m.next())
                .await
                .expect("an error")
                .expect("an item")
                .unwrap_err();
            assert!(
                e.to_string().contains(
                    "no previous consumer group offset found for partition 0 of stream x"
                ),
                "{e}"
            );
            m.close().await.unwrap();
            continue;
        }
        // The assignments are reported once their subscriptions are in place.
        c.publish(name, "new-0", PublishOptions::default())
            .await
            .unwrap();
        let mut seen: Vec<String> = Vec::new();
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), m.next()).await {
            seen.push(String::from_utf8(msg.unwrap().value.to_vec()).unwrap());
        }
        let first = seen.first().expect("a message arrives").clone();
        match mode {
            AutoOffset::Earliest => assert_eq!(first, "old-0"),
            AutoOffset::Latest => assert_eq!(first, "old-2"),
            _ => assert_eq!(first, "new-0"),
        }
        m.close().await.unwrap();
    }
    c.close();
    srv.stop().await;
}

/// A member that delivered messages without committing them, then lost the partition to a
/// member that read further and committed: the first member must not commit its older
/// position when it learns of the move, which would send the group's cursor back and make the
/// next owner read again what was consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_a_partition_does_not_move_its_cursor_back() {
    let srv = TestServer::start_with(|c| {
        c.broker.groups.consumer_timeout = Duration::from_secs(60);
    })
    .await;
    let c = connect(&srv).await;
    c.create_stream("back", "back", StreamOptions::default().partitions(2))
        .await
        .unwrap();
    publish_n(&c, "back", "a", 200, 2).await;
    // `a` learns of assignments only every 8 s: long after `b` has committed.
    let mut a = member(&c, "a")
        .fetch_interval(Duration::from_secs(8))
        .subscribe(["back"])
        .await
        .unwrap();
    settled(&[&a], 2, WAIT).await;
    let got = drain(&mut [&mut a], "a-", 200, WAIT, OnError::Fail).await;
    assert_eq!(got.len(), 200);
    let (first_epoch, _) = a.assignments();

    let mut b = member(&c, "b").subscribe(["back"]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let p = loop {
        if let Some((_, p)) = b.assignments().1.first() {
            break *p;
        }
        assert!(Instant::now() < deadline, "b never got a partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // `b` reads the partition from its start (nothing committed), and 50 more.
    for i in 0..50 {
        c.publish(
            "back",
            format!("b-{i}"),
            PublishOptions::default().partition(p),
        )
        .await
        .unwrap();
    }
    let got = drain(&mut [&mut b], "b-", 50, WAIT, OnError::Fail).await;
    assert_eq!(
        got.len(),
        150,
        "the partition's 100 earlier messages, then 50: {got:?}"
    );
    b.commit().await.unwrap();
    let cursor = group_cursor_id("g");
    assert_eq!(c.fetch_cursor(&cursor, "back", p).await.unwrap(), 149);

    // `a` learns that it lost the partition.
    let deadline = Instant::now() + WAIT;
    while a.assignments().0 == first_epoch {
        assert!(Instant::now() < deadline, "a never saw the new assignments");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.commit().await.unwrap();
    assert_eq!(
        c.fetch_cursor(&cursor, "back", p).await.unwrap(),
        149,
        "the group's cursor moved back"
    );
    b.close().await.unwrap();
    a.close().await.unwrap();
    c.close();
    srv.stop().await;
}

/// As above, but the first member commits (by hand here; its auto-commit timer does the
/// same) after the new owner committed and before its own next fetch of the assignments:
/// it still believes it holds the partition, and its older position must not send the
/// group's cursor back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_has_not_yet_learned_of_its_loss_does_not_move_the_cursor_back() {
    let srv = TestServer::start_with(|c| {
        c.broker.groups.consumer_timeout = Duration::from_secs(60);
    })
    .await;
    let c = connect(&srv).await;
    c.create_stream("back2", "back2", StreamOptions::default().partitions(2))
        .await
        .unwrap();
    publish_n(&c, "back2", "a", 200, 2).await;
    // `a` learns of assignments only every 60 s: it commits before it learns.
    let mut a = member(&c, "a")
        .fetch_interval(Duration::from_secs(60))
        .subscribe(["back2"])
        .await
        .unwrap();
    settled(&[&a], 2, WAIT).await;
    let got = drain(&mut [&mut a], "a-", 200, WAIT, OnError::Fail).await;
    assert_eq!(got.len(), 200);

    let mut b = member(&c, "b").subscribe(["back2"]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let p = loop {
        if let Some((_, p)) = b.assignments().1.first() {
            break *p;
        }
        assert!(Instant::now() < deadline, "b never got a partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for i in 0..50 {
        c.publish(
            "back2",
            format!("b-{i}"),
            PublishOptions::default().partition(p),
        )
        .await
        .unwrap();
    }
    let got = drain(&mut [&mut b], "b-", 50, WAIT, OnError::Fail).await;
    assert_eq!(got.len(), 150);
    b.commit().await.unwrap();
    let cursor = group_cursor_id("g");
    assert_eq!(c.fetch_cursor(&cursor, "back2", p).await.unwrap(), 149);

    // `a` commits what it delivered, not knowing yet that `p` moved to `b`.
    let _ = a.commit().await;
    assert_eq!(
        c.fetch_cursor(&cursor, "back2", p).await.unwrap(),
        149,
        "the group's cursor moved back"
    );
    b.close().await.unwrap();
    drop(a);
    c.close();
    srv.stop().await;
}
