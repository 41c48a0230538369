//! Helpers shared by the end-to-end tests: an in-process `liftbridged` on 127.0.0.1 with its
//! embedded NATS server on a free port, and a gRPC client for it.
#![allow(dead_code)]

pub mod cluster;
pub mod groups;

use std::time::Duration;

use futures_util::StreamExt;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use tonic::transport::Channel;

/// A server and the folder holding its data.
pub struct TestServer {
    pub running: Option<liftbridged::Running>,
    pub dir: tempfile::TempDir,
}

/// Base configuration of a test server in `dir`.
pub fn config(dir: &std::path::Path) -> liftbridged::Config {
    config_from(&flags(dir))
}

/// The command-line flags of a test server in `dir`: 127.0.0.1, free ports, embedded NATS.
pub fn flags(dir: &std::path::Path) -> liftbridged::Flags {
    liftbridged::Flags {
        data_dir: Some(dir.to_path_buf()),
        host: Some("127.0.0.1".into()),
        port: Some(0),
        embedded_nats_port: Some(0),
        id: Some("a".into()),
        ..Default::default()
    }
}

/// The configuration `flags` give, with the test defaults.
pub fn config_from(flags: &liftbridged::Flags) -> liftbridged::Config {
    let mut cfg = liftbridged::Config::load(flags).expect("test configuration");
    cfg.broker.cursors.partitions = 1;
    cfg
}

/// Silent, unless `TEST_LOG` is set (to a level such as `debug`).
pub fn quiet() -> slog::Logger {
    match std::env::var("TEST_LOG") {
        Ok(l) if l == "debug" => liftbridged::logger(slog::Level::Debug),
        Ok(_) => liftbridged::logger(slog::Level::Info),
        Err(_) => slog::Logger::root(slog::Discard, slog::o!()),
    }
}

impl TestServer {
    /// A fresh server with the test defaults.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A fresh server whose configuration `tweak` adjusts.
    pub async fn start_with(tweak: impl FnOnce(&mut liftbridged::Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let running = liftbridged::start(cfg, quiet())
            .await
            .expect("server starts");
        TestServer {
            running: Some(running),
            dir,
        }
    }

    /// Stops the server and starts it again on the same data (new ports).
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut liftbridged::Config)) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let mut cfg = config(self.dir.path());
        tweak(&mut cfg);
        self.running = Some(
            liftbridged::start(cfg, quiet())
                .await
                .expect("server restarts"),
        );
    }

    /// Stops the server and starts it again on the same data and the same ports, so that
    /// clients find it where it was.
    pub async fn restart_in_place(&mut self) {
        let running = self.running.take().expect("running");
        let grpc = running.grpc_addr();
        let nats_port: u16 = running
            .nats_url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a NATS port");
        running.shutdown().await;
        let mut cfg = config(self.dir.path());
        cfg.bind = grpc.to_string();
        cfg.broker.advertise_port = grpc.port();
        if let Some(e) = cfg.embedded_nats.as_mut() {
            e.port = nats_port;
        }
        self.running = Some(
            liftbridged::start(cfg, quiet())
                .await
                .expect("server restarts"),
        );
    }

    pub fn running(&self) -> &liftbridged::Running {
        self.running.as_ref().expect("running")
    }

    pub async fn client(&self) -> ApiClient<Channel> {
        ApiClient::connect(format!("http://{}", self.running().grpc_addr()))
            .await
            .expect("gRPC connect")
    }

    /// A NATS client on the server's NATS.
    pub async fn nats(&self) -> async_nats::Client {
        async_nats::connect(self.running().nats_url())
            .await
            .expect("NATS connect")
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// Waits until the NATS server has handled everything `nc` sent before. `flush` only hands
/// the bytes to the socket; a request that nobody answers comes back as "no responders" only
/// after the server has processed the operations ahead of it, subscriptions included.
pub async fn round_trip(nc: &async_nats::Client) {
    let subject = nc.new_inbox();
    let r = tokio::time::timeout(Duration::from_secs(5), nc.request(subject, "".into()))
        .await
        .expect("the NATS server answers within 5 s");
    let e = r.expect_err("nobody listens on a fresh inbox");
    assert_eq!(
        e.kind(),
        async_nats::client::RequestErrorKind::NoResponders,
        "{e}"
    );
}

/// A CreateStream request with defaults.
pub fn stream(name: &str, subject: &str) -> CreateStreamRequest {
    CreateStreamRequest {
        name: name.into(),
        subject: subject.into(),
        ..Default::default()
    }
}

/// A request with a deadline, so that publishes wait for their ack.
pub fn with_deadline<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// Publishes `value` with ack policy LEADER and waits for the ack.
pub async fn publish(c: &mut ApiClient<Channel>, stream: &str, value: &str) -> Ack {
    let resp = c
        .publish(with_deadline(PublishRequest {
            stream: stream.into(),
            value: value.to_owned().into(),
            expected_offset: -1,
            ..Default::default()
        }))
        .await
        .expect("publish")
        .into_inner();
    resp.ack.expect("an ack")
}

/// A subscription request from a start position.
pub fn sub(stream: &str, start: StartPosition) -> SubscribeRequest {
    SubscribeRequest {
        stream: stream.into(),
        start_position: start as i32,
        ..Default::default()
    }
}

/// Opens a subscription and checks its empty handshake frame.
pub async fn subscribe(
    c: &mut ApiClient<Channel>,
    req: SubscribeRequest,
) -> Result<tonic::Streaming<Message>, tonic::Status> {
    let mut s = c.subscribe(req).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("handshake in time");
    match first {
        Some(Ok(m)) => {
            assert_eq!(
                m,
                Message::default(),
                "the first frame is the empty handshake"
            );
            Ok(s)
        }
        Some(Err(e)) => Err(e),
        None => panic!("subscription ended before its handshake"),
    }
}

/// The next item of a subscription, within 5 s.
pub async fn next(s: &mut tonic::Streaming<Message>) -> Result<Message, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("a message or an error in time")
        .expect("the subscription did not end silently")
}

