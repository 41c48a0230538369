//! The client against a server that behaves as the original Liftbridge does where it differs
//! from ours. Go's gRPC server sends its response headers only with its first response: a
//! PublishAsync stream must not wait for headers before it sends its first request, or both
//! sides wait for each other forever. The original also answers a unary publish with a wrong
//! expected offset with `Unknown "incorrect expected offset"`, and ends a reverse subscription
//! with `Unknown "EOF"`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use liftbridge_client::{AckPolicy, Client, PublishOptions, StartAt, SubscribeOptions};
use liftbridge_proto::api::api_server::{Api, ApiServer};
use liftbridge_proto::api::*;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves one stream `s` with one partition, led by itself. PublishAsync returns its response
/// (and so its headers) only once the first request has arrived; Subscribe only once its first
/// message is ready. Everything else is unimplemented.
struct Lazy {
    port: u16,
    /// PublishAsync requests received.
    received: Arc<AtomicUsize>,
    /// Unary publishes received.
    unary: Arc<AtomicUsize>,
    /// Subscriptions to partition 1 refused so far: the first two are, as the original
    /// refuses a partition its leader has not opened yet.
    not_yet: Arc<AtomicUsize>,
}

fn ack_for(r: &PublishRequest, offset: i64) -> PublishResponse {
    let ack = Ack {
        stream: r.stream.clone(),
        partition_subject: "s".into(),
        msg_subject: "s".into(),
        offset,
        ack_inbox: r.ack_inbox.clone(),
        correlation_id: r.correlation_id.clone(),
        ack_policy: r.ack_policy,
        ..Default::default()
    };
    PublishResponse {
        ack: Some(ack),
        async_error: None,
        correlation_id: r.correlation_id.clone(),
    }
}

#[tonic::async_trait]
impl Api for Lazy {
    async fn create_stream(
        &self,
        _: Request<CreateStreamRequest>,
    ) -> Result<Response<CreateStreamResponse>, Status> {
        Err(Status::unimplemented("create"))
    }
    async fn delete_stream(
        &self,
        _: Request<DeleteStreamRequest>,
    ) -> Result<Response<DeleteStreamResponse>, Status> {
        Err(Status::unimplemented("delete"))
    }
    async fn pause_stream(
        &self,
        _: Request<PauseStreamRequest>,
    ) -> Result<Response<PauseStreamResponse>, Status> {
        Err(Status::unimplemented("pause"))
    }
    async fn set_stream_readonly(
        &self,
        _: Request<SetStreamReadonlyRequest>,
    ) -> Result<Response<SetStreamReadonlyResponse>, Status> {
        Err(Status::unimplemented("readonly"))
    }

