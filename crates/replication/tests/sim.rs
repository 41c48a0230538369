//! A seeded, in-memory cluster of 3–5 brokers replicating one partition with the `replication`
//! state machines, a metadata controller with Liftbridge's ISR and failover rules, and a network
//! that loses, delays and reorders messages and isolates brokers. Brokers crash and restart with
//! their logs and checkpointed high watermarks intact. Clients publish to whichever broker
//! believes it leads, with ack policy ALL.
//!
//! After every step it checks: no broker's HW falls; the metadata's leader epoch only grows;
//! committed data never diverges between brokers (one global history of committed offsets); a
//! new leader holds every acked message; no broker truncates committed data. After healing,
//! every replica catches up and every acked message is on every ISR member exactly once, at its
//! offset. A failure prints its seed; `SIM_SEED=n` replays one, `SIM_SEEDS=n` runs more.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use replication::{
    FetchReply, Follower, FollowerAction, IsrChange, Leader, Millis, Offset, Settings, epoch_end,
    failover_due,
};

mod common;

use common::{Entry, Replica, Rng};

#[derive(Debug, Clone)]
enum Msg {
    Fetch {
        from: String,
        epoch: u64,
        offset: Offset,
    },
    FetchResp {
        leader: String,
        epoch: u64,
        hw: Offset,
        entries: Vec<Entry>,
    },
    EpochReq {
        from: String,
        followed: u64,
        epoch: Option<u64>,
    },
    EpochResp {
        leader: String,
        followed: u64,
        answer: Option<(u64, Offset)>,
    },
    Meta {
        version: u64,
        leader: String,
        epoch: u64,
        isr: BTreeSet<String>,
    },
}

/// A message in flight to a broker.
type Pending = common::Pending<String, Msg>;

enum Role {
    None,
    Leader(Leader),
    Follower(Follower),
}

struct Broker {
    id: String,
    alive: bool,
    isolated: bool,
    log: Vec<Entry>,
    /// (epoch, first offset), ascending.
    epochs: Vec<(u64, Offset)>,
    hw: Offset,
    role: Role,
    meta_version: u64,
    request_since: Option<Millis>,
    /// Ids published to this broker as leader and not yet acked, by offset.
    pending: BTreeMap<Offset, u64>,
}

impl Replica for Broker {
    fn id(&self) -> &str {
        &self.id
    }
    fn hw(&self) -> Offset {
        self.hw
    }
    fn log(&self) -> &[Entry] {
        &self.log
    }
    fn epochs(&self) -> &[(u64, Offset)] {
        &self.epochs
    }
    fn log_and_epochs_mut(&mut self) -> (&mut Vec<Entry>, &mut Vec<(u64, Offset)>) {
        (&mut self.log, &mut self.epochs)
    }
}

impl Broker {
    fn assign_epoch(&mut self, epoch: u64) {
        if self.latest_epoch().is_none_or(|e| epoch > e) {
            self.epochs.push((epoch, self.leo()));
        }
    }
    fn truncate(&mut self, keep_below: Offset) -> Result<(), String> {
        if keep_below <= self.hw && keep_below < self.leo() {
            return Err(format!(
                "{} would truncate committed data: keep below {keep_below}, hw {}",
                self.id, self.hw
            ));
        }
        let keep = keep_below.max(0) as usize;
        self.log.truncate(keep.min(self.log.len()));
        // An epoch that starts at or after the cut is gone; earlier ones stay.
        self.epochs.retain(|e| e.1 < keep_below);
        Ok(())
    }
}

struct Meta {
    version: u64,
    leader: String,
    epoch: u64,
    isr: BTreeSet<String>,
    witnesses: BTreeSet<String>,
}

struct Sim {
    rng: Rng,
    now: Millis,
    settings: Settings,
    brokers: Vec<Broker>,
    meta: Meta,
    net: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    loss: u64,
    next_id: u64,
    acked: BTreeMap<u64, Offset>,
    committed: BTreeMap<Offset, u64>,
    max_hw: BTreeMap<String, Offset>,
    checked: BTreeMap<String, Offset>,
    newly_acked: Vec<(u64, Offset)>,
    elections: u64,
    trace: bool,
}

