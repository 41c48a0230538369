//! The connection wrapper against our embedded server and against the real nats-server.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use natsbridge::{Connection, NatsConfig, NatsError, connection_name};

const WAIT: Duration = Duration::from_secs(10);

enum Server {
    Ours(natsd::Server),
    Reference(testkit::RefNats),
}

impl Server {
    async fn start(reference: bool) -> Server {
        if !reference {
            let cfg = natsd::ServerConfig {
                port: 0,
                ..Default::default()
            };
            return Server::Ours(natsd::Server::start(cfg).await.unwrap());
        }
        Server::Reference(testkit::RefNats::start(""))
    }

    fn config(&self) -> NatsConfig {
        let url = match self {
            Server::Ours(s) => s.client_url(),
            Server::Reference(n) => n.url(),
        };
        NatsConfig {
            servers: vec![url],
            ..NatsConfig::default()
        }
    }

    async fn stop(self) {
        match self {
            Server::Ours(s) => s.shutdown().await,
            Server::Reference(n) => drop(n),
        }
    }
}

async fn round_trip(c: &Connection) {
    let r = c.request("_SYNC.roundtrip", Bytes::new(), WAIT).await;
    assert!(matches!(r, Err(NatsError::NoResponders(_))), "{r:?}");
}

async fn scenario(reference: bool) {
    let server = Server::start(reference).await;
    let cfg = server.config();
    let name = connection_name("liftbridge-default", "srv1", "streams");
    assert_eq!(name, "LIFT.liftbridge-default.srv1.streams");
    let a = Connection::connect(&cfg, &name).await.unwrap();
    let b = Connection::connect(&cfg, "LIFT.liftbridge-default.srv1.acks")
        .await
        .unwrap();
    assert_eq!(a.name(), name);

    // Publish with headers and a reply subject; the subscriber sees all of it.
    let mut sub = b.subscribe("orders.*").await.unwrap();
    round_trip(&b).await;
    let mut h = natsbridge::connection::Headers::new();
    h.insert("Nats-Msg-Id", "1");
    a.publish_with(
        "orders.new",
        Some("reply.here"),
        h,
        Bytes::from_static(b"o1"),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.subject.as_str(), m.reply.as_deref(), &m.payload[..]),
        ("orders.new", Some("reply.here"), &b"o1"[..])
    );
    assert_eq!(
        m.headers.unwrap().get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("1")
    );

    // Without echo, a connection's subscriptions miss its own publishes but get others'.
    let quiet = Connection::connect_without_echo(&cfg, "LIFT.liftbridge-default.srv1.quiet")
        .await
        .unwrap();
    let mut own = quiet.subscribe("echo.test").await.unwrap();
    round_trip(&quiet).await;
    quiet
        .publish("echo.test", Bytes::from_static(b"mine"))
        .await
        .unwrap();
    round_trip(&quiet).await;
    b.publish("echo.test", Bytes::from_static(b"theirs"))
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, own.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"theirs");
    drop(own);

    // A queue group: each message to one member; an empty group is a plain subscription.
    let mut q1 = a.queue_subscribe("jobs", "workers").await.unwrap();
    let mut q2 = b.queue_subscribe("jobs", "workers").await.unwrap();
    let mut all = b.queue_subscribe("jobs", "").await.unwrap();
    round_trip(&a).await;
    round_trip(&b).await;
    for i in 0..20 {
        a.publish("jobs", Bytes::from(i.to_string())).await.unwrap();
    }
    round_trip(&a).await;
    let mut count = 0;
    for q in [&mut q1, &mut q2] {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), q.next()).await {
            count += 1;
        }
    }
    assert_eq!(count, 20);
    for _ in 0..20 {
        tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap();
    }

    // Requests: an answer, no responders, and a timeout.
    let mut svc = b.subscribe("svc").await.unwrap();
    let mut mute = b.subscribe("mute").await.unwrap();
    round_trip(&b).await;
    let b2 = b.clone();
    let responder = tokio::spawn(async move {
        let m = svc.next().await.unwrap();
        b2.publish(
            m.reply.as_ref().unwrap().as_str(),
            Bytes::from_static(b"pong"),
        )
        .await
        .unwrap();
        b2.flush().await.unwrap();
    });
    let reply = a
        .request("svc", Bytes::from_static(b"ping"), WAIT)
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"pong");
    responder.await.unwrap();
    assert!(
        matches!(a.request("nobody", Bytes::new(), WAIT).await, Err(NatsError::NoResponders(s)) if s == "nobody")
    );
    let short = Duration::from_millis(200);
    assert!(matches!(
        a.request("mute", Bytes::new(), short).await,
        Err(NatsError::Timeout { .. })
    ));
    assert!(
        tokio::time::timeout(WAIT, mute.next())
            .await
            .unwrap()
            .is_some(),
        "the request did arrive"
    );

    // A bad subject is refused before it reaches the server.
    assert!(matches!(
        a.subscribe("a..b").await,
        Err(NatsError::InvalidSubject(_))
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_embedded_server() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_nats_server() {
    scenario(true).await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = NatsConfig {
        servers: vec![format!("nats://127.0.0.1:{port}")],
        connect_timeout: Duration::from_millis(500),
        ..NatsConfig::default()
    };
    let err = Connection::connect(&cfg, "x").await.unwrap_err();
    assert!(
        matches!(&err, NatsError::Connect { servers, .. } if servers.contains(&port.to_string())),
        "{err}"
    );
}

/// Collects the events a hook receives.
fn collecting() -> (
    natsbridge::EventHook,
    std::sync::Arc<std::sync::Mutex<Vec<natsbridge::Event>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let hook = natsbridge::EventHook::new(move |e| s.lock().unwrap().push(e.clone()));
    (hook, seen)
}

async fn wait_for_event(
    seen: &std::sync::Mutex<Vec<natsbridge::Event>>,
    kind: natsbridge::EventKind,
) -> natsbridge::Event {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = seen.lock().unwrap().iter().find(|e| e.kind == kind) {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "no {kind:?} event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_buffer_is_reported_and_counted() {
    for reference in [false, true] {
        let server = Server::start(reference).await;
        let (hook, seen) = collecting();
        let cfg = NatsConfig {
            subscription_capacity: 8,
            events: Some(hook),
            ..server.config()
        };
        let slow = Connection::connect(&cfg, "LIFT.test.a.streams")
            .await
            .unwrap();
        let _sub = slow.subscribe("fast").await.unwrap();
        round_trip(&slow).await;
        let publisher = Connection::connect(&server.config(), "publisher")
            .await
            .unwrap();
        for _ in 0..200 {
            publisher
                .publish("fast", Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        round_trip(&publisher).await;
        let e = wait_for_event(&seen, natsbridge::EventKind::SlowConsumer).await;
        assert_eq!(e.connection, "LIFT.test.a.streams");
        assert!(e.count >= 1);
        assert!(slow.stats().slow_consumer >= 1);
        assert_eq!(slow.stats().disconnects, 0);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_is_reported_and_so_is_its_return() {
    let first = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let port = first.local_addr().port();
    let (hook, seen) = collecting();
    let cfg = NatsConfig {
        servers: vec![first.client_url()],
        reconnect_wait: Duration::from_millis(50),
        events: Some(hook),
        ..NatsConfig::default()
    };
    let c = Connection::connect(&cfg, "LIFT.test.a.acks").await.unwrap();
    round_trip(&c).await;
    assert!(seen.lock().unwrap().is_empty(), "connecting is no event");
    first.shutdown().await;
    let e = wait_for_event(&seen, natsbridge::EventKind::Disconnected).await;
    assert_eq!((e.connection.as_str(), e.count), ("LIFT.test.a.acks", 1));
    let second = natsd::Server::start(natsd::ServerConfig {
        port,
        ..Default::default()
    })
    .await
    .unwrap();
    let e = wait_for_event(&seen, natsbridge::EventKind::Reconnected).await;
    assert_eq!(e.count, 1);
    round_trip(&c).await;
    let stats = c.stats();
    assert_eq!((stats.disconnects, stats.reconnects), (1, 1));
    second.shutdown().await;
}
