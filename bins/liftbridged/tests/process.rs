//! The `liftbridged` binary as operators run it: flags, a YAML file, an external `nats-server`,
//! and signals.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, free_port, wait_port};

const BIN: &str = env!("CARGO_BIN_EXE_liftbridged");

fn liftbridged(args: &[&str], dir: &Path) -> Proc {
    liftbridged_env(args, dir, &[])
}

fn liftbridged_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn sigterm(p: &mut Proc) -> std::process::ExitStatus {
    p.terminate(Duration::from_secs(20))
}

async fn create_and_publish(port: u16, name: &str) -> i64 {
    use liftbridge_proto::api::*;
    let mut c = api_client::ApiClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let _ = c
        .create_stream(CreateStreamRequest {
            name: name.into(),
            subject: name.into(),
            ..Default::default()
        })
        .await;
    let mut req = tonic::Request::new(PublishRequest {
        stream: name.into(),
        value: "v".into(),
        expected_offset: -1,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(5));
    c.publish(req)
        .await
        .unwrap()
        .into_inner()
        .ack
        .unwrap()
        .offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_nats_config_file_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, nats) = (free_port(), free_port());
    let conf = dir.path().join("liftbridge.yaml");
    std::fs::write(
        &conf,
        format!("listen: 127.0.0.1:{grpc}\nnats.embedded.port: {nats}\nclustering:\n  server.id: one\ncursors.stream.partitions: 1\nlogging.level: debug\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut p = liftbridged(&["--config", conf.to_str().unwrap()], &data);
    wait_port(grpc);
    wait_port(nats);
    assert_eq!(create_and_publish(grpc, "s").await, 0);
    assert_eq!(create_and_publish(grpc, "s").await, 1);
    assert!(sigterm(&mut p).success(), "a clean stop exits 0");
    // The stored id, and the data, are there on restart; the file keeps the configured id.
    let id = std::fs::read(data.join("liftbridge")).unwrap();
    assert!(id.windows(3).any(|w| w == b"one"));
    let mut p = liftbridged(&["--config", conf.to_str().unwrap()], &data);
    wait_port(grpc);
    assert_eq!(create_and_publish(grpc, "s").await, 2);
    assert!(sigterm(&mut p).success());
}

#[test]
fn an_unknown_key_stops_the_start_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.yaml");
    std::fs::write(&conf, "streams:\n  retention.max.agee: 1h\n").unwrap();
    let mut p = liftbridged(&["-c", conf.to_str().unwrap()], dir.path());
    let status = p.0.wait().unwrap();
    let mut err = String::new();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("streams.retention.max.agee"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_nats_server() {
    let nats = testkit::RefNats::start("");
    let nats_port = nats.port();
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let url = format!("nats://127.0.0.1:{nats_port}");
    // Settings from the environment: LIFTBRIDGE_<KEY WITH _ FOR .>.
    let mut p = liftbridged_env(
        &[
            "--nats-servers",
            &url,
            "--raft-bootstrap-seed",
            "--host",
            "127.0.0.1",
            "--port",
            &grpc.to_string(),
        ],
        dir.path(),
        &[
            ("LIFTBRIDGE_CLUSTERING_SERVER_ID", "ext"),
            ("LIFTBRIDGE_CURSORS_STREAM_PARTITIONS", "1"),
        ],
    );
    wait_port(grpc);
    assert_eq!(create_and_publish(grpc, "x").await, 0);
    // A plain NATS publish through the real server is recorded.
    let nc = async_nats::connect(&url).await.unwrap();
    nc.publish("x", "from nats".into()).await.unwrap();
    nc.flush().await.unwrap();
    let mut c =
        liftbridge_proto::api::api_client::ApiClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let md = c
            .fetch_partition_metadata(liftbridge_proto::api::FetchPartitionMetadataRequest {
                stream: "x".into(),
                partition: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .metadata
            .unwrap();
        if md.newest_offset == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the NATS message was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(create_and_publish(grpc, "x").await, 2);
    // The cursors stream and the id come from the environment.
    c.set_cursor(liftbridge_proto::api::SetCursorRequest {
        stream: "x".into(),
        partition: 0,
        cursor_id: "c".into(),
        offset: 1,
    })
    .await
    .unwrap();
    let md = c
        .fetch_metadata(liftbridge_proto::api::FetchMetadataRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.brokers[0].id, "ext");
    assert!(sigterm(&mut p).success());
    drop(nats);
}

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate for
/// `client1`, as PEM files in `dir`; returns the CA, the client certificate and its key.
fn pki(dir: &Path) -> (String, String, String) {
    let ca = testkit::TestCa::new("process test CA");
    ca.write(dir, &["server"]);
    let client = ca.leaf("client1");
    (ca.pem().to_owned(), client.cert, client.key)
}

/// SIGHUP, sent to the process, reloads the authorization policy: a call the old policy
/// denied is allowed under the new one, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_authorization_policy() {
    use liftbridge_proto::api::*;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path());
    let path = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    std::fs::write(
        dir.path().join("model.conf"),
        "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act\n\n[policy_effect]\ne = some(where (p.eft == allow))\n\n[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.csv"),
        "p, client1, *, FetchMetadata\n",
    )
    .unwrap();
    let (grpc, nats) = (free_port(), free_port());
    let conf = dir.path().join("liftbridge.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{grpc}\nnats.embedded.port: {nats}\ntls:\n  cert: {}\n  key: {}\n  client:\n    auth:\n      enabled: true\n      ca: {}\n    authz:\n      enabled: true\n      model: {}\n      policy: {}\n",
            path("server.pem"),
            path("server.key"),
            path("ca.pem"),
            path("model.conf"),
            path("policy.csv"),
        ),
    )
    .unwrap();
    let mut p = liftbridged(
        &["--config", conf.to_str().unwrap()],
        &dir.path().join("data"),
    );
    wait_port(grpc);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(&cert, &key));
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{grpc}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = api_client::ApiClient::new(channel);
    let create = || CreateStreamRequest {
        name: "s".into(),
        subject: "s".into(),
        ..Default::default()
    };
    c.fetch_metadata(FetchMetadataRequest::default())
        .await
        .expect("allowed from the start");
    let denied = c.create_stream(create()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    std::fs::write(
        dir.path().join("policy.csv"),
        "p, client1, *, FetchMetadata\np, client1, s, CreateStream\n",
    )
    .unwrap();
    p.signal("HUP");
    // The signal is handled asynchronously: wait, bounded, for the new verdict.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.create_stream(create()).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::PermissionDenied => {
                assert!(Instant::now() < deadline, "the policy was never reloaded");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(
        sigterm(&mut p).success(),
        "still running after the reload, and stops cleanly"
    );
}

/// A broker that cannot join (no metadata group on its NATS) spends minutes in its start; a
/// SIGTERM then stops it at once, with a log line, instead of waiting for the start to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_start_stops_it() {
    use futures_util::StreamExt;
    let nats = testkit::RefNats::start("");
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    // Whoever asks to join shows that the start is under way.
    let nc = async_nats::connect(&url).await.unwrap();
    let mut joins = nc
        .subscribe("liftbridge-default.raft.metadata.join")
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let mut p = liftbridged_env(
        &[
            "--nats-servers",
            &url,
            "--host",
            "127.0.0.1",
            "--port",
            &grpc.to_string(),
        ],
        dir.path(),
        &[("LIFTBRIDGE_CLUSTERING_SERVER_ID", "slow")],
    );
    tokio::time::timeout(Duration::from_secs(30), joins.next())
        .await
        .expect("the broker asks to join")
        .unwrap();
    // Well below the 30 join attempts of about 2 s each that the start would otherwise take.
    let status = p.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("SIGTERM received while starting"), "{err}");
    drop(nats);
}

