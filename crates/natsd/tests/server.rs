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

/// Reads lines until one starts with `prefix`, or the connection ends; returns that line.
async fn line_starting(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    prefix: &str,
) -> Option<String> {
    for _ in 0..100 {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line))
            .await
            .expect("an answer within 5 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        if line.starts_with(prefix) {
            return Some(line);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_with_nats_servers_words() {
    let server = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        max_connections: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let a = async_nats::connect(server.client_url()).await.unwrap();
    let b = async_nats::connect(server.client_url()).await.unwrap();
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (rd, _wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let err = line_starting(&mut rd, "-ERR").await;
    assert_eq!(
        err.as_deref(),
        Some("-ERR 'maximum connections exceeded'\r\n")
    );
    assert_eq!(line_starting(&mut rd, "").await, None, "then it is closed");
    assert_eq!(server.connections(), 2);
    // Once one leaves, a new one is served.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.connections() > 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = async_nats::connect(server.client_url()).await.unwrap();
    c.flush().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_limit_are_refused_and_the_connection_stays() {
    let server = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        max_subscriptions: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(
        b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nSUB d 4\r\nPING\r\n",
    )
    .await
    .unwrap();
    let err = line_starting(&mut rd, "-ERR").await;
    assert_eq!(
        err.as_deref(),
        Some("-ERR 'maximum subscriptions exceeded'\r\n")
    );
    assert_eq!(
        line_starting(&mut rd, "PONG").await.as_deref(),
        Some("PONG\r\n")
    );
    assert_eq!(server.subscriptions(), 3);
    // The connection still works, and a freed slot can be taken again.
    wr.write_all(b"UNSUB 1\r\nSUB e 5\r\nPUB e 2\r\nhi\r\n")
        .await
        .unwrap();
    let msg = line_starting(&mut rd, "MSG").await;
    assert_eq!(msg.as_deref(), Some("MSG e 5 2\r\n"));
    server.shutdown().await;
}

/// The process's peak resident memory so far, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_read_fanned_out_to_many_subscriptions_stays_within_the_slow_consumer_limit() {
    const MAX_PENDING: usize = 256 * 1024;
    let server = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        max_payload: 1024,
        max_pending: MAX_PENDING,
        ..Default::default()
    })
    .await
    .unwrap();
    // A subscriber with 2,000 subscriptions to one subject, which never reads.
    let sub = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (srd, mut swr) = sub.into_split();
    let mut srd = BufReader::new(srd);
    let mut subs = b"CONNECT {\"verbose\":false}\r\n".to_vec();
    for i in 0..2000 {
        subs.extend_from_slice(format!("SUB fan {i}\r\n").as_bytes());
    }
    subs.extend_from_slice(b"PING\r\n");
    swr.write_all(&subs).await.unwrap();
    assert!(line_starting(&mut srd, "PONG").await.is_some());
    // 4,000 one-byte messages in one write: 8 million deliveries, about 150 MB if gathered.
    let before = peak_rss_kib();
    let publisher = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (prd, mut pwr) = publisher.into_split();
    let mut prd = BufReader::new(prd);
    let mut burst = b"CONNECT {\"verbose\":false}\r\n".to_vec();
    for _ in 0..4000 {
        burst.extend_from_slice(b"PUB fan 1\r\na\r\n");
    }
    burst.extend_from_slice(b"PING\r\n");
    pwr.write_all(&burst).await.unwrap();
    // The publisher is served to the end; the subscriber is cut off as a slow consumer.
    assert_eq!(
        line_starting(&mut prd, "PONG").await.as_deref(),
        Some("PONG\r\n")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.connections() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow consumer is still connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "the peak grew by {grown} KiB");
    server.shutdown().await;
}

/// A raw client: the INFO line is read, `hello` sent.
async fn raw(
    server: &natsd::Server,
    hello: &[u8],
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    rd.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("INFO "), "{line}");
    wr.write_all(hello).await.unwrap();
    (rd, wr)
}

async fn read_line(rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line))
        .await
        .expect("a line")
        .unwrap();
    line
}

