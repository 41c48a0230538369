//! The `lift` binary against in-process servers: every command's happy path, exit codes,
//! `--json` output parsed and checked, stdin publishing, cluster health with a broker down, and
//! a short benchmark whose counts add up.

use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

/// A server on 127.0.0.1 with its data in a temporary folder.
struct Server {
    _dir: tempfile::TempDir,
    running: Option<liftbridged::Running>,
    addr: String,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let running = liftbridged::start_local(dir.path())
            .await
            .expect("server starts");
        let addr = running.grpc_addr().to_string();
        Server {
            _dir: dir,
            running: Some(running),
            addr,
        }
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// What one run of `lift` gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "lift failed: {self:?}");
        &self.stdout
    }

    /// Each stdout line as a JSON value.
    fn json(&self) -> Vec<Value> {
        self.ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

/// Runs `lift` with `args` against `server` (and `stdin`), off the async threads.
async fn lift(server: &str, args: &[&str], stdin: Option<String>) -> Run {
    let server = server.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::cargo_bin("lift").unwrap();
        cmd.env_remove("LIFT_SERVER")
            .env_remove("LIFT_CONTEXT")
            .env("LIFT_CONFIG", "/nonexistent/lift-contexts.json")
            .arg("--server")
            .arg(&server)
            .args(&args)
            .timeout(Duration::from_secs(60));
        if let Some(s) = stdin {
            cmd.write_stdin(s);
        }
        let out = cmd.output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_messages_and_cursors() {
    let srv = Server::start().await;
    let s = srv.addr.as_str();

    let created = lift(
        s,
        &["stream", "create", "orders", "--partitions", "2", "--json"],
        None,
    )
    .await;
    assert_eq!(
        created.json(),
        [
            serde_json::json!({"stream": "orders", "subject": "orders", "partitions": 2, "replication_factor": 1})
        ]
    );
    // Every CreateStream option is accepted.
    lift(
        s,
        &[
            "stream",
            "create",
            "kept",
            "--subject",
            "kept.subject",
            "--retention-max-age",
            "24h",
            "--retention-max-messages",
            "1000",
            "--retention-max-bytes",
            "1000000",
            "--segment-max-bytes",
            "65536",
            "--segment-max-age",
            "1h",
            "--cleaner-interval",
            "1m",
            "--compact",
            "true",
            "--auto-pause-time",
            "1h",
            "--auto-pause-disable-if-subscribers",
            "true",
            "--min-isr",
            "1",
            "--concurrency-control",
            "true",
            "--group",
            "g1",
        ],
        None,
    )
    .await
    .ok();
    let again = lift(s, &["stream", "create", "orders"], None).await;
    assert_eq!(again.code, 1);
    assert_eq!(again.stderr.lines().count(), 1, "one line: {again:?}");
    assert!(
        again.stderr.starts_with("lift: creating stream orders: "),
        "{again:?}"
    );

    let ls = lift(s, &["stream", "ls", "--json"], None).await.json();
    let names: Vec<&str> = ls.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["__cursors", "kept", "orders"]);
    assert!(
        lift(s, &["stream", "ls"], None)
            .await
            .ok()
            .contains("orders")
    );

    // One value, then 1000 lines from stdin, then a template with --count.
    let one = lift(s, &["pub", "orders", "first", "--json"], None)
        .await
        .json();
    assert_eq!(
        (one[0]["partition"].as_i64(), one[0]["offset"].as_i64()),
        (Some(0), Some(0))
    );
    let lines: String = (0..1000).map(|i| format!("line-{i}\n")).collect();
    let many = lift(
        s,
        &["pub", "orders", "--json", "--ack-policy", "all"],
        Some(lines),
    )
    .await
    .json();
    let offsets: Vec<i64> = many.iter().map(|v| v["offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, (1..=1000).collect::<Vec<i64>>());
    let text = lift(
        s,
        &[
            "pub",
            "orders",
            "--partition",
            "1",
            "--count",
            "3",
            "--key",
            "k",
            "-H",
            "source=cli",
            "v{n}",
        ],
        None,
    )
    .await;
    assert_eq!(
        text.ok().lines().collect::<Vec<_>>(),
        [
            "orders partition 1 offset 0",
            "orders partition 1 offset 1",
            "orders partition 1 offset 2"
        ]
    );

    // Read back: JSON with key and headers, raw values, text, a count, reverse.
    let read = lift(
        s,
        &["sub", "orders", "--partition", "1", "--earliest", "--json"],
        None,
    )
    .await
    .json();
    assert_eq!(read.len(), 3);
    assert_eq!(read[2]["offset"], 2);
    assert_eq!(read[2]["value"], "v2");
    assert_eq!(read[2]["key"], "k");
    assert_eq!(read[2]["headers"]["source"], "cli");
    assert_eq!(read[2]["partition"], 1);
    let raw = lift(
        s,
        &["sub", "orders", "--earliest", "--raw", "--count", "3"],
        None,
    )
    .await;
    assert_eq!(raw.ok(), "first\nline-0\nline-1\n");
    let all = lift(s, &["sub", "orders", "--offset", "999"], None).await;
    assert_eq!(all.ok(), "999\t\tline-998\n1000\t\tline-999\n");
    let newest = lift(
        s,
        &["sub", "orders", "--reverse", "--count", "2", "--raw"],
        None,
    )
    .await;
    assert_eq!(newest.ok(), "line-999\nline-998\n");
    let since = lift(
        s,
        &["sub", "orders", "--since", "10m", "--count", "1", "--raw"],
        None,
    )
    .await;
    assert_eq!(since.ok(), "first\n");

    // --latest reads the newest message; --time from a moment in the past reads them all;
    // --follow goes on past the newest message (here up to --count).
    assert_eq!(
        lift(s, &["sub", "orders", "--latest", "--raw"], None)
            .await
            .ok(),
        "line-999\n"
    );
    let from_time = lift(
        s,
        &[
            "sub",
            "orders",
            "--partition",
            "1",
            "--time",
            "2020-01-01T00:00:00Z",
            "--raw",
        ],
        None,
    )
    .await;
    assert_eq!(from_time.ok(), "v0\nv1\nv2\n");
    let following = tokio::spawn({
        let s = s.to_owned();
        async move {
            lift(
                &s,
                &[
                    "sub",
                    "orders",
                    "--partition",
                    "1",
                    "--offset",
                    "2",
                    "--follow",
                    "--count",
                    "3",
                    "--raw",
                ],
                None,
            )
            .await
        }
    });
    lift(
        s,
        &[
            "pub",
            "orders",
            "--partition",
            "1",
            "--count",
            "2",
            "late{n}",
        ],
        None,
    )
    .await
    .ok();
    assert_eq!(following.await.unwrap().ok(), "v2\nlate0\nlate1\n");

    // Partition state.
    let info = lift(s, &["stream", "info", "orders", "--json"], None)
        .await
        .json();
    assert_eq!(info.len(), 2);
    assert_eq!(
        (
            info[0]["high_watermark"].as_i64(),
            info[1]["high_watermark"].as_i64()
        ),
        (Some(1000), Some(4))
    );
    lift(s, &["stream", "readonly", "orders"], None).await.ok();
    let refused = lift(s, &["pub", "orders", "x"], None).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("read-only"), "{refused:?}");
    lift(s, &["stream", "readonly", "orders", "--off"], None)
        .await
        .ok();
    lift(s, &["stream", "pause", "orders", "--partition", "1"], None)
        .await
        .ok();
    let paused = lift(s, &["stream", "info", "orders", "--json"], None)
        .await
        .json();
    assert_eq!(
        (paused[0]["paused"].as_bool(), paused[1]["paused"].as_bool()),
        (Some(false), Some(true))
    );
    lift(s, &["stream", "resume", "orders"], None).await.ok();
    let resumed = lift(s, &["stream", "info", "orders", "--json"], None)
        .await
        .json();
    assert_eq!(resumed[1]["paused"], false);

    // Cursors.
    lift(
        s,
        &["cursor", "set", "c1", "orders", "41", "--partition", "1"],
        None,
    )
    .await
    .ok();
    let got = lift(
        s,
        &[
            "cursor",
            "get",
            "c1",
            "orders",
            "--partition",
            "1",
            "--json",
        ],
        None,
    )
    .await
    .json();
    assert_eq!(got[0]["offset"], 41);
    assert_eq!(
        lift(s, &["cursor", "get", "c2", "orders"], None).await.ok(),
        "-1\n"
    );

    // A plain NATS message through PublishToSubject lands in the stream on that subject.
    lift(s, &["pub", "--subject", "kept.subject", "plain"], None)
        .await
        .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = lift(s, &["sub", "kept", "--earliest", "--raw"], None).await;
        if r.ok() == "plain\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
    }

    // Optimistic concurrency on "kept": the right expected offset is taken, a wrong one refused.
    let right = lift(
        s,
        &["pub", "kept", "--expected-offset", "1", "ok", "--json"],
        None,
    )
    .await
    .json();
    assert_eq!(right[0]["offset"], 1);
    let wrong = lift(s, &["pub", "kept", "--expected-offset", "7", "no"], None).await;
    assert_eq!(wrong.code, 1);
    assert!(wrong.stderr.contains("publish refused"), "{wrong:?}");

    lift(s, &["stream", "delete", "kept"], None).await.ok();
    let gone = lift(s, &["stream", "info", "kept"], None).await;
    assert_eq!(
        (gone.code, gone.stderr.as_str()),
        (1, "lift: stream kept: no such stream\n")
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_cluster_and_exit_codes() {
    let srv = Server::start().await;
    let s = srv.addr.as_str();
    lift(s, &["stream", "create", "work", "--partitions", "2"], None)
        .await
        .ok();
    lift(
        s,
        &["pub", "work", "--partition", "0", "--count", "5", "m{n}"],
        None,
    )
    .await
    .ok();

    // One member holds both partitions and has consumed two messages of partition 0.
    let client = liftbridge_client::Client::connect([s]).await.unwrap();
    let member = client
        .consumer("workers")
        .id("m1")
        .subscribe(["work"])
        .await
        .unwrap();
    client
        .set_cursor(&liftbridge_client::group_cursor_id("workers"), "work", 0, 1)
        .await
        .unwrap();
    let ls = lift(s, &["group", "ls", "--json"], None).await.json();
    assert_eq!(ls.len(), 1);
    assert_eq!(
        (ls[0]["group"].as_str(), ls[0]["members"].as_u64()),
        (Some("workers"), Some(1))
    );
    let info = lift(s, &["group", "info", "workers", "--json"], None)
        .await
        .json();
    assert_eq!(info[0]["members"][0]["member"], "m1");
    assert_eq!(
        info[0]["members"][0]["partitions"],
        serde_json::json!([["work", [0, 1]]])
    );
    let lag: Vec<(i64, i64, i64)> = info[0]["lag"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["partition"].as_i64().unwrap(),
                l["committed"].as_i64().unwrap(),
                l["lag"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(lag, [(0, 1, 3), (1, -1, 0)]);
    assert!(
        lift(s, &["group", "info", "workers"], None)
            .await
            .ok()
            .contains("m1")
    );
    member.close().await.unwrap();
    let missing = lift(s, &["group", "info", "nobody"], None).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no such consumer group"),
        "{missing:?}"
    );

    let brokers = lift(s, &["cluster", "info", "--json"], None).await.json();
    assert_eq!(brokers.len(), 1);
    assert_eq!(brokers[0]["metadata_leader"], true);
    assert_eq!(brokers[0]["address"], s);
    let health = lift(s, &["cluster", "health", "--json"], None).await;
    let h = health.json();
    assert_eq!(
        (h[0]["healthy"].as_bool(), h[0]["brokers"].as_u64()),
        (Some(true), Some(1))
    );

    // A short benchmark: its counts add up.
    let bench = lift(
        s,
        &[
            "bench",
            "b",
            "--create",
            "--partitions",
            "2",
            "--publishers",
            "2",
            "--subscribers",
            "1",
            "--messages",
            "300",
            "--size",
            "64",
            "--json",
        ],
        None,
    )
    .await
    .json();
    let r = &bench[0];
    let per_pub: Vec<u64> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "publisher")
        .map(|c| c["messages"].as_u64().unwrap())
        .collect();
    assert_eq!(per_pub, [300, 300]);
    assert_eq!(r["publishers"]["messages"], 600);
    assert_eq!(r["publishers"]["errors"], 0);
    assert_eq!(r["subscribers"]["messages"], 600);
    assert_eq!(r["publishers"]["bytes"], 600 * 64);
    assert_eq!(r["publish_latency_us"]["count"], 600);
    assert_eq!(r["end_to_end_latency_us"]["count"], 600);
    let csv = lift(
        s,
        &[
            "bench",
            "b",
            "--messages",
            "50",
            "--rate",
            "500",
            "--sync",
            "--csv",
        ],
        None,
    )
    .await;
    let rows: Vec<&str> = csv.ok().lines().collect();
    assert_eq!(
        rows[0],
        "role,id,messages,errors,bytes,seconds,msgs_per_sec,mb_per_sec"
    );
    assert!(rows[1].starts_with("publisher,0,50,0,"), "{rows:?}");

    // Exit codes: usage 2, an unreachable server 1, each with one line on stderr.
    let usage = lift(s, &["stream", "create"], None).await;
    assert_eq!(usage.code, 2);
    let down = lift("127.0.0.1:1", &["stream", "ls"], None).await;
    assert_eq!(down.code, 1);
    assert_eq!(down.stderr.lines().count(), 1, "{down:?}");
    assert!(
        down.stderr.starts_with("lift: connecting to 127.0.0.1:1: "),
        "{down:?}"
    );
    let bad = lift(s, &["pub", "work", "-H", "novalue", "x"], None).await;
    assert_eq!(bad.code, 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_and_completions() {
    let srv = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("contexts.json");
    let run = |args: Vec<String>, server_env: Option<String>| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::cargo_bin("lift").unwrap();
            cmd.env_remove("LIFT_SERVER")
                .env_remove("LIFT_CONTEXT")
                .env("LIFT_CONFIG", &file)
                .args(&args)
                .timeout(Duration::from_secs(30));
            if let Some(s) = server_env {
                cmd.env("LIFT_SERVER", s);
            }
            cmd.output().unwrap()
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let out = run(
        args(&["context", "add", "local", "--server", &srv.addr]),
        None,
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = run(
        args(&["context", "add", "elsewhere", "--server", "127.0.0.1:1"]),
        None,
    )
    .await
    .unwrap();
    assert!(out.status.success());
    // The newest context is current: it cannot be reached.
    let out = run(args(&["stream", "ls"]), None).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = run(args(&["context", "use", "local"]), None).await.unwrap();
    assert!(out.status.success());
    let out = run(args(&["stream", "ls", "--json"]), None).await.unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("__cursors"),
        "{out:?}"
    );
    // Flags and the environment win over the context.
    let out = run(args(&["stream", "ls"]), Some("127.0.0.1:1".into()))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = run(args(&["context", "ls", "--json"]), None).await.unwrap();
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1]["name"].as_str(), rows[1]["current"].as_bool()),
        (Some("local"), Some(true))
    );
    let out = run(args(&["context", "use", "nope"]), None).await.unwrap();
    assert_eq!(out.status.code(), Some(2));

    for shell in ["bash", "zsh", "fish"] {
        let out = run(args(&["completions", shell]), None).await.unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("stream"),
            "{shell}"
        );
    }
    srv.stop().await;
}
