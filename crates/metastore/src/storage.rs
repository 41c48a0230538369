//! Where a Raft node keeps its log, hard state, configuration and snapshot.
//!
//! [`LogStore`] is what the node needs: raft-rs's read side ([`raft::Storage`]) plus the writes a
//! Ready round makes. There are two implementations:
//! - `MemStorage` (raft-rs's own), for tests and simulations;
//! - [`DiskStorage`]: a redb database, the well-kept embedded store, holds the durable copy. A
//!   [`MemStore`] mirror serves raft-rs's reads, so both stores follow the same read rules. Every write commits to redb, fsync included, before
//!   the mirror changes, so nothing is acknowledged that a crash could take back. Opening reloads
//!   the mirror from the database.

use std::path::Path;
use std::sync::Arc;

use raft::Storage as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use redb::{ReadableDatabase, TableDefinition};

/// The writes a Ready round makes, on top of raft-rs's read side.
///
/// Every method must be durable when it returns: the node sends messages that depend on it right
/// after.
pub trait LogStore: raft::Storage + Clone {
    /// Appends entries, replacing any conflicting suffix.
    fn append(&self, entries: &[Entry]) -> raft::Result<()>;
    /// Replaces the hard state (term, vote, commit).
    fn set_hard_state(&self, hs: HardState) -> raft::Result<()>;
    /// Raises the commit index.
    fn set_commit(&self, commit: u64) -> raft::Result<()>;
    /// Replaces the membership.
    fn set_conf_state(&self, cs: ConfState) -> raft::Result<()>;
    /// Installs a snapshot, dropping the entries it covers.
    fn apply_snapshot(&self, snap: Snapshot) -> raft::Result<()>;
    /// Offers a snapshot of the current applied state (metadata and membership) for followers
    /// that need one: a node that joins, or one too far behind. It is served by
    /// [`raft::Storage::snapshot`] and kept in memory only; the log is not compacted.
    fn offer_snapshot(&self, snap: Snapshot);
    /// Compacts the log: persists `snap` (the applied state at its index) and drops the entries
    /// before its index. Entries after it stay.
    fn compact(&self, snap: Snapshot) -> raft::Result<()>;
    /// The last snapshot persisted (installed or compacted), data included, if any.
    fn persisted_snapshot(&self) -> Option<Snapshot>;
}

/// The most recent snapshot offered by the node.
#[derive(Clone, Default)]
struct Offered(Arc<parking_lot::Mutex<Option<Snapshot>>>);

impl Offered {
    /// The offered snapshot if it reaches `request_index`.
    fn serve(&self, request_index: u64) -> Option<Snapshot> {
        self.0
            .lock()
            .clone()
            .filter(|s| s.get_metadata().index >= request_index)
    }
}

/// In-memory storage for tests and simulations: raft-rs's `MemStorage`, plus offered snapshots.
#[derive(Clone, Default)]
pub struct MemStore {
    mem: MemStorage,
    offered: Offered,
    persisted: Offered,
}

impl MemStore {
    /// An empty store (a node that will join).
    pub fn new() -> Self {
        MemStore::default()
    }
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        match self.persisted.0.lock().as_ref() {
            Some(s) if s.get_metadata().index == idx => Ok(s.get_metadata().term),
            _ => self.mem.term(idx),
        }
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match self
            .offered
            .serve(request_index)
            .or_else(|| self.persisted.serve(request_index))
        {
            Some(s) => Ok(s),
            None => self.mem.snapshot(request_index, to),
        }
    }
}

impl LogStore for MemStore {
    fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        self.mem.wl().append(entries)
    }
    fn set_hard_state(&self, hs: HardState) -> raft::Result<()> {
        self.mem.wl().set_hardstate(hs);
        Ok(())
    }
    fn set_commit(&self, commit: u64) -> raft::Result<()> {
        self.mem.wl().mut_hard_state().set_commit(commit);
        Ok(())
    }
    fn set_conf_state(&self, cs: ConfState) -> raft::Result<()> {
        self.mem.wl().set_conf_state(cs);
        Ok(())
    }
    fn apply_snapshot(&self, snap: Snapshot) -> raft::Result<()> {
        self.mem.wl().apply_snapshot(snap.clone())?;
        *self.persisted.0.lock() = Some(snap);
        Ok(())
    }
    fn offer_snapshot(&self, snap: Snapshot) {
        *self.offered.0.lock() = Some(snap);
    }
    fn compact(&self, snap: Snapshot) -> raft::Result<()> {
        self.mem.wl().compact(snap.get_metadata().index)?;
        *self.persisted.0.lock() = Some(snap);
        Ok(())
    }
    fn persisted_snapshot(&self) -> Option<Snapshot> {
        self.persisted.0.lock().clone()
    }
}

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT: &str = "snapshot";