/// A wildcard in a published subject is refused, pedantic or not, and routed nowhere: a
/// subscription of n `*` tokens and a publish on the same subject once cost the server 2^n
/// (nats-server 2.9 sends the same error in pedantic mode, and still routes the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_in_a_published_subject_are_refused() {
    let server = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let wild = vec!["*"; 30].join(".");
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {wild} 1\r\nSUB a.> 2\r\n\
         PUB {wild} 1\r\nx\r\nPUB a.> 1\r\nx\r\nPUB a.* 1\r\nx\r\nPUB a.b 1\r\ny\r\nPING\r\n"
    );
    let (mut rd, _wr) = raw(&server, hello.as_bytes()).await;
    for _ in 0..3 {
        assert_eq!(
            read_line(&mut rd).await,
            "-ERR 'Invalid Publish Subject'\r\n"
        );
    }
    // The literal publish goes through, and the connection stays.
    assert_eq!(read_line(&mut rd).await, "MSG a.b 2 1\r\n");
    assert_eq!(read_line(&mut rd).await, "y\r\n");
    assert_eq!(read_line(&mut rd).await, "PONG\r\n");
    server.shutdown().await;
}

/// Checking a password against a bcrypt hash takes the CPU for a long time on purpose; done on
/// the server's own task, it stopped every other connection on that worker thread meanwhile,
/// and anyone who knows a user name could keep doing it without logging in. An authenticated
/// client's PING is answered while wrong passwords for a bcrypt user are being checked.
#[test]
fn a_bcrypt_check_does_not_stop_other_connections() {
    // bcrypt("U*U"), cost 10: a wrong password costs the whole 2^10 rounds.
    const HASH: &str = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
    // The server runs alone on a runtime of one worker thread.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = natsd::Server::start(natsd::ServerConfig {
                port: 0,
                auth: Some(natsd::Auth::Users(vec![
                    natsd::User {
                        user: "broker".into(),
                        password: HASH.into(),
                        permissions: None,
                    },
                    natsd::User {
                        user: "app".into(),
                        password: "app".into(),
                        permissions: None,
                    },
                ])),
                ..Default::default()
            })
            .await
            .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            let _ = stop_rx.await;
            server.shutdown().await;
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let open = |hello: &'static [u8]| async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            assert!(line.starts_with("INFO "), "{line}");
            wr.write_all(hello).await.unwrap();
            (rd, wr)
        };
        let (mut app, mut app_wr) =
            open(b"CONNECT {\"verbose\":false,\"user\":\"app\",\"pass\":\"app\"}\r\nPING\r\n")
                .await;
        assert_eq!(read_line(&mut app).await, "PONG\r\n");
        // Each wrong password's answer, as it comes.
        let (refusals_tx, mut refusals) = tokio::sync::mpsc::unbounded_channel();
        let mut writers = Vec::new();
        for _ in 0..6 {
            let (mut rd, wr) =
                open(b"CONNECT {\"verbose\":false,\"user\":\"broker\",\"pass\":\"guess\"}\r\n")
                    .await;
            writers.push(wr);
            let tx = refusals_tx.clone();
            tokio::spawn(async move {
                let mut line = String::new();
                let _ = rd.read_line(&mut line).await;
                let _ = tx.send(line);
            });
        }
        drop(refusals_tx);
        app_wr.write_all(b"PING\r\n").await.unwrap();
        let mut pong = String::new();
        let answered_first = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                biased;
                _ = app.read_line(&mut pong) => "app".to_owned(),
                r = refusals.recv() => format!("attacker {r:?}"),
            }
        })
        .await
        .expect("an answer");
        assert_eq!(answered_first, "app");
        assert_eq!(pong, "PONG\r\n");
        // The wrong passwords are refused all the same.
        for _ in 0..6 {
            let line = tokio::time::timeout(Duration::from_secs(60), refusals.recv())
                .await
                .expect("a refusal")
                .expect("an answer");
            assert_eq!(line, "-ERR 'Authorization Violation'\r\n");
        }
    });
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}
