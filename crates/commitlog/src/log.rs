//! The log: an ordered list of segments, one writer, many readers.
//!
//! # Locks, outermost first
//! 1. `maintenance`: serializes truncation, retention and compaction with each other.
//! 2. `writer`: serializes appends, rolls and truncation.
//! 3. `reading` (shared by readers during one read, exclusive during truncation): the only lock a
//!    truncation and a reader contend on. Appends never take it, so readers never block appends.
//! 4. `segments`: the list itself, held only long enough to look up or swap an entry.
//! 5. `hw_checkpoint`: held while the high-watermark checkpoint is written.
//! 6. `sync`: the group commit's state (durable offset, segments waiting for a sync). A truncation
//!    moves the end and lowers the high watermark under it, and a raise of the mark reads the end
//!    under it.
//! 7. `epochs`, then `truncation_history`, then `failed`: leaves.
//!
//! (A segment's own index lock is taken inside any of these and takes nothing.)
//!
//! The rules: a thread takes these locks only in this order, never one while it holds a later
//! one, and **never one it already holds, not even a shared read lock** — no guard is kept across
//! a call that takes the same lock. parking_lot's locks are fair: a second read waits for a
//! writer queued after the first, which waits for the first, so a read taken twice deadlocks as
//! soon as a roll, retention or compaction queues for the write lock in between. Beware guards
//! that live longer than they look, such as one in a `for` loop's head (it lives through the
//! loop) or in an `if let`/`match` scrutinee. Debug builds check the order at every acquisition
//! (`crate::lock`) and panic naming both locks; release builds use plain parking_lot locks.
//!
//! # Invariants
//! - Offsets strictly increase along the log; gaps exist only where compaction removed records
//!   or recovery dropped a damaged tail.
//! - `end` is one past the newest record written; only the writer reads it. `next_offset` (the
//!   log end offset) is one past the newest record readers and followers may see. It is
//!   published after the record's bytes, so a reader that sees it can read them; under
//!   [`SyncPolicy::Always`] only once they are on stable storage, so a failed sync leaves
//!   nothing readable or replicable that the disk may not hold. `next_offset ≤ end`.
//! - The high watermark never exceeds the newest offset and only grows, except that a
//!   truncation below it lowers it to the new newest offset.
//! - Only the last segment is written; every other segment is sealed and immutable, except that
//!   compaction replaces a sealed segment by a smaller one with the same base offset.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::checkpoint::{self, CLEAN_FILE};
use crate::epoch::{EpochCache, EpochEntry};
use crate::error::{Error, Result, io_at};
use crate::faults::{self, FileOp};
use crate::format::{self, Check, Message, RecordMeta};
use crate::index::SegmentIndex;
use crate::lock::{OrderedMutex, OrderedRwLock, Rank};
use crate::notify::Notify;
use crate::options::{LogOptions, MAX_SEGMENT_BYTES, SyncPolicy};
use crate::reader::{Isolation, Reader, ReverseReader};
use crate::segment::{self, Segment, SegmentRecovery, sync_dir};
use crate::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use crate::sync::{Condvar, Mutex, MutexGuard};

/// Recent truncations, `(generation after it, offset)`, and the lowest forgotten cut.
type TruncationHistory = (std::collections::VecDeque<(u64, i64)>, Option<i64>);

/// Name of the lock file that keeps two logs from opening one folder.
const LOCK_FILE: &str = ".lock";

/// Where an append put its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first message of the batch.
    pub first_offset: i64,
    /// Offset of the last message of the batch.
    pub last_offset: i64,
}

/// Whole records exactly as stored, for shipping to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    /// The records' bytes; [`Log::append_raw`] accepts them as they are.
    pub data: Bytes,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// How many records `data` holds.
    pub count: usize,
}

/// What [`Log::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The log was closed cleanly last time.
    pub clean_shutdown: bool,
    /// Segments whose index was rebuilt or whose tail was cut, or in which damage was found and
    /// left in place (see [`SegmentRecovery::reason`]).
    pub repaired: Vec<SegmentRecovery>,
    /// Leftover files of interrupted operations, and empty sealed segments, that were deleted.
    pub removed_files: Vec<PathBuf>,
    /// The leader-epoch checkpoint was missing or malformed and was rebuilt from the records.
    pub epoch_cache_rebuilt: bool,
}

impl RecoveryReport {
    /// Bytes cut from damaged or torn segment tails.
    pub fn truncated_bytes(&self) -> u64 {
        self.repaired.iter().map(|r| r.truncated_bytes).sum()
    }
}

/// What [`Log::apply_retention`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments: usize,
    /// Messages deleted.
    pub messages: u64,
    /// Bytes deleted.
    pub bytes: u64,
}

/// What [`Log::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten (or removed because nothing in them survived).
    pub segments_rewritten: usize,
    /// Messages removed.
    pub messages_removed: u64,
    /// Bytes reclaimed.
    pub bytes_reclaimed: u64,
}

/// A summary of one segment, for monitoring and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The base offset, which names the files.
    pub base_offset: i64,
    /// Offset of the first record, if any.
    pub first_offset: Option<i64>,
    /// One past the last record's offset (the base offset when empty).
    pub next_offset: i64,
    /// Records in the segment.
    pub records: u64,
    /// Bytes of the `.log` file.
    pub bytes: u64,
    /// Whether the segment is sealed; only the last one is not.
    pub sealed: bool,
}

#[derive(Default)]
struct WriteBuffers {
    encoded: Vec<u8>,
    metas: Vec<RecordMeta>,
}

/// Encode buffers larger than this are released after use rather than kept.
const KEEP_BUFFER_BYTES: usize = 16 * 1024 * 1024;

struct SyncState {
    /// Every offset below this one is on stable storage.
    durable: i64,
    syncing: bool,
    /// Segments written since the last sync, oldest first. Weak: a segment that retention,
    /// truncation or compaction removed is closed once no reader holds it, even if no sync
    /// ever comes (under [`SyncPolicy::Os`] none does unless asked); its data is gone, so
    /// nothing needs syncing.
    dirty: Vec<Weak<Segment>>,
    /// Messages appended since the last sync.
    unsynced: u64,
    /// Sync rounds completed.
    rounds: u64,
    /// `close` has begun its own syncs. A round that ends after this may not count its
    /// records durable: its `fdatasync` may have run alongside one of the close's on the same
    /// file, and an error is reported to only one of them. The close's outcome decides instead.
    closing: bool,
    /// `close` has finished its syncs: it raised `durable` or set `failed`.
    close_done: bool,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    opts: LogOptions,
    segments: OrderedRwLock<Vec<Arc<Segment>>>,
    /// The append path's lock, with buffers reused from batch to batch.
    writer: OrderedMutex<WriteBuffers>,
    maintenance: OrderedMutex<()>,
    pub(crate) reading: OrderedRwLock<()>,
    pub(crate) truncations: AtomicU64,
    /// Recent truncations, `(generation after it, offset)`, so a reader can tell where the log
    /// was cut since it last looked; and the lowest cut among those forgotten, for a reader
    /// older than every remembered one.
    truncation_history: OrderedMutex<TruncationHistory>,
    /// One past the newest record written (the writer's end; see the invariants).
    end: AtomicI64,
    /// One past the newest visible record.
    pub(crate) next_offset: AtomicI64,
    pub(crate) hw: AtomicI64,
    /// Held while the high-watermark checkpoint is written: each write reads the mark after
    /// taking it, so a write of an older, higher mark never lands after a truncation's lower
    /// one, and no two writers share the temporary file.
    hw_checkpoint: OrderedMutex<()>,
    epochs: OrderedMutex<EpochCache>,
    pub(crate) notify: Notify,
    sync: OrderedMutex<SyncState>,
    sync_cv: Condvar,
    pub(crate) closed: AtomicBool,
    /// A segment file was created and the folder not synced since: the next sync round syncs
    /// it, or the file's data could be synced and the file itself lost.
    dir_unsynced: AtomicBool,
    pub(crate) readonly: AtomicBool,
    failed: OrderedMutex<Option<String>>,
    recovery: RecoveryReport,
    flusher_stop: Arc<(Mutex<bool>, Condvar)>,
    /// Held while open; released by `close` so the folder can be opened again at once.
    lock: Mutex<Option<File>>,
}

