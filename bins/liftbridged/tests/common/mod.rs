//! Helpers of the process tests: free ports, and child processes that die with the test (the
//! reference `nats-server` is `testkit::RefNats`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 30 s) until something accepts connections on `port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped, so a failed test leaves nothing running.
pub struct Proc(pub Child);

impl Proc {
    /// Sends the signal named `sig` (`TERM`, `HUP`) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args([format!("-{sig}").as_str(), &pid])
                .status()
                .unwrap()
                .success(),
            "kill -{sig} {pid}"
        );
    }

    /// SIGTERM, and the exit status once the process has stopped (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not stop on SIGTERM within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
