//! One compatibility suite, run against our server and against the real `nats-server`: every
//! assertion must hold for both. The reference binary must be on PATH (`.ci/run` installs it).
//!
//! Servers listen on 127.0.0.1 only, and every wait is bounded.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Reference,
}

#[derive(Debug, Clone, Default)]
struct Opts {
    port: Option<u16>,
    max_payload: Option<usize>,
    max_pending: Option<usize>,
    token: Option<String>,
    user: Option<(String, String)>,
    /// An `authorization { ... }` block in nats-server's syntax.
    authorization: Option<&'static str>,
}

struct TestServer {
    port: u16,
    ours: Option<natsd::Server>,
    /// Kept until the test server drops, which stops it.
    _reference: Option<testkit::RefNats>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    async fn start(kind: Kind, opts: Opts) -> TestServer {
        let port = opts.port.unwrap_or_else(free_port);
        match kind {
            Kind::Ours => {
                let mut cfg = natsd::ServerConfig {
                    port,
                    write_deadline: Duration::from_secs(2),
                    ..Default::default()
                };
                if let Some(n) = opts.max_payload {
                    cfg.max_payload = n;
                }
                if let Some(n) = opts.max_pending {
                    cfg.max_pending = n;
                }
                cfg.auth = opts.token.clone().map(natsd::Auth::Token);
                if let Some((user, password)) = opts.user.clone() {
                    cfg.auth = Some(natsd::Auth::User { user, password });
                }
                if let Some(a) = opts.authorization {
                    cfg.auth = natsd::conf::authorization(&natsd::conf::parse(a).unwrap()).unwrap();
                }
                let server = natsd::Server::start(cfg).await.unwrap();
                TestServer {
                    port,
                    ours: Some(server),
                    _reference: None,
                }
            }
            Kind::Reference => {
                let mut conf = String::from("write_deadline: \"2s\"\n");
                if let Some(n) = opts.max_payload {
                    conf.push_str(&format!("max_payload: {n}\n"));
                }
                if let Some(n) = opts.max_pending {
                    conf.push_str(&format!("max_pending: {n}\n"));
                }
                if let Some(t) = &opts.token {
                    conf.push_str(&format!("authorization {{ token: \"{t}\" }}\n"));
                }
                if let Some((u, p)) = &opts.user {
                    conf.push_str(&format!(
                        "authorization {{ user: \"{u}\", password: \"{p}\" }}\n"
                    ));
                }
                if let Some(a) = opts.authorization {
                    conf.push_str(a);
                }
                TestServer {
                    port,
                    ours: None,
                    _reference: Some(testkit::RefNats::start_on(port, &conf)),
                }
            }
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn stop(mut self) {
        if let Some(s) = self.ours.take() {
            s.shutdown().await;
        }
        // A reference server stops as `self` drops.
    }
}

async fn client(s: &TestServer) -> async_nats::Client {
    tokio::time::timeout(WAIT, async_nats::connect(s.url()))
        .await
        .unwrap()
        .unwrap()
}

/// A true round trip: the no-responders status for a request nobody answers comes back only
/// after the server processed everything this connection sent before it. (`Client::flush` only
/// flushes the local socket.)
async fn sync(c: &async_nats::Client) {
    let res = tokio::time::timeout(WAIT, c.request("_SYNC.roundtrip", Bytes::new()))
        .await
        .expect("round trip timed out");
    assert_eq!(
        res.unwrap_err().kind(),
        async_nats::RequestErrorKind::NoResponders
    );
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

/// Messages that arrive within a short quiet period, after everything expected has arrived.
async fn drain(sub: &mut async_nats::Subscriber) -> Vec<async_nats::Message> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        out.push(m);
        assert!(out.len() < 100_000);
    }
    out
}

/// A raw protocol connection, for what clients libraries hide.
/// A password given as a bcrypt hash (as nats-server accepts it): clients log in with the
/// password itself, and the hash is no password.
async fn bcrypt_password(kind: Kind) {
    let hash = bcrypt::hash_with_salt("pw", 4, *b"0123456789abcdef")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoA);
    let s = TestServer::start(
        kind,
        Opts {
            user: Some(("ada".into(), hash.clone())),
            ..Opts::default()
        },
    )
    .await;
    for wrong in ["nope", hash.as_str()] {
        let (mut raw, _) = Raw::connect(&s).await;
        raw.send(&format!(
            "CONNECT {{\"verbose\":false,\"user\":\"ada\",\"pass\":\"{wrong}\"}}\r\n"
        ))
        .await;
        assert_eq!(
            raw.line().await.as_deref(),
            Some("-ERR 'Authorization Violation'")
        );
    }
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false,\"user\":\"ada\",\"pass\":\"pw\"}\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    s.stop().await;
}