const FETCH_TIMEOUT: Millis = 40;
const MAX_BATCH: usize = 8;

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let n = 3 + rng.below(3) as usize;
        let settings = Settings {
            max_lag: 150 + rng.below(150),
            leader_timeout: 120 + rng.below(100),
            idle_wait: 10 + rng.below(20),
            min_isr: 1 + rng.below(2) as usize,
        };
        let ids: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
        let brokers = ids
            .iter()
            .map(|id| Broker {
                id: id.clone(),
                alive: true,
                isolated: false,
                log: Vec::new(),
                epochs: Vec::new(),
                hw: -1,
                role: Role::None,
                meta_version: 0,
                request_since: None,
                pending: BTreeMap::new(),
            })
            .collect();
        let loss = rng.below(80);
        let mut sim = Sim {
            rng,
            now: 0,
            settings,
            brokers,
            meta: Meta {
                version: 1,
                leader: ids[0].clone(),
                epoch: 1,
                isr: ids.iter().cloned().collect(),
                witnesses: BTreeSet::new(),
            },
            net: BinaryHeap::new(),
            seq: 0,
            loss,
            next_id: 1,
            acked: BTreeMap::new(),
            committed: BTreeMap::new(),
            max_hw: BTreeMap::new(),
            checked: BTreeMap::new(),
            newly_acked: Vec::new(),
            elections: 0,
            trace: std::env::var("SIM_TRACE").is_ok(),
        };
        for id in ids {
            sim.send_meta(&id);
        }
        sim
    }

    fn idx(&self, id: &str) -> usize {
        self.brokers
            .iter()
            .position(|b| b.id == id)
            .expect("known broker")
    }

    fn send(&mut self, from: &str, to: &str, msg: Msg, reliable: bool) {
        let fi = self.idx(from);
        let ti = self.idx(to);
        if !reliable
            && (self.brokers[fi].isolated
                || self.brokers[ti].isolated
                || self.rng.chance(self.loss))
        {
            return;
        }
        self.enqueue(to, msg, 8);
    }

    /// Puts `msg` in flight to `to`, arriving within `max_delay` steps.
    fn enqueue(&mut self, to: &str, msg: Msg, max_delay: u64) {
        let at = self.now + 1 + self.rng.below(max_delay);
        self.seq += 1;
        self.net.push(Reverse(Pending {
            at,
            seq: self.seq,
            to: to.to_owned(),
            msg,
        }));
    }

    /// Tells `to` the metadata (reliably: the metadata group retries until it is heard).
    fn send_meta(&mut self, to: &str) {
        let msg = Msg::Meta {
            version: self.meta.version,
            leader: self.meta.leader.clone(),
            epoch: self.meta.epoch,
            isr: self.meta.isr.clone(),
        };
        self.enqueue(to, msg, 15);
    }

    fn broadcast_meta(&mut self) {
        self.meta.version += 1;
        if self.trace {
            eprintln!(
                "{} meta v{} leader {} epoch {} isr {:?}",
                self.now, self.meta.version, self.meta.leader, self.meta.epoch, self.meta.isr
            );
        }
        let ids: Vec<String> = self.brokers.iter().map(|b| b.id.clone()).collect();
        for id in ids {
            self.send_meta(&id);
        }
    }

    fn propose(&mut self, leader: &str, epoch: u64, change: IsrChange) {
        if self.meta.leader != leader || self.meta.epoch != epoch {
            return; // leader generation mismatch
        }
        let changed = match change {
            IsrChange::Shrink(r) => self.meta.isr.remove(&r),
            IsrChange::Expand(r) => self.meta.isr.insert(r),
        };
        if changed {
            self.broadcast_meta();
        }
    }

    fn report_leader(&mut self, reporter: &str, leader: &str, epoch: u64) -> Result<(), String> {
        if self.meta.leader != leader
            || self.meta.epoch != epoch
            || !self.meta.isr.contains(reporter)
        {
            return Ok(());
        }
        self.meta.witnesses.insert(reporter.to_owned());
        if !failover_due(self.meta.witnesses.len(), self.meta.isr.len()) {
            return Ok(());
        }
        let candidates: Vec<String> = self
            .meta
            .isr
            .iter()
            .filter(|r| **r != leader)
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let pick = candidates[self.rng.below(candidates.len() as u64) as usize].clone();
        // The new leader must hold every acked message: it was in the ISR when they committed.
        let b = &self.brokers[self.idx(&pick)];
        for (id, off) in &self.acked {
            if b.log.get(*off as usize).map(|e| e.id) != Some(*id) {
                return Err(format!(
                    "new leader {pick} lacks acked message {id} at {off}"
                ));
            }
        }
        self.meta.leader = pick;
        self.meta.epoch += 1;
        self.meta.witnesses.clear();
        self.elections += 1;
        self.broadcast_meta();
        Ok(())
    }

    fn follower_actions(&mut self, i: usize, actions: Vec<FollowerAction>) -> Result<(), String> {
        for a in actions {
            let (leader, followed) = match &self.brokers[i].role {
                Role::Follower(f) => (f.leader().to_owned(), f.epoch()),
                _ => return Ok(()),
            };
            let me = self.brokers[i].id.clone();
            match a {
                FollowerAction::AskEpochEnd { epoch } => {
                    self.brokers[i].request_since = Some(self.now);
                    self.send(
                        &me,
                        &leader,
                        Msg::EpochReq {
                            from: me.clone(),
                            followed,
                            epoch,
                        },
                        false,
                    );
                }
                FollowerAction::Truncate { keep_below } => {
                    if self.trace {
                        let b = &self.brokers[i];
                        eprintln!(
                            "{} {} truncates below {keep_below} (leo {}, hw {}, epochs {:?})",
                            self.now,
                            b.id,
                            b.leo(),
                            b.hw,
                            b.epochs
                        );
                    }
                    self.brokers[i].truncate(keep_below)?
                }
                FollowerAction::Fetch => {
                    self.brokers[i].request_since = Some(self.now);
                    let offset = self.brokers[i].newest();
                    self.send(
                        &me,
                        &leader,
                        Msg::Fetch {
                            from: me.clone(),
                            epoch: followed,
                            offset,
                        },
                        false,
                    );
                }
                FollowerAction::SetHw(hw) => {
                    let b = &mut self.brokers[i];
                    // A follower's HW never passes what it holds.
                    b.hw = b.hw.max(hw.min(b.newest()));
                    self.brokers[i].request_since = None;
                }
                FollowerAction::ReportLeader => self.report_leader(&me, &leader, followed)?,
            }
        }
        Ok(())
    }

    fn deliver(&mut self, to: &str, msg: Msg) -> Result<(), String> {
        let i = self.idx(to);
        if !self.brokers[i].alive {
            return Ok(());
        }
        let now = self.now;
        match msg {
            Msg::Meta {
                version,
                leader,
                epoch,
                isr,
            } => {
                if version <= self.brokers[i].meta_version {
                    return Ok(());
                }
                self.brokers[i].meta_version = version;
                let me = self.brokers[i].id.clone();
                if leader == me {
                    let same =
                        matches!(&self.brokers[i].role, Role::Leader(l) if l.epoch() == epoch);
                    if same {
                        if let Role::Leader(l) = &mut self.brokers[i].role
                            && let Some(hw) = l.on_isr(isr)
                        {
                            self.leader_hw(i, hw)?;
                        }
                    } else {
                        let b = &mut self.brokers[i];
                        b.assign_epoch(epoch);
                        b.pending.clear();
                        let replicas: Vec<String> =
                            (0..self.brokers.len()).map(|k| format!("b{k}")).collect();
                        let b = &mut self.brokers[i];
                        let l = Leader::new(
                            me.clone(),
                            epoch,
                            replicas,
                            isr,
                            (b.newest(), b.hw),
                            self.settings,
                            now,
                        );
                        let hw = l.hw();
                        if self.trace {
                            eprintln!(
                                "{now} {me} leads epoch {epoch}: leo {}, hw {}, epochs {:?}",
                                b.leo(),
                                b.hw,
                                b.epochs
                            );
                        }
                        b.role = Role::Leader(l);
                        self.leader_hw(i, hw)?;
                    }
                } else {
                    let following = matches!(&self.brokers[i].role, Role::Follower(f) if f.leader() == leader && f.epoch() == epoch);
                    if !following {
                        let latest = self.brokers[i].latest_epoch();
                        let (f, actions) = Follower::new(leader, epoch, self.settings, now, latest);
                        self.brokers[i].role = Role::Follower(f);
                        self.follower_actions(i, actions)?;
                    }
                }
            }
            Msg::Fetch {
                from,
                epoch,
                offset,
            } => {
                let me = self.brokers[i].id.clone();
                let Role::Leader(l) = &mut self.brokers[i].role else {
                    return Ok(());
                };
                let lep = l.epoch();
                let (reply, hw) = l.on_fetch(&from, epoch, offset, now);
                if let Some(hw) = hw {
                    self.leader_hw(i, hw)?;
                }
                if let FetchReply::Serve { from: start, hw } = reply {
                    let b = &self.brokers[i];
                    let entries: Vec<Entry> = b
                        .log
                        .iter()
                        .skip(start.max(0) as usize)
                        .take(MAX_BATCH)
                        .copied()
                        .collect();
                    self.send(
                        &me,
                        &from,
                        Msg::FetchResp {
                            leader: me.clone(),
                            epoch: lep,
                            hw,
                            entries,
                        },
                        false,
                    );
                }
            }
            Msg::FetchResp {
                leader,
                epoch,
                hw,
                entries,
            } => {
                let ok = matches!(&self.brokers[i].role, Role::Follower(f) if f.leader() == leader && f.epoch() == epoch);
                if !ok {
                    return Ok(());
                }
                let had = !entries.is_empty();
                self.brokers[i].append_raw(&entries);
                let Role::Follower(f) = &mut self.brokers[i].role else {
                    return Ok(());
                };
                let actions = f.on_fetch_response(&leader, epoch, hw, had, now);
                self.follower_actions(i, actions)?;
            }
            Msg::EpochReq {
                from,
                followed,
                epoch,
            } => {
                let me = self.brokers[i].id.clone();
                let Role::Leader(l) = &self.brokers[i].role else {
                    return Ok(());
                };
                if l.epoch() != followed {
                    return Ok(());
                }
                let b = &self.brokers[i];
                let answer = epoch.and_then(|e| epoch_end(&b.epochs, b.leo(), e));
                self.send(
                    &me,
                    &from,
                    Msg::EpochResp {
                        leader: me.clone(),
                        followed,
                        answer,
                    },
                    false,
                );
            }
            Msg::EpochResp {
                leader,
                followed,
                answer,
            } => {
                let ok = matches!(&self.brokers[i].role, Role::Follower(f) if f.leader() == leader && f.epoch() == followed);
                if !ok {
                    return Ok(());
                }
                let b = &mut self.brokers[i];
                let Role::Follower(f) = &mut b.role else {
                    return Ok(());
                };
                let actions = f.on_epoch_end(
                    &leader,
                    followed,
                    answer,
                    &b.epochs,
                    b.log.len() as Offset,
                    now,
                );
                self.follower_actions(i, actions)?;
            }
        }
        Ok(())
    }

    /// A leader's HW advanced: ack what it covers, and record the committed history.
    fn leader_hw(&mut self, i: usize, hw: Offset) -> Result<(), String> {
        if self.trace {
            let b = &self.brokers[i];
            eprintln!("{} {} (leader) hw {} -> {hw}", self.now, b.id, b.hw);
        }
        let b = &mut self.brokers[i];
        b.hw = b.hw.max(hw);
        let done: Vec<(Offset, u64)> = b.pending.range(..=hw).map(|(o, id)| (*o, *id)).collect();
        for (o, id) in done {
            b.pending.remove(&o);
            self.acked.insert(id, o);
            self.newly_acked.push((id, o));
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        for b in &self.brokers {
            let prev = self.max_hw.entry(b.id.clone()).or_insert(-1);
            let checked = self.checked.get(&b.id).copied();
            common::check_replica(b, prev, checked, &mut self.committed)?;
        }
        for b in &self.brokers {
            self.checked.insert(b.id.clone(), b.hw);
        }
        common::check_acked(&self.committed, std::mem::take(&mut self.newly_acked))
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        // Deliver what is due, in time order.
        while self.net.peek().is_some_and(|p| p.0.at <= self.now) {
            let Some(Reverse(p)) = self.net.pop() else {
                break;
            };
            self.deliver(&p.to, p.msg)?;
        }
        // Clients publish to a broker that believes it leads.
        if faults && self.rng.chance(300) {
            let leaders: Vec<usize> = (0..self.brokers.len())
                .filter(|&i| {
                    self.brokers[i].alive && matches!(self.brokers[i].role, Role::Leader(_))
                })
                .collect();
            if !leaders.is_empty() {
                let i = leaders[self.rng.below(leaders.len() as u64) as usize];
                let id = self.next_id;
                self.next_id += 1;
                let b = &mut self.brokers[i];
                let Role::Leader(l) = &mut b.role else {
                    unreachable!()
                };
                let e = Entry {
                    offset: b.log.len() as Offset,
                    epoch: l.epoch(),
                    id,
                };
                b.log.push(e);
                b.pending.insert(e.offset, id);
                if let Some(hw) = l.on_append(e.offset) {
                    self.leader_hw(i, hw)?;
                }
            }
        }
        // Ticks.
        for i in 0..self.brokers.len() {
            if !self.brokers[i].alive {
                continue;
            }
            let now = self.now;
            let me = self.brokers[i].id.clone();
            let latest = self.brokers[i].latest_epoch();
            let timed_out = self.brokers[i]
                .request_since
                .is_some_and(|since| now - since > FETCH_TIMEOUT);
            let b = &mut self.brokers[i];
            match &mut b.role {
                Role::Leader(l) => {
                    if now.is_multiple_of(10) {
                        let ep = l.epoch();
                        let changes = l.on_tick(now);
                        for c in changes {
                            self.propose(&me, ep, c);
                        }
                    }
                }
                Role::Follower(f) => {
                    let mut actions = f.on_tick(now);
                    if timed_out {
                        actions.extend(f.on_request_timeout(latest));
                        b.request_since = None;
                    }
                    self.follower_actions(i, actions)?;
                }
                Role::None => {}
            }
        }
        if faults {
            let n = self.brokers.len() as u64;
            if self.rng.chance(3) {
                // Half of the crashes hit the leader, so that leadership moves often.
                let i = if self.rng.chance(500) {
                    self.idx(&self.meta.leader.clone())
                } else {
                    self.rng.below(n) as usize
                };
                if self.brokers[i].alive {
                    let b = &mut self.brokers[i];
                    b.alive = false;
                    b.role = Role::None;
                    b.pending.clear();
                    b.request_since = None;
                }
            }
            if self.rng.chance(4) {
                let i = self.rng.below(n) as usize;
                if !self.brokers[i].alive {
                    self.brokers[i].alive = true;
                    self.brokers[i].meta_version = 0;
                    let id = self.brokers[i].id.clone();
                    self.send_meta(&id);
                }
            }
            if self.rng.chance(2) {
                let i = self.rng.below(n) as usize;
                self.brokers[i].isolated = !self.brokers[i].isolated;
            }
        }
        self.check()
    }

    fn heal(&mut self) {
        self.loss = 0;
        for i in 0..self.brokers.len() {
            self.brokers[i].isolated = false;
            if !self.brokers[i].alive {
                self.brokers[i].alive = true;
                self.brokers[i].meta_version = 0;
                let id = self.brokers[i].id.clone();
                self.send_meta(&id);
            }
        }
    }

    fn final_check(&self) -> Result<(), String> {
        let leader = &self.brokers[self.idx(&self.meta.leader)];
        common::check_caught_up(&self.acked, leader, &self.brokers)
    }
}