/// `hs` with its commit index and term raised to at least those of a snapshot (the vote stays).
fn raised_to(mut hs: HardState, snap: &raft::eraftpb::SnapshotMetadata) -> HardState {
    hs.commit = hs.commit.max(snap.index);
    hs.term = hs.term.max(snap.term);
    hs
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(e.to_string().into()))
}

fn encode(m: &impl protobuf::Message) -> raft::Result<Vec<u8>> {
    m.write_to_bytes().map_err(store_err)
}

fn decode<M: protobuf::Message + Default>(b: &[u8]) -> raft::Result<M> {
    let mut m = M::default();
    m.merge_from_bytes(b).map_err(store_err)?;
    Ok(m)
}

/// Raft storage in a redb database file.
#[derive(Clone)]
pub struct DiskStorage {
    /// The mirror that serves reads; every write reaches it after the database.
    mem: MemStore,
    db: Arc<redb::Database>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage").finish_non_exhaustive()
    }
}

impl DiskStorage {
    /// Opens (or creates) the database at `path` and loads it. A new database starts with
    /// `initial` as its membership, if given (a seed or a static peer list); a node that will
    /// join by configuration change starts with none.
    ///
    /// # Errors
    /// A database that cannot be opened or read.
    pub fn open(path: &Path, initial: Option<ConfState>) -> raft::Result<DiskStorage> {
        let db = redb::Database::create(path).map_err(store_err)?;
        let storage = DiskStorage {
            mem: MemStore::new(),
            db: Arc::new(db),
        };
        let (snapshot, hard_state, conf_state, entries) = {
            let txn = storage.db.begin_read().map_err(store_err)?;
            let meta = match txn.open_table(META) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(store_err(e)),
            };
            let get = |key: &str| -> raft::Result<Option<Vec<u8>>> {
                match &meta {
                    Some(t) => Ok(t.get(key).map_err(store_err)?.map(|v| v.value().to_vec())),
                    None => Ok(None),
                }
            };
            let snapshot = get(SNAPSHOT)?.map(|b| decode::<Snapshot>(&b)).transpose()?;
            let hard_state = get(HARD_STATE)?
                .map(|b| decode::<HardState>(&b))
                .transpose()?;
            let conf_state = get(CONF_STATE)?
                .map(|b| decode::<ConfState>(&b))
                .transpose()?;
            let mut entries = Vec::new();
            match txn.open_table(ENTRIES) {
                Ok(t) => {
                    for row in t.range::<u64>(..).map_err(store_err)? {
                        let (_, v) = row.map_err(store_err)?;
                        entries.push(decode::<Entry>(v.value())?);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(store_err(e)),
            }
            (snapshot, hard_state, conf_state, entries)
        };
        let fresh = snapshot.is_none()
            && hard_state.is_none()
            && conf_state.is_none()
            && entries.is_empty();
        if fresh {
            if let Some(cs) = initial {
                storage.apply_snapshot(crate::node::bootstrap_snapshot(cs))?;
            }
            return Ok(storage);
        }
        // Load the mirror only: all of this is in the database already.
        if let Some(s) = snapshot {
            storage.mem.apply_snapshot(s)?;
        }
        let first = storage.mem.first_index()?;
        {
            let mut wl = storage.mem.mem.wl();
            let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index >= first).collect();
            if !entries.is_empty() {
                wl.append(&entries)?;
            }
            if let Some(cs) = conf_state {
                wl.set_conf_state(cs);
            }
            if let Some(mut hs) = hard_state {
                // A database written while the snapshot and the hard state were saved apart
                // may hold a commit below its snapshot: everything in a snapshot is committed.
                if let Some(s) = storage.mem.persisted_snapshot() {
                    hs = raised_to(hs, s.get_metadata());
                }
                wl.set_hardstate(hs);
            }
        }
        Ok(storage)
    }