struct Raw {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(s: &TestServer) -> (Raw, serde_json::Value) {
        let stream = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        let (rd, wr) = stream.into_split();
        let mut raw = Raw {
            rd: BufReader::new(rd),
            wr,
        };
        let line = raw.line().await.expect("INFO");
        let json = line.strip_prefix("INFO ").expect("starts with INFO");
        (raw, serde_json::from_str(json).unwrap())
    }

    async fn send(&mut self, s: &str) {
        self.wr.write_all(s.as_bytes()).await.unwrap();
    }

    /// The next line without its CRLF, or `None` at end of stream.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(WAIT, self.rd.read_line(&mut line))
            .await
            .expect("timed out reading")
        {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    /// Whether the server closed the connection (reads until end of stream, bounded).
    async fn closed(&mut self) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match tokio::time::timeout(WAIT, self.rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
        false
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn ours() {
                    super::$name(super::Kind::Ours).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn reference() {
                    super::$name(super::Kind::Reference).await
                }
            }
        )*
    };
}

both!(
    wildcards,
    queue_groups,
    headers,
    request_reply_and_no_responders,
    unsubscribe_after_n_messages,
    max_payload,
    many_subjects,
    slow_consumer_is_cut_off,
    reconnect_after_restart,
    protocol_errors,
    authentication,
    user_and_password,
    bcrypt_password,
    permissions,
    verbose_and_echo,
);

