//! Streams, publish and subscribe through the gRPC API of one in-process server.

mod common;

use std::time::Duration;

use common::*;
use liftbridge_proto::api::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_subscribe_returns_messages_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("orders", "orders")).await.unwrap();
    for (i, v) in ["a", "b", "c"].iter().enumerate() {
        let ack = publish(&mut c, "orders", v).await;
        assert_eq!(ack.offset, i as i64);
        assert_eq!(ack.stream, "orders");
        assert_eq!(ack.msg_subject, "orders");
        assert_eq!(ack.ack_error, ack::Error::Ok as i32);
    }
    let mut s = subscribe(&mut c, sub("orders", StartPosition::Earliest))
        .await
        .unwrap();
    for (i, v) in ["a", "b", "c"].iter().enumerate() {
        let m = next(&mut s).await.unwrap();
        assert_eq!(m.offset, i as i64);
        assert_eq!(m.value.as_ref(), v.as_bytes());
        assert_eq!(m.stream, "orders");
        assert_eq!(m.subject, "orders");
        assert!(m.timestamp > 0);
    }
    assert!(quiet_for(&mut s, Duration::from_millis(200)).await);
    // A live subscriber gets new messages.
    publish(&mut c, "orders", "d").await;
    assert_eq!(next(&mut s).await.unwrap().value.as_ref(), b"d");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_stream_validates_like_liftbridge() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("s", "s")).await.unwrap();
    let err = c.create_stream(stream("s", "s")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(err.message(), "stream already exists");
    let err = c.create_stream(stream("", "x")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "Name cannot be empty")
    );
    let err = c
        .create_stream(stream("y", "bad subject"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "Subject is invalid")
    );
    let err = c.create_stream(stream("z", "a..b")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c.create_stream(stream("__cursors", "x")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "Stream is reserved")
    );
    let err = c.create_stream(stream("a/b", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut r = stream("rf", "rf");
    r.replication_factor = 2;
    let err = c.create_stream(r).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "Invalid replicationFactor 2, cluster size 1"
        )
    );
    let mut r = stream("rf", "rf");
    r.replication_factor = -2;
    let err = c.create_stream(r).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "Invalid replicationFactor -2")
    );
    let mut r = stream("enc", "enc");
    r.encryption = Some(NullableBool { value: true });
    assert_eq!(
        c.create_stream(r).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let mut r = stream("seg", "seg");
    r.segment_max_bytes = Some(NullableInt64 { value: 10 });
    assert_eq!(
        c.create_stream(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Wildcard subjects and -1 (every broker) are fine.
    let mut r = stream("w", "orders.>");
    r.replication_factor = -1;
    c.create_stream(r).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_get_their_own_subjects() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut r = stream("p", "p");
    r.partitions = 3;
    c.create_stream(r).await.unwrap();
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec!["p".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.stream_metadata[0].partitions.len(), 3);
    for p in 0..3 {
        let resp = c
            .publish(with_deadline(PublishRequest {
                stream: "p".into(),
                partition: p,
                value: format!("to {p}").into(),
                expected_offset: -1,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let ack = resp.ack.unwrap();
        assert_eq!(ack.offset, 0);
        assert_eq!(
            ack.msg_subject,
            if p == 0 {
                "p".to_string()
            } else {
                format!("p.{p}")
            }
        );
    }
    for p in 0..3 {
        let mut req = sub("p", StartPosition::Earliest);
        req.partition = p;
        let mut s = subscribe(&mut c, req).await.unwrap();
        let m = next(&mut s).await.unwrap();
        assert_eq!(m.value, format!("to {p}").into_bytes());
        assert_eq!(m.partition, p);
    }
    let err = c
        .publish(with_deadline(PublishRequest {
            stream: "p".into(),
            partition: 3,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "no such partition: 3")
    );
    let err = c
        .publish(with_deadline(PublishRequest {
            stream: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "no such stream: nope")
    );
    srv.stop().await;
}
