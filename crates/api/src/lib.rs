//! `api`: the gRPC face of a liftbridge-rs broker.
//!
//! [`Service`] implements Liftbridge's `proto.API` service (all 16 RPCs) on a
//! [`broker::Broker`]. It checks requests, calls the broker, and is the only place where broker
//! errors become gRPC status codes ([`status`]). [`serve`] runs it with the standard gRPC health
//! service, which reports `proto.API` as SERVING while it runs.
//!
//! [`serve_with`] adds TLS, client certificates and authorization ([`security`]).
//!
//! This crate never touches NATS or disk itself (it reads the TLS and policy files it is
//! given).

pub mod security;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use security::{Authorizer, SecurityError, TlsSettings};

use broker::{Broker, BrokerError};
use futures_util::{Stream, StreamExt};
use liftbridge_proto::api::api_server::{Api, ApiServer};
use liftbridge_proto::api::*;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

/// The gRPC status for a broker error. The codes are Liftbridge's, with one deliberate change:
/// a unary publish refused for a wrong expected offset is `Aborted` (a concurrency conflict),
/// where Liftbridge says `Unknown`.
pub fn status(e: BrokerError) -> Status {
    match e {
        BrokerError::InvalidArgument(m) => Status::invalid_argument(m),
        BrokerError::NotFound(m) => Status::not_found(m),
        BrokerError::AlreadyExists(m) => Status::already_exists(m),
        BrokerError::FailedPrecondition(m) => Status::failed_precondition(m),
        BrokerError::End(m) => Status::resource_exhausted(m),
        BrokerError::Timeout(m) => Status::deadline_exceeded(m),
        BrokerError::Unimplemented(m) => Status::unimplemented(m),
        BrokerError::AckRefused(m) => Status::aborted(m),
        BrokerError::Unavailable(m) => Status::unavailable(m),
        BrokerError::ResourceExhausted(m) => Status::resource_exhausted(m),
        BrokerError::Internal(m) => Status::internal(m),
        other => Status::internal(other.to_string()),
    }
}

/// The deadline a client set with the `grpc-timeout` header, if any.
pub fn deadline<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_timeout(v)
}

fn parse_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `proto.API` service on a broker.
#[derive(Debug, Clone)]
pub struct Service {
    broker: Broker,
    authz: Option<Arc<Authorizer>>,
}

impl Service {
    /// The service for `broker`.
    pub fn new(broker: Broker) -> Self {
        Service {
            broker,
            authz: None,
        }
    }

    /// The service for `broker`, authorizing each call with `authz`.
    pub fn with_authorizer(broker: Broker, authz: Arc<Authorizer>) -> Self {
        Service {
            broker,
            authz: Some(authz),
        }
    }

    /// Authorizes a client-given ack inbox: the broker publishes acks there for the caller, so
    /// the caller needs `PublishToSubject` on it. The broker refuses wildcards and the brokers'
    /// namespace first.
    fn allow_ack_inbox<T>(&self, req: &Request<T>, inbox: &str) -> Result<(), Status> {
        if inbox.is_empty() {
            return Ok(());
        }
        self.broker.check_ack_inbox(inbox).map_err(status)?;
        self.allow(req, inbox, "PublishToSubject")
    }

