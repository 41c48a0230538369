//! Consumer groups through the RPCs, on one broker: the original's validation, codes and
//! messages; assignments by its algorithm (its lifecycle test); group metadata; stream deletion;
//! member expiry; activity events; and the fencing of group subscriptions by epoch.

mod common;

use std::time::{Duration, Instant};

use common::groups::group_md;
use common::*;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

fn join(group: &str, consumer: &str, streams: &[&str]) -> JoinConsumerGroupRequest {
    JoinConsumerGroupRequest {
        group_id: group.into(),
        consumer_id: consumer.into(),
        streams: streams.iter().map(|s| s.to_string()).collect(),
    }
}

async fn assignments(
    c: &mut ApiClient<Channel>,
    group: &str,
    consumer: &str,
    epoch: u64,
) -> Result<(u64, Vec<(String, Vec<i32>)>), tonic::Status> {
    let r = c
        .fetch_consumer_group_assignments(FetchConsumerGroupAssignmentsRequest {
            group_id: group.into(),
            consumer_id: consumer.into(),
            epoch,
        })
        .await?
        .into_inner();
    let mut a: Vec<(String, Vec<i32>)> = r
        .assignments
        .into_iter()
        .map(|a| (a.stream, a.partitions))
        .collect();
    a.sort();
    Ok((r.epoch, a))
}

fn pairs(items: &[(&str, &[i32])]) -> Vec<(String, Vec<i32>)> {
    items
        .iter()
        .map(|(s, p)| (s.to_string(), p.to_vec()))
        .collect()
}

fn refused(e: tonic::Status, code: Code, message: &str) {
    assert_eq!((e.code(), e.message()), (code, message), "{e:?}");
}

