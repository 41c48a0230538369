//! Forward and reverse readers.
//!
//! A reader reads through positional reads and never blocks the writer. It holds the segment it
//! is in, so a segment deleted by retention or replaced by compaction stays readable until the
//! reader moves on: the reader finishes the version it started, which is consistent either way.
//! After a truncation a reader looks its position up again by offset.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, Check, Record, RecordMeta};
use crate::log::Inner;
use crate::segment::Segment;
use crate::sync::atomic::Ordering;

/// Bytes a reader fetches from a segment at a time (at least one whole record).
const READ_CHUNK: usize = 64 * 1024;

/// Which messages a reader may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Only messages at or below the high watermark: what consumers see.
    Committed,
    /// Everything up to the log end offset: what replication ships.
    Uncommitted,
}

/// Records read from one segment in one go.
pub(crate) struct Chunk {
    /// The bytes read; `metas` index into it.
    pub data: Bytes,
    /// Start within `data`, and facts, of each record in range.
    pub metas: Vec<(usize, RecordMeta)>,
    /// Position after the last record consumed (skipped or returned).
    pub next_pos: u64,
    /// A record beyond `limit` was reached.
    pub hit_limit: bool,
    /// Damage found at `next_pos`: the records before it are in `metas`, nothing after it.
    pub damage: Option<Error>,
}

impl Chunk {
    /// The records for a forward read: those in range if there are any (the damage, if any, is
    /// found again by the next read, which starts at it), otherwise the damage as an error
    /// naming `offset`, the first offset the read could not deliver.
    pub(crate) fn forward(self, offset: i64) -> Result<Chunk> {
        match self.damage {
            Some(e) if self.metas.is_empty() => Err(e.at_offset(offset)),
            _ => Ok(self),
        }
    }
}

/// Reads records at `pos..end` of `seg` with offsets in `from..=limit`: about `max_bytes`, at least
/// one whole record when there is one. A damaged record ends the chunk: the intact records before
/// it are returned, with the damage in [`Chunk::damage`].
pub(crate) fn read_chunk(
    seg: &Segment,
    pos: u64,
    end: u64,
    from: i64,
    limit: i64,
    max_bytes: usize,
) -> Result<Chunk> {
    let want = ((end - pos) as usize).min(max_bytes.max(1));
    let mut data = seg.read(pos, want)?;
    let mut chunk = Chunk {
        data: Bytes::new(),
        metas: Vec::new(),
        next_pos: pos,
        hit_limit: false,
        damage: None,
    };
    let mut at = 0usize;
    loop {
        if at == data.len() {
            break;
        }
        match format::check(&data[at..]) {
            Check::Valid(meta) => {
                if meta.offset > limit {
                    chunk.hit_limit = true;
                    break;
                }
                if meta.offset >= from {
                    chunk.metas.push((at, meta));
                }
                at += meta.len;
            }
            Check::Incomplete { needed } => {
                if pos + (at + needed) as u64 > end {
                    let why = "record runs past the segment's end";
                    chunk.damage = Some(seg.corrupt(pos + at as u64, why));
                    break;
                }
                if at > 0 {
                    break; // the rest comes with the next call
                }
                data = seg.read(pos, needed)?;
            }
            Check::Invalid(why) => {
                chunk.damage = Some(seg.corrupt(pos + at as u64, why));
                break;
            }
        }
    }
    chunk.next_pos = pos + at as u64;
    chunk.data = data;
    Ok(chunk)
}

/// Reads the log forward from an offset.
///
/// Non-blocking with [`try_next`](Reader::try_next), blocking with
/// [`next_timeout`](Reader::next_timeout) and [`next_blocking`](Reader::next_blocking), and
/// usable from async code through [`poll_next`](Reader::poll_next), which takes a standard
/// `Context` and so needs no particular runtime.
pub struct Reader {
    log: Arc<Inner>,
    isolation: Isolation,
    next: i64,
    segment: Option<Arc<Segment>>,
    pos: u64,
    truncations: u64,
    buffered: VecDeque<Record>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("next_offset", &self.next)
            .field("isolation", &self.isolation)
            .finish()
    }
}

impl Reader {
    pub(crate) fn new(log: Arc<Inner>, start: i64, isolation: Isolation) -> Self {
        let truncations = log.truncations.load(Ordering::Acquire);
        Reader {
            log,
            isolation,
            next: start.max(0),
            segment: None,
            pos: 0,
            truncations,
            buffered: VecDeque::new(),
        }
    }

