//! One segment: a `.log` file of records and its index, named by base offset.
//!
//! Concurrency contract: exactly one writer (the log's append path, holding the log's writer lock)
//! appends; any number of readers read through positional reads (`pread`) below the published
//! size. Appends publish the new size with release ordering after the bytes and index entries are
//! in place, so a reader that loads the size with acquire ordering sees complete records only.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result, io_at};
use crate::faults::{self, FileOp};
use crate::format::{self, Check, RecordMeta};
use crate::index::SegmentIndex;
use crate::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use crate::sync::{RwLock, RwLockReadGuard};

/// The first read of a scan: enough for a few index intervals, so a lookup reads little.
const SCAN_FIRST_CHUNK: usize = 16 * 1024;
/// Reads of a long scan double up to this size.
const SCAN_CHUNK: usize = 256 * 1024;

/// File name of a segment's log: the base offset as 20 decimal digits.
pub(crate) fn log_file_name(base: i64) -> String {
    format!("{base:020}.log")
}

/// File name of a segment's index.
pub(crate) fn index_file_name(base: i64) -> String {
    format!("{base:020}.index")
}

/// Why a scan stopped before the end of its range, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanStop {
    /// Position just after the last record the scan accepted.
    pub end: u64,
    /// The problem at `end`, or `None` when the scan reached the end of its range or was stopped
    /// by its callback.
    pub problem: Option<&'static str>,
    /// The record at `end` is whole and valid, but its offset does not belong here.
    pub misplaced: bool,
}

/// Rules a record must follow to be accepted by a scan, beyond its own checksum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub base: i64,
    /// Offsets must be above this one.
    pub after: Option<i64>,
    /// Offsets must be below this one (the next segment's base).
    pub below: Option<i64>,
}

impl Bounds {
    fn admit(&mut self, offset: i64) -> std::result::Result<(), &'static str> {
        if offset < self.base || offset - self.base > u32::MAX as i64 {
            return Err("record offset outside the segment's range");
        }
        if offset > format::MAX_OFFSET {
            return Err("record offset is the largest possible: no record could follow it");
        }
        if self.after.is_some_and(|a| offset <= a) {
            return Err("record offsets not increasing");
        }
        if self.below.is_some_and(|b| offset >= b) {
            return Err("record offset reaches into the next segment");
        }
        self.after = Some(offset);
        Ok(())
    }
}

/// Reads the records of `file` between `from` and `to`, calling `f` with each record's position,
/// facts and bytes, until `f` breaks, the range ends, or a record is torn or invalid.
pub(crate) fn scan_range(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    bounds: &mut Bounds,
    mut f: impl FnMut(u64, &RecordMeta, &[u8]) -> ControlFlow<()>,
) -> Result<ScanStop> {
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_pos = from; // file position of buf[0]
    let mut chunk = SCAN_FIRST_CHUNK;
    let mut at = from;
    loop {
        if at >= to {
            return Ok(ScanStop {
                end: at,
                problem: None,
                misplaced: false,
            });
        }
        let in_buf = (at - buf_pos) as usize;
        let avail = &buf[in_buf.min(buf.len())..];
        match format::check(avail) {
            Check::Valid(meta) => {
                if at + meta.len as u64 > to {
                    return Ok(ScanStop {
                        end: at,
                        problem: Some("record runs past the end of the range"),
                        misplaced: false,
                    });
                }
                if at + meta.len as u64 > crate::options::MAX_SEGMENT_BYTES {
                    // Index positions are 32 bits: such a record would be misindexed.
                    return Ok(ScanStop {
                        end: at,
                        problem: Some("record ends past the 4 GiB a segment can hold"),
                        misplaced: true,
                    });
                }
                if let Err(problem) = bounds.admit(meta.offset) {
                    return Ok(ScanStop {
                        end: at,
                        problem: Some(problem),
                        misplaced: true,
                    });
                }
                if f(at, &meta, &avail[..meta.len]).is_break() {
                    return Ok(ScanStop {
                        end: at,
                        problem: None,
                        misplaced: false,
                    });
                }
                at += meta.len as u64;
            }
            Check::Incomplete { needed } => {
                let remaining = to - at;
                if (avail.len() as u64) >= remaining || needed as u64 > remaining {
                    return Ok(ScanStop {
                        end: at,
                        problem: Some("torn record at the end"),
                        misplaced: false,
                    });
                }
                let want = (needed.max(chunk) as u64).min(remaining) as usize;
                chunk = (chunk * 2).min(SCAN_CHUNK);
                buf.clear();
                buf.resize(want, 0);
                file.read_exact_at(&mut buf, at).map_err(io_at(path))?;
                buf_pos = at;
            }
            Check::Invalid(problem) => {
                return Ok(ScanStop {
                    end: at,
                    problem: Some(problem),
                    misplaced: false,
                });
            }
        }
    }
}

