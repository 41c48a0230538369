//! The locked-down NATS model of `docs/security.md`: the brokers have their own NATS user, and
//! applications have users that may not publish under the brokers' namespace. A forged Raft
//! message or join request from an application never reaches a broker; the same message from
//! the brokers' user does (and is refused by the broker itself).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The server, its port, and the folder of its configuration (kept until the server stops).
struct Nats(Child, u16, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn nats_server() -> Nats {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "host: 127.0.0.1\nport: {port}\nauthorization {{ users = [
  {{ user: liftbridge, password: brokerpw }}
  {{ user: apps, password: appspw, permissions: {{
      publish: {{ allow: [\">\"], deny: [\"liftbridge-default.>\"] }},
      subscribe: {{ allow: [\"_INBOX.>\"] }} }} }}
] }}\n"
    );
    let file = dir.path().join("nats.conf");
    std::fs::write(&file, conf).unwrap();
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the reference `nats-server` must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Nats(child, port, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_user_cannot_speak_for_a_broker() {
    let nats = nats_server().await;
    let url = format!("nats://127.0.0.1:{}", nats.1);
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
    let (subject, forged) = forged_heartbeat(&running);

    // As an application: NATS refuses both publishes, and says so.
    let violations = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = violations.clone();
    let app = async_nats::ConnectOptions::with_user_and_password("apps".into(), "appspw".into())
        .event_callback(move |e| {
            seen.lock().unwrap().push(e.to_string());
            std::future::ready(())
        })
        .connect(url.as_str())
        .await
        .unwrap();
    app.publish(subject.clone(), forged.clone()).await.unwrap();
    app.publish("liftbridge-default.raft.metadata.join", forged.clone())
        .await
        .unwrap();
    app.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !violations
        .lock()
        .unwrap()
        .iter()
        .any(|v| v.to_lowercase().contains("permissions violation"))
    {
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
            .connect(url.as_str())
            .await
            .unwrap();
    insider.publish(subject, forged).await.unwrap();
    insider.flush().await.unwrap();
    wait_logged(&lines, &["WARN refused a raft message", "refused_total=1"]).await;
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
    running.shutdown().await;
    drop(nats);
}