    /// The offset the reader looks for next (records below it were returned or skipped).
    pub fn next_offset(&self) -> i64 {
        self.buffered.front().map_or(self.next, |r| r.offset)
    }

    /// The next record if one is available now.
    ///
    /// # Errors
    /// [`Error::Closed`] once the log is closed, [`Error::EndOfReadonly`] when a committed reader
    /// has read everything of a read-only log, [`Error::Corrupt`] on damaged data (the reader
    /// stays before it), [`Error::Io`].
    pub fn try_next(&mut self) -> Result<Option<Record>> {
        if self.log.truncations.load(Ordering::Acquire) != self.truncations {
            // Buffered records may be gone; read them again from the log as it is now.
            if let Some(first) = self.buffered.front() {
                self.next = first.offset;
            }
            self.buffered.clear();
            self.resync();
        }
        if let Some(r) = self.buffered.pop_front() {
            return Ok(Some(r));
        }
        if self.fill()? {
            return Ok(self.buffered.pop_front());
        }
        if self.isolation == Isolation::Committed && self.log.readonly.load(Ordering::Acquire) {
            let hw = self.log.hw.load(Ordering::Acquire);
            let newest = self.log.next_offset.load(Ordering::Acquire) - 1;
            if hw >= newest && self.next > hw {
                return Err(Error::EndOfReadonly);
            }
        }
        Ok(None)
    }

    /// Waits up to `timeout` for the next record; `Ok(None)` on timeout.
    ///
    /// # Errors
    /// As [`try_next`](Reader::try_next).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>> {
        self.wait(Some(Instant::now() + timeout))
    }

    /// Waits as long as it takes for the next record, or for the log to close.
    ///
    /// # Errors
    /// As [`try_next`](Reader::try_next).
    pub fn next_blocking(&mut self) -> Result<Record> {
        loop {
            if let Some(r) = self.wait(None)? {
                return Ok(r);
            }
        }
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<Option<Record>> {
        loop {
            let seen = self.log.notify.generation();
            if let Some(r) = self.try_next()? {
                return Ok(Some(r));
            }
            if !self.log.notify.wait(seen, deadline) {
                return self.try_next();
            }
        }
    }

    /// Polls for the next record: `Ready` with a record or an error, or `Pending` after arranging
    /// for `cx`'s waker to be woken when the log changes. Wrap it with `std::future::poll_fn` to
    /// await it.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Record>> {
        match self.try_next() {
            Ok(Some(r)) => return Poll::Ready(Ok(r)),
            Err(e) => return Poll::Ready(Err(e)),
            Ok(None) => {}
        }
        self.log.notify.register(cx.waker());
        match self.try_next() {
            Ok(Some(r)) => Poll::Ready(Ok(r)),
            Err(e) => Poll::Ready(Err(e)),
            Ok(None) => Poll::Pending,
        }
    }

    /// After a truncation: forget the position and continue from the cut if the reader was past it.
    fn resync(&mut self) {
        let truncations = self.log.truncations.load(Ordering::Acquire);
        if truncations != self.truncations {
            if let Some(cut) = self.log.truncated_since(self.truncations) {
                self.next = self.next.min(cut);
            }
            self.truncations = truncations;
            self.segment = None;
        }
    }

    fn limit(&self) -> i64 {
        match self.isolation {
            Isolation::Committed => self.log.hw.load(Ordering::Acquire),
            Isolation::Uncommitted => self.log.next_offset.load(Ordering::Acquire) - 1,
        }
    }

    /// Reads the next chunk into `buffered`. Returns whether anything was buffered.
    fn fill(&mut self) -> Result<bool> {
        self.log.check_open()?;
        let log = self.log.clone();
        let _r = log.reading.read();
        self.resync();
        // Each step either buffers records, moves to a later segment, or skips records below
        // `next` (a large index interval may take many such steps, each further on in the
        // segment). Only the moves are bounded, against a log changing under a very slow reader.
        let mut moves = 0;
        loop {
            let limit = self.limit();
            if self.next > limit {
                return Ok(false);
            }
            let seg = match &self.segment {
                Some(s) => s.clone(),
                None => {
                    let oldest = self.log.oldest_offset();
                    if self.next < oldest {
                        self.next = oldest;
                    }
                    let (s, pos) = self.log.locate(self.next)?;
                    self.segment = Some(s.clone());
                    self.pos = pos;
                    s
                }
            };
            let end = seg.size();
            if self.pos >= end {
                moves += 1;
                if moves > 1024 {
                    return Ok(false);
                }
                match self.log.successor(&seg) {
                    // The size may have grown just before the roll that created the successor.
                    Some(_) if seg.size() > self.pos => continue,
                    Some(next) => {
                        self.segment = Some(next);
                        self.pos = 0;
                        continue;
                    }
                    None => return Ok(false),
                }
            }
            let chunk = read_chunk(&seg, self.pos, end, self.next, limit, READ_CHUNK)?
                .forward(self.next)?;
            self.pos = chunk.next_pos;
            for (at, meta) in &chunk.metas {
                let bytes = chunk.data.slice(*at..*at + meta.len);
                self.buffered.push_back(format::decode(&bytes, meta));
                self.next = meta.offset + 1;
            }
            if !self.buffered.is_empty() {
                return Ok(true);
            }
            if chunk.hit_limit {
                return Ok(false);
            }
        }
    }
}