async fn wildcards(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    let c = client(&s).await;
    let mut star = c.subscribe("a.*").await.unwrap();
    let mut gt = c.subscribe("a.>").await.unwrap();
    let mut exact = c.subscribe("a.b").await.unwrap();
    let mut all = c.subscribe(">").await.unwrap();
    c.flush().await.unwrap();
    for subj in ["a.b", "a.b.c", "a", "x.y", "a.c"] {
        c.publish(subj, Bytes::from(subj)).await.unwrap();
    }
    c.flush().await.unwrap();
    let names = |v: Vec<async_nats::Message>| {
        v.into_iter()
            .map(|m| m.subject.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(drain(&mut star).await), ["a.b", "a.c"]);
    assert_eq!(names(drain(&mut gt).await), ["a.b", "a.b.c", "a.c"]);
    assert_eq!(names(drain(&mut exact).await), ["a.b"]);
    assert_eq!(
        names(drain(&mut all).await),
        ["a.b", "a.b.c", "a", "x.y", "a.c"]
    );
    s.stop().await;
}

async fn queue_groups(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    let members = [client(&s).await, client(&s).await, client(&s).await];
    let mut subs = Vec::new();
    for m in &members {
        subs.push(m.queue_subscribe("work", "g".into()).await.unwrap());
        sync(m).await;
    }
    let watcher = client(&s).await;
    let mut plain = watcher.subscribe("work").await.unwrap();
    sync(&watcher).await;
    let p = client(&s).await;
    for i in 0..60 {
        p.publish("work", Bytes::from(i.to_string())).await.unwrap();
    }
    sync(&p).await;
    let mut got: Vec<String> = Vec::new();
    for sub in &mut subs {
        got.extend(
            drain(sub)
                .await
                .into_iter()
                .map(|m| String::from_utf8(m.payload.to_vec()).unwrap()),
        );
    }
    got.sort_by_key(|v| v.parse::<u32>().unwrap());
    assert_eq!(
        got,
        (0..60).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    assert_eq!(
        drain(&mut plain).await.len(),
        60,
        "a plain subscriber gets everything"
    );
    s.stop().await;
}

async fn headers(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    let c = client(&s).await;
    let mut sub = c.subscribe("h").await.unwrap();
    c.flush().await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-One", "1");
    h.append("X-Many", "a");
    h.append("X-Many", "b");
    c.publish_with_headers("h", h, Bytes::from_static(b"body"))
        .await
        .unwrap();
    c.flush().await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(&m.payload[..], b"body");
    let got = m.headers.expect("headers");
    assert_eq!(got.get("X-One").map(|v| v.as_str()), Some("1"));
    let many: Vec<&str> = got.get_all("X-Many").map(|v| v.as_str()).collect();
    assert_eq!(many, ["a", "b"]);

    // A connection without header support gets the message without them.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false}\r\nSUB h 1\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    let mut h = async_nats::HeaderMap::new();
    h.insert("k", "v");
    c.publish_with_headers("h", h, Bytes::from_static(b"plain"))
        .await
        .unwrap();
    c.flush().await.unwrap();
    assert_eq!(raw.line().await.as_deref(), Some("MSG h 1 5"));
    assert_eq!(raw.line().await.as_deref(), Some("plain"));
    s.stop().await;
}

async fn request_reply_and_no_responders(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    let responder = client(&s).await;
    let mut svc = responder.subscribe("svc.echo").await.unwrap();
    sync(&responder).await;
    let r2 = responder.clone();
    let task = tokio::spawn(async move {
        for _ in 0..3 {
            let Some(m) = svc.next().await else { return };
            let reply = m.reply.unwrap();
            let mut out = b"re:".to_vec();
            out.extend_from_slice(&m.payload);
            r2.publish(reply, Bytes::from(out)).await.unwrap();
            r2.flush().await.unwrap();
        }
    });
    let c = client(&s).await;
    for i in 0..3 {
        let reply = tokio::time::timeout(WAIT, c.request("svc.echo", Bytes::from(format!("q{i}"))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.payload, Bytes::from(format!("re:q{i}")));
    }
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    let err = tokio::time::timeout(WAIT, c.request("nobody.home", Bytes::new()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);

    // On the wire: a 503 status on the requester's own reply subscription.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB inbox.* 7\r\nPUB nobody inbox.1 0\r\n\r\nPING\r\n").await;
    assert_eq!(raw.line().await.as_deref(), Some("HMSG inbox.1 7 16 16"));
    assert_eq!(raw.line().await.as_deref(), Some("NATS/1.0 503"));
    s.stop().await;
}

async fn unsubscribe_after_n_messages(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    let c = client(&s).await;
    let mut sub = c.subscribe("n").await.unwrap();
    sub.unsubscribe_after(3).await.unwrap();
    c.flush().await.unwrap();
    for i in 0..10 {
        c.publish("n", Bytes::from(i.to_string())).await.unwrap();
    }
    c.flush().await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["0", "1", "2"]);

    // The server side: UNSUB with a limit stops delivery after it.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false}\r\nSUB r 1\r\nUNSUB 1 2\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    for _ in 0..4 {
        c.publish("r", Bytes::from_static(b"x")).await.unwrap();
    }
    sync(&c).await;
    raw.send("PING\r\n").await;
    let mut lines = Vec::new();
    while let Some(l) = raw.line().await {
        if l == "PONG" {
            break;
        }
        lines.push(l);
    }
    assert_eq!(lines, ["MSG r 1 1", "x", "MSG r 1 1", "x"]);
    s.stop().await;
}

async fn max_payload(kind: Kind) {
    let s = TestServer::start(
        kind,
        Opts {
            max_payload: Some(1024),
            ..Opts::default()
        },
    )
    .await;
    let (mut raw, info) = Raw::connect(&s).await;
    assert_eq!(info["max_payload"], 1024);
    assert_eq!(info["headers"], true);
    raw.send("CONNECT {\"verbose\":false}\r\nPUB ok 1024\r\n")
        .await;
    raw.send(&format!("{}\r\nPING\r\n", "a".repeat(1024))).await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("PONG"),
        "a payload of exactly max_payload is fine"
    );
    raw.send("PUB big 1025\r\n").await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Maximum Payload Violation'")
    );
    assert!(raw.closed().await);
    s.stop().await;
}

async fn many_subjects(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    let c = client(&s).await;
    let mut subs = Vec::new();
    for i in 0..500 {
        subs.push(c.subscribe(format!("many.{i}.x")).await.unwrap());
    }
    c.flush().await.unwrap();
    for i in 0..500 {
        c.publish(format!("many.{i}.x"), Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    c.flush().await.unwrap();
    for (i, sub) in subs.iter_mut().enumerate() {
        assert_eq!(next(sub).await.payload, Bytes::from(i.to_string()));
    }
    s.stop().await;
}

async fn slow_consumer_is_cut_off(kind: Kind) {
    let s = TestServer::start(
        kind,
        Opts {
            max_pending: Some(1024 * 1024),
            ..Opts::default()
        },
    )
    .await;
    // A subscriber that never reads.
    let (mut slow, _) = Raw::connect(&s).await;
    slow.send("CONNECT {\"verbose\":false}\r\nSUB flood 1\r\nPING\r\n")
        .await;
    assert_eq!(slow.line().await.as_deref(), Some("PONG"));
    let healthy = client(&s).await;
    let mut ok_sub = healthy.subscribe("flood").await.unwrap();
    sync(&healthy).await;

    let p = client(&s).await;
    let chunk = Bytes::from(vec![b'z'; 32 * 1024]);
    let total = 64 * 1024 * 1024;
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        while n < total / chunk_len() {
            match tokio::time::timeout(WAIT, ok_sub.next()).await {
                Ok(Some(_)) => n += 1,
                _ => break,
            }
        }
        n
    });
    for _ in 0..total / chunk.len() {
        p.publish("flood", chunk.clone()).await.unwrap();
    }
    p.flush().await.unwrap();
    // The slow one is disconnected before it could hold 64 MiB; the others carry on.
    assert!(slow.closed().await, "the slow consumer was not cut off");
    assert_eq!(
        tokio::time::timeout(WAIT * 3, reader)
            .await
            .unwrap()
            .unwrap(),
        total / chunk.len()
    );
    p.publish("flood", Bytes::from_static(b"still here"))
        .await
        .unwrap();
    p.flush().await.unwrap();
    s.stop().await;
}

