//! The reference `nats-server` (the Debian package), for tests that compare with it or run on
//! it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` process on 127.0.0.1, killed when dropped, so a failed test leaves nothing
/// running. Its configuration file lives in a temporary folder of its own.
pub struct RefNats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RefNats {
    /// Starts `nats-server` on a free port with `conf` (nats-server's configuration syntax;
    /// host and port are added) and waits, up to 10 s, until it accepts connections.
    ///
    /// # Panics
    /// When `nats-server` is not installed or does not start.
    pub fn start(conf: &str) -> RefNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        RefNats::start_on(port, conf)
    }

    /// As [`RefNats::start`], on `port`: a test that stops the server can start it again
    /// where its clients look for it.
    ///
    /// # Panics
    /// As [`RefNats::start`].
    pub fn start_on(port: u16, conf: &str) -> RefNats {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let file = dir.path().join("nats-server.conf");
        std::fs::write(&file, format!("host: 127.0.0.1\nport: {port}\n{conf}"))
            .expect("the configuration written");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "the reference `nats-server` must be installed (apt-get install -y nats-server)",
            );
        let server = RefNats { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The folder of its configuration file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RefNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