/// Reads the log backward, newest first, from a starting offset down to the oldest record.
///
/// It never waits: [`next`](ReverseReader::next) returns `Ok(None)` once it has passed the
/// oldest record. After a truncation it drops the records it had read ahead and reads them again
/// from the log as it is now, so it never returns a record the truncation removed.
pub struct ReverseReader {
    log: Arc<Inner>,
    isolation: Isolation,
    /// Records at or below this offset remain to be returned.
    next: i64,
    truncations: u64,
    /// Records of the current interval, oldest first; returned from the back.
    buffered: Vec<Record>,
}

impl std::fmt::Debug for ReverseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseReader")
            .field("next_offset", &self.next)
            .finish()
    }
}

impl ReverseReader {
    pub(crate) fn new(log: Arc<Inner>, start: i64, isolation: Isolation) -> Self {
        let truncations = log.truncations.load(Ordering::Acquire);
        let limit = match isolation {
            Isolation::Committed => log.hw.load(Ordering::Acquire),
            Isolation::Uncommitted => log.next_offset.load(Ordering::Acquire) - 1,
        };
        ReverseReader {
            log,
            isolation,
            next: start.min(limit),
            truncations,
            buffered: Vec::new(),
        }
    }

    /// The next record, going backward; `Ok(None)` past the oldest.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Corrupt`], [`Error::Io`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record>> {
        self.resync();
        for _ in 0..1024 {
            if let Some(r) = self.buffered.pop() {
                return Ok(Some(r));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Buffers the records of the index interval holding `next`, or moves to the previous
    /// segment. Returns `false` once there is nothing left.
    /// After a truncation: buffered records may be gone, so they are read again from the log as
    /// it is now, from the newest of them or the new end, whichever is lower.
    fn resync(&mut self) {
        let truncations = self.log.truncations.load(Ordering::Acquire);
        if truncations != self.truncations {
            self.truncations = truncations;
            if let Some(newest) = self.buffered.last() {
                self.next = newest.offset;
            }
            self.buffered.clear();
            let limit = match self.isolation {
                Isolation::Committed => self.log.hw.load(Ordering::Acquire),
                Isolation::Uncommitted => self.log.next_offset.load(Ordering::Acquire) - 1,
            };
            self.next = self.next.min(limit);
        }
    }

    fn fill(&mut self) -> Result<bool> {
        self.log.check_open()?;
        let log = self.log.clone();
        let _r = log.reading.read();
        self.resync();
        let oldest = self.log.oldest_offset();
        if self.next < 0 || oldest < 0 || self.next < oldest {
            return Ok(false);
        }
        let (seg, _) = self.log.locate(self.next)?;
        let (start, end) = seg.index().interval_for_offset(seg.base, self.next);
        let end = end.min(seg.size());
        let mut first_in_interval = None;
        if end > start {
            let chunk = read_chunk(&seg, start, end, 0, self.next, (end - start) as usize)?;
            if let Some(e) = chunk.damage {
                // Unless the record at `next` itself came before it, records the reader still
                // owes may lie behind the damage, where none can be found.
                if chunk.metas.last().map(|(_, m)| m.offset) != Some(self.next) {
                    return Err(e.at_offset(self.next));
                }
            }
            for (at, meta) in &chunk.metas {
                first_in_interval.get_or_insert(meta.offset);
                let bytes = chunk.data.slice(*at..*at + meta.len);
                self.buffered.push(format::decode(&bytes, meta));
            }
        }
        self.next = match first_in_interval {
            Some(o) => o - 1,
            None => seg.base - 1,
        };
        Ok(true)
    }
}
