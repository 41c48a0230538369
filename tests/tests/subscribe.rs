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
