//! The disk-full guard: below a free-space threshold on the data folder's file system, the
//! broker refuses publishes, so that the disk never fills up under it; reads and replication go
//! on. It checks once a second, and takes publishes again once space is freed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use slog::{Logger, info, warn};

use crate::error::BrokerError;

/// Whether the data folder's file system has room for more.
#[derive(Debug)]
pub(crate) struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    low: AtomicBool,
}

impl DiskGuard {
    /// A guard of `dir` keeping `min_free` bytes free (0: never refuses).
    pub(crate) fn new(dir: PathBuf, min_free: u64) -> DiskGuard {
        DiskGuard {
            dir,
            min_free,
            low: AtomicBool::new(false),
        }
    }

    /// Whether publishes are refused now.
    pub(crate) fn is_low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    /// The error a refused publish gets.
    pub(crate) fn refusal(&self) -> BrokerError {
        BrokerError::ResourceExhausted(format!(
            "the data directory {} has less than {} bytes free: publishes are refused until \
             space is freed",
            self.dir.display(),
            self.min_free
        ))
    }

    /// Bytes free for this process on the data folder's file system, if it can tell.
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        let s = rustix::fs::statvfs(&self.dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// Checks the free space now; logs when publishes start or stop being refused.
    pub(crate) fn check(&self, logger: &Logger) {
        if self.min_free == 0 {
            return;
        }
        let Some(free) = self.free_bytes() else {
            return;
        };
        let low = free < self.min_free;
        if self.low.swap(low, Ordering::AcqRel) != low {
            if low {
                warn!(logger, "the data directory is nearly full: publishes are refused";
                    "data_dir" => %self.dir.display(), "free_bytes" => free,
                    "min_free_bytes" => self.min_free);
            } else {
                info!(logger, "the data directory has room again: publishes are accepted";
                    "data_dir" => %self.dir.display(), "free_bytes" => free);
            }
        }
    }
}
