//! PublishAsync, optimistic concurrency control, and PublishToSubject.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use liftbridge_proto::api::*;
use tonic::Code;

fn req(stream: &str, value: String, cid: String) -> PublishRequest {
    PublishRequest {
        stream: stream.into(),
        value: value.into(),
        correlation_id: cid,
        expected_offset: -1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_in_flight_each_acked_once_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("a", "a")).await.unwrap();
    const N: usize = 3000;
    let (tx, rx) = tokio::sync::mpsc::channel(N + 2);
    for i in 0..N {
        tx.send(req("a", format!("v{i}"), format!("id{i}")))
            .await
            .unwrap();
    }
    // One bad request in the middle of good ones.
    tx.send(req("nope", "x".into(), "bad".into()))
        .await
        .unwrap();
    let mut out = c
        .publish_async(tokio_stream_from(rx))
        .await
        .unwrap()
        .into_inner();
    let mut offsets: HashMap<String, i64> = HashMap::new();
    let mut errors = Vec::new();
    while offsets.len() + errors.len() < N + 1 {
        let r = next_response(&mut out).await;
        if let Some(e) = r.async_error {
            errors.push((r.correlation_id, e.code));
            continue;
        }
        let ack = r.ack.unwrap();
        assert_eq!(ack.correlation_id, r.correlation_id);
        assert!(
            offsets.insert(r.correlation_id, ack.offset).is_none(),
            "acked twice"
        );
    }
    assert_eq!(
        errors,
        vec![(
            "bad".to_string(),
            publish_async_error::Code::NotFound as i32
        )]
    );
    for i in 0..N {
        assert_eq!(
            offsets[&format!("id{i}")],
            i as i64,
            "acks follow publish order"
        );
    }
    drop(tx);
    // The session ends once the client is done and every ack is in.
    assert!(
        tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .unwrap()
            .is_none()
    );
    srv.stop().await;
}

/// A burst of PublishAsync requests that mixes two partitions, requests that fail and
/// requests that want no ack. The broker takes requests that are already there together; each
/// partition must still record its messages in publish order, every request that wants an
/// answer gets exactly one, and those with policy NONE are recorded without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_burst_keeps_each_partitions_order() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(CreateStreamRequest {
        partitions: 2,
        ..stream("m", "m")
    })
    .await
    .unwrap();
    const N: usize = 600;
    let (tx, rx) = tokio::sync::mpsc::channel(N + 2);
    // What each partition should hold, in order.
    let mut expected: [Vec<String>; 2] = Default::default();
    let mut bad = Vec::new();
    for i in 0..N {
        let mut r = req("m", format!("v{i}"), format!("id{i}"));
        match i % 7 {
            3 => {
                r.stream = "nope".into();
                bad.push(r.correlation_id.clone());
            }
            5 => {
                r.ack_policy = AckPolicy::None as i32;
                r.partition = (i % 2) as i32;
                expected[i % 2].push(format!("v{i}"));
            }
            _ => {
                // Runs of three to the same partition, then a switch.
                let part = (i / 3) % 2;
                r.partition = part as i32;
                expected[part].push(format!("v{i}"));
            }
        }
        tx.send(r).await.unwrap();
    }
    let mut out = c
        .publish_async(tokio_stream_from(rx))
        .await
        .unwrap()
        .into_inner();
    let answers = N - (0..N).filter(|i| i % 7 == 5).count();
    let mut acked: HashMap<String, (i32, i64)> = HashMap::new();
    let mut errors = Vec::new();
    while acked.len() + errors.len() < answers {
        let r = next_response(&mut out).await;
        if let Some(e) = r.async_error {
            assert_eq!(e.code, publish_async_error::Code::NotFound as i32);
            errors.push(r.correlation_id);
            continue;
        }
        let ack = r.ack.unwrap();
        let part = match ack.msg_subject.as_str() {
            "m" => 0,
            "m.1" => 1,
            other => panic!("ack for an unexpected subject {other}"),
        };
        let place = (part, ack.offset);
        assert!(
            acked.insert(r.correlation_id, place).is_none(),
            "acked twice"
        );
    }
    errors.sort();
    bad.sort();
    assert_eq!(errors, bad);
    // Each ack names the partition and offset where its message is recorded.
    for (part, values) in expected.iter().enumerate() {
        for (offset, v) in values.iter().enumerate() {
            let id = v.replacen('v', "id", 1);
            if let Some(place) = acked.get(&id) {
                assert_eq!(*place, (part as i32, offset as i64), "ack of {id}");
            }
        }
    }
    drop(tx);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .unwrap()
            .is_none(),
        "no answer for the requests with policy NONE"
    );
    for (part, values) in expected.iter().enumerate() {
        let mut s = subscribe(
            &mut c,
            SubscribeRequest {
                partition: part as i32,
                ..sub("m", StartPosition::Earliest)
            },
        )
        .await
        .unwrap();
        for (offset, v) in values.iter().enumerate() {
            let m = next(&mut s).await.unwrap();
            assert_eq!((m.offset, &m.value[..]), (offset as i64, v.as_bytes()));
        }
        assert!(quiet_for(&mut s, Duration::from_millis(200)).await);
    }
    srv.stop().await;
}

