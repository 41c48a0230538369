//! The standard process metrics (`process_…`), read from `/proc/self` at each scrape. On a
//! system without `/proc` they are left out.

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Process {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The limit on open file descriptors.
    pub max_fds: u64,
    /// When the process started, in seconds since the epoch.
    pub start_time_seconds: f64,
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// Fields of `/proc/self/stat` after the command name (which may hold spaces), numbered as
/// proc(5) numbers them (so `fields[0]` is field 3, the state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().collect())
}

fn boot_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl Process {
    /// Reads `/proc/self`; `None` where it cannot be read.
    pub fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let f = stat_fields(&stat)?;
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        let ticks = ticks_per_second();
        let page = rustix::param::page_size() as u64;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(Process {
            cpu_seconds: (num(14)? + num(15)?) as f64 / ticks,
            virtual_bytes: num(23)?,
            resident_bytes: num(24)? * page,
            open_fds,
            max_fds: max_fds().unwrap_or(0),
            start_time_seconds: boot_time().unwrap_or(0.0) + num(22)? as f64 / ticks,
        })
    }

    /// Registers the values as the standard `process_…` metrics.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            ConstCounter::new(self.cpu_seconds),
        );
        reg.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            ConstGauge::new(self.resident_bytes as i64),
        );
        reg.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            ConstGauge::new(self.virtual_bytes as i64),
        );
        reg.register(
            "process_open_fds",
            "Number of open file descriptors",
            ConstGauge::new(self.open_fds as i64),
        );
        reg.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            ConstGauge::new(self.max_fds as i64),
        );
        reg.register(
            "process_start_time_seconds",
            "Start time of the process since the epoch in seconds",
            ConstGauge::new(self.start_time_seconds),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 123456 789";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "250");
        assert_eq!(f[24 - 3], "789");
    }

    #[test]
    fn this_process_reads_as_alive() {
        let p = Process::read().expect("/proc is there on Linux");
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds > 0);
        assert!(p.start_time_seconds > 1.0e9, "{p:?}");
    }
}
