//! Small files replaced atomically: the high-watermark checkpoint and friends.

use std::path::Path;

use crate::error::{Result, io_at};
use crate::faults::{self, FileOp};
use crate::segment::{sync_dir, write_file};

/// File name of the high-watermark checkpoint (decimal ASCII, as Liftbridge).
pub const HW_FILE: &str = "replication-offset-checkpoint";
/// Present only after a clean close; its absence on open means a crash.
pub const CLEAN_FILE: &str = "clean-shutdown";

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content: write a
/// temporary file, sync it, rename it over, sync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write_file(&tmp, bytes, true)?;
    faults::check(FileOp::Rename, path)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(io_at(path))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Reads the high-watermark checkpoint: `Ok(None)` if missing or not a number.
pub fn read_hw(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(HW_FILE);
    // A number takes at most 20 characters; anything much larger is not a checkpoint.
    match crate::segment::read_bounded(&path, 64) {
        Ok(b) => Ok(b
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|hw| *hw >= -1)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// Writes the high-watermark checkpoint atomically.
pub fn write_hw(dir: &Path, hw: i64) -> Result<()> {
    write_atomic(&dir.join(HW_FILE), hw.to_string().as_bytes())
}