/// What happened to a segment while it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentRecovery {
    /// The segment's base offset.
    pub base_offset: i64,
    /// The index was missing, damaged or stale and was rebuilt from the log.
    pub index_rebuilt: bool,
    /// Bytes cut from the end of the log because they were torn or invalid.
    pub truncated_bytes: u64,
    /// Why those bytes were cut, or what damage was found and left in place.
    pub reason: Option<String>,
    /// Where the cut bytes were kept, when they began with a whole, valid record that did not
    /// belong in this segment (its offset disagrees with the file's name or the next segment's):
    /// data, not a torn write, so it is never deleted.
    pub quarantined: Option<PathBuf>,
}

/// A segment of the log. See the module docs for the concurrency contract.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: i64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    file: File,
    size: AtomicU64,
    index: RwLock<SegmentIndex>,
    sealed: AtomicBool,
    /// When the segment got its first record (ns since the epoch), for rolling by age.
    first_write: AtomicI64,
}

impl Segment {
    /// Creates an empty segment file; fails if it exists.
    pub fn create(dir: &Path, base: i64) -> Result<Segment> {
        let log_path = dir.join(log_file_name(base));
        faults::check(FileOp::Create, &log_path).map_err(io_at(&log_path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(io_at(&log_path))?;
        Ok(Segment {
            base,
            index_path: dir.join(index_file_name(base)),
            log_path,
            file,
            size: AtomicU64::new(0),
            index: RwLock::new(SegmentIndex::empty()),
            sealed: AtomicBool::new(false),
            first_write: AtomicI64::new(i64::MIN),
        })
    }

    /// Opens an existing segment and recovers it: the index file is used when `trust_index` is set
    /// and it agrees with the log; otherwise the index is rebuilt by scanning the whole log, and
    /// any torn or invalid tail is cut off.
    pub fn open(
        dir: &Path,
        base: i64,
        trust_index: bool,
        below: Option<i64>,
        interval: u64,
    ) -> Result<(Segment, SegmentRecovery)> {
        let log_path = dir.join(log_file_name(base));
        let index_path = dir.join(index_file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(io_at(&log_path))?;
        let len = file.metadata().map_err(io_at(&log_path))?.len();
        let mut report = SegmentRecovery {
            base_offset: base,
            ..SegmentRecovery::default()
        };
        let mut bounds = Bounds {
            base,
            after: None,
            below,
        };
        let trusted = if trust_index {
            Self::load_index(&file, &log_path, &index_path, len, &mut bounds)?
        } else {
            None
        };
        let index = match trusted {
            Some(ix) => ix,
            None => {
                report.index_rebuilt = true;
                let mut ix = SegmentIndex::empty();
                let mut bounds = Bounds {
                    base,
                    after: None,
                    below,
                };
                let stop = scan_range(&file, &log_path, 0, len, &mut bounds, |_, m, _| {
                    ix.note_record(base, m.offset, m.timestamp, m.len, interval);
                    ControlFlow::Continue(())
                })?;
                if stop.end < len {
                    report.truncated_bytes = len - stop.end;
                    report.reason = stop.problem.map(str::to_owned);
                    if stop.misplaced {
                        // Whole, valid records, only in the wrong place: data, never deleted.
                        // Kept aside (synced) before the cut, for an operator to look at.
                        let kept = quarantine(&file, &log_path, stop.end, len)?;
                        report.reason = Some(format!(
                            "{}: {} bytes of valid records from byte {} kept in {}",
                            stop.problem.unwrap_or("misplaced records"),
                            len - stop.end,
                            stop.end,
                            kept.display()
                        ));
                        report.quarantined = Some(kept);
                    }
                    faults::check(FileOp::SetLen, &log_path)
                        .and_then(|()| file.set_len(stop.end))
                        .and_then(|()| faults::check(FileOp::Sync, &log_path))
                        .and_then(|()| file.sync_all())
                        .map_err(io_at(&log_path))?;
                }
                // A stale index must never be trusted later.
                remove_if_exists(&index_path)?;
                ix
            }
        };
        let first_write = Self::first_timestamp(&file, &log_path, &index)?;
        Ok((
            Segment {
                base,
                log_path,
                index_path,
                file,
                size: AtomicU64::new(index.log_size),
                index: RwLock::new(index),
                sealed: AtomicBool::new(false),
                first_write: AtomicI64::new(first_write),
            },
            report,
        ))
    }

    /// Loads the index file and verifies it against the log's tail. `None` if it cannot be trusted.
    fn load_index(
        file: &File,
        log_path: &Path,
        index_path: &Path,
        len: u64,
        bounds: &mut Bounds,
    ) -> Result<Option<SegmentIndex>> {
        // An index holds at most one entry per record, and a record takes at least
        // `MIN_RECORD_LEN` bytes of the log.
        let most = crate::index::INDEX_HEADER_LEN as u64
            + crate::index::INDEX_ENTRY_LEN as u64 * (len / format::MIN_RECORD_LEN as u64 + 1);
        let bytes = match read_bounded(index_path, most) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(index_path)(e)),
        };
        let Ok(ix) = SegmentIndex::decode(&bytes, bounds.base) else {
            return Ok(None);
        };
        if ix.log_size != len {
            return Ok(None);
        }
        let Some(last_entry) = ix.entries.last().copied() else {
            return Ok(Some(ix)); // empty segment, empty log: nothing to verify
        };
        // Verify the records after the last entry: they must end exactly at the log's end, start
        // at the entry's offset, and finish at the index's last offset.
        let mut first = None;
        let mut last = None;
        let mut max_ts = last_entry.max_timestamp;
        bounds.after = None;
        let stop = scan_range(
            file,
            log_path,
            last_entry.position as u64,
            len,
            bounds,
            |_, m, _| {
                first.get_or_insert(m.offset);
                last = Some(m.offset);
                max_ts = max_ts.max(m.timestamp);
                ControlFlow::Continue(())
            },
        )?;
        let ok = stop.end == len
            && first == Some(bounds.base + last_entry.rel_offset as i64)
            && last == ix.last_offset
            && max_ts == ix.max_timestamp;
        Ok(ok.then_some(ix))
    }

    fn first_timestamp(file: &File, path: &Path, ix: &SegmentIndex) -> Result<i64> {
        if ix.record_count == 0 {
            return Ok(i64::MIN);
        }
        let mut header = [0u8; format::RECORD_HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(io_at(path))?;
        Ok(i64::from_be_bytes(
            header[8..16].try_into().expect("8 bytes"),
        ))
    }

    /// Bytes of complete records, as published to readers.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// A read guard on the index; hold it briefly.
    pub fn index(&self) -> RwLockReadGuard<'_, SegmentIndex> {
        self.index.read()
    }

    /// Records in the segment.
    pub fn record_count(&self) -> u64 {
        self.index.read().record_count as u64
    }

    /// Offset of the first record, if any.
    pub fn first_offset(&self) -> Option<i64> {
        self.index.read().first_offset(self.base)
    }

    /// Offset after the last record (the base offset when empty).
    pub fn next_offset(&self) -> i64 {
        self.index.read().last_offset.map_or(self.base, |o| o + 1)
    }

    /// Whether the segment is sealed (no longer the active one).
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub fn set_sealed(&self, sealed: bool) {
        self.sealed.store(sealed, Ordering::Release);
    }

    /// Nanoseconds since the epoch of the first write, or `i64::MIN` while empty.
    pub fn first_write(&self) -> i64 {
        self.first_write.load(Ordering::Relaxed)
    }

    /// Appends encoded, checked records, given as the `total` bytes of `parts` in order (the
    /// slices are consumed). Writer only.
    pub fn append(
        &self,
        parts: &mut [IoSlice<'_>],
        total: u64,
        metas: &[RecordMeta],
        interval: u64,
        now: i64,
    ) -> Result<()> {
        debug_assert_eq!(parts.iter().map(|p| p.len() as u64).sum::<u64>(), total);
        let at = self.size.load(Ordering::Relaxed);
        if let Err(e) = write_all_vectored_at(&self.file, &self.log_path, parts, at) {
            // A failed write may have left part of its bytes past the end. Cut them, or a
            // recovery could take them for records: offsets that were never acknowledged.
            let cut =
                faults::check(FileOp::SetLen, &self.log_path).and_then(|()| self.file.set_len(at));
            return Err(match cut {
                Ok(()) => io_at(&self.log_path)(e),
                Err(cut) => Error::Failed(format!(
                    "a failed write to {} ({e}) could not be undone: {cut}",
                    self.log_path.display()
                )),
            });
        }
        {
            let mut ix = self.index.write();
            for m in metas {
                ix.note_record(self.base, m.offset, m.timestamp, m.len, interval);
            }
        }
        if self.first_write.load(Ordering::Relaxed) == i64::MIN {
            self.first_write.store(now, Ordering::Relaxed);
        }
        self.size.store(at + total, Ordering::Release);
        Ok(())
    }

    /// Reads the whole record that starts at `pos`, checked.
    pub fn read_record(&self, pos: u64) -> Result<(bytes::Bytes, RecordMeta)> {
        let end = self.size();
        let mut header = [0u8; format::RECORD_HEADER_LEN];
        if pos + header.len() as u64 > end {
            return Err(self.corrupt(pos, "record header past the segment's end"));
        }
        self.file
            .read_exact_at(&mut header, pos)
            .map_err(io_at(&self.log_path))?;
        let needed = match format::check(&header) {
            Check::Incomplete { needed } => needed,
            Check::Invalid(why) => return Err(self.corrupt(pos, why)),
            Check::Valid(_) => unreachable!("a header alone is never a whole record"),
        };
        if pos + needed as u64 > end {
            return Err(self.corrupt(pos, "record runs past the segment's end"));
        }
        let bytes = self.read(pos, needed)?;
        match format::check(&bytes) {
            Check::Valid(meta) => Ok((bytes, meta)),
            Check::Invalid(why) => Err(self.corrupt(pos, why)),
            Check::Incomplete { .. } => Err(self.corrupt(pos, "record shorter than its size")),
        }
    }

    /// Reads `len` bytes at `pos`, which must lie below the published size.
    pub fn read(&self, pos: u64, len: usize) -> Result<Bytes> {
        let mut v = vec![0u8; len];
        self.file
            .read_exact_at(&mut v, pos)
            .map_err(io_at(&self.log_path))?;
        Ok(Bytes::from(v))
    }

    /// Scans records in `[from, to)`, treating any invalid record as corruption.
    pub fn for_each(
        &self,
        from: u64,
        to: u64,
        f: impl FnMut(u64, &RecordMeta, &[u8]) -> ControlFlow<()>,
    ) -> Result<u64> {
        let mut bounds = Bounds {
            base: self.base,
            after: None,
            below: None,
        };
        let stop = scan_range(&self.file, &self.log_path, from, to, &mut bounds, f)?;
        match stop.problem {
            Some(reason) => Err(self.corrupt(stop.end, reason)),
            None => Ok(stop.end),
        }
    }

    /// The error for damage found at `position`.
    pub fn corrupt(&self, position: u64, reason: &str) -> Error {
        Error::Corrupt {
            path: self.log_path.clone(),
            position,
            reason: reason.to_owned(),
            offset: None,
        }
    }

    /// Position of the first record with offset ≥ `offset` (the size if there is none). Reads
    /// at most one index interval.
    pub fn position_of(&self, offset: i64) -> Result<u64> {
        let (from, to) = {
            let ix = self.index.read();
            // The record is in the interval before the first entry above `offset`, or is that
            // entry's record.
            ix.interval_for_offset(self.base, offset)
        };
        let mut found = to;
        self.for_each(from, to, |pos, m, _| {
            if m.offset >= offset {
                found = pos;
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(found)
    }

    /// Removes every record with offset ≥ `offset`. Writer only, with readers excluded.
    ///
    /// [`Error::Failed`] means the file was cut but the cut may not be durable; any other error
    /// means nothing changed.
    pub fn truncate_from(&self, offset: i64) -> Result<()> {
        let cut = self.position_of(offset)?;
        let old_size = self.size();
        if cut == old_size {
            return Ok(());
        }
        let mut removed = 0u32;
        self.for_each(cut, old_size, |_, _, _| {
            removed += 1;
            ControlFlow::Continue(())
        })?;
        // Recompute the tail facts from the last entry that stays to the cut. The entries past
        // the cut are dropped only once the file is cut: a failed cut changes nothing.
        let (restart, mut max_ts) = {
            let ix = self.index.read();
            ix.entries
                .iter()
                .take_while(|e| (e.position as u64) < cut)
                .last()
                .map_or((0, i64::MIN), |e| (e.position as u64, e.max_timestamp))
        };
        let mut last = None;
        self.for_each(restart, cut, |_, m, _| {
            max_ts = max_ts.max(m.timestamp);
            last = Some(m.offset);
            ControlFlow::Continue(())
        })?;
        faults::check(FileOp::SetLen, &self.log_path)
            .and_then(|()| self.file.set_len(cut))
            .map_err(io_at(&self.log_path))?;
        // The file is cut: the facts follow at once, whether or not the sync below succeeds,
        // so they never describe bytes that are gone.
        {
            let mut ix = self.index.write();
            ix.entries.retain(|e| (e.position as u64) < cut);
            ix.record_count = match ix.record_count.checked_sub(removed) {
                Some(n) => n,
                // A trusted index file that undercounted its records (only its tail is
                // checked against the log): count those that stay.
                None => {
                    let mut kept = 0u32;
                    let counted = self.for_each(0, cut, |_, _, _| {
                        kept += 1;
                        ControlFlow::Continue(())
                    });
                    if counted.is_err() {
                        kept = u32::from(cut > 0);
                    }
                    kept
                }
            };
            ix.last_offset = last;
            ix.max_timestamp = max_ts;
            ix.log_size = cut;
            ix.since_entry = cut - restart;
            if ix.record_count == 0 {
                *ix = SegmentIndex::empty();
                self.first_write.store(i64::MIN, Ordering::Relaxed);
            }
        }
        self.size.store(cut, Ordering::Release);
        faults::check(FileOp::Sync, &self.log_path)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| {
                Error::Failed(format!(
                    "{} was cut, but the cut could not be synced: {e}",
                    self.log_path.display()
                ))
            })
    }

    /// Writes the index file for the current contents, syncing it when asked.
    pub fn write_index(&self, sync: bool) -> Result<()> {
        let bytes = self.index.read().encode(self.base);
        write_file(&self.index_path, &bytes, sync)
    }

    /// Removes the in-memory facts' file copy (it is stale once the segment changes).
    pub fn remove_index_file(&self) -> Result<()> {
        remove_if_exists(&self.index_path)
    }

    /// Flushes the log file's data to stable storage.
    pub fn sync_data(&self) -> Result<()> {
        faults::check(FileOp::Sync, &self.log_path)
            .and_then(|()| self.file.sync_data())
            .map_err(io_at(&self.log_path))
    }

    /// Unlinks both files. Open handles (readers) keep working on the unlinked data.
    pub fn delete_files(&self) -> Result<()> {
        remove_if_exists(&self.log_path)?;
        remove_if_exists(&self.index_path)
    }

    /// Builds a segment from a log file written elsewhere (compaction), with a known index.
    pub fn from_parts(
        base: i64,
        log_path: PathBuf,
        index_path: PathBuf,
        file: File,
        index: SegmentIndex,
        first_write: i64,
    ) -> Segment {
        Segment {
            base,
            log_path,
            index_path,
            file,
            size: AtomicU64::new(index.log_size),
            index: RwLock::new(index),
            sealed: AtomicBool::new(true),
            first_write: AtomicI64::new(first_write),
        }
    }
}

/// Copies bytes `from..to` of a segment's log to a new file beside it,
/// `<name>.<from>.quarantined` (or with a number added if that exists), synced with its folder.
/// The log never reads, nor deletes, such a file.
fn quarantine(file: &File, log_path: &Path, from: u64, to: u64) -> Result<PathBuf> {
    let name = log_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = log_path.parent().unwrap_or(Path::new("."));
    let path = (0..1000)
        .map(|i| match i {
            0 => dir.join(format!("{name}.{from}.quarantined")),
            i => dir.join(format!("{name}.{from}.{i}.quarantined")),
        })
        .find(|p| !p.exists())
        .ok_or_else(|| {
            Error::InvalidOption(format!(
                "too many quarantined copies of {} already",
                log_path.display()
            ))
        })?;
    let out = faults::check(FileOp::Create, &path)
        .and_then(|()| File::create(&path))
        .map_err(io_at(&path))?;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)
            .map_err(io_at(log_path))?;
        faults::check(FileOp::Write, &path)
            .and_then(|()| out.write_all_at(&buf[..n], at - from))
            .map_err(io_at(&path))?;
        at += n as u64;
    }
    faults::check(FileOp::Sync, &path)
        .and_then(|()| out.sync_all())
        .map_err(io_at(&path))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads a whole small file, unless it holds more than `max` bytes: `Ok(None)` then, without
/// reading it into memory (a damaged or foreign file must not force a large allocation).
pub(crate) fn read_bounded(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// Deletes a file; a missing file is fine.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match faults::check(FileOp::Remove, path).and_then(|()| std::fs::remove_file(path)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Writes a whole file, replacing it, and syncs it when asked.
pub(crate) fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut f = faults::check(FileOp::Create, path)
        .and_then(|()| File::create(path))
        .map_err(io_at(path))?;
    faults::check(FileOp::Write, path)
        .and_then(|()| std::io::Write::write_all(&mut f, bytes))
        .map_err(io_at(path))?;
    if sync {
        faults::check(FileOp::Sync, path)
            .and_then(|()| f.sync_all())
            .map_err(io_at(path))?;
    }
    Ok(())
}

/// Syncs a folder, making creations, renames and deletions in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    faults::check(FileOp::SyncDir, dir)
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// The most slices one `pwritev` takes on Linux (`IOV_MAX`); more is `EINVAL`.
const MAX_SLICES_PER_WRITE: usize = 1024;

/// Writes every byte of `parts`, in order, at `at`: `pwritev` until done, as `write_all_at`
/// does for one buffer. A call may write less than asked; the next goes on from there.
fn write_all_vectored_at(
    file: &File,
    path: &Path,
    mut parts: &mut [IoSlice<'_>],
    mut at: u64,
) -> std::io::Result<()> {
    if let Some(f) = faults::fault(FileOp::Write, path) {
        if f.torn {
            let whole: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            file.write_all_at(&whole[..whole.len() / 2], at)?;
        }
        return Err(std::io::Error::from_raw_os_error(f.errno));
    }
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = parts.len().min(MAX_SLICES_PER_WRITE);
        match rustix::io::pwritev(file, &parts[..n], at) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                at += written as u64;
                IoSlice::advance_slices(&mut parts, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_refuses_a_record_that_ends_past_what_a_position_can_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(log_file_name(0));
        let mut record = Vec::new();
        let len = format::encode(&mut record, 7, &crate::Message::new("x".repeat(40))).unwrap();
        // A sparse file with a valid record straddling 4 GiB, and one wholly inside it.
        let at = (u32::MAX as u64) - 20;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&record, at - len as u64).unwrap();
        let mut second = Vec::new();
        format::encode(&mut second, 8, &crate::Message::new("x".repeat(40))).unwrap();
        file.write_all_at(&second, at).unwrap();
        let end = at + len as u64;
        let mut seen = Vec::new();
        let mut bounds = Bounds {
            base: 0,
            after: None,
            below: None,
        };
        let stop = scan_range(
            &file,
            &path,
            at - len as u64,
            end,
            &mut bounds,
            |pos, _, _| {
                seen.push(pos);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(seen, vec![at - len as u64], "only the record that fits");
        assert_eq!(stop.end, at);
        assert!(stop.misplaced, "valid data: kept aside, not cut silently");
    }
}