/// A segmented, append-only log of messages in one folder.
///
/// `Log` is a cheap handle: clones share one log. All methods take `&self` and are safe to call
/// from many threads. Create readers with [`reader`](Log::reader) and
/// [`reverse_reader`](Log::reverse_reader).
///
/// ```
/// use commitlog::{Isolation, Log, LogOptions, Message};
/// let dir = tempfile::tempdir()?;
/// let log = Log::open(dir.path(), LogOptions::default())?;
/// let at = log.append(&[Message::new("hello"), Message::new("world")])?;
/// assert_eq!((at.first_offset, at.last_offset), (0, 1));
/// log.set_high_watermark(1)?;
/// let mut reader = log.reader(0, Isolation::Committed);
/// assert_eq!(&reader.try_next()?.unwrap().value[..], b"hello");
/// log.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Log {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.inner.dir)
            .field("next_offset", &self.next_offset())
            .field("high_watermark", &self.high_watermark())
            .finish()
    }
}

impl Log {
    /// Opens the log in `dir`, creating the folder if needed, and recovers it: leftover files of
    /// interrupted operations are removed, torn or invalid tails are cut off, and damaged indexes
    /// are rebuilt. [`recovery`](Log::recovery) tells what was done.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for bad options, [`Error::Locked`] if another open log holds the
    /// folder, [`Error::Io`] if the folder cannot be read or written.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Log> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }

        let mut report = RecoveryReport::default();
        let clean_path = dir.join(CLEAN_FILE);
        report.clean_shutdown = clean_path.exists();
        if report.clean_shutdown {
            // From now on a crash must be seen as one.
            segment::remove_if_exists(&clean_path)?;
            sync_dir(&dir)?;
        }

        let (bases, leftovers) = list_dir(&dir)?;
        for path in leftovers {
            segment::remove_if_exists(&path)?;
            report.removed_files.push(path);
        }

