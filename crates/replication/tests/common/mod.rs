//! What the simulated-cluster tests (`sim.rs`, `nemesis.rs`) share: the seeded random source,
//! the log entry, the ordered network queue, a replica's log operations, the invariant checks
//! on the committed history, and the choice of seeds.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use replication::{Millis, Offset};

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub offset: Offset,
    pub epoch: u64,
    pub id: u64,
}

/// A message in flight to `to`, delivered at `at` (ties in sending order).
pub struct Pending<To, M> {
    pub at: Millis,
    pub seq: u64,
    pub to: To,
    pub msg: M,
}

impl<To, M> PartialEq for Pending<To, M> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<To, M> Eq for Pending<To, M> {}
impl<To, M> PartialOrd for Pending<To, M> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<To, M> Ord for Pending<To, M> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// A simulated broker's copy of the partition: its log, leader epochs and HW.
pub trait Replica {
    fn id(&self) -> &str;
    fn hw(&self) -> Offset;
    fn log(&self) -> &[Entry];
    /// (epoch, first offset), ascending.
    fn epochs(&self) -> &[(u64, Offset)];
    fn log_and_epochs_mut(&mut self) -> (&mut Vec<Entry>, &mut Vec<(u64, Offset)>);

    fn newest(&self) -> Offset {
        self.log().len() as Offset - 1
    }
    fn leo(&self) -> Offset {
        self.log().len() as Offset
    }
    fn latest_epoch(&self) -> Option<u64> {
        self.epochs().last().map(|e| e.0)
    }
    /// Appends the entries that continue the log; an entry of a newer epoch starts that epoch.
    fn append_raw(&mut self, entries: &[Entry]) {
        for e in entries {
            if e.offset != self.leo() {
                continue;
            }
            let starts = self.latest_epoch().is_none_or(|l| e.epoch > l);
            let (log, epochs) = self.log_and_epochs_mut();
            if starts {
                epochs.push((e.epoch, e.offset));
            }
            log.push(*e);
        }
    }
}

/// Checks one replica after a step: its HW did not fall below `prev_hw` (then raised to it) and
/// is within its log; its entries above `checked` and up to its HW agree with the one committed
/// history, which they extend. Entries at or below a replica's HW never change, so each is
/// checked once.
pub fn check_replica(
    b: &impl Replica,
    prev_hw: &mut Offset,
    checked: Option<Offset>,
    committed: &mut BTreeMap<Offset, u64>,
) -> Result<(), String> {
    if b.hw() < *prev_hw {
        return Err(format!("{}'s HW fell from {prev_hw} to {}", b.id(), b.hw()));
    }
    *prev_hw = b.hw();
    if b.hw() > b.newest() {
        return Err(format!(
            "{}'s HW {} is beyond its log end {}",
            b.id(),
            b.hw(),
            b.newest()
        ));
    }
    let from = checked.map_or(0, |c| c + 1);
    for e in b
        .log()
        .iter()
        .take((b.hw() + 1).max(0) as usize)
        .skip(from.max(0) as usize)
    {
        match committed.get(&e.offset) {
            Some(id) if *id != e.id => {
                return Err(format!(
                    "{} committed {} at {}, another broker {}",
                    b.id(),
                    e.id,
                    e.offset,
                    id
                ));
            }
            None => {
                committed.insert(e.offset, e.id);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every newly acked message is in the committed history at its offset. Acked messages are
/// checked once: the committed history never changes afterwards.
pub fn check_acked(
    committed: &BTreeMap<Offset, u64>,
    newly_acked: Vec<(u64, Offset)>,
) -> Result<(), String> {
    for (id, off) in newly_acked {
        if committed.get(&off) != Some(&id) {
            return Err(format!(
                "acked message {id} at {off} is not in the committed history"
            ));
        }
    }
    Ok(())
}

/// After healing: the leader holds every acked message once, at its offset, and every replica
/// caught up with the leader's HW and agrees with it below.
pub fn check_caught_up<'a, R: Replica + 'a>(
    acked: &BTreeMap<u64, Offset>,
    leader: &R,
    replicas: impl IntoIterator<Item = &'a R>,
) -> Result<(), String> {
    let log = leader.log();
    for (id, off) in acked {
        if log.get(*off as usize).map(|e| e.id) != Some(*id) {
            return Err(format!("leader lacks acked message {id} at {off}"));
        }
        if log.iter().filter(|e| e.id == *id).count() != 1 {
            return Err(format!("acked message {id} appears more than once"));
        }
    }
    for b in replicas {
        if b.newest() < leader.hw() {
            return Err(format!(
                "{} did not catch up: newest {} < leader hw {}",
                b.id(),
                b.newest(),
                leader.hw()
            ));
        }
        for o in 0..=leader.hw().max(-1) {
            if b.log()[o as usize] != log[o as usize] {
                return Err(format!("{} differs from the leader at {o}", b.id()));
            }
        }
    }
    Ok(())
}

/// The seeds of test `part` of `parts`, so the test runner spreads them over its threads:
/// `{prefix}_SEEDS` sets the total (default `default`), `{prefix}_SEED` replays one seed.
pub fn seeds(prefix: &str, default: u64, part: u64, parts: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var(format!("{prefix}_SEED")) {
        let seed: u64 = s
            .parse()
            .unwrap_or_else(|_| panic!("{prefix}_SEED is a number"));
        return if seed % parts == part {
            vec![seed]
        } else {
            Vec::new()
        };
    }
    let n: u64 = std::env::var(format!("{prefix}_SEEDS"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n).filter(|s| s % parts == part).collect()
}
