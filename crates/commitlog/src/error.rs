//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in this crate.
///
/// Transient conditions (`Readonly`, `EndOfReadonly`, `Closed`) are distinct from damage
/// (`Corrupt`) and from failures of the machine (`Io`, `Failed`), so callers can choose a reaction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed on the named file or folder.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder the call was about.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Stored bytes failed a checksum or a structural check. No data from the damaged region is
    /// ever returned; every intact record before it is (readers stop just before the damage).
    #[error("corrupt data in {path} at byte {position}{}: {reason}", offset_note(*.offset))]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damaged record or structure within the file.
        position: u64,
        /// What check failed.
        reason: String,
        /// For a read: the first offset the damage kept from being read. Every record below
        /// it that was asked for was delivered; the damaged record holds this offset or a later
        /// one (offsets may have gaps). `None` where no read asked for an offset.
        offset: Option<i64>,
    },
    /// A [`LogOptions`](crate::LogOptions) value is out of its valid range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A message or batch handed to an append is not acceptable; nothing was written.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The encoded record exceeds [`LogOptions::max_record_bytes`](crate::LogOptions).
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Size of the encoded record, header included.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The log was set read-only; appends are refused.
    #[error("the log is read-only")]
    Readonly,
    /// A committed reader reached the end of a read-only log: no more messages will ever come.
    #[error("reached the end of a read-only log")]
    EndOfReadonly,
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// A truncation removed records of this append, from `offset` on, before they were synced:
    /// they are not acknowledged. The offsets may hold other appends' records by now.
    #[error(
        "a truncation at offset {offset} removed records of this append before they were synced"
    )]
    Truncated {
        /// Where the log was cut.
        offset: i64,
    },
    /// Another process (or another handle in this process) has the folder open.
    #[error("the log folder {0} is in use by another open log")]
    Locked(PathBuf),
    /// An earlier `fsync` failed, or a failed write could not be undone. The kernel may have
    /// dropped the unsynced pages, so the log refuses further writes; close and reopen it to
    /// recover from what is on disk.
    #[error("the log failed ({0}); close and reopen it")]
    Failed(String),
}

fn offset_note(offset: Option<i64>) -> String {
    offset.map_or_else(String::new, |o| format!(" (reading offset {o})"))
}

impl Error {
    /// Names, on [`Error::Corrupt`], the first offset a read could not deliver.
    pub(crate) fn at_offset(self, at: i64) -> Error {
        match self {
            Error::Corrupt {
                path,
                position,
                reason,
                offset: None,
            } => Error::Corrupt {
                path,
                position,
                reason,
                offset: Some(at),
            },
            other => other,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a closure that wraps an `io::Error` with the path it concerns.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
