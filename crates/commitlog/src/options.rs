//! Configuration of a log, and the clock it reads.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Default bytes between two index entries.
pub const DEFAULT_INDEX_INTERVAL: u64 = 4096;
/// Default segment size before a roll: 256 MiB, as Liftbridge's `streams.segment.max.bytes`.
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Largest segment: positions in the index are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

/// When appended data is forced to stable storage with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Leave it to the operating system (Liftbridge's behaviour). A machine crash can lose the
    /// most recent writes; a process crash loses nothing. The fastest choice.
    #[default]
    Os,
    /// Sync after every this many messages, by the appender that crosses the count.
    EveryMessages(u64),
    /// Sync at this interval from a background thread, if anything was written.
    Interval(Duration),
    /// Every append returns only once its messages are on stable storage. Concurrent appenders
    /// share one sync (group commit), so the cost per message falls as load rises.
    Always,
}

/// Which whole segments [`Log::apply_retention`](crate::Log::apply_retention) deletes. `None`
/// means no limit. The active segment is never deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete the oldest segments while the rest still hold at least this many bytes.
    pub max_bytes: Option<u64>,
    /// Delete the oldest segments while the rest still hold at least this many messages.
    pub max_messages: Option<u64>,
    /// Delete the oldest segments whose newest message timestamp is older than this.
    pub max_age: Option<Duration>,
}

/// Told of every sync round that wrote something to stable storage: how long the
/// `fdatasync`s took and how many records they made durable. For metrics; it is called with the
/// log's sync lock held, so it must be quick and must not call back into the log.
pub trait SyncObserver: Send + Sync + Debug {
    /// One sync round: its duration and the records it made durable (under
    /// [`SyncPolicy::Always`], every append that shared it: the group commit).
    fn synced(&self, took: Duration, records: u64);
}

/// A source of wall-clock time, in nanoseconds since the Unix epoch.
///
/// The log reads time only through this trait, so tests can move time by hand.
pub trait Clock: Send + Sync + Debug {
    /// Now, in nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock reading `nanos`.
    pub fn new(nanos: i64) -> Self {
        ManualClock(AtomicI64::new(nanos))
    }

    /// Sets the time.
    pub fn set(&self, nanos: i64) {
        self.0.store(nanos, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Options for [`Log::open`](crate::Log::open). Every default is safe; see each field.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Roll to a new segment before one would grow past this many bytes (1 KiB to 4 GiB − 1;
    /// default 256 MiB). A single batch larger than this gets a segment of its own.
    pub segment_max_bytes: u64,
    /// Roll when the active segment's first write is this old. `None` (the default): never.
    pub segment_max_age: Option<Duration>,
    /// Bytes between two index entries (default 4096). Smaller means faster lookups and a
    /// larger index.
    pub index_interval_bytes: u64,
    /// When data reaches stable storage. Default: [`SyncPolicy::Os`].
    pub sync: SyncPolicy,
    /// Retention limits, applied by [`Log::apply_retention`](crate::Log::apply_retention).
    pub retention: Retention,
    /// Largest record accepted by an append, header included (default 64 MiB).
    pub max_record_bytes: u64,
    /// The clock for roll-by-age and retention-by-age.
    pub clock: Arc<dyn Clock>,
    /// Told of each sync round (default: none).
    pub on_sync: Option<Arc<dyn SyncObserver>>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            segment_max_age: None,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL,
            sync: SyncPolicy::Os,
            retention: Retention::default(),
            max_record_bytes: 64 * 1024 * 1024,
            clock: Arc::new(SystemClock),
            on_sync: None,
        }
    }
}

impl LogOptions {
    /// Checks every value's range.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if !(1024..=MAX_SEGMENT_BYTES).contains(&self.segment_max_bytes) {
            return bad(format!(
                "segment_max_bytes is {}; it must be between 1024 and {MAX_SEGMENT_BYTES}",
                self.segment_max_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1".into());
        }
        if self.segment_max_age.is_some_and(|d| d.is_zero()) {
            return bad("segment_max_age must be positive (use None to disable)".into());
        }
        match self.sync {
            SyncPolicy::EveryMessages(0) => {
                return bad("SyncPolicy::EveryMessages needs a count of at least 1".into());
            }
            SyncPolicy::Interval(d) if d.is_zero() => {
                return bad("SyncPolicy::Interval needs a positive interval (use Always to sync every append)".into());
            }
            _ => {}
        }
        if self.max_record_bytes < 64 || self.max_record_bytes > MAX_SEGMENT_BYTES {
            return bad(format!(
                "max_record_bytes is {}; it must be between 64 and {MAX_SEGMENT_BYTES}",
                self.max_record_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        LogOptions::default().validate().unwrap();
        let cases: Vec<(LogOptions, &str)> = vec![
            (
                LogOptions {
                    segment_max_bytes: 10,
                    ..Default::default()
                },
                "segment_max_bytes",
            ),
            (
                LogOptions {
                    index_interval_bytes: 0,
                    ..Default::default()
                },
                "index_interval_bytes",
            ),
            (
                LogOptions {
                    sync: SyncPolicy::EveryMessages(0),
                    ..Default::default()
                },
                "EveryMessages",
            ),
            (
                LogOptions {
                    sync: SyncPolicy::Interval(Duration::ZERO),
                    ..Default::default()
                },
                "Interval",
            ),
            (
                LogOptions {
                    segment_max_age: Some(Duration::ZERO),
                    ..Default::default()
                },
                "segment_max_age",
            ),
        ];
        for (opts, name) in cases {
            let err = opts.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err:?} does not name {name}");
        }
    }
}
