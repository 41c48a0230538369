//! An existing Liftbridge client, unchanged: python-liftbridge 0.0.7 (generated from
//! Liftbridge's own, older api.proto) creates a stream, publishes, subscribes and fetches
//! metadata against our server. `scripts/compat-venv.sh` (run by `scripts/test.sh`) installs it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_liftbridge_works_unchanged() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("LIFTBRIDGE_COMPAT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/compat-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/compat-venv.sh (scripts/test.sh does)",
        python.display()
    );
    let srv = TestServer::start().await;
    let addr = srv.running().grpc_addr().to_string();
    let script = root.join("tests/compat/python_client.py");
    let out =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(addr).output())
            .await
            .unwrap()
            .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python-liftbridge failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("python-liftbridge: ok"), "{stdout}");
    srv.stop().await;
}