    /// Whether nothing is saved: no snapshot, hard state, membership or entry (a new node, or
    /// one whose data was lost).
    pub fn is_empty(&self) -> bool {
        let Ok(st) = self.mem.initial_state() else {
            return false;
        };
        self.mem.persisted_snapshot().is_none()
            && st.hard_state == HardState::default()
            && st.conf_state == ConfState::default()
            && self.mem.last_index().is_ok_and(|i| i == 0)
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> raft::Result<()>,
    ) -> raft::Result<()> {
        let txn = self.db.begin_write().map_err(store_err)?;
        f(&txn)?;
        txn.commit().map_err(store_err)
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> raft::Result<()> {
        self.write(|txn| {
            txn.open_table(META)
                .map_err(store_err)?
                .insert(key, value)
                .map_err(store_err)?;
            Ok(())
        })
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

impl LogStore for DiskStorage {
    fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| Ok((e.index, encode(e)?)))
            .collect::<raft::Result<_>>()?;
        self.write(|txn| {
            let mut t = txn.open_table(ENTRIES).map_err(store_err)?;
            // A conflicting suffix is replaced: drop everything from the first new index on.
            t.retain_in(first.., |_, _| false).map_err(store_err)?;
            for (i, b) in &encoded {
                t.insert(*i, b.as_slice()).map_err(store_err)?;
            }
            Ok(())
        })?;
        self.mem.append(entries)
    }

    fn set_hard_state(&self, hs: HardState) -> raft::Result<()> {
        self.put_meta(HARD_STATE, &encode(&hs)?)?;
        self.mem.set_hard_state(hs)
    }

    fn set_commit(&self, commit: u64) -> raft::Result<()> {
        let mut hs = self.mem.initial_state()?.hard_state;
        hs.set_commit(commit);
        self.set_hard_state(hs)
    }

    fn set_conf_state(&self, cs: ConfState) -> raft::Result<()> {
        self.put_meta(CONF_STATE, &encode(&cs)?)?;
        self.mem.set_conf_state(cs)
    }

    fn apply_snapshot(&self, snap: Snapshot) -> raft::Result<()> {
        let index = snap.get_metadata().index;
        let bytes = encode(&snap)?;
        let cs = encode(snap.get_metadata().get_conf_state())?;
        // The hard state goes in the same transaction, with the commit index (and term) raised
        // to the snapshot's, as the mirror does. Written apart, a crash between the two left a
        // commit below the snapshot, which raft-rs refuses at every start.
        let hs = encode(&raised_to(
            self.mem.initial_state()?.hard_state,
            snap.get_metadata(),
        ))?;
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(store_err)?;
            meta.insert(SNAPSHOT, bytes.as_slice()).map_err(store_err)?;
            meta.insert(CONF_STATE, cs.as_slice()).map_err(store_err)?;
            meta.insert(HARD_STATE, hs.as_slice()).map_err(store_err)?;
            drop(meta);
            let mut t = txn.open_table(ENTRIES).map_err(store_err)?;
            t.retain_in(..=index, |_, _| false).map_err(store_err)?;
            Ok(())
        })?;
        self.mem.apply_snapshot(snap)
    }

    fn offer_snapshot(&self, snap: Snapshot) {
        self.mem.offer_snapshot(snap);
    }

    fn compact(&self, snap: Snapshot) -> raft::Result<()> {
        let index = snap.get_metadata().index;
        let bytes = encode(&snap)?;
        self.write(|txn| {
            txn.open_table(META)
                .map_err(store_err)?
                .insert(SNAPSHOT, bytes.as_slice())
                .map_err(store_err)?;
            let mut t = txn.open_table(ENTRIES).map_err(store_err)?;
            t.retain_in(..index, |_, _| false).map_err(store_err)?;
            Ok(())
        })?;
        self.mem.compact(snap)
    }

    fn persisted_snapshot(&self) -> Option<Snapshot> {
        self.mem.persisted_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage;

    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let s = DiskStorage::open(&path, None).unwrap();
            s.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])))
                .unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A new leader overwrites index 3 onward.
            s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 2,
                ..Default::default()
            };
            s.set_hard_state(hs).unwrap();
            s.set_commit(3).unwrap();
        }
        let s = DiskStorage::open(&path, None).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(
            (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
            (2, 2, 3)
        );
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 4));
        let got = s
            .entries(1, 5, None, raft::GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = got.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, [&b"a"[..], b"b", b"C", b"d"]);
        assert_eq!(s.term(3).unwrap(), 2);
    }

    #[test]
    fn a_new_group_starts_from_the_bootstrap_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        drop(DiskStorage::open(&path, Some(ConfState::from((vec![7, 8], vec![])))).unwrap());
        // Reopened, with the initial membership ignored: the file decides.
        let s = DiskStorage::open(&path, Some(ConfState::from((vec![1], vec![])))).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(st.conf_state.voters, vec![7, 8]);
        assert_eq!(s.first_index().unwrap(), crate::node::BOOTSTRAP_INDEX + 1);
        assert_eq!(
            s.snapshot(0, 0).unwrap().get_metadata().index,
            crate::node::BOOTSTRAP_INDEX
        );
    }

    #[test]
    fn compaction_keeps_later_entries_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let s = DiskStorage::open(&path, None).unwrap();
            s.append(&[
                entry(1, 1, b"a"),
                entry(2, 1, b"b"),
                entry(3, 2, b"c"),
                entry(4, 2, b"d"),
            ])
            .unwrap();
            let mut snap = Snapshot {
                data: b"state at 3".to_vec().into(),
                ..Default::default()
            };
            snap.mut_metadata().index = 3;
            snap.mut_metadata().term = 2;
            s.compact(snap).unwrap();
            assert_eq!(s.term(3).unwrap(), 2);
            assert!(
                s.entries(1, 3, None, raft::GetEntriesContext::empty(false))
                    .is_err(),
                "compacted"
            );
        }
        let s = DiskStorage::open(&path, None).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (4, 4));
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(&s.persisted_snapshot().unwrap().data[..], b"state at 3");
        let rest = s
            .entries(4, 5, None, raft::GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(&rest[0].data[..], b"d");
    }

    /// A node that installs a snapshot from its leader and crashes right after: the database
    /// must hold a commit index that reaches the snapshot, or raft-rs refuses to start on it
    /// ("commit is out of range") at every restart.
    #[test]
    fn a_crash_right_after_a_snapshot_install_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let voters = ConfState::from((vec![1, 2, 3], vec![]));
        {
            let s = DiskStorage::open(&path, None).unwrap();
            s.set_conf_state(voters.clone()).unwrap();
            let entries: Vec<Entry> = (1..=8).map(|i| entry(i, 1, b"")).collect();
            s.append(&entries).unwrap();
            s.set_hard_state(HardState {
                term: 1,
                vote: 1,
                commit: 8,
                ..Default::default()
            })
            .unwrap();
            let mut snap = Snapshot {
                data: crate::Fsm::new().snapshot().into(),
                ..Default::default()
            };
            snap.mut_metadata().index = 20;
            snap.mut_metadata().term = 2;
            snap.mut_metadata().set_conf_state(voters);
            // The crash point: the snapshot is on disk, nothing after it ran.
            s.apply_snapshot(snap).unwrap();
        }
        let s = DiskStorage::open(&path, None).unwrap();
        let hs = s.initial_state().unwrap().hard_state;
        assert!(hs.commit >= 20, "commit {} below the snapshot", hs.commit);
        assert!(hs.term >= 2, "term {} below the snapshot's", hs.term);
        assert_eq!(hs.vote, 1, "the vote survives");
        let node = crate::node::MetaNode::new(1, s).expect("the node starts");
        assert_eq!(node.applied_index(), 20);
    }

    /// A database written before the hard state went with the snapshot: its commit is below the
    /// snapshot and is raised on open.
    #[test]
    fn a_commit_below_the_snapshot_is_raised_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let s = DiskStorage::open(&path, None).unwrap();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 20;
            snap.mut_metadata().term = 2;
            snap.mut_metadata()
                .set_conf_state(ConfState::from((vec![1], vec![])));
            s.apply_snapshot(snap).unwrap();
            // The old layout: a hard state written on its own, behind the snapshot.
            s.put_meta(
                HARD_STATE,
                &encode(&HardState {
                    term: 1,
                    vote: 1,
                    commit: 8,
                    ..Default::default()
                })
                .unwrap(),
            )
            .unwrap();
        }
        let s = DiskStorage::open(&path, None).unwrap();
        let hs = s.initial_state().unwrap().hard_state;
        assert_eq!((hs.term, hs.vote, hs.commit), (2, 1, 20));
        crate::node::MetaNode::new(1, s).expect("the node starts");
    }

    #[test]
    fn a_snapshot_replaces_the_entries_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let s = DiskStorage::open(&path, None).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            let mut snap = Snapshot {
                data: b"state at 2".to_vec().into(),
                ..Default::default()
            };
            snap.mut_metadata().index = 2;
            snap.mut_metadata().term = 1;
            snap.mut_metadata()
                .set_conf_state(ConfState::from((vec![1, 2], vec![])));
            s.apply_snapshot(snap).unwrap();
        }
        let s = DiskStorage::open(&path, None).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2]);
        assert_eq!(&s.snapshot(0, 0).unwrap().data[..], b"state at 2");
    }
}
