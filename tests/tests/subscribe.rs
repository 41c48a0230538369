//! Subscription start and stop positions, reverse reads, and their error codes.

mod common;

use std::time::Duration;

use common::*;
use liftbridge_proto::api::*;
use tonic::Code;

async fn ten(
    c: &mut liftbridge_proto::api::api_client::ApiClient<tonic::transport::Channel>,
    name: &str,
) -> Vec<i64> {
    c.create_stream(stream(name, name)).await.unwrap();
    let mut stamps = Vec::new();
    for i in 0..10 {
        publish(c, name, &format!("m{i}")).await;
        let mut s = subscribe(
            c,
            SubscribeRequest {
                stream: name.into(),
                start_position: StartPosition::Offset as i32,
                start_offset: i,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        stamps.push(next(&mut s).await.unwrap().timestamp);
    }
    stamps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_positions() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let stamps = ten(&mut c, "s").await;
    let first = |req: SubscribeRequest| {
        let mut c = c.clone();
        async move {
            let mut s = subscribe(&mut c, req).await.unwrap();
            next(&mut s).await.unwrap().offset
        }
    };
    assert_eq!(first(sub("s", StartPosition::Earliest)).await, 0);
    assert_eq!(first(sub("s", StartPosition::Latest)).await, 9);
    let mut req = sub("s", StartPosition::Offset);
    req.start_offset = 4;
    assert_eq!(first(req).await, 4);
    // Below the oldest offset means the oldest.
    let mut req = sub("s", StartPosition::Offset);
    req.start_offset = -5;
    assert_eq!(first(req).await, 0);
    let mut req = sub("s", StartPosition::Timestamp);
    req.start_timestamp = stamps[6];
    assert_eq!(first(req).await, 6);
    let mut req = sub("s", StartPosition::Timestamp);
    req.start_timestamp = stamps[6] - 1;
    assert_eq!(first(req).await, 6);

    // NEW_ONLY, and an offset beyond the end, wait for new messages.
    let mut s = subscribe(&mut c, sub("s", StartPosition::NewOnly))
        .await
        .unwrap();
    let mut req = sub("s", StartPosition::Offset);
    req.start_offset = 11;
    let mut beyond = subscribe(&mut c, req).await.unwrap();
    assert!(quiet_for(&mut s, Duration::from_millis(200)).await);
    publish(&mut c, "s", "new").await;
    assert_eq!(next(&mut s).await.unwrap().offset, 10);
    assert!(quiet_for(&mut beyond, Duration::from_millis(100)).await);
    publish(&mut c, "s", "newer").await;
    assert_eq!(next(&mut beyond).await.unwrap().offset, 11);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_positions_end_with_resource_exhausted() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("empty", "empty")).await.unwrap();
    let mut req = sub("empty", StartPosition::Earliest);
    req.stop_position = StopPosition::StopLatest as i32;
    let err = subscribe(&mut c, req).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::ResourceExhausted, "Stream is empty")
    );

    let stamps = ten(&mut c, "s").await;
    let mut req = sub("s", StartPosition::Earliest);
    req.stop_position = StopPosition::StopLatest as i32;
    let mut s = subscribe(&mut c, req).await.unwrap();
    for i in 0..10 {
        assert_eq!(next(&mut s).await.unwrap().offset, i);
    }
    let end = next(&mut s).await.unwrap_err();
    assert_eq!(
        (end.code(), end.message()),
        (Code::ResourceExhausted, "Stop offset reached")
    );

    // An inclusive time range: offsets 2 to 6.
    let mut req = sub("s", StartPosition::Timestamp);
    req.start_timestamp = stamps[2];
    req.stop_position = StopPosition::StopTimestamp as i32;
    req.stop_timestamp = stamps[6];
    let mut s = subscribe(&mut c, req).await.unwrap();
    for i in 2..=6 {
        assert_eq!(next(&mut s).await.unwrap().offset, i);
    }
    assert_eq!(
        next(&mut s).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    let mut req = sub("s", StartPosition::Offset);
    req.start_offset = 5;
    req.stop_position = StopPosition::StopOffset as i32;
    req.stop_offset = 3;
    let err = subscribe(&mut c, req).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "Stop offset is before start offset: 3 < 5"
        )
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_reads_newest_first() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    ten(&mut c, "r").await;
    let mut req = sub("r", StartPosition::Latest);
    req.reverse = true;
    let mut s = subscribe(&mut c, req).await.unwrap();
    for i in (0..10).rev() {
        assert_eq!(next(&mut s).await.unwrap().offset, i);
    }
    // The end of a reverse read is a clean end of the stream.
    assert!(
        tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut s)
        )
        .await
        .unwrap()
        .is_none()
    );

    let mut req = sub("r", StartPosition::Offset);
    req.start_offset = 7;
    req.reverse = true;
    req.stop_position = StopPosition::StopOffset as i32;
    req.stop_offset = 5;
    let mut s = subscribe(&mut c, req).await.unwrap();
    let got: Vec<i64> = vec![
        next(&mut s).await.unwrap().offset,
        next(&mut s).await.unwrap().offset,
        next(&mut s).await.unwrap().offset,
    ];
    assert_eq!(got, vec![7, 6, 5]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_errors() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let err = subscribe(&mut c, sub("missing", StartPosition::Earliest))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "No such partition")
    );
    c.create_stream(stream("s", "s")).await.unwrap();
    let mut req = sub("s", StartPosition::Earliest);
    req.partition = 1;
    assert_eq!(
        subscribe(&mut c, req).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut req = sub("s", StartPosition::Earliest);
    req.consumer = Some(Consumer {
        group_id: "g".into(),
        ..Default::default()
    });
    let err = subscribe(&mut c, req).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "Consumer id cannot be empty when group id is provided"
        )
    );
    let mut req = sub("s", StartPosition::Earliest);
    req.start_position = 42;
    assert_eq!(
        subscribe(&mut c, req).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // A live subscriber of a deleted stream gets NotFound.
    let mut s = subscribe(&mut c, sub("s", StartPosition::Earliest))
        .await
        .unwrap();
    c.delete_stream(DeleteStreamRequest { name: "s".into() })
        .await
        .unwrap();
    assert_eq!(next(&mut s).await.unwrap_err().code(), Code::NotFound);
    srv.stop().await;
}

