//! Two brokers in one cluster: the second joins the first's metadata group over the first's
//! embedded NATS. Metadata lists both, and calls that need the partition leader refuse on the
//! other broker with Liftbridge's codes. Streams here have one replica; `replication.rs` covers
//! replicated ones.

mod common;

use std::time::{Duration, Instant};

use common::*;
use liftbridge_proto::api::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_joins_and_routing_errors_name_the_leader() {
    let first = TestServer::start().await;
    let second_dir = tempfile::tempdir().unwrap();
    let mut cfg = config(second_dir.path());
    cfg.broker.server_id = "b".into();
    cfg.embedded_nats = None;
    cfg.broker.nats.servers = vec![first.running().nats_url().to_owned()];
    cfg.broker.bootstrap = broker::Bootstrap::Join;
    cfg.broker.cursors.partitions = 0;
    // A fresh id file, so the configured id "b" is used.
    let second = liftbridged::start(cfg, quiet())
        .await
        .expect("the second broker joins");

    let mut a = first.client().await;
    let mut b = api_client::ApiClient::connect(format!("http://{}", second.grpc_addr()))
        .await
        .unwrap();
    // Both brokers appear in the metadata, each with its own address.
    let deadline = Instant::now() + Duration::from_secs(20);
    let brokers = loop {
        let md = a
            .fetch_metadata(FetchMetadataRequest::default())
            .await
            .unwrap()
            .into_inner();
        if md.brokers.len() == 2 || Instant::now() > deadline {
            break md.brokers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = brokers.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert_eq!(brokers[1].port, i32::from(second.grpc_addr().port()));

    // Two partitions: one lands on each broker (least-loaded placement).
    let mut r = stream("two", "two");
    r.partitions = 2;
    b.create_stream(r).await.unwrap();
    let md = a
        .fetch_metadata(FetchMetadataRequest {
            streams: vec!["two".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let parts = &md.stream_metadata[0].partitions;
    let mut leaders: Vec<&str> = parts.values().map(|p| p.leader.as_str()).collect();
    leaders.sort();
    assert_eq!(leaders, vec!["a", "b"], "one partition on each broker");
    let on_b = parts.values().find(|p| p.leader == "b").unwrap().id;

    // A publish through either broker reaches the leader through NATS.
    let resp = a
        .publish(with_deadline(PublishRequest {
            stream: "two".into(),
            partition: on_b,
            value: "via a".into(),
            expected_offset: -1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.ack.unwrap().offset, 0);

    // Leader-only calls on the other broker.
    let mut req = sub("two", StartPosition::Earliest);
    req.partition = on_b;
    let err = subscribe(&mut a, req.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "Server not partition leader")
    );
    let err = a
        .fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: "two".into(),
            partition: on_b,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::FailedPrecondition,
            "The request should be sent to partition leader"
        )
    );
    // The leader serves it.
    let mut s = subscribe(&mut b, req).await.unwrap();
    assert_eq!(next(&mut s).await.unwrap().value.as_ref(), b"via a");

    second.shutdown().await;
    first.stop().await;
}
