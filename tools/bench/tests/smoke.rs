//! The harness in its quick mode: it must run every workload against every system and write
//! its report. It asserts that it ran, never a speed.

use std::process::Command;

#[test]
fn quick_mode_runs_every_workload_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.md");
    // A section from an earlier run is replaced, the rest of the file kept.
    std::fs::write(
        &out,
        "# Benchmarks\n\nKept text.\n<!-- e2e:start -->\nOLD RESULTS\n<!-- e2e:end -->\nTail.\n",
    )
    .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_liftbridge-bench"))
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .status()
        .expect("the harness runs");
    assert!(status.success(), "the harness failed: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with("# Benchmarks\n\nKept text.\n"),
        "the rest of the file is kept"
    );
    for row in [
        "async publish, 1 pub",
        "async publish, 4 pub",
        "sync publish latency p99",
        "replay from the start",
        "end-to-end latency p50",
        "durable async publish, 4 pub",
        "| liftbridge (embedded NATS) | liftbridged |",
        "| JetStream | nats-server |",
    ] {
        assert!(text.contains(row), "missing {row:?} in:\n{text}");
    }
    // Every cell of the main table has a number: no system failed.
    let failed = text
        .lines()
        .filter(|l| l.starts_with("| async publish") && l.contains("| – |"))
        .count();
    assert_eq!(failed, 0, "{text}");
    assert_eq!(text.matches("<!-- e2e:start -->").count(), 1);
    assert!(!text.contains("OLD RESULTS"));
    assert!(text.ends_with("<!-- e2e:end -->\nTail.\n"));
}