/// The offsets a subscription delivers until it ends, with the code it ends with (`Ok` for a
/// clean end).
async fn offsets_until_end(
    c: &mut liftbridge_proto::api::api_client::ApiClient<tonic::transport::Channel>,
    req: SubscribeRequest,
) -> (Vec<i64>, Code) {
    let mut s = subscribe(c, req).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut s),
        )
        .await
        .expect("a message or the end in time")
        {
            Some(Ok(m)) => got.push(m.offset),
            Some(Err(e)) => return (got, e.code()),
            None => return (got, Code::Ok),
        }
    }
    panic!("the subscription did not end: {got:?}");
}

/// On a compacted log whose stop offset was compacted away, a subscription ends before the
/// next message after it, forwards and in reverse, and a stop timestamp between the
/// remaining messages does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_offset_compacted_away_is_not_passed() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut req = stream("cmp", "cmp");
    // One message per segment (values larger than a segment); the cleaner compacts every 50 ms.
    req.segment_max_bytes = Some(NullableInt64 { value: 1024 });
    req.cleaner_interval = Some(NullableInt64 { value: 50 });
    req.compact_enabled = Some(NullableBool { value: true });
    c.create_stream(req).await.unwrap();
    // Offsets 5, 6 and 7 share a key: compaction keeps 7 of them.
    let keys = ["k0", "k1", "k2", "k3", "k4", "x", "x", "x", "k8"];
    let mut stamps = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let ack = c
            .publish(with_deadline(PublishRequest {
                stream: "cmp".into(),
                key: k.as_bytes().to_vec().into(),
                value: format!("v{i}-{}", "x".repeat(1100)).into(),
                expected_offset: -1,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .ack
            .unwrap();
        assert_eq!(ack.offset, i as i64);
        stamps.push(ack.reception_timestamp);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut r = sub("cmp", StartPosition::Earliest);
        r.stop_position = StopPosition::StopLatest as i32;
        let (got, _) = offsets_until_end(&mut c, r).await;
        if got == [0, 1, 2, 3, 4, 7, 8] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not compacted: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop_at = |start: StartPosition, offset: i64, stop: i64| {
        let mut r = sub("cmp", start);
        r.start_offset = offset;
        r.stop_position = StopPosition::StopOffset as i32;
        r.stop_offset = stop;
        r
    };
    let (got, end) = offsets_until_end(&mut c, stop_at(StartPosition::Earliest, 0, 5)).await;
    assert_eq!((got, end), (vec![0, 1, 2, 3, 4], Code::ResourceExhausted));
    let (got, _) = offsets_until_end(&mut c, stop_at(StartPosition::Offset, 5, 5)).await;
    assert_eq!(got, Vec::<i64>::new());
    let (got, _) = offsets_until_end(&mut c, stop_at(StartPosition::Offset, 0, 7)).await;
    assert_eq!(
        got,
        vec![0, 1, 2, 3, 4, 7],
        "a stop offset still there is delivered"
    );
    // In reverse from 8, stopping at 6: 8 and 7 only.
    let mut r = stop_at(StartPosition::Offset, 8, 6);
    r.reverse = true;
    let (got, _) = offsets_until_end(&mut c, r).await;
    assert_eq!(got, vec![8, 7]);
    // A stop timestamp after offset 4's and before offset 7's (those of 5 and 6 are gone).
    let mut r = sub("cmp", StartPosition::Earliest);
    r.stop_position = StopPosition::StopTimestamp as i32;
    r.stop_timestamp = stamps[6];
    let (got, _) = offsets_until_end(&mut c, r).await;
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    srv.stop().await;
}