    /// Allows the call when no authorization is configured or the policy allows it.
    fn allow<T>(&self, req: &Request<T>, object: &str, action: &str) -> Result<(), Status> {
        match &self.authz {
            Some(a) => a.check(req, object, action),
            None => Ok(()),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Api for Service {
    async fn create_stream(
        &self,
        request: Request<CreateStreamRequest>,
    ) -> Result<Response<CreateStreamResponse>, Status> {
        // The original checks the name and subject first.
        self.broker
            .check_stream_names(request.get_ref())
            .map_err(status)?;
        let r = request.get_ref();
        self.allow(&request, &r.name, "CreateStream")?;
        // The subject too: a stream records everything on it. A grant on the name covers a
        // subject equal to it (the original's policy files); any other subject needs its own
        // grant, on the object `subject:<subject>`.
        if r.subject != r.name {
            self.allow(&request, &format!("subject:{}", r.subject), "CreateStream")?;
        }
        self.broker
            .create_stream(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(CreateStreamResponse {}))
    }

    async fn delete_stream(
        &self,
        request: Request<DeleteStreamRequest>,
    ) -> Result<Response<DeleteStreamResponse>, Status> {
        self.allow(&request, &request.get_ref().name, "DeleteStream")?;
        self.broker
            .delete_stream(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteStreamResponse {}))
    }

    async fn pause_stream(
        &self,
        request: Request<PauseStreamRequest>,
    ) -> Result<Response<PauseStreamResponse>, Status> {
        self.allow(&request, &request.get_ref().name, "PauseStream")?;
        let r = request.into_inner();
        self.broker
            .pause_stream(&r.name, r.partitions, r.resume_all)
            .await
            .map_err(status)?;
        Ok(Response::new(PauseStreamResponse {}))
    }

    async fn set_stream_readonly(
        &self,
        request: Request<SetStreamReadonlyRequest>,
    ) -> Result<Response<SetStreamReadonlyResponse>, Status> {
        self.allow(&request, &request.get_ref().name, "SetStreamReadonly")?;
        let r = request.into_inner();
        self.broker
            .set_stream_readonly(&r.name, r.partitions, r.readonly)
            .await
            .map_err(status)?;
        Ok(Response::new(SetStreamReadonlyResponse {}))
    }

    type SubscribeStream = BoxStream<Message>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Before the subscription exists (the original checks after, so a denied group member
        // still displaced the current one).
        self.allow(&request, &request.get_ref().stream, "Subscribe")?;
        // A group subscription acts as a member of the group (it replaces the member reading the
        // partition): the group is authorized as a JoinConsumerGroup is.
        if let Some(c) = request.get_ref().consumer.as_ref()
            && !c.group_id.is_empty()
        {
            self.allow(&request, &c.group_id, "JoinConsumerGroup")?;
        }
        let sub = self
            .broker
            .subscribe(request.into_inner())
            .await
            .map_err(status)?;
        // The first frame is empty: it tells the client the subscription is in place.
        let handshake = futures_util::stream::once(async { Ok(Message::default()) });
        let out = handshake.chain(sub.map(|r| r.map_err(status)));
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_metadata(
        &self,
        request: Request<FetchMetadataRequest>,
    ) -> Result<Response<FetchMetadataResponse>, Status> {
        self.allow(&request, "*", "FetchMetadata")?;
        let d = deadline(&request);
        Ok(Response::new(
            self.broker.fetch_metadata(request.into_inner(), d).await,
        ))
    }

    async fn fetch_partition_metadata(
        &self,
        request: Request<FetchPartitionMetadataRequest>,
    ) -> Result<Response<FetchPartitionMetadataResponse>, Status> {
        self.allow(
            &request,
            &request.get_ref().stream,
            "FetchPartitionMetadata",
        )?;
        let r = request.into_inner();
        let metadata = self
            .broker
            .fetch_partition_metadata(&r.stream, r.partition)
            .map_err(status)?;
        Ok(Response::new(FetchPartitionMetadataResponse {
            metadata: Some(metadata),
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        // After the stream lookup, as the original: an unknown stream is NotFound for all.
        if self.broker.has_stream(&request.get_ref().stream) {
            self.allow(&request, &request.get_ref().stream, "Publish")?;
            self.allow_ack_inbox(&request, &request.get_ref().ack_inbox)?;
        }
        let d = deadline(&request);
        let ack = self
            .broker
            .publish(request.into_inner(), d)
            .await
            .map_err(|e| {
                let s = status(e);
                self.broker
                    .metrics()
                    .publish_failed(&format!("{:?}", s.code()));
                s
            })?;
        Ok(Response::new(PublishResponse {
            correlation_id: ack
                .as_ref()
                .map(|a| a.correlation_id.clone())
                .unwrap_or_default(),
            ack,
            async_error: None,
        }))
    }

    type PublishAsyncStream = BoxStream<PublishResponse>;

    async fn publish_async(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishAsyncStream>, Status> {
        // The caller's identity, read before the request gives up its certificates.
        let authz = self
            .authz
            .clone()
            .map(|a| (a, security::client_id(&request)));
        // A client error or cancellation ends the input like a clean close.
        let input = request
            .into_inner()
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()));
        let (tx, rx) = mpsc::channel(1024);
        let input: Pin<Box<dyn Stream<Item = PublishRequest> + Send>> = match authz {
            None => Box::pin(input),
            Some((authz, subject)) => {
                // Each message is checked; a denied one gets its error and is not published
                // (the original sent the error and published it anyway).
                let denials = tx.clone();
                Box::pin(input.filter_map(move |r| {
                    let allowed = subject
                        .as_deref()
                        .is_some_and(|s| authz.allows(s, &r.stream, "Publish"));
                    let denials = denials.clone();
                    async move {
                        if allowed {
                            return Some(r);
                        }
                        let _ = denials.send(denied_async(&r)).await;
                        None
                    }
                }))
            }
        };
        let broker = self.broker.clone();
        tokio::spawn(async move { broker.publish_async(input, tx).await });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn publish_to_subject(
        &self,
        request: Request<PublishToSubjectRequest>,
    ) -> Result<Response<PublishToSubjectResponse>, Status> {
        self.allow(&request, &request.get_ref().subject, "PublishToSubject")?;
        self.allow_ack_inbox(&request, &request.get_ref().ack_inbox)?;
        let d = deadline(&request);
        let ack = self
            .broker
            .publish_to_subject(request.into_inner(), d)
            .await
            .map_err(status)?;
        Ok(Response::new(PublishToSubjectResponse { ack }))
    }

    async fn set_cursor(
        &self,
        request: Request<SetCursorRequest>,
    ) -> Result<Response<SetCursorResponse>, Status> {
        let r = request.get_ref();
        if !r.stream.is_empty() && !r.cursor_id.is_empty() {
            self.allow(&request, &r.stream, "SetCursor")?;
        }
        self.broker
            .set_cursor(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(SetCursorResponse {}))
    }

    async fn fetch_cursor(
        &self,
        request: Request<FetchCursorRequest>,
    ) -> Result<Response<FetchCursorResponse>, Status> {
        let r = request.get_ref();
        if !r.stream.is_empty() && !r.cursor_id.is_empty() {
            self.allow(&request, &r.stream, "FetchCursor")?;
        }
        let offset = self
            .broker
            .fetch_cursor(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(FetchCursorResponse { offset }))
    }

    async fn join_consumer_group(
        &self,
        request: Request<JoinConsumerGroupRequest>,
    ) -> Result<Response<JoinConsumerGroupResponse>, Status> {
        // The group calls are checked too (the original never does), on the group.
        self.allow(&request, &request.get_ref().group_id, "JoinConsumerGroup")?;
        let resp = self
            .broker
            .join_consumer_group(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(resp))
    }

    async fn leave_consumer_group(
        &self,
        request: Request<LeaveConsumerGroupRequest>,
    ) -> Result<Response<LeaveConsumerGroupResponse>, Status> {
        self.allow(&request, &request.get_ref().group_id, "LeaveConsumerGroup")?;
        self.broker
            .leave_consumer_group(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(LeaveConsumerGroupResponse {}))
    }

    async fn fetch_consumer_group_assignments(
        &self,
        request: Request<FetchConsumerGroupAssignmentsRequest>,
    ) -> Result<Response<FetchConsumerGroupAssignmentsResponse>, Status> {
        self.allow(
            &request,
            &request.get_ref().group_id,
            "FetchConsumerGroupAssignments",
        )?;
        let resp = self
            .broker
            .fetch_consumer_group_assignments(request.into_inner())
            .map_err(status)?;
        Ok(Response::new(resp))
    }

    async fn report_consumer_group_coordinator(
        &self,
        request: Request<ReportConsumerGroupCoordinatorRequest>,
    ) -> Result<Response<ReportConsumerGroupCoordinatorResponse>, Status> {
        self.allow(
            &request,
            &request.get_ref().group_id,
            "ReportConsumerGroupCoordinator",
        )?;
        self.broker
            .report_consumer_group_coordinator(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(ReportConsumerGroupCoordinatorResponse {}))
    }
}

/// A running gRPC server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    health: tonic_health::server::HealthReporter,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reports NOT_SERVING, stops accepting calls, and waits for the server to finish.
    pub async fn shutdown(mut self) {
        self.health
            .set_service_status(
                liftbridge_proto::SERVICE_NAME,
                tonic_health::ServingStatus::NotServing,
            )
            .await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        self.task.abort();
    }
}

/// The largest gRPC message the API takes or sends, either way: room for the largest message
/// the broker records (`clustering.replication.max.bytes`, 1 MiB by default) with its key,
/// headers and fields, and never less than gRPC's usual 4 MiB. A larger request is refused with
/// `OutOfRange` before it is read into memory.
pub fn max_message_size(broker: &Broker) -> usize {
    let recorded = usize::try_from(broker.config().replication_max_bytes).unwrap_or(usize::MAX);
    recorded.saturating_add(1024 * 1024).max(4 * 1024 * 1024)
}

/// The PublishAsync answer to a message the policy does not allow.
fn denied_async(r: &PublishRequest) -> PublishResponse {
    PublishResponse {
        correlation_id: r.correlation_id.clone(),
        ack: None,
        async_error: Some(PublishAsyncError {
            code: publish_async_error::Code::PermissionDenied as i32,
            message: format!(
                "The client is not authorized to call Publish on resource {}",
                r.stream
            ),
        }),
    }
}

/// What protects the API: TLS (with client certificates) and authorization.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS; `None` serves plain HTTP/2.
    pub tls: Option<TlsSettings>,
    /// Authorization; needs TLS with client certificates.
    pub authz: Option<Arc<Authorizer>>,
}

/// Serves the API for `broker` on `listener`, with the health service.
pub async fn serve(broker: Broker, listener: tokio::net::TcpListener) -> std::io::Result<Server> {
    serve_with(broker, listener, Security::default()).await
}

/// Serves the API for `broker` on `listener` with TLS and authorization, with the health
/// service (which is never authorized: load balancers ask it).
///
/// # Errors
/// The listener's address, or a TLS configuration the TLS library refuses.
pub async fn serve_with(
    broker: Broker,
    listener: tokio::net::TcpListener,
    security: Security,
) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            liftbridge_proto::SERVICE_NAME,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let (stop, stopped) = oneshot::channel::<()>();
    // Small replies must not wait for Nagle's algorithm.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder
            .tls_config(tls.server_config())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    let service = match security.authz {
        Some(a) => Service::with_authorizer(broker.clone(), a),
        None => Service::new(broker.clone()),
    };
    let task = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(
                ApiServer::new(service)
                    .max_decoding_message_size(max_message_size(&broker))
                    .max_encoding_message_size(max_message_size(&broker)),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(Server {
        addr,
        stop: Some(stop),
        task,
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_timeout("5"), None);
        assert_eq!(parse_timeout("S"), None);
        assert_eq!(parse_timeout("12x"), None);
        assert_eq!(parse_timeout("1234567890S"), None);
    }

    #[test]
    fn broker_errors_get_liftbridge_codes() {
        let code = |e| status(e).code();
        assert_eq!(
            code(BrokerError::NotFound("x".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(BrokerError::End("x".into())),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            code(BrokerError::FailedPrecondition("x".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(BrokerError::AlreadyExists("x".into())),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(BrokerError::Timeout("x".into())),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(
            status(BrokerError::NotFound("No such partition".into())).message(),
            "No such partition"
        );
    }
}
