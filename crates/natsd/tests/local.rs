//! In-process subscriptions: publishers wait instead of losing messages, echo by name, queue
//! groups, and what happens when the subscriber goes away.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use natsd::{LocalOptions, LocalSubscription, Server, ServerConfig};

async fn server() -> Server {
    Server::start(ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn named(server: &Server, name: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(server.client_url())
        .await
        .unwrap()
}

/// Waits up to 10 s for `cond`.
async fn until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next(sub: &mut LocalSubscription) -> natsd::LocalMessage {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5 s")
        .expect("the subscription goes on")
}

fn numbered(i: usize, size: usize) -> Bytes {
    let mut v = format!("{i}:").into_bytes();
    v.resize(size, b'.');
    Bytes::from(v)
}

fn number(m: &natsd::LocalMessage) -> usize {
    let text = std::str::from_utf8(&m.payload).unwrap();
    text.split(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_waits_for_a_full_local_subscriber_and_nothing_is_lost() {
    let server = server().await;
    const LIMIT: usize = 256 * 1024;
    let mut sub = server
        .subscribe_local(
            "fill.>",
            None,
            LocalOptions {
                name: "ingest".into(),
                max_pending: LIMIT,
                ..Default::default()
            },
        )
        .unwrap();
    let nc = named(&server, "publisher").await;
    // 8 MiB: 32 times what the subscription queues before the publisher must wait, and far
    // more than any socket buffer between them holds.
    const N: usize = 8 * 1024;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            nc.publish("fill.one", numbered(i, 1024)).await.unwrap();
        }
        nc.flush().await.unwrap();
    });
    // The queue fills up to its limit and stays there while nobody reads it.
    until(|| sub.pending_bytes() > LIMIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = sub.pending_bytes();
    // One read of the publisher's socket may come on top of the limit.
    assert!(held <= LIMIT + 256 * 1024, "queued {held} bytes");
    assert!(!publisher.is_finished());
    for i in 0..N {
        let m = next(&mut sub).await;
        assert_eq!(number(&m), i);
        assert_eq!(&m.subject[..], b"fill.one");
        assert_eq!(m.payload.len(), 1024);
    }
    tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .expect("the publisher finishes once the queue drains")
        .unwrap();
    assert_eq!(sub.dropped(), 0);
    assert!(sub.try_next().is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_off_skips_connections_of_the_same_name_only() {
    let server = server().await;
    let mut sub = server
        .subscribe_local(
            "e",
            None,
            LocalOptions {
                name: "me".into(),
                echo: false,
                ..Default::default()
            },
        )
        .unwrap();
    let me = named(&server, "me").await;
    let other = named(&server, "other").await;
    // The probe counts the local subscription under its name.
    let interest = server.handle();
    assert!(!interest.listened_by_others("e", "me"));
    assert!(interest.listened_by_others("e", "other"));
    me.publish("e", "mine".into()).await.unwrap();
    me.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("k", "v");
    other
        .publish_with_reply_and_headers("e", "r.1", headers, "theirs".into())
        .await
        .unwrap();
    other.flush().await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(&m.payload[..], b"theirs");
    assert_eq!(m.reply.as_deref(), Some(&b"r.1"[..]));
    let h = m.headers.expect("headers kept apart from the payload");
    assert!(h.starts_with(b"NATS/1.0\r\n"), "{h:?}");
    assert!(std::str::from_utf8(&h).unwrap().contains("k: v"));
    // "mine" was published first on its own connection: had it been delivered, it would be
    // here by now, since the server handled "theirs" after it was flushed.
    me.publish("e", "mine again".into()).await.unwrap();
    other.publish("e", "last".into()).await.unwrap();
    other.flush().await.unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"last");
    assert!(sub.try_next().is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_gives_each_message_to_one_member_local_or_not() {
    let server = server().await;
    let mut local = server
        .subscribe_local("q", Some("workers"), LocalOptions::default())
        .unwrap();
    let nc = named(&server, "remote").await;
    let mut remote = nc.queue_subscribe("q", "workers".into()).await.unwrap();
    nc.flush().await.unwrap();
    let publisher = named(&server, "publisher").await;
    const N: usize = 400;
    for i in 0..N {
        publisher.publish("q", numbered(i, 8)).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < N && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(m) = local.next() => got.push((number(&m), true)),
            Some(m) = remote.next() => {
                let n = std::str::from_utf8(&m.payload).unwrap().split(':').next().unwrap().parse().unwrap();
                got.push((n, false));
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let mut numbers: Vec<usize> = got.iter().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..N).collect::<Vec<_>>(),
        "each message exactly once"
    );
    assert!(got.iter().any(|(_, l)| *l) && got.iter().any(|(_, l)| !*l));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_wait_connections_are_bounded_and_their_drops_counted() {
    let server = server().await;
    const LIMIT: usize = 64 * 1024;
    let mut sub = server
        .subscribe_local(
            "nw",
            None,
            LocalOptions {
                name: "ingest".into(),
                max_pending: LIMIT,
                never_wait: vec!["own".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let own = named(&server, "own").await;
    // 1 MiB, sixteen times the limit: the connection is never held back, so this finishes
    // although nobody reads.
    const N: usize = 1024;
    for i in 0..N {
        own.publish("nw", numbered(i, 1024)).await.unwrap();
    }
    own.flush().await.unwrap();
    // Once the queue is at twice its limit, the rest is dropped.
    // Once the queue is at twice its limit, the rest is dropped.
    until(|| sub.dropped() > 0).await;
    assert!(sub.pending_bytes() <= 2 * LIMIT);
    // What was queued comes out in publish order, and every message published was either
    // queued or counted as dropped.
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.len() as u64 + sub.dropped() < N as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages unaccounted for"
        );
        match sub.try_next() {
            Some(m) => received.push(number(&m)),
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    assert_eq!(received.len() as u64 + sub.dropped(), N as u64);
    assert!(received.windows(2).all(|w| w[0] < w[1]), "publish order");
    assert_eq!(received[0], 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_local_subscription_releases_its_publishers_and_unsubscribes() {
    let server = server().await;
    let sub = server
        .subscribe_local(
            "gone",
            None,
            LocalOptions {
                max_pending: 16 * 1024,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(server.subscriptions(), 1);
    let nc = named(&server, "publisher").await;
    let publisher = tokio::spawn(async move {
        for i in 0..2048 {
            nc.publish("gone", numbered(i, 1024)).await.unwrap();
        }
        nc.flush().await.unwrap();
        nc
    });
    until(|| sub.pending_bytes() > 16 * 1024).await;
    drop(sub);
    assert_eq!(server.subscriptions(), 0);
    let nc = tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .expect("the publisher goes on once the subscription is gone")
        .unwrap();
    // The connection still works.
    let mut check = nc.subscribe("after").await.unwrap();
    nc.publish("after", "x".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), check.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"x");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_subscription_ends_when_the_server_shuts_down() {
    let server = server().await;
    let mut sub = server
        .subscribe_local("end", None, LocalOptions::default())
        .unwrap();
    assert!(
        server
            .subscribe_local("a..b", None, LocalOptions::default())
            .is_err()
    );
    assert!(
        server
            .subscribe_local("a", Some(""), LocalOptions::default())
            .is_err()
    );
    let nc = named(&server, "publisher").await;
    nc.publish("end", "queued".into()).await.unwrap();
    nc.flush().await.unwrap();
    until(|| sub.pending_bytes() > 0).await;
    server.shutdown().await;
    assert_eq!(&next(&mut sub).await.payload[..], b"queued");
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_clients_keeps_the_named_closes_the_rest_and_accepts_no_more() {
    let server = server().await;
    let mut sub = server
        .subscribe_local("cc", None, LocalOptions::default())
        .unwrap();
    let own = named(&server, "LIFT.ns.me.acks").await;
    let other = named(&server, "someone").await;
    other.publish("cc", "before".into()).await.unwrap();
    // A flush only hands the bytes to the socket; a request nobody answers comes back only
    // once the server has handled what was sent before it.
    let answer = other.request("nobody.listens", "".into()).await;
    assert!(answer.is_err());
    server
        .close_clients(|name| name.starts_with("LIFT.ns.me."))
        .await;
    // What the closed connection had published was delivered before it closed.
    assert_eq!(&next(&mut sub).await.payload[..], b"before");
    assert_eq!(server.connections(), 1);
    // The kept connection still works.
    own.publish("cc", "own".into()).await.unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"own");
    // Nobody new gets in: the listener is closed.
    let refused = tokio::net::TcpStream::connect(server.local_addr()).await;
    assert!(refused.is_err(), "a new connection was accepted");
    server.shutdown().await;
}