/// A publisher that never stops sending on one PublishAsync session, and reads every
/// response: the broker takes no more requests while `publish.async.max.inflight` of them wait
/// for their ack, however fast it could read, so what it holds for the session stays bounded.
/// Every request is still answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_takes_no_more_than_its_inflight_bound() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const BOUND: usize = 64;
    const OUT: usize = 8;
    const N: usize = 20_000;
    let srv = TestServer::start_with(|c| c.broker.publish_async_max_inflight = BOUND).await;
    let mut c = srv.client().await;
    c.create_stream(stream("bound", "bound")).await.unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let input = futures_util::stream::iter(0..N).map(move |i| {
        p.fetch_add(1, SeqCst);
        req("bound", format!("v{i}"), format!("id{i}"))
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel(OUT);
    let broker = srv.running().broker().clone();
    let session = tokio::spawn(async move { broker.publish_async(input, tx).await });
    let mut most_ahead = 0;
    for i in 0..N {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("responses keep coming")
            .expect("session open");
        assert!(r.async_error.is_none(), "{r:?}");
        assert_eq!(r.ack.map(|a| a.offset), Some(i as i64));
        // Taken by the session and not yet answered to this reader.
        most_ahead = most_ahead.max(pulled.load(SeqCst) - (i + 1));
    }
    assert!(
        most_ahead <= BOUND + OUT + 1,
        "the session took {most_ahead} requests ahead of its answers (bound {BOUND})"
    );
    tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session ends once its input has")
        .unwrap();
    srv.stop().await;
}

/// Publishes on one PublishAsync session until `change` has been made, with many messages in
/// flight when it is, and returns each correlation id with its answer: an offset or an error
/// code. The session must answer every message it took before it ends.
async fn publish_through(
    srv: &TestServer,
    name: &str,
    change: impl AsyncFnOnce(
        &mut liftbridge_proto::api::api_client::ApiClient<tonic::transport::Channel>,
    ),
) -> (usize, HashMap<String, Result<i64, i32>>) {
    let mut c = srv.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let mut out = c
        .publish_async(tokio_stream_from(rx))
        .await
        .unwrap()
        .into_inner();
    let name2 = name.to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        for i in 0..200_000 {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if tx
                .send(req(&name2, format!("v{i}"), format!("id{i}")))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut answers = HashMap::new();
    let mut changed = Some(change);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = tokio::time::timeout_at(deadline, out.next())
            .await
            .expect("the session ends within 60 s");
        let Some(r) = r else { break };
        let r = r.unwrap();
        let answer = match (&r.async_error, &r.ack) {
            (Some(e), _) => Err(e.code),
            (None, Some(a)) => Ok(a.offset),
            (None, None) => panic!("an empty response"),
        };
        assert!(
            answers.insert(r.correlation_id, answer).is_none(),
            "answered twice"
        );
        if answers.len() == 2000
            && let Some(change) = changed.take()
        {
            let mut admin = srv.client().await;
            change(&mut admin).await;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let sent = sender.await.unwrap();
    for i in 0..sent {
        assert!(
            answers.contains_key(&format!("id{i}")),
            "id{i} of {sent} got no answer"
        );
    }
    assert_eq!(answers.len(), sent);
    (sent, answers)
}

/// A partition turned read-only while a PublishAsync session has messages in flight to it:
/// each of them is stored and acked, or refused as READONLY; none is left to time out. Under
/// both sync policies: under `always`, messages wait in the partition's ingest queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_in_flight_is_answered_when_a_partition_turns_readonly() {
    for sync in [commitlog::SyncPolicy::Always, commitlog::SyncPolicy::Os] {
        readonly_mid_session(sync).await;
    }
}

async fn readonly_mid_session(sync: commitlog::SyncPolicy) {
    let srv = TestServer::start_with(|c| c.broker.sync = sync).await;
    let mut c = srv.client().await;
    c.create_stream(stream("ro", "ro")).await.unwrap();
    let (sent, answers) = publish_through(&srv, "ro", async |c| {
        c.set_stream_readonly(SetStreamReadonlyRequest {
            name: "ro".into(),
            partitions: vec![],
            readonly: true,
        })
        .await
        .unwrap();
    })
    .await;
    let end = partition_md(&mut c, "ro", 0).await.newest_offset;
    // Stored and acked in publish order up to the change, refused after it.
    let stored = answers.values().filter(|a| a.is_ok()).count();
    assert!(stored >= 2000);
    for i in 0..sent {
        let expected = if i < stored {
            Ok(i as i64)
        } else {
            Err(publish_async_error::Code::Readonly as i32)
        };
        assert_eq!(answers[&format!("id{i}")], expected, "id{i}");
    }
    assert_eq!(end, stored as i64 - 1, "every stored message was acked");
    srv.stop().await;
}

/// A partition paused while a PublishAsync session has messages in flight to it (under the
/// `always` sync policy, so that they wait in its ingest queue): each message is stored and
/// acked, or refused as not stored; the next publish resumes the partition. The stored ones
/// are acked in publish order, at consecutive offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_in_flight_is_answered_when_a_partition_pauses() {
    let srv = TestServer::start_with(|c| c.broker.sync = commitlog::SyncPolicy::Always).await;
    let mut c = srv.client().await;
    c.create_stream(stream("pz", "pz")).await.unwrap();
    let (sent, answers) = publish_through(&srv, "pz", async |c| {
        c.pause_stream(PauseStreamRequest {
            name: "pz".into(),
            partitions: vec![],
            resume_all: false,
        })
        .await
        .unwrap();
    })
    .await;
    let mut next = 0;
    for i in 0..sent {
        match answers[&format!("id{i}")] {
            Ok(o) => {
                assert_eq!(o, next, "id{i}");
                next += 1;
            }
            Err(code) => assert_eq!(code, publish_async_error::Code::Internal as i32, "id{i}"),
        }
    }
    let md = partition_md(&mut c, "pz", 0).await;
    assert_eq!(md.newest_offset, next - 1, "every stored message was acked");
    srv.stop().await;
}

/// Unary publishes that name their own ack inbox: the broker listens on it before the message
/// can be acked, so each stored message is reported acked, never as a timeout (before, the ack
/// could reach the NATS server ahead of the broker's subscription to the inbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_its_own_ack_inbox_gets_its_ack() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("own", "own")).await.unwrap();
    const N: usize = 1000;
    let mut timeouts = Vec::new();
    for i in 0..N {
        let mut r = tonic::Request::new(PublishRequest {
            stream: "own".into(),
            value: format!("v{i}").into(),
            ack_inbox: format!("_INBOX.own.{i}"),
            correlation_id: format!("id{i}"),
            expected_offset: -1,
            ..Default::default()
        });
        r.set_timeout(Duration::from_secs(2));
        match c.publish(r).await {
            Ok(resp) => assert_eq!(resp.into_inner().ack.map(|a| a.offset), Some(i as i64)),
            Err(s) => {
                timeouts.push(i);
                assert!(timeouts.len() <= 3, "{s:?}; so far {timeouts:?}");
            }
        }
    }
    assert_eq!(
        timeouts,
        Vec::<usize>::new(),
        "stored messages reported as not acked"
    );
    srv.stop().await;
}