    type SubscribeStream = BoxStream<Message>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        if req.partition == 1 && self.not_yet.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(Status::not_found("No such partition"));
        }
        if req.partition > 1 {
            return Err(Status::not_found("No such partition"));
        }
        // The first message (Liftbridge's empty handshake) takes a while to be ready; the
        // headers go with it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = req.start_offset;
        let handshake = futures_util::stream::once(async { Ok(Message::default()) });
        if req.reverse {
            // Three messages down from the start, then the original's end of a reverse read.
            let messages = futures_util::stream::iter((start - 2..=start).rev().map(|offset| {
                Ok(Message {
                    offset,
                    value: format!("m{offset}").into(),
                    ..Default::default()
                })
            }));
            let end = futures_util::stream::once(async { Err(Status::unknown("EOF")) });
            return Ok(Response::new(Box::pin(
                handshake.chain(messages).chain(end),
            )));
        }
        if req.stop_position == StopPosition::StopTimestamp as i32 {
            // Message `o` has timestamp 10 * o, so the stop offset is the last one at or before
            // the stop timestamp; up to it, then the connection is lost before the end. From
            // after the stop, a subscription is refused, as by Liftbridge.
            let stop = req.stop_timestamp.div_euclid(10);
            if stop < start {
                return Err(Status::invalid_argument(
                    "Stop offset is before start offset",
                ));
            }
            let messages = futures_util::stream::iter((start..=stop).map(|offset| {
                Ok(Message {
                    offset,
                    timestamp: 10 * offset,
                    value: format!("m{offset}").into(),
                    ..Default::default()
                })
            }));
            let lost =
                futures_util::stream::once(async { Err(Status::unavailable("connection lost")) });
            return Ok(Response::new(Box::pin(
                handshake.chain(messages).chain(lost),
            )));
        }
        if req.stop_position == StopPosition::StopOffset as i32 {
            // Up to the stop, then the connection is lost before the end is sent. From after
            // the stop, a subscription is refused, as by Liftbridge.
            if req.stop_offset < start {
                return Err(Status::invalid_argument(
                    "Stop offset is before start offset",
                ));
            }
            let messages = futures_util::stream::iter((start..=req.stop_offset).map(|offset| {
                Ok(Message {
                    offset,
                    value: format!("m{offset}").into(),
                    ..Default::default()
                })
            }));
            let lost =
                futures_util::stream::once(async { Err(Status::unavailable("connection lost")) });
            return Ok(Response::new(Box::pin(
                handshake.chain(messages).chain(lost),
            )));
        }
        let messages = futures_util::stream::iter((start..start + 3).map(|offset| {
            Ok(Message {
                offset,
                value: format!("m{offset}").into(),
                stream: "s".into(),
                subject: "s".into(),
                ..Default::default()
            })
        }));
        let rest = futures_util::stream::pending();
        Ok(Response::new(Box::pin(
            handshake.chain(messages).chain(rest),
        )))
    }

    async fn fetch_metadata(
        &self,
        _: Request<FetchMetadataRequest>,
    ) -> Result<Response<FetchMetadataResponse>, Status> {
        let partition = |id| PartitionMetadata {
            id,
            leader: "lazy".into(),
            replicas: vec!["lazy".into()],
            isr: vec!["lazy".into()],
            ..Default::default()
        };
        Ok(Response::new(FetchMetadataResponse {
            brokers: vec![Broker {
                id: "lazy".into(),
                host: "127.0.0.1".into(),
                port: i32::from(self.port),
                ..Default::default()
            }],
            stream_metadata: vec![StreamMetadata {
                name: "s".into(),
                subject: "s".into(),
                partitions: [(0, partition(0)), (1, partition(1))].into_iter().collect(),
                ..Default::default()
            }],
            group_metadata: vec![],
        }))
    }
    async fn fetch_partition_metadata(
        &self,
        _: Request<FetchPartitionMetadataRequest>,
    ) -> Result<Response<FetchPartitionMetadataResponse>, Status> {
        Err(Status::unimplemented("partition metadata"))
    }
    async fn publish(
        &self,
        _: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.unary.fetch_add(1, Ordering::SeqCst);
        Err(Status::unknown("incorrect expected offset"))
    }

    type PublishAsyncStream = BoxStream<PublishResponse>;

    async fn publish_async(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishAsyncStream>, Status> {
        let mut inbound = request.into_inner();
        // No headers before a request: wait for the first one.
        let first = match inbound.next().await {
            Some(Ok(r)) => r,
            Some(Err(s)) => return Err(s),
            None => return Err(Status::cancelled("no request")),
        };
        let received = self.received.clone();
        received.fetch_add(1, Ordering::SeqCst);
        let offset = Arc::new(AtomicUsize::new(0));
        let respond = move |r: PublishRequest| {
            let o = offset.fetch_add(1, Ordering::SeqCst) as i64;
            (r.ack_policy != AckPolicy::None as i32).then(|| Ok(ack_for(&r, o)))
        };
        let respond_first = respond.clone();
        let rest = inbound.filter_map(move |r| {
            let out = match r {
                Ok(r) => {
                    received.fetch_add(1, Ordering::SeqCst);
                    respond(r)
                }
                Err(s) => Some(Err(s)),
            };
            std::future::ready(out)
        });
        let first = futures_util::stream::iter(respond_first(first));
        Ok(Response::new(Box::pin(first.chain(rest))))
    }
    async fn publish_to_subject(
        &self,
        _: Request<PublishToSubjectRequest>,
    ) -> Result<Response<PublishToSubjectResponse>, Status> {
        Err(Status::unimplemented("publish to subject"))
    }
    async fn set_cursor(
        &self,
        _: Request<SetCursorRequest>,
    ) -> Result<Response<SetCursorResponse>, Status> {
        Err(Status::unimplemented("set cursor"))
    }
    async fn fetch_cursor(
        &self,
        _: Request<FetchCursorRequest>,
    ) -> Result<Response<FetchCursorResponse>, Status> {
        Err(Status::unimplemented("fetch cursor"))
    }
    async fn join_consumer_group(
        &self,
        _: Request<JoinConsumerGroupRequest>,
    ) -> Result<Response<JoinConsumerGroupResponse>, Status> {
        Err(Status::unimplemented("groups"))
    }
    async fn leave_consumer_group(
        &self,
        _: Request<LeaveConsumerGroupRequest>,
    ) -> Result<Response<LeaveConsumerGroupResponse>, Status> {
        Err(Status::unimplemented("groups"))
    }
    async fn fetch_consumer_group_assignments(
        &self,
        _: Request<FetchConsumerGroupAssignmentsRequest>,
    ) -> Result<Response<FetchConsumerGroupAssignmentsResponse>, Status> {
        Err(Status::unimplemented("groups"))
    }
    async fn report_consumer_group_coordinator(
        &self,
        _: Request<ReportConsumerGroupCoordinatorRequest>,
    ) -> Result<Response<ReportConsumerGroupCoordinatorResponse>, Status> {
        Err(Status::unimplemented("groups"))
    }
}

