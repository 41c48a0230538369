//! Behaviour of our server that the reference has no counterpart for in the same form.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_closes_everyone_and_frees_the_port() {
    let server = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = server.local_addr();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let mut sub = client.subscribe("x").await.unwrap();
    client
        .publish("x", Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(
        &tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .payload[..],
        b"before"
    );

    // A raw connection: it must see the connection end after the shutdown.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    rd.read_line(&mut line).await.unwrap();
    wr.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await
        .unwrap();
    line.clear();
    rd.read_line(&mut line).await.unwrap();
    assert_eq!(line, "PONG\r\n");
    assert_eq!(server.connections(), 2);
    assert_eq!(server.subscriptions(), 1);

    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown hangs");
    line.clear();
    let n = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the connection should be closed, got {line:?}");
    // The port is free again.
    let again = natsd::Server::start(natsd::ServerConfig {
        port: addr.port(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(again.connections(), 0);
    again.shutdown().await;
}

#[tokio::test]
async fn bad_settings_and_busy_ports_are_clear_errors() {
    let bad = natsd::ServerConfig {
        port: 0,
        max_payload: 2_000_000,
        max_pending: 1_000_000,
        ..Default::default()
    };
    let err = natsd::Server::start(bad).await.unwrap_err().to_string();
    assert!(err.contains("max_payload"), "{err}");
    let first = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let busy = natsd::ServerConfig {
        port: first.local_addr().port(),
        ..Default::default()
    };
    let err = natsd::Server::start(busy).await.unwrap_err().to_string();
    assert!(err.contains("cannot listen"), "{err}");
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_tells_who_else_listens() {
    let server = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let interest = server.handle();
    let named = |name: &str| {
        async_nats::ConnectOptions::new()
            .name(name)
            .connect(server.client_url())
    };
    let me = named("me").await.unwrap();
    let other = named("other").await.unwrap();
    // A request nobody answers: its no-responders reply comes after everything sent before.
    let sync = |c: async_nats::Client| async move {
        let r = c.request("_SYNC.interest", Bytes::new()).await;
        assert!(r.is_err(), "nobody answers {r:?}");
    };
    assert!(!interest.listened_by_others("orders.eu", "me"));

    // Only my own subscriptions: nobody else listens.
    let mine = me.subscribe("orders.*").await.unwrap();
    sync(me.clone()).await;
    assert!(!interest.listened_by_others("orders.eu", "me"));
    assert!(interest.listened_by_others("orders.eu", "someone-else"));

    // Another connection, through a wildcard, a literal, or a queue group. (A request would
    // be caught by `>`, so this waits for the server to see each change instead.)
    let until = |want: bool, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let what = what.to_owned();
        let interest = interest.clone();
        async move {
            while interest.listened_by_others("orders.eu", "me") != want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: still not {want}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    for pattern in ["orders.>", "orders.eu", "*.eu", ">"] {
        let s = other.subscribe(pattern).await.unwrap();
        until(true, pattern).await;
        assert_eq!(
            interest.listened_by_others("trades.us", "me"),
            pattern == ">",
            "{pattern}"
        );
        // Its own subscriptions do not count for the connection itself.
        assert!(
            !interest.listened_by_others("trades.us", "other"),
            "{pattern}"
        );
        // Dropping a subscriber unsubscribes.
        drop(s);
        until(false, pattern).await;
    }
    let q = other
        .queue_subscribe("orders.eu", "workers".into())
        .await
        .unwrap();
    until(true, "queue group").await;
    assert!(!interest.listened_by_others("orders.us", "me"));
    assert!(!interest.listened_by_others("orders.eu.x", "me"));
    drop((q, mine));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_port_right_after_shutdown_binds() {
    let mut port = 0;
    for round in 0..20 {
        let server = natsd::Server::start(natsd::ServerConfig {
            port,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        port = server.local_addr().port();
        // No clients: shutdown has nothing to wait for but the listener.
        server.shutdown().await;
    }
}