/// An error ack for a message with ack policy NONE (refused as too large by the partition)
/// does not count as the answer of a message that waits for its ack: the session still waits
/// for that one before it ends (before, the error ack lowered the count, and the session ended
/// with the other ack outstanding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_ack_for_a_none_message_does_not_end_the_session_early() {
    let srv = TestServer::start_with(|c| c.broker.replication_max_bytes = 1024).await;
    let mut c = srv.client().await;
    c.create_stream(stream("none", "none")).await.unwrap();
    let mut big = req("none", "x".repeat(2000), "big".into());
    big.ack_policy = AckPolicy::None as i32;
    let small = req("none", "ok".into(), "small".into());
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let broker = srv.running().broker().clone();
    let input = futures_util::stream::iter([big, small]);
    let session = tokio::spawn(async move { broker.publish_async(input, tx).await });
    let mut answers = HashMap::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the session ends in time")
    {
        let answer = match (&r.async_error, &r.ack) {
            (Some(e), _) => Err(e.code),
            (None, Some(a)) => Ok(a.offset),
            (None, None) => panic!("an empty response"),
        };
        answers.insert(r.correlation_id, answer);
    }
    session.await.unwrap();
    assert_eq!(answers.get("small"), Some(&Ok(0)), "{answers:?}");
    assert_eq!(
        answers.get("big"),
        Some(&Err(publish_async_error::Code::BadRequest as i32)),
        "{answers:?}"
    );
    srv.stop().await;
}