/// `--raft-remove-member` asks the metadata leader to remove a member and exits: a server that
/// is no member is done at once; the leader refuses to remove itself, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_remove_member_asks_the_leader_and_exits() {
    let nats = testkit::RefNats::start("");
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let mut server = liftbridged_env(
        &[
            "--nats-servers",
            &url,
            "--raft-bootstrap-seed",
            "--host",
            "127.0.0.1",
            "--port",
            &grpc.to_string(),
        ],
        &dir.path().join("one"),
        &[("LIFTBRIDGE_CLUSTERING_SERVER_ID", "one")],
    );
    wait_port(grpc);
    let remove = |id: &str| {
        let out = Command::new(BIN)
            .args(["--nats-servers", &url, "--raft-remove-member", id])
            .arg("--data-dir")
            .arg(dir.path().join("tool"))
            .output()
            .unwrap();
        (
            out.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (status, out) = remove("ghost");
    assert!(status.success(), "{out}");
    assert!(out.contains("ghost"), "{out}");
    let (status, out) = remove("one");
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("leads the metadata group"), "{out}");
    assert!(sigterm(&mut server).success());
    drop(nats);
}

/// `--raft-remove-member` gets its answer inside the brokers' namespace, like the brokers
/// themselves: the default `_INBOX.` prefix is one the documented NATS permissions give to
/// applications, which could read the answer there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_remove_member_answers_stay_inside_the_namespace() {
    let nats = testkit::RefNats::start("");
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let mut server = liftbridged_env(
        &[
            "--nats-servers",
            &url,
            "--raft-bootstrap-seed",
            "--host",
            "127.0.0.1",
            "--port",
            &grpc.to_string(),
        ],
        &dir.path().join("one"),
        &[("LIFTBRIDGE_CLUSTERING_SERVER_ID", "one")],
    );
    wait_port(grpc);
    // An application listening where applications may.
    let app = async_nats::connect(&url).await.unwrap();
    let mut inbox = app.subscribe("_INBOX.>").await.unwrap();
    app.flush().await.unwrap();
    let out = Command::new(BIN)
        .args(["--nats-servers", &url, "--raft-remove-member", "ghost"])
        .arg("--data-dir")
        .arg(dir.path().join("tool"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The answer went out before the tool exited; a round trip brings anything already
    // delivered to this subscription.
    app.flush().await.unwrap();
    let seen = futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut inbox));
    assert!(
        seen.is_none(),
        "an application read {:?}",
        seen.flatten().map(|m| m.subject)
    );
    assert!(sigterm(&mut server).success());
    drop(nats);
}
