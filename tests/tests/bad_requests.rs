//! Requests that must be refused with InvalidArgument, and leave the broker serving and able to
//! restart.

mod common;

use common::*;
use liftbridge_proto::api::*;
use tonic::Code;

/// Creates a stream and expects InvalidArgument whose message contains `says`.
async fn refused(
    c: &mut api_client::ApiClient<tonic::transport::Channel>,
    req: CreateStreamRequest,
    says: &str,
) {
    let name = req.name.clone();
    let err = c.create_stream(req).await.expect_err(&name);
    assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
    assert!(
        err.message().contains(says),
        "{name}: {:?} does not say {says:?}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_create_stream_requests_are_invalid_arguments() {
    let mut srv = TestServer::start_with(|c| c.broker.max_partitions = 4).await;
    let mut c = srv.client().await;
    let with = |name: &str, f: &dyn Fn(&mut CreateStreamRequest)| {
        let mut r = stream(name, name);
        f(&mut r);
        r
    };
    // This one used to kill the server at once.
    refused(
        &mut c,
        with("huge", &|r| r.partitions = i32::MAX),
        "streams.max.partitions",
    )
    .await;
    refused(&mut c, with("five", &|r| r.partitions = 5), "not 5").await;
    refused(&mut c, with("negative", &|r| r.partitions = -1), "not -1").await;
    refused(
        &mut c,
        with("isr", &|r| r.min_isr = Some(NullableInt32 { value: 2 })),
        "replication factor 1",
    )
    .await;
    refused(
        &mut c,
        with("bytes", &|r| {
            r.retention_max_bytes = Some(NullableInt64 { value: -1 })
        }),
        "retentionMaxBytes",
    )
    .await;
    refused(
        &mut c,
        with("age", &|r| {
            r.retention_max_age = Some(NullableInt64 { value: -5 })
        }),
        "retentionMaxAge",
    )
    .await;
    refused(&mut c, stream(&"n".repeat(256), "long.name"), "256 bytes").await;
    refused(&mut c, stream("../escape", "escape"), "invalid").await;
    refused(&mut c, stream("a/escape", "escape"), "folder").await;
    refused(&mut c, stream("ok", &"s".repeat(1025)), "Subject").await;
    // Found by the random requests: partition 1 would record "orders.>.1", no subject at all;
    // the create was recorded, then its partitions never started.
    refused(
        &mut c,
        with("split", &|r| {
            r.subject = "orders.>".into();
            r.partitions = 2;
        }),
        "cannot be split into partitions",
    )
    .await;
    // Within the bounds, everything works, and a restart finds only what was accepted.
    c.create_stream(with("four", &|r| r.partitions = 4))
        .await
        .unwrap();
    assert_eq!(publish(&mut c, "four", "v").await.offset, 0);
    srv.restart_with(|c| c.broker.max_partitions = 4).await;
    let mut c = srv.client().await;
    let md = c
        .fetch_metadata(FetchMetadataRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<&str> = md.stream_metadata.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, vec!["__cursors", "four"]);
    let four = md
        .stream_metadata
        .iter()
        .find(|s| s.name == "four")
        .unwrap();
    assert_eq!(four.partitions.len(), 4);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_raft_heartbeat_is_refused_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (logger, lines) = capturing();
    let running = liftbridged::start(config(dir.path()), logger)
        .await
        .expect("server starts");
    // From the only member, a term ahead, committing far past the log: raft-rs would panic.
    let (subject, bytes) = forged_heartbeat(&running);
    let nc = async_nats::connect(running.nats_url()).await.unwrap();
    nc.publish(subject, bytes).await.unwrap();
    nc.flush().await.unwrap();
    wait_logged(
        &lines,
        &["WARN refused a raft message", "beyond the last index"],
    )
    .await;
    // The metadata node still leads and applies, and the API still works.
    let mut c = api_client::ApiClient::connect(format!("http://{}", running.grpc_addr()))
        .await
        .unwrap();
    c.create_stream(stream("after", "after")).await.unwrap();
    assert_eq!(publish(&mut c, "after", "v").await.offset, 0);
    assert!(running.broker().metadata().status().is_leader);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_grpc_limit_is_refused_before_it_is_read() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("big", "big")).await.unwrap();
    let limit = api::max_message_size(srv.running().broker());
    assert_eq!(
        limit,
        4 * 1024 * 1024,
        "1 MiB recorded, at least gRPC's usual 4 MiB"
    );
    let err = c
        .publish(with_deadline(PublishRequest {
            stream: "big".into(),
            value: vec![7u8; limit + 1].into(),
            expected_offset: -1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // Just under the limit of what is recorded, a message is refused by the broker's own rule.
    let err = c
        .publish(with_deadline(PublishRequest {
            stream: "big".into(),
            value: vec![7u8; 1024 * 1024 + 1].into(),
            expected_offset: -1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(publish(&mut c, "big", "small").await.offset, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_are_refused_and_a_bad_envelope_does_not_spoil_its_batch() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("hdr", "hdr")).await.unwrap();
    // Through the API: more headers than allowed, or a name too long.
    let many = (0..=broker::MAX_HEADERS)
        .map(|i| (format!("h{i}"), bytes::Bytes::from_static(b"v")))
        .collect();
    let err = c
        .publish(with_deadline(PublishRequest {
            stream: "hdr".into(),
            value: "v".into(),
            headers: many,
            expected_offset: -1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("headers"), "{err:?}");
    // On NATS: an envelope whose header name the log cannot store, then a good one. The bad
    // one gets TOO_LARGE; the good one is still recorded and acked.
    let nc = async_nats::connect(srv.running().nats_url()).await.unwrap();
    let mut acks = nc.subscribe("hdr.acks").await.unwrap();
    let envelope = |cid: &str, header: &str| {
        natsbridge::payload::encode(
            &Message {
                value: "v".into(),
                headers: [(header.to_owned(), bytes::Bytes::from_static(b"x"))]
                    .into_iter()
                    .collect(),
                ack_inbox: "hdr.acks".into(),
                correlation_id: cid.into(),
                ack_policy: AckPolicy::Leader as i32,
                offset: -1,
                ..Default::default()
            },
            false,
        )
    };
    nc.publish("hdr", envelope("bad", &"k".repeat(40_000)))
        .await
        .unwrap();
    nc.publish("hdr", envelope("good", "k")).await.unwrap();
    nc.flush().await.unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        use futures_util::StreamExt;
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), acks.next())
            .await
            .expect("an ack for each")
            .unwrap();
        let a: Ack = natsbridge::payload::decode(&m.payload).unwrap();
        got.insert(a.correlation_id.clone(), (a.ack_error, a.offset));
    }
    assert_eq!(got["bad"].0, ack::Error::TooLarge as i32);
    assert_eq!(got["good"], (ack::Error::Ok as i32, 0));
    srv.stop().await;
}