fn chunk_len() -> usize {
    32 * 1024
}

async fn reconnect_after_restart(kind: Kind) {
    let port = free_port();
    let s = TestServer::start(
        kind,
        Opts {
            port: Some(port),
            ..Opts::default()
        },
    )
    .await;
    let c = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(s.url())
        .await
        .unwrap();
    let mut sub = c.subscribe("re").await.unwrap();
    c.flush().await.unwrap();
    c.publish("re", Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"before");
    s.stop().await;
    let s = TestServer::start(
        kind,
        Opts {
            port: Some(port),
            ..Opts::default()
        },
    )
    .await;
    // The client reconnects and re-subscribes by itself.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "client did not reconnect");
        if c.connection_state() == async_nats::connection::State::Connected
            && c.flush().await.is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.publish("re", Bytes::from_static(b"after")).await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"after");
    s.stop().await;
}

async fn protocol_errors(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    // A bad subject is refused, and the connection stays.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false}\r\nSUB a..b 1\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await.as_deref(), Some("-ERR 'Invalid Subject'"));
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    // An unknown operation is refused, and the connection goes.
    raw.send("FOO bar\r\n").await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Unknown Protocol Operation'")
    );
    assert!(raw.closed().await);
    // A payload that does not end where its size says.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false}\r\nPUB a 2\r\nabcd\r\n")
        .await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Unknown Protocol Operation'")
    );
    assert!(raw.closed().await);
    // Operations are case-insensitive.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("connect {\"verbose\":false}\r\nsub lower 1\r\npub lower 2\r\nhi\r\nping\r\n")
        .await;
    assert_eq!(raw.line().await.as_deref(), Some("MSG lower 1 2"));
    assert_eq!(raw.line().await.as_deref(), Some("hi"));
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    s.stop().await;
}

async fn authentication(kind: Kind) {
    let s = TestServer::start(
        kind,
        Opts {
            token: Some("s3cret".into()),
            ..Opts::default()
        },
    )
    .await;
    let (mut raw, info) = Raw::connect(&s).await;
    assert_eq!(info["auth_required"], true);
    raw.send("CONNECT {\"auth_token\":\"wrong\"}\r\n").await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Authorization Violation'")
    );
    assert!(raw.closed().await);
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("PING\r\n").await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Authorization Violation'"),
        "nothing before CONNECT"
    );
    // Anything but CONNECT is refused at its first byte: a PUB's payload is never held for a
    // client that has not authenticated.
    for early in ["PUB a 1000000\r\nxxxx", "P", "SUB a 1\r\n"] {
        let (mut raw, _) = Raw::connect(&s).await;
        raw.send(early).await;
        assert_eq!(
            raw.line().await.as_deref(),
            Some("-ERR 'Authorization Violation'"),
            "{early:?} before CONNECT"
        );
        assert!(raw.closed().await, "{early:?}");
    }
    let c = async_nats::ConnectOptions::with_token("s3cret".into())
        .connect(s.url())
        .await
        .unwrap();
    let mut sub = c.subscribe("t").await.unwrap();
    c.publish("t", Bytes::from_static(b"in")).await.unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"in");
    s.stop().await;
}

async fn user_and_password(kind: Kind) {
    let s = TestServer::start(
        kind,
        Opts {
            user: Some(("ada".into(), "pw".into())),
            ..Opts::default()
        },
    )
    .await;
    let (mut raw, info) = Raw::connect(&s).await;
    assert_eq!(info["auth_required"], true);
    raw.send("CONNECT {\"verbose\":false,\"user\":\"ada\",\"pass\":\"nope\"}\r\n")
        .await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Authorization Violation'")
    );
    assert!(raw.closed().await);
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false,\"user\":\"ada\",\"pass\":\"pw\"}\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    let c = async_nats::ConnectOptions::with_user_and_password("ada".into(), "pw".into())
        .connect(s.url())
        .await
        .unwrap();
    sync(&c).await;
    s.stop().await;
}

