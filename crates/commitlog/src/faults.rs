//! Disk-fault injection: a seam over every file operation that changes a log's files.
//!
//! Each such operation (creating a file, writing, syncing, renaming, cutting, removing) first
//! asks the [`Injector`]s registered with [`inject`] for a folder that holds the file. One that
//! answers with a [`Fault`] makes the operation fail with that error, as the disk would: a failed
//! write may also leave part of its bytes behind (`torn`). With nothing registered the check is
//! one atomic load.
//!
//! Injections are scoped by path, so tests running in parallel in one process, each in its own
//! folder, do not see each other's faults. [`Plan`] is a ready-made injector.
//!
//! ```
//! use commitlog::faults::{self, FileOp, Plan, Rule};
//! use commitlog::{Log, LogOptions, Message, SyncPolicy};
//! let dir = tempfile::tempdir()?;
//! let log = Log::open(dir.path(), LogOptions { sync: SyncPolicy::Always, ..Default::default() })?;
//! let plan = Plan::new().with(Rule::new(FileOp::Sync).on(".log").errno(faults::EIO));
//! let _active = faults::inject(dir.path(), plan.clone());
//! assert!(log.append(&[Message::new("lost")]).is_err());
//! assert_eq!(log.next_offset(), 0); // nothing readable that is not on disk
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

/// `EIO`: the device failed.
pub const EIO: i32 = 5;
/// `ENOSPC`: no space left on the device.
pub const ENOSPC: i32 = 28;

/// A file operation that changes what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileOp {
    /// Creating (or replacing) a file.
    Create,
    /// Writing bytes to a file.
    Write,
    /// `fsync`/`fdatasync` of a file.
    Sync,
    /// `fsync` of a folder, which makes creations, renames and removals in it durable.
    SyncDir,
    /// Renaming a file over another.
    Rename,
    /// Cutting a file to a length.
    SetLen,
    /// Removing a file.
    Remove,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The operating-system error number the operation fails with.
    pub errno: i32,
    /// For [`FileOp::Write`]: about half of the bytes are written before the error.
    pub torn: bool,
}

/// Decides, before each file operation under the folder it was registered for, whether that
/// operation fails.
pub trait Injector: Send + Sync {
    /// `Some` makes `op` on `path` fail with the fault instead of running.
    fn before(&self, op: FileOp, path: &Path) -> Option<Fault>;
}

struct Entry {
    id: u64,
    under: PathBuf,
    injector: Arc<dyn Injector>,
}

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static REGISTRY: RwLock<Vec<Entry>> = RwLock::new(Vec::new());

/// Registers `injector` for every file under `under` until the returned guard is dropped.
pub fn inject(under: impl Into<PathBuf>, injector: impl Injector + 'static) -> Injection {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    REGISTRY.write().push(Entry {
        id,
        under: under.into(),
        injector: Arc::new(injector),
    });
    ACTIVE.fetch_add(1, Ordering::Release);
    Injection { id }
}

/// Keeps an injection in force; dropping it removes the injection.
#[must_use = "the injection ends when this is dropped"]
#[derive(Debug)]
pub struct Injection {
    id: u64,
}

impl Drop for Injection {
    fn drop(&mut self) {
        REGISTRY.write().retain(|e| e.id != self.id);
        ACTIVE.fetch_sub(1, Ordering::Release);
    }
}

/// The fault to inject for `op` on `path`, if any.
pub(crate) fn fault(op: FileOp, path: &Path) -> Option<Fault> {
    if ACTIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    REGISTRY
        .read()
        .iter()
        .filter(|e| path.starts_with(&e.under))
        .find_map(|e| e.injector.before(op, path))
}

/// Fails with the injected error for `op` on `path`, if one is due.
pub(crate) fn check(op: FileOp, path: &Path) -> io::Result<()> {
    match fault(op, path) {
        Some(f) => Err(io::Error::from_raw_os_error(f.errno)),
        None => Ok(()),
    }
}

/// One kind of fault in a [`Plan`]: which operations it hits, from when, how often, and how.
#[derive(Debug, Clone)]
pub struct Rule {
    op: FileOp,
    name_suffix: Option<String>,
    skip: u64,
    times: Option<u64>,
    fault: Fault,
}