/// Whether nothing arrives within `wait`.
pub async fn quiet_for(s: &mut tonic::Streaming<Message>, wait: Duration) -> bool {
    tokio::time::timeout(wait, s.next()).await.is_err()
}

/// A partition's metadata from its leader.
pub async fn partition_md(
    c: &mut ApiClient<Channel>,
    stream: &str,
    partition: i32,
) -> PartitionMetadata {
    c.fetch_partition_metadata(FetchPartitionMetadataRequest {
        stream: stream.into(),
        partition,
    })
    .await
    .expect("partition metadata")
    .into_inner()
    .metadata
    .expect("metadata in the response")
}

/// A logger that keeps every record as a line: level, message, then `key=value` pairs.
pub fn capturing() -> (slog::Logger, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    struct Line(String);
    impl slog::Serializer for Line {
        fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
            self.0.push_str(&format!(" {key}={val}"));
            Ok(())
        }
    }
    impl slog::Drain for Capture {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record, kv: &slog::OwnedKVList) -> Result<(), slog::Never> {
            let mut line = Line(format!("{} {}", r.level().as_short_str(), r.msg()));
            let _ = slog::KV::serialize(&r.kv(), r, &mut line);
            let _ = slog::KV::serialize(kv, r, &mut line);
            self.0.lock().unwrap().push(line.0);
            Ok(())
        }
    }
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let logger = slog::Logger::root(Capture(lines.clone()), slog::o!());
    (logger, lines)
}

/// Waits up to 20 s until `lines` has a line containing every one of `parts`.
pub async fn wait_logged(lines: &std::sync::Mutex<Vec<String>>, parts: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| parts.iter().all(|p| l.contains(p)))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Raft heartbeat forged in the name of broker `a` (the only member of a one-broker cluster),
/// a term ahead and committing far past the log, which raft-rs would panic on: the subject it
/// goes to, and its bytes.
pub fn forged_heartbeat(running: &liftbridged::Running) -> (String, bytes::Bytes) {
    let status = running.broker().metadata().status();
    let id = metastore::service::raft_id("a");
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    m.from = id;
    m.to = id;
    m.term = status.term + 1;
    m.commit = status.last_index + 1_000_000;
    let bytes = natsbridge::envelope::encode(
        natsbridge::MsgType::RaftMessage,
        &metastore::node::encode_message(&m),
        true,
    );
    (
        format!("liftbridge-default.raft.metadata.{id}.accept"),
        bytes,
    )
}
