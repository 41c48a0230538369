//! The leader-epoch cache: at which offset each leader epoch began.
//!
//! Replication uses it to find where a follower's log diverges from a new leader's (Kafka's
//! KIP-101, Liftbridge's §4.6). The file `leader-epoch-checkpoint` uses Kafka's and Liftbridge's
//! text layout: a version line `0`, a count line, then one `epoch start_offset` line per entry.

use std::path::{Path, PathBuf};

use crate::checkpoint::write_atomic;
use crate::error::Result;

/// File name of the leader-epoch checkpoint.
pub const EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// A larger epoch file is taken as malformed (and rebuilt) rather than read: tens of thousands
/// of epochs fit in it.
const MAX_EPOCH_FILE_BYTES: u64 = 1 << 20;

/// One entry: the epoch, and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: u64,
    /// The first offset written (or to be written) in that epoch.
    pub start_offset: i64,
}

/// The cache. Epochs and start offsets strictly increase along the entries.
#[derive(Debug, Clone)]
pub(crate) struct EpochCache {
    entries: Vec<EpochEntry>,
    path: PathBuf,
}

impl EpochCache {
    /// An empty cache saved at `dir/leader-epoch-checkpoint`.
    pub fn new(dir: &Path) -> Self {
        EpochCache {
            entries: Vec::new(),
            path: dir.join(EPOCH_FILE),
        }
    }

    /// Loads the file; `Ok(None)` if it is missing or malformed (the caller rebuilds).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let mut cache = Self::new(dir);
        let text = match crate::segment::read_bounded(&cache.path, MAX_EPOCH_FILE_BYTES) {
            Ok(Some(b)) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            },
            Ok(None) => return Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(crate::error::io_at(&cache.path)(e)),
        };
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Ok(None);
        }
        let Some(Ok(count)) = lines.next().map(|l| l.trim().parse::<usize>()) else {
            return Ok(None);
        };
        for _ in 0..count {
            let Some(line) = lines.next() else {
                return Ok(None);
            };
            let mut parts = line.split_whitespace();
            let (Some(Ok(epoch)), Some(Ok(start_offset)), None) = (
                parts.next().map(str::parse::<u64>),
                parts.next().map(str::parse::<i64>),
                parts.next(),
            ) else {
                return Ok(None);
            };
            if !cache.push_if_newer(epoch, start_offset) {
                return Ok(None);
            }
        }
        if lines.any(|l| !l.trim().is_empty()) {
            return Ok(None);
        }
        Ok(Some(cache))
    }

    /// Writes the file atomically.
    pub fn save(&self) -> Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        write_atomic(&self.path, text.as_bytes())
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Adds `(epoch, start)` if the epoch is newer than the last and the start is not before the
    /// last start. Returns whether it was added.
    pub fn push_if_newer(&mut self, epoch: u64, start_offset: i64) -> bool {
        match self.entries.last() {
            Some(last) if epoch <= last.epoch || start_offset < last.start_offset => false,
            _ => {
                // An epoch that starts where the previous one started replaces it: the previous
                // epoch wrote nothing.
                if self
                    .entries
                    .last()
                    .is_some_and(|l| l.start_offset == start_offset)
                {
                    self.entries.pop();
                }
                self.entries.push(EpochEntry {
                    epoch,
                    start_offset,
                });
                true
            }
        }
    }

    /// The largest epoch ≤ `epoch` and the offset where it ended (the start of the next epoch,
    /// or `log_end` when it is the latest). `None` when `epoch` is older than every entry.
    pub fn end_offset_for(&self, epoch: u64, log_end: i64) -> Option<(u64, i64)> {
        let i = self.entries.partition_point(|e| e.epoch <= epoch);
        if i == 0 {
            return None;
        }
        let end = self
            .entries
            .get(i)
            .map_or(log_end, |next| next.start_offset);
        Some((self.entries[i - 1].epoch, end))
    }

    /// For an open whose log ends at `log_end`: removes entries that start past it, and keeps
    /// the latest epoch, starting at `log_end`, when it was among them (its records were lost:
    /// a crash took what was never synced). A leader that led that epoch must still see it, to
    /// move to a new epoch rather than write the lost offsets again in it.
    pub fn clear_beyond_end(&mut self, log_end: i64) -> bool {
        let before = self.entries.clone();
        let latest = self.entries.last().copied();
        self.clear_latest(log_end);
        if let Some(latest) = latest
            && latest.start_offset >= log_end
        {
            self.push_if_newer(latest.epoch, log_end);
        }
        before != self.entries
    }

    /// Removes entries that start at or after `offset` (the log was truncated there).
    pub fn clear_latest(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < offset);
        before != self.entries.len()
    }

    /// Drops entries wholly before `offset` (the log's start moved there); the entry covering
    /// `offset` is kept, starting at `offset`.
    pub fn clear_earliest(&mut self, offset: i64) -> bool {
        let covering = self.entries.partition_point(|e| e.start_offset <= offset);
        if covering == 0 {
            return false;
        }
        let changed = covering > 1 || self.entries[0].start_offset != offset;
        self.entries.drain(..covering - 1);
        self.entries[0].start_offset = offset;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(u64, i64)]) -> EpochCache {
        let mut c = EpochCache::new(Path::new("/nonexistent"));
        for &(e, o) in entries {
            assert!(c.push_if_newer(e, o));
        }
        c
    }

    fn pairs(c: &EpochCache) -> Vec<(u64, i64)> {
        c.entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn assign_accepts_only_newer_epochs_at_later_offsets() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(!c.push_if_newer(3, 20), "same epoch");
        assert!(!c.push_if_newer(2, 20), "older epoch");
        assert!(!c.push_if_newer(4, 5), "earlier offset");
        assert!(c.push_if_newer(5, 10), "an empty epoch is replaced");
        assert_eq!(pairs(&c), vec![(1, 0), (5, 10)]);
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let c = cache(&[(1, 0), (3, 10), (6, 25)]);
        assert_eq!(c.end_offset_for(0, 40), None);
        assert_eq!(c.end_offset_for(1, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for(2, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for(3, 40), Some((3, 25)));
        assert_eq!(c.end_offset_for(9, 40), Some((6, 40)));
    }

    #[test]
    fn clearing_both_ends() {
        let mut c = cache(&[(1, 0), (3, 10), (6, 25)]);
        assert!(c.clear_latest(25));
        assert_eq!(pairs(&c), vec![(1, 0), (3, 10)]);
        assert!(c.clear_earliest(12));
        assert_eq!(pairs(&c), vec![(3, 12)]);
        assert!(!c.clear_earliest(5));
        assert!(c.clear_latest(0));
        assert!(c.entries().is_empty());
    }

    #[test]
    fn file_round_trip_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EpochCache::new(dir.path());
        c.push_if_newer(2, 0);
        c.push_if_newer(4, 7);
        c.save().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(EPOCH_FILE)).unwrap(),
            "0\n2\n2 0\n4 7\n"
        );
        let back = EpochCache::load(dir.path()).unwrap().unwrap();
        assert_eq!(pairs(&back), vec![(2, 0), (4, 7)]);
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n2 0\n",
            "0\n1\nx 0\n",
            "0\n2\n4 7\n2 0\n",
            "0\n1\n1 2 3\n",
        ] {
            std::fs::write(dir.path().join(EPOCH_FILE), bad).unwrap();
            assert!(
                EpochCache::load(dir.path()).unwrap().is_none(),
                "{bad:?} accepted"
            );
        }
    }
}
