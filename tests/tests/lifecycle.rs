//! Pause, read-only, delete, metadata, cursors, the activity stream, health, and what survives a
//! restart.

mod common;

use std::time::{Duration, Instant};

use common::*;
use liftbridge_proto::api::*;
use prost::Message as _;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut r = stream("p", "p");
    r.partitions = 2;
    c.create_stream(r).await.unwrap();
    publish(&mut c, "p", "before").await;
    let err = c
        .pause_stream(PauseStreamRequest {
            name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "stream not found")
    );
    let err = c
        .pause_stream(PauseStreamRequest {
            name: "p".into(),
            partitions: vec![5],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "partition does not exist")
    );
    c.pause_stream(PauseStreamRequest {
        name: "p".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let md = partition_md(&mut c, "p", 0).await;
    assert!(md.paused);
    assert!(md.pause_timestamps.unwrap().first_timestamp > 0);
    let err = subscribe(&mut c, sub("p", StartPosition::Earliest))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A publish to partition 0 resumes only partition 0.
    let ack = publish(&mut c, "p", "after").await;
    assert_eq!(ack.offset, 1);
    assert!(!partition_md(&mut c, "p", 0).await.paused);
    assert!(partition_md(&mut c, "p", 1).await.paused);
    // Subscribe{resume} resumes partition 1.
    let mut req = sub("p", StartPosition::Earliest);
    req.partition = 1;
    req.resume = true;
    let mut s = subscribe(&mut c, req).await.unwrap();
    assert!(!partition_md(&mut c, "p", 1).await.paused);
    assert!(quiet_for(&mut s, Duration::from_millis(100)).await);
    // With resumeAll, a publish to one partition resumes them all.
    c.pause_stream(PauseStreamRequest {
        name: "p".into(),
        partitions: vec![],
        resume_all: true,
    })
    .await
    .unwrap();
    publish(&mut c, "p", "again").await;
    assert!(!partition_md(&mut c, "p", 1).await.paused);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_streams_drain_then_end() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("ro", "ro")).await.unwrap();
    publish(&mut c, "ro", "one").await;
    publish(&mut c, "ro", "two").await;
    let mut live = subscribe(&mut c, sub("ro", StartPosition::Earliest))
        .await
        .unwrap();
    assert_eq!(next(&mut live).await.unwrap().offset, 0);
    c.set_stream_readonly(SetStreamReadonlyRequest {
        name: "ro".into(),
        partitions: vec![],
        readonly: true,
    })
    .await
    .unwrap();
    let err = c
        .publish(with_deadline(PublishRequest {
            stream: "ro".into(),
            value: "x".into(),
            expected_offset: -1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "readonly partition: 0")
    );
    assert_eq!(next(&mut live).await.unwrap().offset, 1);
    let end = next(&mut live).await.unwrap_err();
    assert_eq!(
        (end.code(), end.message()),
        (Code::ResourceExhausted, "End of readonly partition")
    );
    let md = partition_md(&mut c, "ro", 0).await;
    assert!(md.readonly);
    assert!(md.readonly_timestamps.unwrap().latest_timestamp > 0);
    // Writable again.
    c.set_stream_readonly(SetStreamReadonlyRequest {
        name: "ro".into(),
        partitions: vec![0],
        readonly: false,
    })
    .await
    .unwrap();
    assert_eq!(publish(&mut c, "ro", "three").await.offset, 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_stream_and_data() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("d", "d")).await.unwrap();
    publish(&mut c, "d", "x").await;
    let dir = srv.dir.path().join("streams").join("d");
    assert!(dir.exists());
    c.delete_stream(DeleteStreamRequest { name: "d".into() })
        .await
        .unwrap();
    assert!(!dir.exists(), "data deleted");
    let err = c
        .delete_stream(DeleteStreamRequest { name: "d".into() })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "stream does not exist")
    );
    let err = c
        .delete_stream(DeleteStreamRequest {
            name: "__cursors".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A stream of the same name starts empty.
    c.create_stream(stream("d", "d")).await.unwrap();
    assert_eq!(publish(&mut c, "d", "fresh").await.offset, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_describes_brokers_and_streams() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut r = stream("m", "m.subject");
    r.partitions = 2;
    c.create_stream(r).await.unwrap();
    publish(&mut c, "m", "x").await;
    let md = c
        .fetch_metadata(FetchMetadataRequest {
            streams: vec!["m".into(), "unknown".into()],
            groups: vec!["g".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.brokers.len(), 1);
    let b = &md.brokers[0];
    assert_eq!(b.id, "a");
    assert_eq!(b.host, "127.0.0.1");
    assert_eq!(b.port, i32::from(srv.running().grpc_addr().port()));
    // Two partitions of "m" and the one of __cursors.
    assert_eq!((b.partition_count, b.leader_count), (3, 3));
    assert!(
        b.metadata_leader,
        "ours: the one broker leads the metadata group"
    );
    let m = &md.stream_metadata[0];
    assert_eq!(
        (m.name.as_str(), m.subject.as_str(), m.error),
        ("m", "m.subject", 0)
    );
    assert!(m.creation_timestamp > 0);
    let p0 = &m.partitions[&0];
    assert_eq!(
        (p0.leader.as_str(), p0.replicas.clone(), p0.isr.clone()),
        ("a", vec!["a".to_string()], vec!["a".to_string()])
    );
    assert_eq!((p0.high_watermark, p0.newest_offset), (0, 0));
    assert_eq!(
        md.stream_metadata[1].error,
        stream_metadata::Error::UnknownStream as i32
    );
    assert_eq!(
        md.group_metadata[0].error,
        consumer_group_metadata::Error::UnknownGroup as i32
    );
    // No streams named: all of them, the internal ones included.
    let all = c
        .fetch_metadata(FetchMetadataRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<_> = all.stream_metadata.iter().map(|s| s.name.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["__cursors".to_string(), "m".to_string()]);

    let pm = partition_md(&mut c, "m", 0).await;
    let t = pm.messages_received_timestamps.unwrap();
    assert!(t.first_timestamp > 0 && t.latest_timestamp >= t.first_timestamp);
    let err = c
        .fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: "m".into(),
            partition: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "partition not found")
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_stored_and_fetched() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let reader = c.clone();
    let fetch = |cursor: &str| {
        let mut c = reader.clone();
        let cursor = cursor.to_owned();
        async move {
            c.fetch_cursor(FetchCursorRequest {
                stream: "s".into(),
                partition: 0,
                cursor_id: cursor,
            })
            .await
            .map(|r| r.into_inner().offset)
        }
    };
    assert_eq!(fetch("c1").await.unwrap(), -1);
    for (id, off) in [("c1", 5), ("c2", 9), ("c1", 7)] {
        c.set_cursor(SetCursorRequest {
            stream: "s".into(),
            partition: 0,
            cursor_id: id.into(),
            offset: off,
        })
        .await
        .unwrap();
    }
    assert_eq!(fetch("c1").await.unwrap(), 7);
    assert_eq!(fetch("c2").await.unwrap(), 9);
    let err = fetch("").await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "No cursorId provided")
    );
    let err = c
        .set_cursor(SetCursorRequest {
            stream: "".into(),
            cursor_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "No stream provided")
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_need_the_cursors_stream() {
    let srv = TestServer::start_with(|c| c.broker.cursors.partitions = 0).await;
    let mut c = srv.client().await;
    let err = c
        .set_cursor(SetCursorRequest {
            stream: "s".into(),
            cursor_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Internal, "Cursors stream does not exist")
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_stream_reports_stream_operations() {
    let srv = TestServer::start_with(|c| c.broker.activity.enabled = true).await;
    let mut c = srv.client().await;
    c.create_stream(stream("act", "act")).await.unwrap();
    c.pause_stream(PauseStreamRequest {
        name: "act".into(),
        partitions: vec![0],
        resume_all: true,
    })
    .await
    .unwrap();
    // A publish resumes it.
    publish(&mut c, "act", "wake").await;
    c.set_stream_readonly(SetStreamReadonlyRequest {
        name: "act".into(),
        partitions: vec![0],
        readonly: true,
    })
    .await
    .unwrap();
    c.delete_stream(DeleteStreamRequest { name: "act".into() })
        .await
        .unwrap();
    let mut s = subscribe(&mut c, sub("__activity", StartPosition::Earliest))
        .await
        .unwrap();
    let mut ops = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ops.contains(&ActivityStreamOp::DeleteStream) {
        assert!(Instant::now() < deadline, "activity events arrive: {ops:?}");
        let m = next(&mut s).await.unwrap();
        let ev = ActivityStreamEvent::decode(m.value.as_ref()).unwrap();
        let op = ActivityStreamOp::try_from(ev.op).unwrap();
        let named = match op {
            ActivityStreamOp::CreateStream => ev.create_stream_op.unwrap().stream,
            ActivityStreamOp::DeleteStream => ev.delete_stream_op.unwrap().stream,
            ActivityStreamOp::PauseStream => {
                let p = ev.pause_stream_op.unwrap();
                assert!(p.resume_all);
                p.stream
            }
            ActivityStreamOp::ResumeStream => ev.resume_stream_op.unwrap().stream,
            ActivityStreamOp::SetStreamReadonly => ev.set_stream_readonly_op.unwrap().stream,
            other => panic!("unexpected {other:?}"),
        };
        assert!(ev.id > 0);
        if named == "act" {
            ops.push(op);
        }
    }
    assert_eq!(
        ops,
        vec![
            ActivityStreamOp::CreateStream,
            ActivityStreamOp::PauseStream,
            ActivityStreamOp::ResumeStream,
            ActivityStreamOp::SetStreamReadonly,
            ActivityStreamOp::DeleteStream
        ]
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let srv = TestServer::start().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", srv.running().grpc_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "proto.API".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_comes_back_after_a_restart() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("keep", "keep")).await.unwrap();
    c.create_stream(stream("paused", "paused")).await.unwrap();
    for i in 0..5 {
        publish(&mut c, "keep", &format!("m{i}")).await;
    }
    publish(&mut c, "paused", "p").await;
    c.pause_stream(PauseStreamRequest {
        name: "paused".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.set_cursor(SetCursorRequest {
        stream: "keep".into(),
        partition: 0,
        cursor_id: "me".into(),
        offset: 3,
    })
    .await
    .unwrap();
    srv.restart_with(|_| {}).await;
    let mut c = srv.client().await;
    let md = partition_md(&mut c, "keep", 0).await;
    assert_eq!((md.high_watermark, md.newest_offset), (4, 4));
    assert!(partition_md(&mut c, "paused", 0).await.paused);
    let cursor = c
        .fetch_cursor(FetchCursorRequest {
            stream: "keep".into(),
            partition: 0,
            cursor_id: "me".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .offset;
    assert_eq!(cursor, 3);
    let mut s = subscribe(&mut c, sub("keep", StartPosition::Earliest))
        .await
        .unwrap();
    for i in 0..5 {
        assert_eq!(
            next(&mut s).await.unwrap().value,
            format!("m{i}").into_bytes()
        );
    }
    assert_eq!(publish(&mut c, "keep", "m5").await.offset, 5);
    assert_eq!(next(&mut s).await.unwrap().offset, 5);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_auto_pause() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut r = stream("ret", "ret");
    r.retention_max_messages = Some(NullableInt64 { value: 3 });
    r.segment_max_bytes = Some(NullableInt64 { value: 1024 });
    r.cleaner_interval = Some(NullableInt64 { value: 100 });
    c.create_stream(r).await.unwrap();
    for i in 0..40 {
        publish(&mut c, "ret", &format!("{i:0>100}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let oldest = loop {
        let mut s = subscribe(&mut c, sub("ret", StartPosition::Earliest))
            .await
            .unwrap();
        let first = next(&mut s).await.unwrap().offset;
        if first > 0 || Instant::now() > deadline {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        oldest > 0 && oldest <= 37,
        "old segments went; at least 3 messages stay: {oldest}"
    );

    let mut r = stream("idle", "idle");
    r.auto_pause_time = Some(NullableInt64 { value: 300 });
    c.create_stream(r).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !partition_md(&mut c, "idle", 0).await.paused {
        assert!(Instant::now() < deadline, "an idle partition pauses itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A publish brings it back.
    assert_eq!(publish(&mut c, "idle", "wake").await.offset, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_high_watermark_checkpoint_is_written_while_the_broker_runs() {
    let srv = TestServer::start_with(|c| {
        c.broker.hw_checkpoint_interval = Duration::from_millis(50);
    })
    .await;
    let mut c = srv.client().await;
    c.create_stream(stream("hw", "hw")).await.unwrap();
    for i in 0..5 {
        assert_eq!(publish(&mut c, "hw", &format!("m{i}")).await.offset, i);
    }
    // Without a stop: what a broker killed now would find at its restart.
    let file = srv
        .running()
        .broker()
        .config()
        .data_dir
        .join("streams/hw/0")
        .join(commitlog::HW_FILE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.trim() == "4" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint holds {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_events_are_recorded_in_the_order_of_the_operations() {
    let srv = TestServer::start_with(|c| c.broker.activity.enabled = true).await;
    let mut c = srv.client().await;
    const N: usize = 12;
    for i in 0..N {
        c.create_stream(stream(&format!("order{i}"), &format!("order.{i}")))
            .await
            .unwrap();
    }
    let mut s = subscribe(&mut c, sub("__activity", StartPosition::Earliest))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < N {
        assert!(
            Instant::now() < deadline,
            "activity events arrive: {seen:?}"
        );
        let m = next(&mut s).await.unwrap();
        let ev = ActivityStreamEvent::decode(m.value.as_ref()).unwrap();
        if let Some(op) = ev.create_stream_op
            && op.stream.starts_with("order")
        {
            seen.push((ev.id, op.stream));
        }
    }
    let names: Vec<String> = seen.iter().map(|(_, n)| n.clone()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("order{i}")).collect();
    assert_eq!(names, want, "events in the order of the operations");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "ids grow: {seen:?}"
    );
    srv.stop().await;
}