impl Rule {
    /// Fails every `op` (with `EIO`, whole), from the first on.
    pub fn new(op: FileOp) -> Rule {
        Rule {
            op,
            name_suffix: None,
            skip: 0,
            times: None,
            fault: Fault {
                errno: EIO,
                torn: false,
            },
        }
    }

    /// Only on files whose name ends with `suffix` (for example `".log"`).
    pub fn on(mut self, suffix: &str) -> Rule {
        self.name_suffix = Some(suffix.to_owned());
        self
    }

    /// Lets the first `n` matching operations through.
    pub fn after(mut self, n: u64) -> Rule {
        self.skip = n;
        self
    }

    /// Fails only `n` operations, then lets the rest through.
    pub fn times(mut self, n: u64) -> Rule {
        self.times = Some(n);
        self
    }

    /// Fails with this error number (default [`EIO`]).
    pub fn errno(mut self, errno: i32) -> Rule {
        self.fault.errno = errno;
        self
    }

    /// A failed write leaves about half of its bytes behind.
    pub fn torn(mut self) -> Rule {
        self.fault.torn = true;
        self
    }

    fn matches(&self, op: FileOp, path: &Path) -> bool {
        op == self.op
            && self.name_suffix.as_deref().is_none_or(|s| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(s))
            })
    }
}

#[derive(Default)]
struct PlanState {
    rules: Vec<(Rule, u64)>,
    injected: u64,
}

/// An [`Injector`] that follows [`Rule`]s, the first matching one deciding. Clones share state,
/// so a test keeps a clone to [`clear`](Plan::clear) the faults (space freed) or to count them.
#[derive(Clone, Default)]
pub struct Plan {
    state: Arc<Mutex<PlanState>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Plan")
            .field("rules", &st.rules)
            .field("injected", &st.injected)
            .finish()
    }
}

impl Plan {
    /// A plan that injects nothing.
    pub fn new() -> Plan {
        Plan::default()
    }

    /// Adds a rule.
    pub fn with(self, rule: Rule) -> Plan {
        self.state.lock().rules.push((rule, 0));
        self
    }

    /// Removes every rule: from now on nothing fails.
    pub fn clear(&self) {
        self.state.lock().rules.clear();
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().injected
    }
}

impl Injector for Plan {
    fn before(&self, op: FileOp, path: &Path) -> Option<Fault> {
        let mut st = self.state.lock();
        let (rule, seen) = st.rules.iter_mut().find(|(r, _)| r.matches(op, path))?;
        *seen += 1;
        let nth = *seen;
        let due = nth > rule.skip && rule.times.is_none_or(|t| nth <= rule.skip + t);
        let fault = rule.fault;
        if due {
            st.injected += 1;
            Some(fault)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_operation_name_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new().with(Rule::new(FileOp::Sync).on(".log").after(1).times(2));
        let _g = inject(dir.path(), plan.clone());
        let log = dir.path().join("0.log");
        let other = dir.path().join("0.index");
        let elsewhere = Path::new("/elsewhere/0.log");
        assert!(check(FileOp::Sync, &log).is_ok(), "the first passes");
        assert!(check(FileOp::Write, &log).is_ok(), "another operation");
        assert!(check(FileOp::Sync, &other).is_ok(), "another file");
        assert!(check(FileOp::Sync, elsewhere).is_ok(), "another folder");
        let e = check(FileOp::Sync, &log).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(EIO));
        assert!(check(FileOp::Sync, &log).is_err());
        assert!(check(FileOp::Sync, &log).is_ok(), "only twice");
        assert_eq!(plan.injected(), 2);
    }

    #[test]
    fn dropping_the_guard_or_clearing_ends_the_faults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.log");
        let plan = Plan::new().with(Rule::new(FileOp::Create).errno(ENOSPC));
        let guard = inject(dir.path(), plan.clone());
        assert_eq!(
            check(FileOp::Create, &file).unwrap_err().raw_os_error(),
            Some(ENOSPC)
        );
        plan.clear();
        assert!(check(FileOp::Create, &file).is_ok());
        let again = inject(dir.path(), Plan::new().with(Rule::new(FileOp::Create)));
        drop(again);
        drop(guard);
        assert!(check(FileOp::Create, &file).is_ok());
    }
}