/// Users with publish and subscribe permissions, as the brokers and applications of a
/// locked-down deployment have them.
async fn permissions(kind: Kind) {
    let s = TestServer::start(
        kind,
        Opts {
            authorization: Some(
                "authorization {\n  users = [\n    { user: broker, password: b }\n    { user: app, password: a, permissions: {\n        publish: { allow: \">\", deny: [\"ns.>\"] }\n        subscribe: [\"_INBOX.>\", \"orders\"]\n    } }\n  ]\n}\n",
            ),
            ..Opts::default()
        },
    )
    .await;
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":false,\"user\":\"app\",\"pass\":\"a\"}\r\n")
        .await;
    raw.send("SUB ns.raft 1\r\nPING\r\n").await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Permissions Violation for Subscription to \"ns.raft\"'")
    );
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    raw.send("PUB ns.raft.x 1\r\nx\r\nPING\r\n").await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Permissions Violation for Publish to \"ns.raft.x\"'")
    );
    assert_eq!(
        raw.line().await.as_deref(),
        Some("PONG"),
        "the connection stays"
    );
    raw.send("SUB orders 2\r\nPUB orders 2\r\nok\r\nPING\r\n")
        .await;
    assert_eq!(raw.line().await.as_deref(), Some("MSG orders 2 2"));
    assert_eq!(raw.line().await.as_deref(), Some("ok"));
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    // The broker's user has no limits: it sees what the application may not send.
    let broker = async_nats::ConnectOptions::with_user_and_password("broker".into(), "b".into())
        .connect(s.url())
        .await
        .unwrap();
    let mut sub = broker.subscribe("ns.>").await.unwrap();
    broker
        .publish("ns.raft.y", Bytes::from_static(b"in"))
        .await
        .unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"in");
    s.stop().await;
}

async fn verbose_and_echo(kind: Kind) {
    let s = TestServer::start(kind, Opts::default()).await;
    // A CONNECT that says nothing gets nats-server's defaults: verbose (and pedantic) on.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {}\r\nPING\r\n").await;
    assert_eq!(raw.line().await.as_deref(), Some("+OK"));
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    raw.send("SUB wild.* 1\r\nPUB wild.* 1\r\nx\r\n").await;
    assert_eq!(raw.line().await.as_deref(), Some("+OK"));
    // A wildcard in a publish subject gets the same error from both; nats-server then routes
    // it all the same, ours refuses it (`server.rs`: `wildcards_in_a_published_subject_are_refused`).
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'Invalid Publish Subject'")
    );
    if kind == Kind::Reference {
        assert_eq!(raw.line().await.as_deref(), Some("+OK"));
        assert_eq!(raw.line().await.as_deref(), Some("MSG wild.* 1 1"));
    } else {
        raw.send("PING\r\n").await;
        assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    }

    let (mut raw, _) = Raw::connect(&s).await;
    raw.send("CONNECT {\"verbose\":true}\r\n").await;
    assert_eq!(raw.line().await.as_deref(), Some("+OK"));
    raw.send("SUB v 1\r\nPUB v 1\r\nx\r\nUNSUB 1\r\n").await;
    let lines: Vec<String> = [
        raw.line().await,
        raw.line().await,
        raw.line().await,
        raw.line().await,
        raw.line().await,
    ]
    .into_iter()
    .map(Option::unwrap)
    .collect();
    assert_eq!(lines, ["+OK", "+OK", "MSG v 1 1", "x", "+OK"]);

    // echo: false keeps a connection's own messages from it.
    let (mut raw, _) = Raw::connect(&s).await;
    raw.send(
        "CONNECT {\"verbose\":false,\"echo\":false}\r\nSUB e 1\r\nPUB e 4\r\nself\r\nPING\r\n",
    )
    .await;
    assert_eq!(raw.line().await.as_deref(), Some("PONG"));
    let other = client(&s).await;
    other
        .publish("e", Bytes::from_static(b"other"))
        .await
        .unwrap();
    sync(&other).await;
    assert_eq!(raw.line().await.as_deref(), Some("MSG e 1 5"));
    assert_eq!(raw.line().await.as_deref(), Some("other"));
    s.stop().await;
}
