//! Random CreateStream and Subscribe requests, from a fixed seed: every one is answered with a
//! status a client can act on (never `Internal` or `Unknown`), the broker keeps serving, nothing
//! is written outside its data folder, and it restarts with exactly the streams it accepted.

mod common;

use std::time::Duration;

use common::*;
use liftbridge_proto::api::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tonic::Code;

/// Names and subjects: plain ones, and the ones that break things (paths, wildcards, spaces,
/// control characters, non-ASCII, empty, very long).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z]{1,8}",
        1 => Just(String::new()),
        1 => Just("../../escape".to_owned()),
        1 => Just("/abs".to_owned()),
        1 => Just(".".to_owned()),
        1 => Just("a.*.>".to_owned()),
        1 => Just("sp ace\ttab".to_owned()),
        1 => Just("nul\0byte".to_owned()),
        1 => "\\PC{1,12}",
        1 => "[a-z]{250,300}",
        1 => "[a-z]{1000,1100}",
    ]
}

fn int32() -> impl Strategy<Value = i32> {
    prop_oneof![3 => -3i32..6, 1 => any::<i32>(), 1 => Just(i32::MAX), 1 => Just(i32::MIN)]
}

fn int64() -> impl Strategy<Value = i64> {
    prop_oneof![3 => -3i64..100_000, 1 => any::<i64>(), 1 => Just(i64::MAX), 1 => Just(i64::MIN)]
}

/// Mostly unset, as in real requests, so that many are valid.
fn opt64() -> impl Strategy<Value = Option<NullableInt64>> {
    proptest::option::weighted(0.15, int64().prop_map(|value| NullableInt64 { value }))
}

fn opt32() -> impl Strategy<Value = Option<NullableInt32>> {
    proptest::option::weighted(0.15, int32().prop_map(|value| NullableInt32 { value }))
}

fn create() -> impl Strategy<Value = CreateStreamRequest> {
    (
        (
            text(),
            text(),
            prop_oneof![3 => Just(String::new()), 1 => text()],
        ),
        (
            prop_oneof![4 => 0i32..2, 1 => int32()],
            prop_oneof![4 => 0i32..4, 1 => int32()],
        ),
        (
            opt64(),
            opt64(),
            opt64(),
            opt64(),
            opt64(),
            opt64(),
            opt64(),
        ),
        (
            opt32(),
            opt32(),
            proptest::option::weighted(
                0.15,
                any::<bool>().prop_map(|value| NullableBool { value }),
            ),
        ),
    )
        .prop_map(
            |(
                (subject, name, group),
                (replication_factor, partitions),
                (max_bytes, max_messages, max_age, cleaner, seg_bytes, seg_age, pause),
                (compact_goroutines, min_isr, occ),
            )| CreateStreamRequest {
                subject,
                name,
                group,
                replication_factor,
                partitions,
                retention_max_bytes: max_bytes,
                retention_max_messages: max_messages,
                retention_max_age: max_age,
                cleaner_interval: cleaner,
                segment_max_bytes: seg_bytes,
                segment_max_age: seg_age,
                compact_max_goroutines: compact_goroutines,
                auto_pause_time: pause,
                min_isr,
                optimistic_concurrency_control: occ,
                ..Default::default()
            },
        )
}

fn subscribe(known: Vec<String>) -> impl Strategy<Value = SubscribeRequest> {
    let stream = prop_oneof![2 => proptest::sample::select(known), 1 => text()];
    (
        stream,
        prop_oneof![3 => 0i32..3, 1 => int32()],
        (-1i32..7, int64(), int64()),
        (-1i32..5, int64(), int64()),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                stream,
                partition,
                (start, start_offset, start_ts),
                (stop, stop_offset, stop_ts),
                (isr, resume, reverse),
            )| {
                SubscribeRequest {
                    stream,
                    partition,
                    start_position: start,
                    start_offset,
                    start_timestamp: start_ts,
                    read_isr_replica: isr,
                    resume,
                    stop_position: stop,
                    stop_offset,
                    stop_timestamp: stop_ts,
                    reverse,
                    ..Default::default()
                }
            },
        )
}

/// Codes a client can act on; `Internal` and `Unknown` mean the server did not know what
/// happened.
fn acceptable(code: Code) -> bool {
    !matches!(code, Code::Internal | Code::Unknown)
}

async fn stream_names(c: &mut api_client::ApiClient<tonic::transport::Channel>) -> Vec<String> {
    let md = c
        .fetch_metadata(FetchMetadataRequest::default())
        .await
        .expect("the broker serves metadata")
        .into_inner();
    let mut names: Vec<String> = md.stream_metadata.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_clear_answers_and_the_broker_restarts_with_what_it_accepted() {
    let mut srv = TestServer::start_with(|c| c.broker.max_partitions = 8).await;
    let mut c = srv.client().await;
    let mut runner = TestRunner::deterministic();
    let mut accepted = Vec::new();
    for i in 0..150 {
        let req = create().new_tree(&mut runner).unwrap().current();
        let name = req.name.clone();
        match c.create_stream(with_deadline(req.clone())).await {
            Ok(_) => accepted.push(name),
            Err(e) => assert!(acceptable(e.code()), "request {i}: {req:?} got {e:?}"),
        }
    }
    assert!(
        accepted.len() >= 10,
        "the seed creates some streams: {accepted:?}"
    );
    // The broker's own stream of cursors is there too.
    accepted.push("__cursors".to_owned());
    accepted.sort();
    accepted.dedup();
    assert_eq!(stream_names(&mut c).await, accepted);

    for i in 0..150 {
        let req = subscribe(accepted.clone())
            .new_tree(&mut runner)
            .unwrap()
            .current();
        match c.subscribe(with_deadline(req.clone())).await {
            Ok(resp) => {
                // An open subscription: it ends or waits; either is fine, as long as what it
                // says is actionable.
                let mut s = resp.into_inner();
                if let Ok(Some(Err(e))) =
                    tokio::time::timeout(Duration::from_millis(20), s.message())
                        .await
                        .map(|r| r.transpose())
                {
                    assert!(
                        acceptable(e.code()),
                        "subscription {i}: {req:?} ended with {e:?}"
                    );
                }
            }
            Err(e) => assert!(acceptable(e.code()), "subscription {i}: {req:?} got {e:?}"),
        }
    }

    // Everything the broker wrote is under its data folder's streams.
    let streams = srv.dir.path().join("streams");
    for entry in std::fs::read_dir(&streams).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(accepted.contains(&name), "{name:?} was never accepted");
    }
    assert!(!srv.dir.path().join("escape").exists());

    srv.restart_in_place().await;
    let mut c = srv.client().await;
    assert_eq!(stream_names(&mut c).await, accepted, "after a restart");
    srv.stop().await;
}
