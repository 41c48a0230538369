//! `commitlog`: a crash-safe, segmented, append-only log, the storage engine of liftbridge-rs.
//!
//! A [`Log`] lives in one folder. Messages are appended in batches and get consecutive offsets;
//! the log is split into segment files named by their first offset, each with a sparse offset and
//! time index. Readers read forward ([`Reader`]) or backward ([`ReverseReader`]), either only
//! committed messages (up to the high watermark) or everything (up to the log end offset).
//!
//! What it guarantees:
//! - **Integrity**: every record carries a CRC-32C; damaged data is reported as
//!   [`Error::Corrupt`], never returned and never a panic. Readers deliver every intact record
//!   before the damage first, and the error names the first offset they could not read.
//! - **Recovery**: opening a log cuts torn or invalid tails and rebuilds damaged indexes; every
//!   record written completely before a crash survives ([`Log::recovery`] tells what was done).
//!   Valid records found in the wrong segment are kept aside in a `.quarantined` file, never
//!   deleted.
//! - **Durability** as chosen by [`SyncPolicy`], with group commit for [`SyncPolicy::Always`].
//! - **Replication support**: high-watermark checkpoint, leader-epoch cache, truncation, and
//!   byte-exact copying of records between logs ([`Log::read_raw`], [`Log::append_raw`]).
//! - **Retention** by bytes, messages and age, and **compaction** by key, both crash-safe and
//!   invisible to concurrent readers except for the records they remove.
//!
//! This crate is synchronous and knows nothing of networks or async runtimes; readers expose
//! [`Reader::poll_next`] so async code can wait on them without a particular runtime. It targets
//! Unix (positional I/O; open files stay readable after being unlinked).
//!
//! **Concurrency.** Internally a log takes its locks in one order, outermost first: maintenance
//! (truncation, retention, compaction) → writer (appends, rolls) → reading (readers, shared;
//! truncation, exclusive) → the segment list → the high-watermark checkpoint → the sync state →
//! the leader epochs, truncation history and failure. No thread takes a lock it already holds,
//! not even a shared one: the locks are fair, so a second read would wait for a writer queued
//! behind the first. Debug builds check this order at every acquisition and panic on a breach.
//!
//! The on-disk format is documented byte by byte in `docs/format.md`.
//!
//! ```
//! use commitlog::{Isolation, Log, LogOptions, Message, SyncPolicy};
//! let dir = tempfile::tempdir()?;
//! let opts = LogOptions { sync: SyncPolicy::Always, ..LogOptions::default() };
//! let log = Log::open(dir.path(), opts)?;
//! log.append(&[Message::new("a").with_key("k"), Message::new("b")])?;
//! log.set_high_watermark(log.newest_offset())?;
//! let mut newest_first = log.reverse_reader(i64::MAX, Isolation::Committed);
//! assert_eq!(&newest_first.next()?.unwrap().value[..], b"b");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How the guarantees are checked
//! Besides a test per behaviour, two checks cover whole classes of schedules:
//! - `tests/state_machine.rs`, a property test: random sequences of every operation (appends,
//!   follower appends with gaps, truncation, high watermark and its checkpoint, roll, retention,
//!   compaction, clean reopening, crash) with a fault injected into any file operation through
//!   [`faults`], against a model that knows what was acknowledged. After every step every
//!   acknowledged record is there, readers in both directions, `read_raw` and `read_at` agree,
//!   and the high watermark is the model's. `PROPTEST_CASES` sets the number of cases.
//! - `tests/shuttle.rs`, model checking with the `shuttle` crate, built with this crate's
//!   `shuttle` feature, which puts the log on shuttle's locks and atomics (the crate's `sync`
//!   module; normal builds use parking_lot's and std's). Small groups of threads (appends under
//!   [`SyncPolicy::Always`] and sync rounds, close, truncation, the high watermark, readers in
//!   both directions, roll, retention, compaction) run through hundreds of interleavings; none
//!   may deadlock or acknowledge an append that a sync did not cover or that cannot be read at
//!   its offset. `SHUTTLE_ITERATIONS` sets the interleavings tried. Under the feature the
//!   debug-build lock-order check is off (shuttle's tasks share one OS thread) and a timed wait
//!   never times out; the feature is for those tests only.

mod checkpoint;
mod epoch;
mod error;
pub mod faults;
mod format;
pub mod fuzzing;
mod index;
mod lock;
mod log;
mod notify;
mod options;
mod reader;
mod segment;
mod sync;

pub use checkpoint::{CLEAN_FILE, HW_FILE};
pub use epoch::{EPOCH_FILE, EpochEntry};
pub use error::{Error, Result};
pub use format::{MAGIC_V1, MAGIC_V2, Message, RECORD_HEADER_LEN, Record};
pub use log::{
    AppendInfo, CompactionReport, Log, RawBatch, RecoveryReport, RetentionReport, SegmentInfo,
};
pub use options::{
    Clock, DEFAULT_INDEX_INTERVAL, LogOptions, ManualClock, Retention, SyncObserver, SyncPolicy,
    SystemClock,
};
pub use reader::{Isolation, Reader, ReverseReader};
pub use segment::SegmentRecovery;
