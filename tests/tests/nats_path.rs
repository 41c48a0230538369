//! What makes it Liftbridge: messages published by any NATS client are recorded, and envelopes
//! get acks on their inbox by ack policy.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use liftbridge_proto::api::*;
use natsbridge::payload;

fn envelope(value: &str, inbox: &str, policy: AckPolicy, cid: &str) -> Bytes {
    let msg = Message {
        key: Bytes::from_static(b"k1"),
        value: Bytes::from(value.to_owned()),
        headers: [("h".to_string(), Bytes::from_static(b"v"))]
            .into_iter()
            .collect(),
        ack_inbox: inbox.into(),
        correlation_id: cid.into(),
        ack_policy: policy as i32,
        offset: -1,
        ..Default::default()
    };
    payload::encode(&msg, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_nats_messages_are_recorded_as_values() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("plain", "plain.subject"))
        .await
        .unwrap();
    let nc = srv.nats().await;
    nc.publish_with_reply("plain.subject", "reply.here", "hello".into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let mut s = subscribe(&mut c, sub("plain", StartPosition::Earliest))
        .await
        .unwrap();
    let m = next(&mut s).await.unwrap();
    assert_eq!(m.value.as_ref(), b"hello");
    assert!(m.key.is_empty());
    assert_eq!(m.subject, "plain.subject");
    assert_eq!(m.reply_subject, "reply.here");
    assert_eq!(
        m.headers.get("subject").map(|v| v.as_ref()),
        Some(&b"plain.subject"[..])
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_acked_by_policy() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("env", "env")).await.unwrap();
    let nc = srv.nats().await;
    let mut acks = nc.subscribe("my.acks").await.unwrap();
    nc.publish("env", envelope("one", "my.acks", AckPolicy::Leader, "c1"))
        .await
        .unwrap();
    nc.publish("env", envelope("two", "my.acks", AckPolicy::All, "c2"))
        .await
        .unwrap();
    nc.publish("env", envelope("three", "my.acks", AckPolicy::None, "c3"))
        .await
        .unwrap();
    nc.publish("env", envelope("four", "my.acks", AckPolicy::Leader, "c4"))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(5), acks.next())
            .await
            .unwrap()
            .unwrap();
        let a: Ack = payload::decode(&m.payload).unwrap();
        assert_eq!(a.stream, "env");
        assert_eq!(a.partition_subject, "env");
        assert_eq!(a.ack_error, ack::Error::Ok as i32);
        assert!(a.commit_timestamp >= a.reception_timestamp);
        got.push((a.correlation_id, a.offset));
    }
    got.sort();
    assert_eq!(
        got,
        vec![("c1".into(), 0), ("c2".into(), 1), ("c4".into(), 3)]
    );
    // No ack for policy NONE.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), acks.next())
            .await
            .is_err()
    );
    let mut s = subscribe(&mut c, sub("env", StartPosition::Earliest))
        .await
        .unwrap();
    let m = next(&mut s).await.unwrap();
    assert_eq!(m.key.as_ref(), b"k1");
    assert_eq!(m.value.as_ref(), b"one");
    assert_eq!(m.headers.get("h").map(|v| v.as_ref()), Some(&b"v"[..]));
    // Ack details are not sent to subscribers.
    assert!(m.ack_inbox.is_empty() && m.correlation_id.is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_and_shared_subjects() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("star", "orders.*")).await.unwrap();
    c.create_stream(stream("tail", "orders.>")).await.unwrap();
    c.create_stream(stream("eu", "orders.eu")).await.unwrap();
    c.create_stream(stream("eu2", "orders.eu")).await.unwrap();
    let nc = srv.nats().await;
    let mut watcher = nc.subscribe("orders.>").await.unwrap();
    // The API's publishes come from another connection: the watcher must be known first.
    round_trip(&nc).await;
    nc.publish("orders.eu", "1".into()).await.unwrap();
    nc.publish("orders.us.west", "2".into()).await.unwrap();
    // Through the API, the server's own streams get each publish once, and NATS sees it too.
    c.publish_to_subject(with_deadline(PublishToSubjectRequest {
        subject: "orders.eu".into(),
        value: "3".into(),
        ack_policy: AckPolicy::Leader as i32,
        ..Default::default()
    }))
    .await
    .unwrap();
    c.publish(with_deadline(PublishRequest {
        stream: "eu".into(),
        value: "4".into(),
        expected_offset: -1,
        ..Default::default()
    }))
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .unwrap()
            .unwrap();
        let value = match payload::decode::<liftbridge_proto::api::Message>(&m.payload) {
            Ok(env) => env.value.to_vec(),
            Err(_) => m.payload.to_vec(),
        };
        seen.push((m.subject.to_string(), String::from_utf8(value).unwrap()));
    }
    seen.sort();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        seen,
        pairs(&[
            ("orders.eu", "1"),
            ("orders.eu", "3"),
            ("orders.eu", "4"),
            ("orders.us.west", "2")
        ])
    );
    let values = |name: &'static str, n: usize| {
        let mut c = c.clone();
        async move {
            let mut s = subscribe(&mut c, sub(name, StartPosition::Earliest))
                .await
                .unwrap();
            let mut out = Vec::new();
            for i in 0..n {
                let m = next(&mut s).await.unwrap();
                assert_eq!(m.offset, i as i64, "{name}: offsets without gaps");
                out.push(String::from_utf8(m.value.to_vec()).unwrap());
            }
            assert!(
                quiet_for(&mut s, Duration::from_millis(150)).await,
                "{name} got more"
            );
            // NATS and the API reach a stream by different paths: compare as sets.
            out.sort();
            out
        }
    };
    assert_eq!(values("star", 3).await, vec!["1", "3", "4"]);
    assert_eq!(values("tail", 4).await, vec!["1", "2", "3", "4"]);
    assert_eq!(values("eu", 3).await, vec!["1", "3", "4"]);
    assert_eq!(values("eu2", 3).await, vec!["1", "3", "4"]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_get_a_too_large_ack() {
    let srv = TestServer::start_with(|c| c.broker.replication_max_bytes = 64).await;
    let mut c = srv.client().await;
    c.create_stream(stream("big", "big")).await.unwrap();
    let err = c
        .publish(with_deadline(PublishRequest {
            stream: "big".into(),
            value: vec![7u8; 200].into(),
            expected_offset: -1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let nc = srv.nats().await;
    let mut acks = nc.subscribe("big.acks").await.unwrap();
    nc.publish(
        "big",
        envelope(&"x".repeat(100), "big.acks", AckPolicy::Leader, "c"),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), acks.next())
        .await
        .unwrap()
        .unwrap();
    let a: Ack = payload::decode(&m.payload).unwrap();
    assert_eq!(a.ack_error, ack::Error::TooLarge as i32);
    // Nothing was written.
    assert_eq!(partition_md(&mut c, "big", 0).await.newest_offset, -1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_one_group_share_the_subject() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    for name in ["g1", "g2"] {
        let mut r = stream(name, "jobs");
        r.group = "workers".into();
        c.create_stream(r).await.unwrap();
    }
    c.create_stream(stream("all", "jobs")).await.unwrap();
    let nc = srv.nats().await;
    const N: usize = 40;
    for i in 0..N / 2 {
        nc.publish("jobs", format!("{i}").into()).await.unwrap();
    }
    nc.flush().await.unwrap();
    // Through the API too: with a group on the subject, NATS must choose the member.
    for i in N / 2..N {
        c.publish_to_subject(PublishToSubjectRequest {
            subject: "jobs".into(),
            value: format!("{i}").into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // The stream outside the group sees everything; the group members split it.
    let mut everything = subscribe(&mut c, sub("all", StartPosition::Earliest))
        .await
        .unwrap();
    for i in 0..N {
        assert_eq!(next(&mut everything).await.unwrap().offset, i as i64);
    }
    let newest = |name: &'static str| {
        let mut c = c.clone();
        async move { partition_md(&mut c, name, 0).await.newest_offset }
    };
    // Each message is recorded by exactly one group member (bounded wait for the last writes).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let total = newest("g1").await + 1 + newest("g2").await + 1;
        assert!(total <= N as i64, "a message recorded twice: {total}");
        if total == N as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {total} of {N} recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publishes_reach_nats_subscribers_that_come_and_go() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("solo", "solo")).await.unwrap();
    let publish = |value: &'static str| {
        let mut c = c.clone();
        async move {
            let ack = c
                .publish(with_deadline(PublishRequest {
                    stream: "solo".into(),
                    value: value.into(),
                    expected_offset: -1,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .ack
                .expect("an ack");
            ack.offset
        }
    };
    // Nobody but the stream listens, then a NATS subscriber, then nobody again.
    assert_eq!(publish("a").await, 0);
    let nc = srv.nats().await;
    let mut listener = nc.subscribe("solo").await.unwrap();
    // The broker sends to NATS only when someone else listens: it must see the listener.
    round_trip(&nc).await;
    assert_eq!(publish("b").await, 1);
    let m = tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .unwrap()
        .unwrap();
    let env: liftbridge_proto::api::Message = payload::decode(&m.payload).unwrap();
    assert_eq!(env.value.as_ref(), b"b");
    drop(listener);
    nc.flush().await.unwrap();
    assert_eq!(publish("c").await, 2);
    let mut s = subscribe(&mut c, sub("solo", StartPosition::Earliest))
        .await
        .unwrap();
    for (i, v) in ["a", "b", "c"].iter().enumerate() {
        let m = next(&mut s).await.unwrap();
        assert_eq!((m.offset, m.value.as_ref()), (i as i64, v.as_bytes()));
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_acks_that_cannot_commit_are_forgotten_after_the_max_wait() {
    // Min ISR 2 on one broker: nothing commits, so ALL acks never come.
    let srv = TestServer::start_with(|c| {
        c.broker.min_insync_replicas = 2;
        c.broker.all_ack_max_wait = Duration::from_secs(1);
    })
    .await;
    let mut c = srv.client().await;
    c.create_stream(stream("stuck", "stuck")).await.unwrap();
    let nc = srv.nats().await;
    for i in 0..5 {
        nc.publish(
            "stuck",
            envelope("v", "stuck.acks", AckPolicy::All, &format!("c{i}")),
        )
        .await
        .unwrap();
    }
    nc.flush().await.unwrap();
    let broker = srv.running().broker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    loop {
        let pending = broker.pending_acks();
        seen = seen.max(pending);
        // They were waiting, and now they are gone.
        if seen > 0 && pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} ALL acks still wait (at most {seen} seen)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    srv.stop().await;
}