        let mut segments: Vec<Arc<Segment>> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let trust = !last || report.clean_shutdown;
            let (seg, rec) = Segment::open(
                &dir,
                base,
                trust,
                bases.get(i + 1).copied(),
                opts.index_interval_bytes,
            )?;
            let empty_sealed = !last && seg.record_count() == 0;
            if rec.index_rebuilt && !empty_sealed && !last {
                seg.write_index(true)?;
            }
            if (rec.index_rebuilt && !empty_sealed) || rec.truncated_bytes > 0 {
                report.repaired.push(rec);
            }
            if empty_sealed {
                seg.delete_files()?;
                report.removed_files.push(seg.log_path.clone());
                continue;
            }
            seg.set_sealed(!last);
            segments.push(Arc::new(seg));
        }
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(&dir, 0)?));
        }
        let active = segments.last().expect("one segment").clone();
        if !report.clean_shutdown {
            // Everything found counts as durable from now on (the sync state starts at the end),
            // so everything is synced first: a roll can seal a segment whose newest records were
            // written, not yet synced, when the process died. (The last clean close synced
            // everything; a crash since leaves no record of what was synced, so every segment
            // is. A segment with nothing unsynced costs little.)
            for s in &segments {
                s.sync_data()?;
            }
        }
        sync_dir(&dir)?;
        let next_offset = active
            .next_offset()
            .max(segments.iter().map(|s| s.next_offset()).max().unwrap_or(0));
        let checkpointed = checkpoint::read_hw(&dir)?.unwrap_or(-1);
        let hw = checkpointed.min(next_offset - 1);
        if hw < checkpointed {
            // The records it covered are gone (a machine crash took an unsynced tail). Lower it
            // on disk too, or a later crash would bring it back over records appended again at
            // those offsets, which no replica committed.
            checkpoint::write_hw(&dir, hw)?;
        }

        let oldest = segments.iter().find_map(|s| s.first_offset());
        let mut epochs = match EpochCache::load(&dir)? {
            Some(c) => c,
            None => {
                report.epoch_cache_rebuilt = true;
                rebuild_epochs(&dir, &segments, &mut report)?
            }
        };
        let mut changed = epochs.clear_beyond_end(next_offset);
        if let Some(o) = oldest {
            changed |= epochs.clear_earliest(o);
        }
        if changed || report.epoch_cache_rebuilt {
            epochs.save()?;
        }

        let inner = Arc::new(Inner {
            dir,
            segments: OrderedRwLock::new(Rank::Segments, segments),
            writer: OrderedMutex::new(Rank::Writer, WriteBuffers::default()),
            maintenance: OrderedMutex::new(Rank::Maintenance, ()),
            reading: OrderedRwLock::new(Rank::Reading, ()),
            truncations: AtomicU64::new(0),
            truncation_history: OrderedMutex::new(
                Rank::TruncationHistory,
                (std::collections::VecDeque::new(), None),
            ),
            end: AtomicI64::new(next_offset),
            next_offset: AtomicI64::new(next_offset),
            hw: AtomicI64::new(hw),
            hw_checkpoint: OrderedMutex::new(Rank::HwCheckpoint, ()),
            epochs: OrderedMutex::new(Rank::Epochs, epochs),
            notify: Notify::default(),
            sync: OrderedMutex::new(
                Rank::Sync,
                SyncState {
                    durable: next_offset,
                    syncing: false,
                    dirty: Vec::new(),
                    unsynced: 0,
                    rounds: 0,
                    closing: false,
                    close_done: false,
                },
            ),
            sync_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            dir_unsynced: AtomicBool::new(false),
            readonly: AtomicBool::new(false),
            failed: OrderedMutex::new(Rank::Failed, None),
            recovery: report,
            flusher_stop: Arc::new((Mutex::new(false), Condvar::new())),
            opts,
            lock: Mutex::new(Some(lock)),
        });
        if let SyncPolicy::Interval(every) = inner.opts.sync {
            spawn_flusher(Arc::downgrade(&inner), inner.flusher_stop.clone(), every);
        }
        Ok(Log { inner })
    }

    /// What opening the log found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.inner.opts
    }

    /// Appends messages as one batch and returns their offsets. Under [`SyncPolicy::Always`] it
    /// returns once they are on stable storage.
    ///
    /// # Errors
    /// [`Error::InvalidBatch`] for an empty batch, a message whose fields overflow the format, or
    /// a batch whose last offset would be `i64::MAX` (the largest offset is `i64::MAX - 1`),
    /// [`Error::RecordTooLarge`], [`Error::Readonly`], [`Error::Closed`], [`Error::Failed`] after a
    /// failed sync, [`Error::Truncated`] when a truncation removed the batch (or part of it)
    /// before its sync, [`Error::Io`]. On error nothing of the batch is visible to readers
    /// (except, after [`Error::Truncated`], what the truncation left of it).
    pub fn append(&self, messages: &[Message]) -> Result<AppendInfo> {
        if messages.is_empty() {
            return Err(Error::InvalidBatch(
                "a batch needs at least one message".into(),
            ));
        }
        let limit = self.inner.opts.max_record_bytes;
        for m in messages {
            let size = m.encoded_len();
            if size > limit {
                return Err(Error::RecordTooLarge { size, limit });
            }
        }
        let info = {
            let mut w = self.inner.writer.lock();
            self.inner.check_writable()?;
            let WriteBuffers { encoded, metas } = &mut *w;
            encoded.clear();
            metas.clear();
            let first = self.inner.end.load(Ordering::Relaxed);
            if messages.len() as i64 > i64::MAX - first {
                return Err(Error::InvalidBatch(format!(
                    "no room for {} more offsets after {first}: the largest offset a record \
                     can have is {}",
                    messages.len(),
                    format::MAX_OFFSET
                )));
            }
            // Large values are written from the messages' own buffers: (position in
            // `encoded`, value).
            let mut in_place: Vec<(usize, &[u8])> = Vec::new();
            let mut total = 0u64;
            for (i, m) in messages.iter().enumerate() {
                let offset = first + i as i64;
                let leave = m.value.len() >= format::VALUE_IN_PLACE_MIN;
                let (len, value_at) = format::encode_around_value(encoded, offset, m, leave)
                    .map_err(Error::InvalidBatch)?;
                in_place.extend(value_at.map(|at| (at, &m.value[..])));
                total += len as u64;
                metas.push(RecordMeta {
                    offset,
                    timestamp: m.timestamp,
                    leader_epoch: m.leader_epoch,
                    len,
                });
            }
            let mut parts = Vec::with_capacity(2 * in_place.len() + 1);
            let mut from = 0;
            for (at, value) in in_place {
                parts.push(IoSlice::new(&encoded[from..at]));
                parts.push(IoSlice::new(value));
                from = at;
            }
            parts.push(IoSlice::new(&encoded[from..]));
            let info = self.inner.write_locked(&mut parts, total, metas);
            if encoded.capacity() > KEEP_BUFFER_BYTES {
                *encoded = Vec::new();
            }
            info?
        };
        self.inner.after_append(info, messages.len() as u64)?;
        Ok(info.0)
    }

    /// Appends records exactly as another log stored them (see [`read_raw`](Log::read_raw)), keeping
    /// their offsets. Used by followers to copy a leader's log byte for byte.
    ///
    /// # Errors
    /// [`Error::InvalidBatch`] when the bytes are not whole valid records, when offsets do not
    /// increase, when the first offset is below [`next_offset`](Log::next_offset), or when an
    /// offset is `i64::MAX` (no record could follow it); plus the
    /// errors of [`append`](Log::append) except [`Error::Readonly`]: the read-only flag does not
    /// stop a follower from copying what its leader accepted before the partition became
    /// read-only. On error nothing is written.
    pub fn append_raw(&self, data: &[u8]) -> Result<AppendInfo> {
        let mut metas = Vec::new();
        let mut at = 0usize;
        while at < data.len() {
            match format::check(&data[at..]) {
                Check::Valid(m) => {
                    if metas
                        .last()
                        .is_some_and(|p: &RecordMeta| m.offset <= p.offset)
                    {
                        return Err(Error::InvalidBatch(format!(
                            "offset {} does not increase",
                            m.offset
                        )));
                    }
                    at += m.len;
                    metas.push(m);
                }
                Check::Incomplete { .. } => {
                    return Err(Error::InvalidBatch(format!("torn record at byte {at}")));
                }
                Check::Invalid(why) => {
                    return Err(Error::InvalidBatch(format!("byte {at}: {why}")));
                }
            }
        }
        let Some(first) = metas.first().map(|m| m.offset) else {
            return Err(Error::InvalidBatch(
                "a batch needs at least one record".into(),
            ));
        };
        let last = metas.last().expect("non-empty").offset;
        if last > format::MAX_OFFSET {
            return Err(Error::InvalidBatch(format!(
                "offset {last} is above the largest offset a record can have ({}): no record \
                 could follow it",
                format::MAX_OFFSET
            )));
        }
        let info = {
            let _w = self.inner.writer.lock();
            self.inner.check_healthy()?;
            let next = self.inner.end.load(Ordering::Relaxed);
            if first < next {
                return Err(Error::InvalidBatch(format!(
                    "first offset {first} is below the log end offset {next}"
                )));
            }
            if last - first > u32::MAX as i64 / 2 {
                return Err(Error::InvalidBatch("offsets span too wide a range".into()));
            }
            self.inner
                .write_locked(&mut [IoSlice::new(data)], data.len() as u64, &metas)?
        };
        self.inner.after_append(info, metas.len() as u64)?;
        Ok(info.0)
    }

    /// Offset of the oldest record, or -1 when the log holds none.
    pub fn oldest_offset(&self) -> i64 {
        self.inner.oldest_offset()
    }

    /// Offset of the newest record (log end offset − 1), or -1 when nothing was ever written.
    pub fn newest_offset(&self) -> i64 {
        self.next_offset() - 1
    }

    /// The log end offset: the offset the next appended message gets.
    pub fn next_offset(&self) -> i64 {
        self.inner.next_offset.load(Ordering::Acquire)
    }

    /// The high watermark: the offset of the newest committed message, or -1. Committed readers
    /// stop here.
    pub fn high_watermark(&self) -> i64 {
        self.inner.hw.load(Ordering::Acquire)
    }

    /// Raises the high watermark to `hw`, clamped to the newest offset; a lower value is ignored.
    /// Wakes committed readers. Returns the high watermark now in force. Persist it with
    /// [`checkpoint_high_watermark`](Log::checkpoint_high_watermark).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn set_high_watermark(&self, hw: i64) -> Result<i64> {
        self.inner.check_open()?;
        let (hw, before) = {
            // A truncation moves the end and lowers the mark under this lock: the clamp and the
            // raise cannot straddle it (a raise from the old end, landing after the truncation
            // lowered the mark, would leave it above the new end).
            let _st = self.inner.sync.lock();
            let hw = hw.min(self.newest_offset());
            #[cfg(test)]
            tests::between_clamp_and_raise();
            (hw, self.inner.hw.fetch_max(hw, Ordering::AcqRel))
        };
        if hw > before {
            self.inner.notify.notify();
        }
        Ok(before.max(hw))
    }

    /// Writes the high watermark to `replication-offset-checkpoint`, atomically.
    ///
    /// # Errors
    /// [`Error::Closed`] (the folder may belong to a log opened since), [`Error::Io`].
    pub fn checkpoint_high_watermark(&self) -> Result<()> {
        let _c = self.inner.hw_checkpoint.lock();
        // Under the lock: `close` marks the log closed before it writes its own checkpoint
        // under this lock, so no write of this handle lands after the close's.
        self.inner.check_open()?;
        checkpoint::write_hw(&self.inner.dir, self.high_watermark())
    }

    /// A reader from `start` forward. A start below the oldest offset reads from the oldest; a
    /// start beyond the end waits for that offset.
    pub fn reader(&self, start: i64, isolation: Isolation) -> Reader {
        Reader::new(self.inner.clone(), start, isolation)
    }

    /// A reader from `start` (or the newest visible offset, if lower) backward to the oldest.
    pub fn reverse_reader(&self, start: i64, isolation: Isolation) -> ReverseReader {
        ReverseReader::new(self.inner.clone(), start, isolation)
    }

    /// Whole records from the first one at or after `offset`, about `max_bytes` of them (always at
    /// least one), up to the log end. `None` when there is nothing at or after `offset`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a stored record fails its checks; [`Error::Closed`]; [`Error::Io`].
    pub fn read_raw(&self, offset: i64, max_bytes: usize) -> Result<Option<RawBatch>> {
        self.inner.check_open()?;
        let _r = self.inner.reading.read();
        let limit = self.newest_offset();
        if offset > limit {
            return Ok(None);
        }
        let (mut seg, mut pos) = self.inner.locate(offset)?;
        // Each step reads records further on in the segment (skipping those below `offset`:
        // with a small `max_bytes` a whole index interval may take many) or moves to a later
        // segment; only the moves are bounded. The bound is read first: a guard in a loop's
        // head would live through the loop, and `successor` takes the same lock again.
        let most_moves = self.inner.segments.read().len() + 2;
        let mut moves = 0;
        loop {
            let end = seg.size();
            if pos >= end {
                moves += 1;
                if moves > most_moves {
                    return Ok(None);
                }
                match self.inner.successor(&seg) {
                    Some(next) => {
                        seg = next;
                        pos = 0;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            let chunk = crate::reader::read_chunk(&seg, pos, end, offset, limit, max_bytes)?
                .forward(offset)?;
            if let (Some(first), Some(last)) = (chunk.metas.first(), chunk.metas.last()) {
                let start = first.0;
                let stop = last.0 + last.1.len;
                return Ok(Some(RawBatch {
                    data: chunk.data.slice(start..stop),
                    first_offset: first.1.offset,
                    last_offset: last.1.offset,
                    count: chunk.metas.len(),
                }));
            }
            if chunk.hit_limit {
                return Ok(None);
            }
            pos = chunk.next_pos;
        }
    }

    /// The first offset whose record has a timestamp ≥ `timestamp`, or `None` if every record is
    /// older. Binary search within a segment; the segment is the first whose largest timestamp
    /// reaches `timestamp`.
    ///
    /// # Errors
    /// [`Error::Corrupt`], [`Error::Closed`], [`Error::Io`].
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<i64>> {
        self.inner.check_open()?;
        let _r = self.inner.reading.read();
        let segments = self.inner.segments.read().clone();
        for seg in segments {
            let (from, to, max) = {
                let ix = seg.index();
                (
                    ix.position_for_timestamp(timestamp),
                    ix.log_size,
                    ix.max_timestamp,
                )
            };
            if max < timestamp {
                continue;
            }
            let mut found = None;
            seg.for_each(from, to, |_, m, _| {
                if m.timestamp >= timestamp {
                    found = Some(m.offset);
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The first record at or after `offset`, committed or not.
    ///
    /// # Errors
    /// As [`Reader::try_next`].
    pub fn read_at(&self, offset: i64) -> Result<Option<format::Record>> {
        self.inner.check_open()?;
        let _r = self.inner.reading.read();
        let offset = offset.max(0);
        if offset > self.newest_offset() {
            return Ok(None);
        }
        let (mut seg, _) = self.inner.locate(offset)?;
        let rounds = self.inner.segments.read().len() + 1;
        for _ in 0..rounds {
            let pos = seg.position_of(offset).map_err(|e| e.at_offset(offset))?;
            if pos < seg.size() {
                let (bytes, meta) = seg.read_record(pos).map_err(|e| e.at_offset(offset))?;
                return Ok(Some(format::decode(&bytes, &meta)));
            }
            match self.inner.successor(&seg) {
                Some(next) => seg = next,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Seals the active segment and starts a new one, unless the active one is empty.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Io`].
    pub fn roll(&self) -> Result<()> {
        let _w = self.inner.writer.lock();
        self.inner.check_open()?;
        self.inner.roll_locked()
    }

    /// Rolls the active segment if it is older than `segment_max_age`. Appends check this too;
    /// call it from a timer so a quiet log still rolls. Returns whether it rolled.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Io`].
    pub fn roll_if_due(&self) -> Result<bool> {
        let _w = self.inner.writer.lock();
        self.inner.check_open()?;
        if self.inner.aged(&self.inner.active()) {
            self.inner.roll_locked()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes every record with offset ≥ `offset` (a follower drops what diverged from its new
    /// leader). The high watermark is lowered to the new newest offset if it was above it, and
    /// the leader-epoch cache forgets epochs that started at or after the new end. Readers past
    /// the new end continue from it. Durable when it returns, the lowered high-watermark
    /// checkpoint included; if that checkpoint cannot be written, the log fails (refuses writes
    /// until reopened) so that nothing is appended above a checkpoint that is too high.
    ///
    /// # Errors
    /// [`Error::InvalidBatch`] for a negative offset, [`Error::Closed`], [`Error::Io`] or
    /// [`Error::Failed`]. A failure before anything changed leaves the log as it was; one after
    /// a step changed the files fails the log ([`failure`](Log::failure): writes are refused
    /// until it is reopened), and readers see what the segments hold.
    pub fn truncate(&self, offset: i64) -> Result<()> {
        if offset < 0 {
            return Err(Error::InvalidBatch(format!(
                "cannot truncate at negative offset {offset}"
            )));
        }
        let inner = &self.inner;
        let _m = inner.maintenance.lock();
        let _w = inner.writer.lock();
        inner.check_open()?;
        if offset >= inner.end.load(Ordering::Acquire) {
            return Ok(());
        }
        let _r = inner.reading.write();
        // Whether a step changed the files: a later failure then leaves them part way, and
        // the log refuses writes until reopened (which recovers from what is on disk).
        let mut changed = false;
        let cut = (|| {
            let mut segs = inner.segments.write();
            while segs.len() > 1 && segs.last().expect("non-empty").base >= offset {
                // Off the list only once its files are gone, so the list stays what the
                // folder holds.
                let doomed = segs.last().expect("non-empty").clone();
                changed = true;
                doomed.delete_files()?;
                segs.pop();
            }
            let last = segs.last().expect("one segment").clone();
            if last.base > offset {
                // Everything goes, and the log restarts at `offset`. The new segment first, so
                // the log is never without one.
                let fresh = Arc::new(Segment::create(&inner.dir, offset)?);
                changed = true;
                last.delete_files()?;
                *segs.last_mut().expect("one segment") = fresh;
            } else {
                last.truncate_from(offset).inspect_err(|e| {
                    changed |= matches!(e, Error::Failed(_));
                })?;
                changed = true;
                last.remove_index_file()?;
                last.set_sealed(false);
            }
            Ok(())
        })()
        .and_then(|()| sync_dir(&inner.dir));
        if let Err(e) = &cut {
            if !changed {
                return cut;
            }
            inner.fail(|| format!("a truncation failed part way: {e}"));
        }
        let next = inner.active().next_offset();
        // Under `Always`, records below the cut may still wait for their sync (an append's
        // round in flight, or a cut at a segment boundary, which syncs nothing): they are
        // synced here, so that the end the truncation publishes covers only durable records.
        // If that fails, the end stays where it was and the log fails.
        // (Everything below the visible end is durable as the policy asks; under the other
        // policies the visible end is the writer's end, so nothing is synced here.)
        let visible = inner.next_offset.load(Ordering::Acquire);
        let publish = if visible < next {
            let segs = inner.segments.read().clone();
            match segs
                .iter()
                .filter(|s| s.next_offset() > visible)
                .try_for_each(|s| s.sync_data())
            {
                Ok(()) => Ok(true),
                Err(e) => {
                    inner.fail(|| format!("a truncation could not sync: {e}"));
                    Err(e)
                }
            }
        } else {
            Ok(false)
        };
        #[cfg(test)]
        tests::truncate_takes_the_sync_lock(&inner.dir, inner.sync.is_locked());
        let lowered;
        {
            // Under the sync lock, so that a sync round that began before the cut does not
            // publish an end from before it, and a raise of the high watermark does not clamp
            // to the old end and raise after the lowering.
            let mut st = inner.sync.lock();
            inner.end.store(next, Ordering::Release);
            match &publish {
                // Synced here: everything below the cut is durable.
                Ok(true) => {
                    inner.next_offset.store(next, Ordering::Release);
                    st.durable = next;
                }
                Ok(false) => {
                    inner.next_offset.store(next, Ordering::Release);
                    st.durable = st.durable.min(next);
                }
                // Not raised over records whose sync failed.
                Err(_) => {
                    inner.next_offset.fetch_min(next, Ordering::AcqRel);
                    st.durable = st.durable.min(next);
                }
            }
            lowered = inner.hw.fetch_min(next - 1, Ordering::AcqRel) > next - 1;
            let generation = inner.truncations.fetch_add(1, Ordering::AcqRel) + 1;
            // Where it cut is recorded with the count, under the same lock and before anything
            // here can fail: an append waiting for its sync that sees the new count must find
            // the cut (else it cannot tell whether it was cut, and runs sync rounds in a loop).
            let mut guard = inner.truncation_history.lock();
            let (history, forgotten) = &mut *guard;
            if history.len() == 256
                && let Some((_, o)) = history.pop_front()
            {
                *forgotten = Some(forgotten.map_or(o, |f| f.min(o)));
            }
            history.push_back((generation, next));
        }
        let epochs_saved = {
            let mut epochs = inner.epochs.lock();
            if epochs.clear_latest(next) {
                epochs.save()
            } else {
                Ok(())
            }
        };
        if let Err(e) = &epochs_saved {
            // The files are cut already: refuse writes until reopened, like any truncation
            // that fails part way.
            inner.fail(|| {
                format!("a truncation could not rewrite the leader-epoch checkpoint: {e}")
            });
        }
        // Durably, as the cut: a crash must not bring back the old mark over records appended
        // again at the cut offsets.
        let checkpointed = if lowered {
            let _c = inner.hw_checkpoint.lock();
            checkpoint::write_hw(&inner.dir, inner.hw.load(Ordering::Acquire)).inspect_err(|e| {
                inner.fail(|| {
                    format!("a truncation could not lower the high-watermark checkpoint: {e}")
                })
            })
        } else {
            Ok(())
        };
        drop(_r);
        inner.notify.notify();
        checkpointed?;
        cut.and(publish.map(|_| ())).and(epochs_saved)
    }

    /// Deletes the oldest sealed segments that fall outside the retention limits in
    /// [`LogOptions::retention`]. Limits on bytes and messages keep the newest segments while
    /// their running total stays within the limit (Liftbridge's rule: the log never holds more than
    /// the limit, except that the active segment is always kept); the age limit deletes segments
    /// whose newest timestamp is older than the limit. Only segments whose records are all at or
    /// below the high watermark are deleted (Kafka's rule). Readers inside a deleted segment
    /// finish it.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Io`].
    pub fn apply_retention(&self) -> Result<RetentionReport> {
        let inner = &self.inner;
        let _m = inner.maintenance.lock();
        inner.check_open()?;
        let r = inner.opts.retention;
        let segs = inner.segments.read().clone();
        let now = inner.opts.clock.now_nanos();
        // Walk newest to oldest to find the oldest segment to keep.
        let mut keep_from = segs.len() - 1;
        let (mut bytes, mut msgs) = (0u64, 0u64);
        for (i, s) in segs.iter().enumerate().rev() {
            bytes += s.size();
            msgs += s.record_count();
            let over_bytes = r.max_bytes.is_some_and(|b| bytes > b);
            let over_msgs = r.max_messages.is_some_and(|m| msgs > m);
            if i + 1 < segs.len() && (over_bytes || over_msgs) {
                break;
            }
            keep_from = i;
        }
        if let Some(age) = r.max_age {
            let cutoff = now.saturating_sub(age.as_nanos().min(i64::MAX as u128) as i64);
            let expired = segs[..segs.len() - 1]
                .iter()
                .take_while(|s| s.index().max_timestamp < cutoff)
                .count();
            keep_from = keep_from.max(expired);
        }
        // Only whole segments of committed records go: a record above the high watermark may
        // yet be committed (Kafka's rule too).
        let hw = inner.hw.load(Ordering::Acquire);
        let committed = segs[..segs.len() - 1]
            .iter()
            .take_while(|s| s.next_offset() <= hw.saturating_add(1))
            .count();
        keep_from = keep_from.min(committed);
        let mut report = RetentionReport::default();
        if keep_from == 0 {
            return Ok(report);
        }
        let victims: Vec<Arc<Segment>> = inner.segments.write().drain(..keep_from).collect();
        for (i, v) in victims.iter().enumerate() {
            if let Err(e) = v.delete_files() {
                // Oldest first, so what stays is still one run of offsets: put back every
                // segment whose log file is still there.
                let from = if v.log_path.exists() { i } else { i + 1 };
                let mut segs = inner.segments.write();
                segs.splice(0..0, victims[from..].iter().cloned());
                return Err(e);
            }
            report.segments += 1;
            report.messages += v.record_count();
            report.bytes += v.size();
        }
        sync_dir(&inner.dir)?;
        let oldest = inner.oldest_offset();
        if oldest >= 0 {
            let mut epochs = inner.epochs.lock();
            if epochs.clear_earliest(oldest) {
                epochs.save()?;
            }
        }
        Ok(report)
    }

    /// Compacts sealed segments by key: among committed messages (offset ≤ high watermark) only
    /// the newest per key survives; messages without a key and uncommitted messages always
    /// survive. Each segment is rewritten to a temporary file that replaces the original only once
    /// it is complete and synced, so a crash leaves either version. Readers see either the old or
    /// the new segment, both consistent. The active segment is never rewritten.
    ///
    /// Memory: one entry per distinct committed key.
    ///
    /// # Errors
    /// [`Error::Corrupt`], [`Error::Closed`], [`Error::Io`].
    pub fn compact(&self) -> Result<CompactionReport> {
        let inner = &self.inner;
        let _m = inner.maintenance.lock();
        inner.check_open()?;
        let hw = self.high_watermark();
        let segs = inner.segments.read().clone();
        let mut report = CompactionReport::default();
        if hw < 0 || segs.len() < 2 {
            return Ok(report);
        }
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for seg in &segs {
            if seg.first_offset().is_none_or(|f| f > hw) {
                break;
            }
            seg.for_each(0, seg.size(), |_, m, rec| {
                if m.offset > hw {
                    return ControlFlow::Break(());
                }
                if let Some(k) = format::key_of(rec) {
                    latest.insert(k.to_vec(), m.offset);
                }
                ControlFlow::Continue(())
            })?;
        }
        for seg in &segs[..segs.len() - 1] {
            if seg.first_offset().is_none_or(|f| f > hw) {
                break;
            }
            let keep = |m: &RecordMeta, rec: &[u8]| {
                m.offset > hw
                    || format::key_of(rec).is_none_or(|k| latest.get(k) == Some(&m.offset))
            };
            let mut removed = 0u64;
            seg.for_each(0, seg.size(), |_, m, rec| {
                if !keep(m, rec) {
                    removed += 1;
                }
                ControlFlow::Continue(())
            })?;
            if removed == 0 {
                continue;
            }
            let cleaned = inner
                .dir
                .join(format!("{}.cleaned", segment::log_file_name(seg.base)));
            let file = faults::check(FileOp::Create, &cleaned)
                .and_then(|()| {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&cleaned)
                })
                .map_err(io_at(&cleaned))?;
            let write = |bytes: &[u8]| {
                faults::check(FileOp::Write, &cleaned)
                    .and_then(|()| std::io::Write::write_all(&mut &file, bytes))
            };
            let mut ix = SegmentIndex::empty();
            let mut out: Vec<u8> = Vec::new();
            let mut write_err = None;
            seg.for_each(0, seg.size(), |_, m, rec| {
                if keep(m, rec) {
                    ix.note_record(
                        seg.base,
                        m.offset,
                        m.timestamp,
                        m.len,
                        inner.opts.index_interval_bytes,
                    );
                    out.extend_from_slice(rec);
                    if out.len() >= 1 << 20 {
                        if let Err(e) = write(&out) {
                            write_err = Some(e);
                            return ControlFlow::Break(());
                        }
                        out.clear();
                    }
                }
                ControlFlow::Continue(())
            })?;
            let finish = write_err
                .map_or(Ok(()), Err)
                .and_then(|()| write(&out))
                .and_then(|()| faults::check(FileOp::Sync, &cleaned))
                .and_then(|()| file.sync_all());
            if let Err(e) = finish {
                let _ = segment::remove_if_exists(&cleaned);
                return Err(io_at(&cleaned)(e));
            }
            report.segments_rewritten += 1;
            report.messages_removed += removed;
            report.bytes_reclaimed += seg.size() - ix.log_size;
            let mut list = inner.segments.write();
            let Some(i) = list.iter().position(|s| Arc::ptr_eq(s, seg)) else {
                segment::remove_if_exists(&cleaned)?;
                continue;
            };
            if ix.record_count == 0 {
                list.remove(i);
                drop(list);
                seg.delete_files()?;
                segment::remove_if_exists(&cleaned)?;
            } else {
                // Crash-safe order: drop the old index, move the new log over the old, then write
                // the new index. Any crash in between leaves a log that recovery can index.
                seg.remove_index_file()?;
                if let Err(e) = faults::check(FileOp::Rename, &seg.log_path)
                    .and_then(|()| std::fs::rename(&cleaned, &seg.log_path))
                {
                    let _ = segment::remove_if_exists(&cleaned);
                    return Err(io_at(&seg.log_path)(e));
                }
                let fresh = Segment::from_parts(
                    seg.base,
                    seg.log_path.clone(),
                    seg.index_path.clone(),
                    file,
                    ix,
                    seg.first_write(),
                );
                // The new log is in place whatever happens to its index (an open without one
                // rebuilds it): the list must hold the segment of the file now on disk, or a
                // truncation and the appends after it would go to the replaced file.
                let indexed = fresh.write_index(true);
                list[i] = Arc::new(fresh);
                if let Err(e) = indexed {
                    // A partly written index file must not be trusted later, and the rename
                    // must become durable (the next sync round syncs the folder if this fails).
                    let _ = segment::remove_if_exists(&seg.index_path);
                    if sync_dir(&inner.dir).is_err() {
                        inner.dir_unsynced.store(true, Ordering::Release);
                    }
                    return Err(e);
                }
            }
            sync_dir(&inner.dir)?;
        }
        let oldest = inner.oldest_offset();
        if oldest >= 0 {
            let mut epochs = inner.epochs.lock();
            if epochs.clear_earliest(oldest) {
                epochs.save()?;
            }
        }
        Ok(report)
    }

    /// Records that `epoch` starts at the log end offset, if it is newer than every cached epoch.
    /// Returns whether it was recorded. Persisted atomically.
    ///
    /// Liftbridge records the newest existing offset instead; this follows Kafka, whose start
    /// offset is the first offset written in the epoch.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Io`].
    pub fn assign_leader_epoch(&self, epoch: u64) -> Result<bool> {
        let _w = self.inner.writer.lock();
        self.inner.check_open()?;
        let mut epochs = self.inner.epochs.lock();
        let added = epochs.push_if_newer(epoch, self.inner.end.load(Ordering::Acquire));
        if added {
            epochs.save()?;
        }
        Ok(added)
    }

    /// For a follower asking where `epoch` ended: the largest cached epoch ≤ `epoch` and its end
    /// offset (exclusive: the start of the next epoch, or the log end offset for the latest one).
    /// `None` when `epoch` predates every cached epoch.
    pub fn leader_epoch_end_offset(&self, epoch: u64) -> Option<(u64, i64)> {
        self.inner
            .epochs
            .lock()
            .end_offset_for(epoch, self.next_offset())
    }

    /// The newest cached leader epoch.
    pub fn last_leader_epoch(&self) -> Option<u64> {
        self.inner.epochs.lock().last().map(|e| e.epoch)
    }

    /// All cached leader epochs, oldest first.
    pub fn leader_epochs(&self) -> Vec<EpochEntry> {
        self.inner.epochs.lock().entries().to_vec()
    }

    /// Makes the log read-only (appends fail with [`Error::Readonly`], committed readers that
    /// catch up get [`Error::EndOfReadonly`]) or writable again.
    pub fn set_readonly(&self, readonly: bool) {
        self.inner.readonly.store(readonly, Ordering::Release);
        self.inner.notify.notify();
    }

    /// Why the log refuses writes for good, if it does: a sync failed, a failed write could
    /// not be undone, or a truncation failed part way. Reads of what was visible keep working; reopening recovers from the disk.
    pub fn failure(&self) -> Option<String> {
        self.inner.failed.lock().clone()
    }

    /// Whether the log is read-only.
    pub fn is_readonly(&self) -> bool {
        self.inner.readonly.load(Ordering::Acquire)
    }

    /// Forces everything appended so far to stable storage.
    ///
    /// # Errors
    /// [`Error::Failed`] or [`Error::Io`] when the sync fails.
    pub fn sync(&self) -> Result<()> {
        self.inner.sync_written()
    }

    /// How many sync rounds (`fdatasync` of everything written so far) have run since open. Under
    /// [`SyncPolicy::Always`], group commit shows as fewer rounds than appends.
    pub fn sync_rounds(&self) -> u64 {
        self.inner.sync.lock().rounds
    }

    /// Summaries of the segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner
            .segments
            .read()
            .iter()
            .map(|s| SegmentInfo {
                base_offset: s.base,
                first_offset: s.first_offset(),
                next_offset: s.next_offset(),
                records: s.record_count(),
                bytes: s.size(),
                sealed: s.is_sealed(),
            })
            .collect()
    }

    /// Closes the log: syncs all data, writes the active index, the high watermark and the
    /// leader-epoch cache, and marks the shutdown clean so the next open skips the full scan.
    /// Readers then fail with [`Error::Closed`]. Calling it again does nothing. Dropping the last
    /// handle (and reader) of an open log closes it too, ignoring errors.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Failed`]; the log is closed all the same, and the next open
    /// recovers as after a crash.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.check_healthy()?;
        if self.readonly.load(Ordering::Acquire) {
            return Err(Error::Readonly);
        }
        Ok(())
    }

    /// Open and not failed (the read-only flag aside).
    fn check_healthy(&self) -> Result<()> {
        self.check_open()?;
        if let Some(why) = self.failed.lock().clone() {
            return Err(Error::Failed(why));
        }
        Ok(())
    }

    pub(crate) fn active(&self) -> Arc<Segment> {
        self.segments
            .read()
            .last()
            .expect("a log always has a segment")
            .clone()
    }

    pub(crate) fn oldest_offset(&self) -> i64 {
        self.segments
            .read()
            .iter()
            .find_map(|s| s.first_offset())
            .unwrap_or(-1)
    }

    /// Fails the log for good (writes are refused until it is reopened), keeping the first
    /// reason given.
    fn fail(&self, why: impl FnOnce() -> String) {
        self.failed.lock().get_or_insert_with(why);
    }

    /// The lowest offset the log was truncated to after generation `seen`.
    pub(crate) fn truncated_since(&self, seen: u64) -> Option<i64> {
        let guard = self.truncation_history.lock();
        let (history, forgotten) = &*guard;
        let older_than_history = history.front().is_some_and(|(g, _)| *g > seen + 1);
        // Older than every remembered cut: some forgotten cut may concern `seen`, and only the
        // lowest of them is known (a bound: never above the cut that concerned it).
        let forgotten = forgotten.filter(|_| older_than_history);
        history
            .iter()
            .filter(|(g, _)| *g > seen || older_than_history)
            .map(|(_, o)| *o)
            .chain(forgotten)
            .min()
    }

    /// The segment to read `offset` from, and the position in it to scan from.
    pub(crate) fn locate(&self, offset: i64) -> Result<(Arc<Segment>, u64)> {
        let seg = {
            let segs = self.segments.read();
            let i = segs.partition_point(|s| s.base <= offset);
            segs[i.saturating_sub(1)].clone()
        };
        let pos = seg.index().position_for_offset(seg.base, offset);
        Ok((seg, pos))
    }

    /// The segment after `seg` in the current list (by base offset), if any.
    pub(crate) fn successor(&self, seg: &Segment) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .iter()
            .find(|s| s.base > seg.base)
            .cloned()
    }

    fn aged(&self, seg: &Segment) -> bool {
        let first = seg.first_write();
        match self.opts.segment_max_age {
            Some(age) if first != i64::MIN => {
                self.opts.clock.now_nanos().saturating_sub(first)
                    >= age.as_nanos().min(i64::MAX as u128) as i64
            }
            _ => false,
        }
    }

    fn roll_locked(&self) -> Result<()> {
        self.roll_locked_at(self.end.load(Ordering::Relaxed))
    }

    /// Rolls to a new segment based at `next` (≥ the end): a follower's batch that starts far
    /// past the end gets a segment at its own first offset, so offsets relative to the base
    /// never wrap.
    fn roll_locked_at(&self, next: i64) -> Result<()> {
        let active = self.active();
        if active.size() == 0 {
            return Ok(());
        }
        // The index first: a failed roll must not leave an empty segment file behind the
        // active one, which a reopening would take for the end of the log.
        active.write_index(self.opts.sync != SyncPolicy::Os)?;
        let fresh = Arc::new(Segment::create(&self.dir, next)?);
        self.segments.write().push(fresh);
        active.set_sealed(true);
        if self.opts.sync != SyncPolicy::Os {
            sync_dir(&self.dir)?;
        } else {
            self.dir_unsynced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Writes checked records at the end of the log, rolling first if needed: the `total` bytes
    /// of `parts`, whole records described by `metas`. Caller holds the writer lock. Returns
    /// where they went, and the truncation generation they were written in.
    fn write_locked(
        &self,
        parts: &mut [IoSlice<'_>],
        total: u64,
        metas: &[RecordMeta],
    ) -> Result<(AppendInfo, u64)> {
        if total > MAX_SEGMENT_BYTES {
            return Err(Error::InvalidBatch(format!(
                "a batch of {total} bytes exceeds the largest segment ({MAX_SEGMENT_BYTES} bytes)"
            )));
        }
        let first = metas.first().expect("non-empty").offset;
        let last = metas.last().expect("non-empty").offset;
        let active = self.active();
        let size = active.size();
        let full = size + total > self.opts.segment_max_bytes;
        let span = last - active.base > u32::MAX as i64;
        if size > 0 && (full || span || self.aged(&active)) {
            self.roll_locked_at(first)?;
        } else if size == 0 && (span || active.base > first) {
            // An empty active segment whose base is far behind a leader's offsets, or above
            // these (a far batch rolled to it, then failed to write): restart it.
            // The new segment first, so the log is never without one.
            let mut segs = self.segments.write();
            let fresh = Arc::new(Segment::create(&self.dir, first)?);
            if let Err(e) = active.delete_files() {
                // The old file may be gone while it is still the list's active segment.
                let _ = fresh.delete_files();
                self.fail(|| format!("restarting the active segment failed: {e}"));
                return Err(e);
            }
            *segs.last_mut().expect("a log always has a segment") = fresh;
            self.dir_unsynced.store(true, Ordering::Release);
        }
        {
            let mut epochs = self.epochs.lock();
            let mut changed = false;
            for m in metas {
                if epochs.last().is_none_or(|e| m.leader_epoch > e.epoch) {
                    changed |= epochs.push_if_newer(m.leader_epoch, m.offset);
                }
            }
            if changed {
                epochs.save()?;
            }
        }
        let active = self.active();
        let written = active.append(
            parts,
            total,
            metas,
            self.opts.index_interval_bytes,
            self.opts.clock.now_nanos(),
        );
        if let Err(Error::Failed(why)) = &written {
            self.fail(|| why.clone());
        }
        written?;
        {
            // The segment is registered for the next sync, and the end moved, together under
            // the sync lock, after the write: a sync round reads its goal and takes the list
            // of segments under that lock too, so every record its goal counts was written
            // before the list was taken, to a segment on it. (Registered before the write, a
            // concurrent round could take the segment, sync it before the write landed, and
            // the next round find nothing to sync yet count the record durable.)
            let mut st = self.sync.lock();
            if !st
                .dirty
                .last()
                .is_some_and(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(&active)))
            {
                // Once per segment: drop the entries of segments closed meanwhile.
                st.dirty.retain(|s| s.strong_count() > 0);
                st.dirty.push(Arc::downgrade(&active));
            }
            self.end.store(last + 1, Ordering::Release);
        }
        let generation = self.truncations.load(Ordering::Acquire);
        if self.opts.sync != SyncPolicy::Always {
            // Under `Always` the sync that covers the records publishes them.
            self.next_offset.store(last + 1, Ordering::Release);
            self.notify.notify();
        }
        Ok((
            AppendInfo {
                first_offset: first,
                last_offset: last,
            },
            generation,
        ))
    }

    /// Syncs as the policy asks after an append of `count` records, written in truncation
    /// generation `generation`.
    fn after_append(&self, (info, generation): (AppendInfo, u64), count: u64) -> Result<()> {
        match self.opts.sync {
            SyncPolicy::Always => self.sync_to(info.last_offset + 1, generation, true),
            SyncPolicy::EveryMessages(n) => {
                let due = {
                    let mut st = self.sync.lock();
                    st.unsynced += count;
                    st.unsynced >= n
                };
                if due {
                    self.sync_to(info.last_offset + 1, generation, true)
                } else {
                    Ok(())
                }
            }
            SyncPolicy::Os | SyncPolicy::Interval(_) => Ok(()),
        }
    }

    /// Syncs everything written so far (what a truncation meanwhile removes excepted).
    fn sync_written(&self) -> Result<()> {
        let (target, generation) = {
            // Read together: a truncation moves both under this lock.
            let _st = self.sync.lock();
            (
                self.end.load(Ordering::Acquire),
                self.truncations.load(Ordering::Acquire),
            )
        };
        self.sync_to(target, generation, false)
    }

    /// Group commit: returns once every offset below `target` is durable. One caller at a time
    /// syncs everything written so far; the others wait for it and usually find their data
    /// covered.
    ///
    /// `generation` is the truncation generation `target` was read in. When a truncation has
    /// cut below `target` since, the caller's own records (`own`: an append's) are not
    /// acknowledged: [`Error::Truncated`], whatever was appended at their offsets afterwards.
    /// Otherwise the target comes down to the cut. (A truncation records its cut only after its
    /// generation, but holds the writer lock until then: no append refills the offsets, and no
    /// round can count them durable, before the cut is seen here.)
    fn sync_to(&self, mut target: i64, mut generation: u64, own: bool) -> Result<()> {
        let mut st = self.sync.lock();
        loop {
            let now = self.truncations.load(Ordering::Acquire);
            if now != generation
                && let Some(cut) = self.truncated_since(generation)
            {
                if cut < target {
                    if own {
                        return Err(Error::Truncated { offset: cut });
                    }
                    target = cut;
                }
                generation = now;
            }
            if st.durable >= target {
                return Ok(());
            }
            if let Some(why) = self.failed.lock().clone() {
                return Err(Error::Failed(why));
            }
            if st.closing {
                // The close syncs everything; its outcome is this caller's.
                if st.close_done {
                    return Err(Error::Closed);
                }
                self.sync_cv.wait(st.raw());
                continue;
            }
            if st.syncing {
                self.sync_cv.wait(st.raw());
                continue;
            }
            st.syncing = true;
            // The goal and the list are read under the lock that appends register under, with
            // their new end, after writing: every record the goal counts was written, before
            // the list was taken, to a segment on it.
            let goal = self.end.load(Ordering::Acquire);
            let round_generation = self.truncations.load(Ordering::Acquire);
            let files: Vec<Arc<Segment>> = std::mem::take(&mut st.dirty)
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            st.unsynced = 0;
            // Set before the write of any record the goal counts, so seen here.
            let dir_too = self.dir_unsynced.swap(false, Ordering::AcqRel);
            let started = std::time::Instant::now();
            let res = MutexGuard::unlocked(st.raw(), || {
                if dir_too {
                    sync_dir(&self.dir)?;
                }
                files.iter().try_for_each(|s| s.sync_data())
            });
            if res.is_err() && dir_too {
                self.dir_unsynced.store(true, Ordering::Release);
            }
            let took = started.elapsed();
            st.syncing = false;
            self.sync_cv.notify_all();
            match res {
                Ok(()) if st.closing => {
                    // The close's syncs may have overlapped this one: wait for their outcome.
                }
                Ok(()) if self.truncations.load(Ordering::Acquire) != round_generation => {
                    // Cut meanwhile: what the goal counted may be gone or rewritten. Go round
                    // again (the cut itself was synced).
                }
                Ok(()) => {
                    if let Some(o) = self.opts.on_sync.as_ref().filter(|_| !files.is_empty()) {
                        o.synced(took, (goal - st.durable).max(0) as u64);
                    }
                    st.durable = st.durable.max(goal);
                    st.rounds += usize::from(!files.is_empty()) as u64;
                    if self.next_offset.fetch_max(goal, Ordering::AcqRel) < goal {
                        self.notify.notify();
                    }
                }
                Err(e) => {
                    *self.failed.lock() = Some(e.to_string());
                    return Err(e);
                }
            }
        }
    }

    fn close(&self) -> Result<()> {
        {
            let (stop, cv) = &*self.flusher_stop;
            *stop.lock() = true;
            cv.notify_all();
        }
        let _m = self.maintenance.lock();
        let _w = self.writer.lock();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = (|| {
            let segs = self.segments.read().clone();
            // Appends still waiting for a sync round get the outcome of the close's syncs (see
            // `SyncState::closing`): durable if they all succeed, failed otherwise. The list of
            // segments waiting for a round is left alone, so no round can run without them.
            self.sync.lock().closing = true;
            if self.failed.lock().is_some() {
                return Err(Error::Failed(
                    "an earlier sync failed; not marking the shutdown clean".into(),
                ));
            }
            let synced = segs.iter().try_for_each(|s| s.sync_data());
            {
                let mut st = self.sync.lock();
                match &synced {
                    Ok(()) => {
                        // The writer lock is held: `end` is every record written.
                        let end = self.end.load(Ordering::Acquire);
                        st.durable = st.durable.max(end);
                        self.next_offset.fetch_max(end, Ordering::AcqRel);
                    }
                    Err(e) => {
                        self.fail(|| e.to_string());
                    }
                }
            }
            synced?;
            if let Some(active) = segs.last() {
                active.write_index(true)?;
            }
            {
                let _c = self.hw_checkpoint.lock();
                checkpoint::write_hw(&self.dir, self.hw.load(Ordering::Acquire))?;
            }
            self.epochs.lock().save()?;
            segment::write_file(&self.dir.join(CLEAN_FILE), b"", true)?;
            sync_dir(&self.dir)
        })();
        {
            let mut st = self.sync.lock();
            st.close_done = true;
            self.sync_cv.notify_all();
        }
        self.notify.notify();
        self.lock.lock().take();
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.close();
        }
    }
}

/// Creates `dir` and any missing parents, each made durable in its parent (the log's own folder
/// is synced at the end of the open).
fn create_dir_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    for created in missing.iter().rev() {
        match created.parent() {
            Some(p) if p.as_os_str().is_empty() => sync_dir(Path::new("."))?,
            Some(p) => sync_dir(p)?,
            None => {}
        }
    }
    Ok(())
}

/// Lists segment base offsets (sorted) and leftover files to delete.
fn list_dir(dir: &Path) -> Result<(Vec<i64>, Vec<PathBuf>)> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let base_of = |stem: &str| {
            (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
                .then(|| stem.parse::<i64>().ok())
                .flatten()
        };
        if let Some(stem) = name.strip_suffix(".log") {
            if let Some(b) = base_of(stem) {
                logs.push(b);
            }
        } else if let Some(stem) = name.strip_suffix(".index") {
            if let Some(b) = base_of(stem) {
                indexes.push((b, entry.path()));
            }
        } else if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            leftovers.push(entry.path());
        }
    }
    logs.sort_unstable();
    for (b, path) in indexes {
        if logs.binary_search(&b).is_err() {
            leftovers.push(path);
        }
    }
    Ok((logs, leftovers))
}

/// Rebuilds the leader-epoch cache from the records' epochs. A damaged record in a sealed
/// segment (one the open did not scan) ends that segment's part: the epochs of the intact records
/// before it and of the later segments are kept, and the damage is reported in `repaired`.
fn rebuild_epochs(
    dir: &Path,
    segments: &[Arc<Segment>],
    report: &mut RecoveryReport,
) -> Result<EpochCache> {
    let mut cache = EpochCache::new(dir);
    for seg in segments {
        let scanned = seg.for_each(0, seg.size(), |_, m, _| {
            if cache.last().is_none_or(|e| m.leader_epoch > e.epoch) {
                cache.push_if_newer(m.leader_epoch, m.offset);
            }
            ControlFlow::Continue(())
        });
        match scanned {
            Ok(_) => {}
            Err(e @ Error::Corrupt { .. }) => {
                let reason = format!(
                    "damaged record, left in place and reported to readers; the leader-epoch \
                     cache was rebuilt without the records from it to the segment's end: {e}"
                );
                match report
                    .repaired
                    .iter_mut()
                    .find(|r| r.base_offset == seg.base)
                {
                    Some(r) => r.reason = Some(reason),
                    None => report.repaired.push(SegmentRecovery {
                        base_offset: seg.base,
                        reason: Some(reason),
                        ..SegmentRecovery::default()
                    }),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cache)
}

fn spawn_flusher(log: Weak<Inner>, stop: Arc<(Mutex<bool>, Condvar)>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("commitlog-flush".into())
        .spawn(move || {
            loop {
                {
                    let (lock, cv) = &*stop;
                    let mut stopped = lock.lock();
                    if !*stopped {
                        cv.wait_for(&mut stopped, every);
                    }
                    if *stopped {
                        return;
                    }
                }
                let Some(inner) = log.upgrade() else { return };
                if inner.closed.load(Ordering::Acquire) {
                    return;
                }
                // A failure is recorded in `failed` and surfaces on the next append.
                let _ = inner.sync_written();
            }
        });
    // Without the thread the log still works; data then reaches disk when the OS decides.
    drop(spawned);
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    thread_local! {
        /// Run once by `set_high_watermark` between reading the log end and raising the mark.
        static BETWEEN_CLAMP_AND_RAISE: RefCell<Option<Box<dyn FnOnce()>>> =
            const { RefCell::new(None) };
    }

    pub(super) fn between_clamp_and_raise() {
        if let Some(f) = BETWEEN_CLAMP_AND_RAISE.with(|h| h.borrow_mut().take()) {
            f();
        }
    }

    /// Told when a truncation of the folder is about to wait for the sync lock.
    static TRUNCATION_AT_SYNC_LOCK: Mutex<Option<(PathBuf, std::sync::mpsc::Sender<()>)>> =
        Mutex::new(None);

    pub(super) fn truncate_takes_the_sync_lock(dir: &Path, held: bool) {
        if !held {
            return;
        }
        if let Some((_, tx)) = TRUNCATION_AT_SYNC_LOCK
            .lock()
            .as_ref()
            .filter(|(d, _)| d == dir)
        {
            let _ = tx.send(());
        }
    }

    /// A high watermark raised while a truncation cuts the log below it ends within the log: it
    /// once stayed where the raise put it, above the new end, so records appended again at those
    /// offsets counted as committed at once.
    #[test]
    fn a_high_watermark_raised_across_a_truncation_stays_within_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
        log.append(&batch).unwrap();
        // Between its clamp and its raise, the truncation runs on another thread, until it
        // is done or waits for the lock the raise holds.
        let (tx, rx) = std::sync::mpsc::channel();
        *TRUNCATION_AT_SYNC_LOCK.lock() = Some((dir.path().to_path_buf(), tx.clone()));
        let other = log.clone();
        let truncation = Arc::new(Mutex::new(None));
        let handle = truncation.clone();
        BETWEEN_CLAMP_AND_RAISE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                *handle.lock() = Some(std::thread::spawn(move || {
                    other.truncate(5).unwrap();
                    let _ = tx.send(());
                }));
                rx.recv_timeout(Duration::from_secs(60))
                    .expect("the truncation ran or waits");
            }));
        });
        let now = log.set_high_watermark(9).unwrap();
        let truncation = truncation.lock().take().expect("the hook ran");
        truncation.join().unwrap();
        assert_eq!(log.newest_offset(), 4);
        assert_eq!(log.high_watermark(), 4, "above the log end");
        assert!(now == 4 || now == 9, "{now}");
        log.append(&[Message::new("again")]).unwrap();
        assert_eq!(
            log.high_watermark(),
            4,
            "a record appended again is not committed"
        );
    }
}
