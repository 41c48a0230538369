//! Helpers the commit log's integration tests share: a crash image of a log's folder, a raw
//! record at any offset, and an injector that records which paths an operation touched.
// Each test file is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitlog::faults::{Fault, FileOp, Injector};
use commitlog::{Log, LogOptions, Message};
use parking_lot::Mutex;

/// Copies a log's files (not its lock) as a crash would leave them when the OS survives.
pub fn crash_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != ".lock" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The bytes of one record at `offset` (format v2: the checksum covers the offset).
pub fn raw_record_at(offset: i64) -> Vec<u8> {
    let scratch = tempfile::tempdir().unwrap();
    let log = Log::open(scratch.path(), LogOptions::default()).unwrap();
    log.append(&[Message::new("far")]).unwrap();
    let mut bytes = log.read_raw(0, 1 << 20).unwrap().unwrap().data.to_vec();
    bytes[..8].copy_from_slice(&offset.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), &bytes[32..]);
    bytes[28..32].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Records the paths of every `op` (files synced, folders synced, ...); injects no fault.
#[derive(Clone)]
pub struct OpRecorder {
    op: FileOp,
    paths: Arc<Mutex<Vec<PathBuf>>>,
}

impl OpRecorder {
    pub fn new(op: FileOp) -> OpRecorder {
        OpRecorder {
            op,
            paths: Arc::default(),
        }
    }

    /// The paths recorded so far, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.paths.lock().clone()
    }
}

impl Injector for OpRecorder {
    fn before(&self, op: FileOp, path: &Path) -> Option<Fault> {
        if op == self.op {
            self.paths.lock().push(path.to_path_buf());
        }
        None
    }
}