/// The next PublishAsync response, within 10 s.
async fn next_response(out: &mut tonic::Streaming<PublishResponse>) -> PublishResponse {
    tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .expect("responses keep coming")
        .expect("stream open")
        .unwrap()
}

/// The requests sent on `rx`, as a stream.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<PublishRequest>,
) -> impl futures_util::Stream<Item = PublishRequest> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_concurrency_control() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut r = stream("occ", "occ");
    r.optimistic_concurrency_control = Some(NullableBool { value: true });
    c.create_stream(r).await.unwrap();
    let publish_at = |expected: i64, policy: AckPolicy| {
        let mut c = c.clone();
        async move {
            c.publish(with_deadline(PublishRequest {
                stream: "occ".into(),
                value: "v".into(),
                expected_offset: expected,
                ack_policy: policy as i32,
                ..Default::default()
            }))
            .await
        }
    };
    let err = publish_at(0, AckPolicy::None).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "stream with concurrency control must have AckPolicy set"
        )
    );
    assert_eq!(
        publish_at(0, AckPolicy::Leader)
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap()
            .offset,
        0
    );
    assert_eq!(
        publish_at(1, AckPolicy::Leader)
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap()
            .offset,
        1
    );
    // A stale expectation is a conflict.
    let err = publish_at(1, AckPolicy::Leader).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    // -1 skips the check.
    assert_eq!(
        publish_at(-1, AckPolicy::All)
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap()
            .offset,
        2
    );
    // The next expected offset comes from FetchPartitionMetadata.
    let md = partition_md(&mut c.clone(), "occ", 0).await;
    assert_eq!(
        publish_at(md.newest_offset + 1, AckPolicy::Leader)
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap()
            .offset,
        3
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_subject_and_no_deadline() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut r = stream("g", "grouped");
    r.group = "workers".into();
    c.create_stream(r).await.unwrap();
    let ack = c
        .publish_to_subject(with_deadline(PublishToSubjectRequest {
            subject: "grouped".into(),
            value: "raw".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap();
    assert_eq!((ack.stream.as_str(), ack.offset), ("g", 0));
    // Without a deadline the call returns at once, with no ack; the message is still written.
    let resp = c
        .publish(PublishRequest {
            stream: "g".into(),
            value: "later".into(),
            expected_offset: -1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.ack.is_none());
    let mut s = subscribe(&mut c, sub("g", StartPosition::Earliest))
        .await
        .unwrap();
    assert_eq!(next(&mut s).await.unwrap().value.as_ref(), b"raw");
    assert_eq!(next(&mut s).await.unwrap().value.as_ref(), b"later");
    let err = c
        .publish_to_subject(with_deadline(PublishToSubjectRequest {
            subject: "a.*".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    srv.stop().await;
}

/// Messages whose acks never come (ALL acks on a partition that cannot commit) must not hold a
/// session's every place: a message to a healthy partition on the same session is still
/// acked. At the bound the session reads nothing until those places expire
/// (`all_ack_max_wait` + 5 s, 65 s by default), so one stuck partition stalls every other
/// partition published through the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open: the in-flight bound is per session, as a Kafka producer's is per connection; see docs/reliability.md, Still open"]
async fn acks_that_never_come_do_not_stall_other_partitions_of_the_session() {
    const BOUND: usize = 4;
    // With min ISR 2 on a single broker nothing commits, so ALL acks never come.
    let srv = TestServer::start_with(|c| {
        c.broker.publish_async_max_inflight = BOUND;
        c.broker.min_insync_replicas = 2;
    })
    .await;
    let mut c = srv.client().await;
    c.create_stream(stream("stuck", "stuck")).await.unwrap();
    c.create_stream(stream("fine", "fine")).await.unwrap();
    let mut reqs: Vec<PublishRequest> = (0..BOUND)
        .map(|i| PublishRequest {
            ack_policy: AckPolicy::All as i32,
            ..req("stuck", format!("s{i}"), format!("s{i}"))
        })
        .collect();
    reqs.push(req("fine", "f".into(), "f".into()));
    let input = futures_util::stream::iter(reqs).chain(futures_util::stream::pending());
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let broker = srv.running().broker().clone();
    let session = tokio::spawn(async move { broker.publish_async(input, tx).await });
    let answer = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
    session.abort();
    let r = answer
        .expect("the healthy partition's message was answered")
        .expect("session open");
    assert_eq!(r.correlation_id, "f");
    assert_eq!(r.ack.map(|a| a.offset), Some(0));
    srv.stop().await;
}
