//! The systems under test, each started fresh in its own temporary folder on 127.0.0.1 and
//! stopped afterwards: `liftbridged` (this binary in `serve` mode) with its embedded NATS or on
//! an external `nats-server`, and `nats-server -js`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `liftbridged` with its embedded NATS server.
    LbEmbedded,
    /// `liftbridged` on an external `nats-server`.
    LbExternal,
    /// `nats-server -js`, file storage.
    JetStream,
    /// `liftbridged` (embedded NATS) syncing every append.
    LbDurable,
    /// `nats-server -js` with `sync_interval: always`.
    JsDurable,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::LbEmbedded => "liftbridge (embedded NATS)",
            Kind::LbExternal => "liftbridge (nats-server)",
            Kind::JetStream => "JetStream",
            Kind::LbDurable => "liftbridge, sync always",
            Kind::JsDurable => "JetStream, sync always",
        }
    }

    pub fn is_liftbridge(self) -> bool {
        matches!(self, Kind::LbEmbedded | Kind::LbExternal | Kind::LbDurable)
    }
}

/// A child process, killed when dropped.
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident memory and CPU time of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Proc {
    pub fn usage(&self) -> Usage {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let peak_rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|u| u.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
        Usage {
            peak_rss_kib,
            cpu_seconds: ticks / clock_ticks(),
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to 20 s.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_port(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not open port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A started system.
pub struct Running {
    /// The gRPC address (Liftbridge) or NATS URL (JetStream).
    pub addr: String,
    /// The NATS URL, where plain NATS clients publish.
    pub nats: String,
    /// Processes to measure, main one first.
    pub procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

/// Where the nats-server binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub nats_server: PathBuf,
    pub durable_nats_server: PathBuf,
}

fn nats_server(bin: &Path, conf: &str, dir: &Path) -> Result<Proc, String> {
    let path = dir.join("nats.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    Ok(Proc {
        name: "nats-server",
        child,
    })
}

/// Whether this nats-server accepts `sync_interval: always` (2.10 and later).
pub fn supports_sync_always(bin: &Path) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let conf = dir.path().join("t.conf");
    let text = format!(
        "listen: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
        free_port(),
        dir.path().display()
    );
    if std::fs::write(&conf, text).is_err() {
        return false;
    }
    Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .arg("-t")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The version line of a nats-server binary.
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn liftbridged(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Result<Proc, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(me)
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--level", "warn"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        // BENCH_SERVER_LOG=1 shows the servers' warnings, for a row that looks wrong.
        .stderr(if std::env::var_os("BENCH_SERVER_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .map_err(|e| format!("cannot start liftbridged: {e}"))?;
    Ok(Proc {
        name: "liftbridged",
        child,
    })
}

impl Running {
    pub fn start(kind: Kind, bins: &Binaries) -> Result<Running, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (addr, nats_url, procs) = match kind {
            Kind::LbEmbedded | Kind::LbDurable => {
                let (grpc, nats) = (free_port(), free_port());
                let args: Vec<String> = vec![
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    grpc.to_string(),
                    "--embedded-nats-port".into(),
                    nats.to_string(),
                ];
                let env: &[(&str, &str)] = if kind == Kind::LbDurable {
                    &[("LIFTBRIDGE_STREAMS_SYNC_POLICY", "always")]
                } else {
                    &[]
                };
                let p = liftbridged(dir.path(), &args, env)?;
                wait_port(grpc, "liftbridged")?;
                (
                    format!("127.0.0.1:{grpc}"),
                    format!("nats://127.0.0.1:{nats}"),
                    vec![p],
                )
            }
            Kind::LbExternal => {
                let nats = free_port();
                let n = nats_server(
                    &bins.nats_server,
                    &format!("listen: 127.0.0.1:{nats}\n"),
                    dir.path(),
                )?;
                wait_port(nats, "nats-server")?;
                let grpc = free_port();
                let args: Vec<String> = vec![
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    grpc.to_string(),
                    "--nats-servers".into(),
                    format!("nats://127.0.0.1:{nats}"),
                    "--raft-bootstrap-seed".into(),
                ];
                let p = liftbridged(dir.path(), &args, &[])?;
                wait_port(grpc, "liftbridged")?;
                (
                    format!("127.0.0.1:{grpc}"),
                    format!("nats://127.0.0.1:{nats}"),
                    vec![p, n],
                )
            }
            Kind::JetStream | Kind::JsDurable => {
                let nats = free_port();
                let store = dir.path().join("js");
                let (bin, sync) = if kind == Kind::JsDurable {
                    (&bins.durable_nats_server, ", sync_interval: always")
                } else {
                    (&bins.nats_server, "")
                };
                let conf = format!(
                    "listen: 127.0.0.1:{nats}\nmax_payload: 8388608\njetstream {{ store_dir: \"{}\"{sync} }}\n",
                    store.display()
                );
                let n = nats_server(bin, &conf, dir.path())?;
                wait_port(nats, "nats-server")?;
                let url = format!("nats://127.0.0.1:{nats}");
                (url.clone(), url, vec![n])
            }
        };
        Ok(Running {
            addr,
            nats: nats_url,
            procs,
            _dir: dir,
        })
    }

    /// Usage of every process, then stops them.
    pub fn stop(self) -> Vec<(&'static str, Usage)> {
        let usage: Vec<_> = self.procs.iter().map(|p| (p.name, p.usage())).collect();
        for p in self.procs {
            p.stop();
        }
        usage
    }
}