/// Starts the lazy server on a free port of 127.0.0.1; returns its address, its PublishAsync
/// request count and its unary publish count.
async fn start_counting() -> (
    String,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(AtomicUsize::new(0));
    let unary = Arc::new(AtomicUsize::new(0));
    let svc = ApiServer::new(Lazy {
        port,
        received: received.clone(),
        unary: unary.clone(),
        not_yet: Arc::new(AtomicUsize::new(0)),
    });
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    (format!("127.0.0.1:{port}"), received, unary, task)
}

async fn start() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (addr, received, _, task) = start_counting().await;
    (addr, received, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_async_works_when_headers_come_with_the_first_response() {
    let (addr, received, server) = start().await;
    let client = Client::connect([addr]).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..10 {
        let opts = PublishOptions::default().ack_wait(Duration::from_secs(5));
        let ack = tokio::time::timeout(
            Duration::from_secs(5),
            client.publish_async("s", format!("v{i}"), opts),
        )
        .await
        .expect("publish_async returns without waiting for headers")
        .unwrap();
        pending.push(ack);
    }
    for (i, p) in pending.into_iter().enumerate() {
        let ack = p.await.expect("an ack").expect("policy LEADER acks");
        assert_eq!(ack.offset, i as i64);
    }
    assert_eq!(received.load(Ordering::SeqCst), 10);
    client.close();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_publish_without_an_ack_does_not_block_the_stream() {
    let (addr, received, server) = start().await;
    let client = Client::connect([addr]).await.unwrap();
    // Policy NONE gets no response, so a lazy server sends no headers for it.
    let none = PublishOptions::default().ack_policy(AckPolicy::None);
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        client.publish_async("s", "quiet", none),
    )
    .await
    .expect("publish_async returns")
    .unwrap();
    assert!(first.await.unwrap().is_none());
    let opts = PublishOptions::default().ack_wait(Duration::from_secs(5));
    let ack = client.publish_async("s", "loud", opts).await.unwrap();
    let ack = ack.await.unwrap().expect("an ack");
    assert_eq!(ack.offset, 1);
    assert_eq!(received.load(Ordering::SeqCst), 2);
    client.close();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_works_when_headers_come_with_the_first_message() {
    let (addr, _, server) = start().await;
    let client = Client::connect([addr]).await.unwrap();
    let mut sub = client
        .subscribe("s", SubscribeOptions::default().start(StartAt::Offset(5)))
        .await
        .unwrap();
    for offset in 5..8 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a message in time")
            .expect("not ended")
            .expect("no error");
        assert_eq!(m.offset, offset);
        assert_eq!(&m.value[..], format!("m{offset}").as_bytes());
    }
    client.close();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expected_offset_from_the_original_is_a_refusal_not_a_retry() {
    let (addr, _, unary, server) = start_counting().await;
    let client = Client::connect([addr]).await.unwrap();
    let opts = PublishOptions::default().expected_offset(3);
    let err = client.publish("s", "v", opts).await.unwrap_err();
    match err {
        liftbridge_client::Error::PublishRefused { code, .. } => {
            assert_eq!(code, "INCORRECT_OFFSET")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(unary.load(Ordering::SeqCst), 1, "asked once, not retried");
    client.close();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_subscription_ends_cleanly_on_the_originals_eof() {
    let (addr, _, server) = start().await;
    let client = Client::connect([addr]).await.unwrap();
    let opts = SubscribeOptions::default()
        .start(StartAt::Offset(9))
        .reverse(true);
    let mut sub = client.subscribe("s", opts).await.unwrap();
    let mut offsets = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("the subscription moves on")
        {
            Some(Ok(m)) => offsets.push(m.offset),
            Some(Err(e)) => panic!("the end is not an error: {e:?}"),
            None => break,
        }
    }
    assert_eq!(offsets, vec![9, 8, 7]);
    client.close();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_not_opened_yet_is_waited_for_and_an_unlisted_one_is_refused() {
    let (addr, _, server) = start().await;
    let client = Client::builder([addr])
        .resubscribe_wait(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let opts = SubscribeOptions::default()
        .partition(1)
        .start(StartAt::Offset(0));
    let mut sub = client
        .subscribe("s", opts)
        .await
        .expect("opened on the third try");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.offset, 0);
    // A partition the metadata does not list is refused at once.
    let opts = SubscribeOptions::default().partition(2);
    let err = client.subscribe("s", opts).await.unwrap_err();
    assert!(
        matches!(err, liftbridge_client::Error::NoSuchPartition),
        "{err:?}"
    );
    client.close();
    server.abort();
}

/// The connection is lost right after the stop message, before the end: the subscription
/// ends at its stop, as it would have, instead of resubscribing from after the stop (which
/// the server refuses with InvalidArgument).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_right_after_the_stop_message_ends_at_the_stop() {
    let (addr, _, server) = start().await;
    let client = Client::connect([addr]).await.unwrap();
    let mut sub = client
        .subscribe(
            "s",
            SubscribeOptions::default()
                .start(StartAt::Offset(0))
                .stop(liftbridge_client::StopAt::Offset(2)),
        )
        .await
        .unwrap();
    for offset in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a message in time")
            .expect("not ended")
            .expect("no error");
        assert_eq!(m.offset, offset);
    }
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the end in time");
    assert!(
        matches!(
            end,
            Some(Err(liftbridge_client::Error::StopPositionReached))
        ),
        "{end:?}"
    );
    assert!(sub.next().await.is_none());
    client.close();
    server.abort();
}

/// As above with a stop timestamp that falls between two messages: the subscription ends at
/// the last message before it, instead of resubscribing from after it (which the server
/// refuses with InvalidArgument, as the stop offset it works out is before the start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_right_after_the_stop_timestamp_ends_at_the_stop() {
    let (addr, _, server) = start().await;
    let client = Client::connect([addr]).await.unwrap();
    let mut sub = client
        .subscribe(
            "s",
            SubscribeOptions::default()
                .start(StartAt::Offset(0))
                .stop(liftbridge_client::StopAt::Timestamp(25)),
        )
        .await
        .unwrap();
    for offset in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a message in time")
            .expect("not ended")
            .expect("no error");
        assert_eq!(m.offset, offset);
    }
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the end in time");
    assert!(
        matches!(
            end,
            Some(Err(liftbridge_client::Error::StopPositionReached))
        ),
        "{end:?}"
    );
    assert!(sub.next().await.is_none());
    client.close();
    server.abort();
}