fn run(seed: u64) -> Result<(u64, usize, u64), String> {
    let mut sim = Sim::new(seed);
    let steps = 4000;
    for _ in 0..steps {
        sim.step(true)?;
    }
    sim.heal();
    for _ in 0..3000 {
        sim.step(false)?;
    }
    sim.final_check()?;
    Ok((sim.elections, sim.acked.len(), sim.meta.epoch))
}

/// The seeds of one third of the run (`part` 0, 1 or 2), so the test runner spreads them over
/// its threads. `SIM_SEEDS` sets the total (default 3000); `SIM_SEED` replays one seed.
fn seeds(part: u64) -> Vec<u64> {
    common::seeds("SIM", 3000, part, 3)
}

fn run_part(part: u64) {
    let mut elections = 0;
    let mut acked = 0;
    let seeds = seeds(part);
    for &seed in &seeds {
        match run(seed) {
            Ok((e, a, _)) => {
                elections += e;
                acked += a;
            }
            Err(e) => panic!("seed {seed}: {e} (replay with SIM_SEED={seed})"),
        }
    }
    eprintln!(
        "{} seeds: {elections} leader changes, {acked} acked messages",
        seeds.len()
    );
    if seeds.len() >= 10 {
        // The runs must exercise what they claim to: leader changes and acked messages.
        assert!(elections > 0, "no leader change happened in any run");
        assert!(acked > 0, "no message was acked in any run");
    }
}

#[test]
fn replicas_agree_through_loss_crashes_and_leader_changes_1() {
    run_part(0);
}

#[test]
fn replicas_agree_through_loss_crashes_and_leader_changes_2() {
    run_part(1);
}

#[test]
fn replicas_agree_through_loss_crashes_and_leader_changes_3() {
    run_part(2);
}
