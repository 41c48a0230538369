//! The locked-down NATS model of `docs/security.md`: the brokers have their own NATS user, and
//! applications have users that may not publish under the brokers' namespace. A forged Raft
//! message or join request from an application never reaches a broker; the same message from
//! the brokers' user does (and is refused by the broker itself). Both on nats-server and on the
//! embedded server, with the same users read from nats-server's configuration syntax.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The users of both servers: the brokers' own, and applications that may publish anywhere
/// but under the brokers' namespace, and subscribe only to inboxes.
const AUTHORIZATION: &str = "authorization { users = [
  { user: liftbridge, password: brokerpw }
  { user: apps, password: appspw, permissions: {
      publish: { allow: [\">\"], deny: [\"liftbridge-default.>\"] },
      subscribe: { allow: [\"_INBOX.>\"] } } }
] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_user_cannot_speak_for_a_broker() {
    let nats = testkit::RefNats::start(AUTHORIZATION);
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.embedded_nats = None;
    cfg.broker.nats.servers = vec![url.clone()];
    cfg.broker.nats.user_password = Some(("liftbridge".into(), "brokerpw".into()));
    cfg.broker.bootstrap = broker::Bootstrap::Seed;
    let (logger, lines) = capturing();
    let running = liftbridged::start(cfg, logger)
        .await
        .expect("server starts");
    refused_for_applications(&url, &running, &lines).await;
    running.shutdown().await;
    drop(nats);
}

/// The same users in the embedded server, read from `nats.embedded.config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_keeps_applications_out_of_the_brokers_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, AUTHORIZATION).unwrap();
    let mut cfg = config_from(&liftbridged::Flags {
        embedded_nats_config: Some(conf),
        ..flags(&dir.path().join("data"))
    });
    cfg.broker.nats.user_password = Some(("liftbridge".into(), "brokerpw".into()));
    let (logger, lines) = capturing();
    let running = liftbridged::start(cfg, logger)
        .await
        .expect("server starts");
    let url = running.nats_url().to_owned();
    // Without a user, nobody gets in.
    assert!(async_nats::connect(url.as_str()).await.is_err());
    // An application may not subscribe to the brokers' traffic either.
    let app = async_nats::ConnectOptions::with_user_and_password("apps".into(), "appspw".into())
        .connect(url.as_str())
        .await
        .unwrap();
    let mut spy = app.subscribe("liftbridge-default.>").await.unwrap();
    app.flush().await.unwrap();
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            futures_util::StreamExt::next(&mut spy)
        )
        .await
        .map_or(true, |m| m.is_none()),
        "a subscription under the namespace got a message"
    );
    refused_for_applications(&url, &running, &lines).await;
    running.shutdown().await;
}

/// An application user's forged Raft heartbeat and join are refused by NATS; the brokers'
/// user's reach the broker, which refuses the heartbeat itself; the broker serves on.
async fn refused_for_applications(
    url: &str,
    running: &liftbridged::Running,
    lines: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (subject, forged) = forged_heartbeat(running);

    // As an application: NATS refuses both publishes, and says so.
    let violations = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = violations.clone();
    let app = async_nats::ConnectOptions::with_user_and_password("apps".into(), "appspw".into())
        .event_callback(move |e| {
            seen.lock().unwrap().push(e.to_string());
            std::future::ready(())
        })
        .connect(url)
        .await
        .unwrap();
    // A Raft message, a join request, and a follower's fetch for a stream's partition.
    let targets = [
        subject.clone(),
        "liftbridge-default.raft.metadata.join".to_owned(),
        "liftbridge-default.still.0.replicate".to_owned(),
    ];
    for t in &targets {
        app.publish(t.clone(), forged.clone()).await.unwrap();
    }
    app.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !targets.iter().all(|t| {
        violations
            .lock()
            .unwrap()
            .iter()
            .any(|v| v.to_lowercase().contains("permissions violation") && v.contains(t.as_str()))
    }) {
        assert!(
            Instant::now() < deadline,
            "NATS did not refuse the forged publish: {:?}",
            violations.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // As the brokers' user, the same bytes arrive, and the broker refuses them itself. Only
    // this one is counted: the application's never arrived before it.
    let insider =
        async_nats::ConnectOptions::with_user_and_password("liftbridge".into(), "brokerpw".into())
            .connect(url)
            .await
            .unwrap();
    insider.publish(subject, forged).await.unwrap();
    insider.flush().await.unwrap();
    wait_logged(lines, &["WARN refused a raft message", "refused_total=1"]).await;
    let refused: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("refused a raft message") || l.contains("join request"))
        .cloned()
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");

    // The broker serves as before.
    let mut c = liftbridge_proto::api::api_client::ApiClient::connect(format!(
        "http://{}",
        running.grpc_addr()
    ))
    .await
    .unwrap();
    c.create_stream(stream("still", "still")).await.unwrap();
}

/// The embedded server's `authorization` block as `docs/security.md` gives it, read from the
/// page itself, so the page and this test cannot drift apart.
fn documented_authorization() -> String {
    let page = include_str!("../../docs/security.md");
    let start = page
        .find("# nats.conf\n")
        .expect("the documented nats.conf")
        + 12;
    let end = start + page[start..].find("```").expect("the end of the block");
    page[start..end]
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two brokers replicate a stream through `url`, whose users are the documented ones. An
/// application user subscribed to everything it may subscribe to never sees a replicated
/// message (a follower's fetch answer), and may not subscribe to the brokers' reply subjects.
async fn replication_is_invisible_to_applications(url: &str) {
    let app = async_nats::ConnectOptions::with_user_and_password("apps".into(), "appspw".into())
        .connect(url)
        .await
        .unwrap();
    let mut inboxes = app.subscribe("_INBOX.>").await.unwrap();
    app.flush().await.unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut brokers = Vec::new();
    for (dir, id) in dirs.iter().zip(["a", "b"]) {
        let mut cfg = common::cluster::node_config(dir.path(), id, url, id == "a");
        cfg.broker.nats.user_password = Some(("liftbridge".into(), "brokerpw".into()));
        brokers.push(
            liftbridged::start(cfg, quiet())
                .await
                .expect("broker starts"),
        );
    }
    let mut c = liftbridge_proto::api::api_client::ApiClient::connect(format!(
        "http://{}",
        brokers[0].grpc_addr()
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .fetch_metadata(liftbridge_proto::api::FetchMetadataRequest::default())
        .await
        .unwrap()
        .into_inner()
        .brokers
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "the second broker never joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut req = stream("secrets", "secrets");
    req.replication_factor = 2;
    while let Err(e) = c.create_stream(req.clone()).await {
        assert!(
            Instant::now() < deadline,
            "no stream of two replicas: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ALL acks: each message has reached the follower through a fetch answer.
    for i in 0..5 {
        let r = c
            .publish(with_deadline(liftbridge_proto::api::PublishRequest {
                stream: "secrets".into(),
                value: format!("secret-{i}").into(),
                ack_policy: liftbridge_proto::api::AckPolicy::All as i32,
                expected_offset: -1,
                ..Default::default()
            }))
            .await
            .unwrap();
        assert!(r.into_inner().ack.is_some());
    }
    // A marker on the application's own inbox: once it arrives, whatever NATS delivered to
    // the subscription before it has arrived too.
    app.publish("_INBOX.marker", "marker".into()).await.unwrap();
    loop {
        let m = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut inboxes),
        )
        .await
        .expect("the marker")
        .expect("the subscription");
        assert!(
            !String::from_utf8_lossy(&m.payload).contains("secret-"),
            "an application read replicated data on {}",
            m.subject
        );
        if m.subject.as_str() == "_INBOX.marker" {
            break;
        }
    }
    for b in brokers {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_configuration_hides_replication_on_nats_server() {
    let nats = testkit::RefNats::start(&documented_authorization());
    replication_is_invisible_to_applications(&nats.url()).await;
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_configuration_hides_replication_on_the_embedded_server() {
    let conf = natsd::conf::parse(&documented_authorization()).unwrap();
    let nats = natsd::Server::start(natsd::ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        auth: natsd::conf::authorization(&conf).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    replication_is_invisible_to_applications(&nats.client_url()).await;
    nats.shutdown().await;
}

/// Every subject a broker uses, as `natsbridge::Subjects` names them.
fn broker_subjects() -> Vec<String> {
    let s = natsbridge::Subjects::default();
    vec![
        s.raft_accept("a"),
        s.raft_join(),
        s.raft_bootstrap(),
        s.server_info(),
        s.partition_status("a"),
        s.propagate(),
        s.replicate("orders", 0),
        s.leader_epoch_offset("orders", 0),
        s.notify("a"),
        s.ack_inbox(),
        format!("{}.x", s.inbox_prefix()),
        s.sync(),
        s.activity(),
        s.cursors(),
    ]
}

/// An application user under the documented permissions may neither publish nor subscribe on
/// any broker subject, and a client that has not authenticated may do nothing at all.
async fn applications_reach_no_broker_subject(url: &str, port: u16) {
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = errors.clone();
    let app = async_nats::ConnectOptions::with_user_and_password("apps".into(), "appspw".into())
        .event_callback(move |e| {
            seen.lock().unwrap().push(e.to_string());
            std::future::ready(())
        })
        .connect(url)
        .await
        .unwrap();
    let subjects = broker_subjects();
    let mut subs = Vec::new();
    for s in &subjects {
        app.publish(s.clone(), "forged".into()).await.unwrap();
        subs.push(app.subscribe(s.clone()).await.unwrap());
    }
    app.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = |what: &str, s: &str| {
        errors.lock().unwrap().iter().any(|e| {
            e.to_lowercase()
                .contains(&format!("permissions violation for {what}"))
                && e.contains(s)
        })
    };
    while !subjects
        .iter()
        .all(|s| refused("publish", s) && refused("subscription", s))
    {
        assert!(
            Instant::now() < deadline,
            "not every broker subject was refused: {:?}",
            errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Before CONNECT: a PUB announcing a large payload is refused at once, and the connection
    // closed, without the server holding the payload.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    raw.write_all(b"PUB liftbridge-default.raft.metadata.join 1000000\r\nxx")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(read.is_ok(), "the connection stayed open: {text}");
    assert!(text.contains("-ERR 'Authorization Violation'"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_subject_is_open_to_applications_on_nats_server() {
    let nats = testkit::RefNats::start(&documented_authorization());
    applications_reach_no_broker_subject(&nats.url(), nats.port()).await;
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_subject_is_open_to_applications_on_the_embedded_server() {
    let conf = natsd::conf::parse(&documented_authorization()).unwrap();
    let nats = natsd::Server::start(natsd::ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        auth: natsd::conf::authorization(&conf).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let port = nats.local_addr().port();
    applications_reach_no_broker_subject(&nats.client_url(), port).await;
    nats.shutdown().await;
}
