//! Three metadata nodes as separate processes on a real `nats-server`: one joins late, the leader
//! is killed with SIGKILL, the others elect a new leader and keep every committed operation, and
//! the killed node comes back from its database and catches up.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liftbridge_proto::internal::{self, Op};
use natsbridge::{Connection, NatsConfig, NatsError, Subjects, payload};

const WAIT: Duration = Duration::from_secs(30);

struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(id: &str, dir: &Path, nats: &str, mode: &str) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_metanode"))
            .args([
                "--id",
                id,
                "--data",
                dir.join(id).to_str().unwrap(),
                "--nats",
                nats,
                mode,
                "--tick-ms",
                "50",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    /// Whether the node reported the stream: created by an applied entry, or present in a state
    /// it restored from the leader's snapshot.
    fn has_stream(&self, name: &str) -> bool {
        let created = format!("StreamCreated {{ stream: \"{name}\" }}");
        let restored = format!("\"{name}\"");
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .any(|l| l.contains(&created) || (l.starts_with("RESTORED") && l.contains(&restored)))
    }

    fn leads(&self) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.starts_with("ROLE"))
            .is_some_and(|l| l.starts_with("ROLE leader"))
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Proposes a stream creation the way a follower would: a PropagatedRequest to the leader.
async fn create(conn: &Connection, name: &str) {
    let req = internal::PropagatedRequest {
        op: Op::CreateStream as i32,
        create_stream_op: Some(internal::CreateStreamOp {
            stream: Some(internal::Stream {
                name: name.into(),
                subject: name.into(),
                partitions: vec![internal::Partition {
                    id: 0,
                    replicas: vec!["a".into()],
                    leader: "a".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let start = Instant::now();
    let mut last = None;
    loop {
        assert!(
            start.elapsed() < WAIT,
            "no leader took the proposal for {name}: {last:?}"
        );
        match conn
            .request(
                &Subjects::default().propagate(),
                payload::encode(&req, false),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(m) => {
                let resp = payload::decode::<internal::PropagatedResponse>(&m.payload).unwrap();
                assert!(resp.error.is_none_or(|e| e.code == 0), "{name} refused");
                return;
            }
            Err(e @ (NatsError::NoResponders(_) | NatsError::Timeout { .. })) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_loses_nothing_committed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nats = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the reference `nats-server` must be installed");
    let url = format!("nats://127.0.0.1:{port}");
    until("nats-server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let client = Connection::connect(
        &NatsConfig {
            servers: vec![url.clone()],
            ..NatsConfig::default()
        },
        "test",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut a = Proc::spawn("a", dir.path(), &url, "--seed");
    until("the seed to lead", || a.leads());
    let b = Proc::spawn("b", dir.path(), &url, "--join");
    create(&client, "s1").await;
    create(&client, "s2").await;
    let c = Proc::spawn("c", dir.path(), &url, "--join"); // joins late
    until("everyone to have s1 and s2", || {
        [&a, &b, &c]
            .iter()
            .all(|p| p.has_stream("s1") && p.has_stream("s2"))
    });

    a.kill();
    until("a new leader", || b.leads() || c.leads());
    create(&client, "s3").await;
    until("the survivors to have s3", || {
        b.has_stream("s3") && c.has_stream("s3")
    });

    // The killed node comes back from its database and catches up.
    let a = Proc::spawn("a", dir.path(), &url, "--join");
    until("the old leader to catch up", || {
        ["s1", "s2", "s3"].iter().all(|s| a.has_stream(s))
    });
    for p in [&b, &c] {
        for s in ["s1", "s2", "s3"] {
            assert!(p.has_stream(s), "a survivor lacks {s}");
        }
    }
    drop((a, b, c));
    let _ = nats.kill();
    let _ = nats.wait();
}