async fn streams(c: &mut ApiClient<Channel>, names: &[(&str, i32)]) {
    for (name, n) in names {
        let mut r = stream(name, name);
        r.partitions = *n;
        c.create_stream(r).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_get_the_originals_codes_and_messages() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    refused(
        c.join_consumer_group(join("", "c", &["s"]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "No groupId provided",
    );
    refused(
        c.join_consumer_group(join("g", "", &["s"]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "No consumerId provided",
    );
    refused(
        c.join_consumer_group(join("g", "c", &[]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "No streams provided",
    );
    // The original's AddMember test: joining before the stream exists fails.
    refused(
        c.join_consumer_group(join("g", "c", &["later"]))
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "stream does not exist",
    );
    streams(&mut c, &[("later", 1)]).await;
    // A new group's epoch is its creation's metadata index (the original's is 0).
    let epoch = c
        .join_consumer_group(join("g", "c", &["later"]))
        .await
        .unwrap()
        .into_inner()
        .epoch;
    refused(
        c.join_consumer_group(join("g", "c", &["later"]))
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "consumer is already a member of the consumer group",
    );
    refused(
        c.leave_consumer_group(LeaveConsumerGroupRequest {
            group_id: "nope".into(),
            consumer_id: "c".into(),
        })
        .await
        .unwrap_err(),
        Code::NotFound,
        "consumer group does not exist",
    );
    refused(
        c.leave_consumer_group(LeaveConsumerGroupRequest {
            group_id: "g".into(),
            consumer_id: "stranger".into(),
        })
        .await
        .unwrap_err(),
        Code::FailedPrecondition,
        "consumer is not a member of the consumer group",
    );
    refused(
        assignments(&mut c, "nope", "c", 0).await.unwrap_err(),
        Code::NotFound,
        "consumer group does not exist",
    );
    refused(
        assignments(&mut c, "g", "c", 99).await.unwrap_err(),
        Code::FailedPrecondition,
        "client-provided group epoch differs from broker group epoch",
    );
    refused(
        assignments(&mut c, "g", "stranger", epoch)
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "consumer is not a member of the consumer group",
    );
    refused(
        c.report_consumer_group_coordinator(ReportConsumerGroupCoordinatorRequest {
            group_id: "g".into(),
            consumer_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "No coordinator provided",
    );
    refused(
        c.report_consumer_group_coordinator(ReportConsumerGroupCoordinatorRequest {
            group_id: "g".into(),
            consumer_id: "c".into(),
            coordinator: "zz".into(),
            epoch: 0,
        })
        .await
        .unwrap_err(),
        Code::FailedPrecondition,
        &format!(
            "Coordinator generation mismatch, current coordinator: a epoch: {epoch}, got coordinator: zz epoch: 0"
        ),
    );
    let mut req = sub("later", StartPosition::Earliest);
    req.consumer = Some(Consumer {
        group_id: "g".into(),
        ..Default::default()
    });
    refused(
        subscribe(&mut c, req).await.unwrap_err(),
        Code::InvalidArgument,
        "Consumer id cannot be empty when group id is provided",
    );
    srv.stop().await;

    // Without the cursors stream, where members keep their positions, groups cannot work.
    let srv = TestServer::start_with(|c| c.broker.cursors.partitions = 0).await;
    let mut c = srv.client().await;
    streams(&mut c, &[("s", 1)]).await;
    let e = c
        .join_consumer_group(join("g", "c", &["s"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("cursors.stream.partitions"), "{e:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originals_lifecycle_assigns_and_rebalances_partitions() {
    let srv = TestServer::start_with(|c| c.broker.activity.enabled = true).await;
    let mut c = srv.client().await;
    streams(&mut c, &[("foo", 2), ("bar", 2)]).await;
    assert_eq!(
        group_md(&mut c, "g").await.error,
        consumer_group_metadata::Error::UnknownGroup as i32
    );

    let j = c
        .join_consumer_group(join("g", "c1", &["foo", "bar", "foo"]))
        .await
        .unwrap()
        .into_inner();
    // A new group's epoch is its creation's metadata index (the original's is 0).
    assert_eq!(j.coordinator.as_str(), "a");
    assert!(j.epoch > 0, "epoch {}", j.epoch);
    assert_eq!(j.consumer_timeout, 15_000_000_000, "nanoseconds");
    assert_eq!(j.coordinator_timeout, 15_000_000_000);
    assert_eq!(
        assignments(&mut c, "g", "c1", j.epoch).await.unwrap(),
        (j.epoch, pairs(&[("bar", &[0, 1]), ("foo", &[0, 1])]))
    );
    let md = group_md(&mut c, "g").await;
    assert_eq!(
        (md.error, md.coordinator.as_str(), md.epoch),
        (consumer_group_metadata::Error::Ok as i32, "a", j.epoch)
    );
    // Ours: the members and their assignments, and every group when asked for all.
    assert_eq!(
        md.members,
        vec![ConsumerGroupMember {
            consumer_id: "c1".into(),
            streams: vec!["bar".into(), "foo".into()],
            assignments: vec![
                PartitionAssignment {
                    stream: "bar".into(),
                    partitions: vec![0, 1],
                },
                PartitionAssignment {
                    stream: "foo".into(),
                    partitions: vec![0, 1],
                },
            ],
        }]
    );
    let all = c
        .fetch_metadata(FetchMetadataRequest {
            all_groups: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_metadata;
    assert_eq!(
        all.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(),
        ["g"]
    );
    assert!(
        group_md(&mut c, "g").await.members.len() == 1
            && c.fetch_metadata(FetchMetadataRequest::default())
                .await
                .unwrap()
                .into_inner()
                .group_metadata
                .is_empty(),
        "without the flag, only the groups asked for"
    );

    // c2 on foo takes both foo partitions; c1 keeps bar; the epoch moves.
    let j2 = c
        .join_consumer_group(join("g", "c2", &["foo"]))
        .await
        .unwrap()
        .into_inner();
    assert!(j2.epoch > j.epoch);
    refused(
        assignments(&mut c, "g", "c1", j.epoch).await.unwrap_err(),
        Code::FailedPrecondition,
        "client-provided group epoch differs from broker group epoch",
    );
    assert_eq!(
        assignments(&mut c, "g", "c1", j2.epoch).await.unwrap().1,
        pairs(&[("bar", &[0, 1])])
    );
    assert_eq!(
        assignments(&mut c, "g", "c2", j2.epoch).await.unwrap().1,
        pairs(&[("foo", &[0, 1])])
    );

    // c2 leaves: c1 has everything again.
    c.leave_consumer_group(LeaveConsumerGroupRequest {
        group_id: "g".into(),
        consumer_id: "c2".into(),
    })
    .await
    .unwrap();
    let epoch = group_md(&mut c, "g").await.epoch;
    assert!(epoch > j2.epoch);
    assert_eq!(
        assignments(&mut c, "g", "c1", epoch).await.unwrap().1,
        pairs(&[("bar", &[0, 1]), ("foo", &[0, 1])])
    );

    // Deleting foo takes it from c1 at once (the original does it in the background).
    c.delete_stream(DeleteStreamRequest { name: "foo".into() })
        .await
        .unwrap();
    let after = group_md(&mut c, "g").await.epoch;
    assert!(after > epoch);
    assert_eq!(
        assignments(&mut c, "g", "c1", after).await.unwrap().1,
        pairs(&[("bar", &[0, 1])])
    );

    // The last member leaving deletes the group.
    c.leave_consumer_group(LeaveConsumerGroupRequest {
        group_id: "g".into(),
        consumer_id: "c1".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        group_md(&mut c, "g").await.error,
        consumer_group_metadata::Error::UnknownGroup as i32
    );

    // The activity stream has the joins and leaves, in order.
    let mut s = subscribe(&mut c, sub("__activity", StartPosition::Earliest))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "activity events arrive: {seen:?}"
        );
        let m = next(&mut s).await.unwrap();
        let ev = ActivityStreamEvent::decode(m.value.as_ref()).unwrap();
        if let Some(j) = ev.join_consumer_group_op {
            assert_eq!(ev.op, ActivityStreamOp::JoinConsumerGroup as i32);
            seen.push(format!("join {} {:?}", j.consumer_id, j.streams));
        }
        if let Some(l) = ev.leave_consumer_group_op {
            assert_eq!(ev.op, ActivityStreamOp::LeaveConsumerGroup as i32);
            seen.push(format!("leave {} {}", l.consumer_id, l.expired));
        }
    }
    assert_eq!(
        seen,
        vec![
            "join c1 [\"bar\", \"foo\"]",
            "join c2 [\"foo\"]",
            "leave c2 false",
            "leave c1 false"
        ]
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_fetching_is_removed_after_the_consumer_timeout() {
    let srv = TestServer::start_with(|c| {
        c.broker.groups.consumer_timeout = Duration::from_millis(400);
        c.broker.activity.enabled = true;
    })
    .await;
    let mut c = srv.client().await;
    streams(&mut c, &[("s", 2)]).await;
    c.join_consumer_group(join("g", "quiet", &["s"]))
        .await
        .unwrap();
    let j = c
        .join_consumer_group(join("g", "busy", &["s"]))
        .await
        .unwrap()
        .into_inner();
    // "busy" keeps fetching; "quiet" never does and is removed, then "busy" owns everything.
    let mut epoch = j.epoch;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "quiet was never removed");
        match assignments(&mut c, "g", "busy", epoch).await {
            Ok((_, a)) if a == pairs(&[("s", &[0, 1])]) => break,
            Ok(_) => {}
            Err(e) if e.code() == Code::FailedPrecondition => {
                epoch = group_md(&mut c, "g").await.epoch;
            }
            Err(e) => panic!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = subscribe(&mut c, sub("__activity", StartPosition::Earliest))
        .await
        .unwrap();
    loop {
        assert!(Instant::now() < deadline, "no expiry event");
        let m = next(&mut s).await.unwrap();
        let ev = ActivityStreamEvent::decode(m.value.as_ref()).unwrap();
        if let Some(l) = ev.leave_consumer_group_op {
            assert_eq!((l.consumer_id.as_str(), l.expired), ("quiet", true));
            break;
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscription_is_fenced_by_the_group_epoch() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    streams(&mut c, &[("f", 1)]).await;
    publish(&mut c, "f", "one").await;
    let req = |consumer: &str, epoch: u64| {
        let mut r = sub("f", StartPosition::Earliest);
        r.consumer = Some(Consumer {
            group_id: "g".into(),
            group_epoch: epoch,
            consumer_id: consumer.into(),
        });
        r
    };
    c.join_consumer_group(join("g", "c1", &["f"]))
        .await
        .unwrap();
    let e = c
        .join_consumer_group(join("g", "c2", &["f"]))
        .await
        .unwrap()
        .into_inner()
        .epoch;
    assert!(e >= 2);
    let mut first = subscribe(&mut c, req("c1", e)).await.unwrap();
    assert_eq!(&next(&mut first).await.unwrap().value[..], b"one");
    refused(
        subscribe(&mut c, req("c2", e - 1)).await.unwrap_err(),
        Code::FailedPrecondition,
        "Consumer is not currently assigned this partition",
    );
    // An epoch the group never had is refused, and locks nobody out.
    refused(
        subscribe(&mut c, req("rogue", e + 1000)).await.unwrap_err(),
        Code::FailedPrecondition,
        &format!(
            "Group epoch {} is newer than the group's epoch {e}",
            e + 1000
        ),
    );
    // So is a group that does not exist.
    let mut r = req("c1", 1);
    r.consumer.as_mut().unwrap().group_id = "nogroup".into();
    refused(
        subscribe(&mut c, r).await.unwrap_err(),
        Code::FailedPrecondition,
        "No such consumer group: nogroup",
    );
    // Equal or newer replaces it: the old stream ends cleanly.
    let mut second = subscribe(&mut c, req("c2", e)).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), first.message())
        .await
        .expect("the replaced subscription ends");
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    assert_eq!(&next(&mut second).await.unwrap().value[..], b"one");
    // A plain subscription is not fenced.
    subscribe(&mut c, sub("f", StartPosition::Earliest))
        .await
        .unwrap();
    srv.stop().await;
}
