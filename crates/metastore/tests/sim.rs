//! Deterministic simulation of the metadata Raft group: 3 to 5 nodes in one thread, driven by a
//! seed. Each step may lose, delay or reorder messages, partition the network, or crash and
//! restart nodes with their storage intact. After every step the invariants are checked:
//!
//! - at most one leader per term;
//! - an index, once applied anywhere, holds the same entry everywhere (nothing committed changes);
//! - nodes at the same applied index have the same state.
//!
//! At the end the network heals. Every node must then apply every committed entry, so nothing
//! committed was lost across crashes. A failure names its seed; `SIM_SEED=<n>` replays one seed,
//! and `SIM_SEEDS=<n>` runs more.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::create;

use metastore::node::{self, Input, MetaNode};
use metastore::storage::MemStore as MemStorage;
use metastore::{Event, OpError};
use raft::eraftpb::Message;
use raft::{StateRole, Storage};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A fixed election timeout per node (raft-rs would draw one at random): different per node, so
/// elections settle, and the same on every run, so a seed replays exactly.
fn election(id: u64) -> (usize, usize) {
    let t = node::ELECTION_TICKS + 2 * id as usize;
    (t, t + 1)
}

struct Sim {
    seed: u64,
    rng: Rng,
    ids: Vec<u64>,
    nodes: HashMap<u64, MetaNode>,
    disks: HashMap<u64, MemStorage>,
    /// Messages in flight, encoded as on the wire, with the step before which they cannot arrive.
    net: Vec<(u64, u64, Vec<u8>)>,
    /// Nodes on side `true` cannot talk to nodes on side `false`.
    sides: Option<HashMap<u64, bool>>,
    step: u64,
    leaders: HashMap<u64, u64>,
    committed: BTreeMap<u64, Option<u64>>,
    /// Per node, (index, proposal) of everything it applied since it last started.
    applied: HashMap<u64, Vec<(u64, Option<u64>)>>,
    next_proposal: u64,
    verdicts: HashMap<u64, Result<(), OpError>>,
    /// Log compaction threshold: tiny on odd seeds, so lagging and restarted nodes need snapshots.
    compaction: u64,
}

impl Sim {
    fn new(seed: u64, size: u64) -> Sim {
        let ids: Vec<u64> = (1..=size).collect();
        let mut sim = Sim {
            seed,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            ids: ids.clone(),
            nodes: HashMap::new(),
            disks: HashMap::new(),
            net: Vec::new(),
            sides: None,
            step: 0,
            leaders: HashMap::new(),
            committed: BTreeMap::new(),
            applied: HashMap::new(),
            next_proposal: 1,
            verdicts: HashMap::new(),
            compaction: if seed % 2 == 1 { 4 } else { 0 },
        };
        for id in ids.clone() {
            let disk = node::bootstrap_storage(&ids);
            sim.disks.insert(id, disk.clone());
            let mut n = MetaNode::with_election_range(id, disk, Some(election(id))).unwrap();
            n.set_snapshot_threshold(sim.compaction);
            sim.nodes.insert(id, n);
            sim.applied.insert(id, Vec::new());
        }
        sim
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {}: step {}: {what}", self.seed, self.step)
    }

    fn feed(&mut self, id: u64, input: Input) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let out = match n.handle(input) {
            Ok(o) => o,
            Err(_) => return, // e.g. a proposal with no leader known: dropped, as a client would see
        };
        for m in out.messages {
            let delay = if self.rng.chance(20) {
                1 + self.rng.below(8)
            } else {
                0
            };
            self.net
                .push((self.step + delay, m.to, node::encode_message(&m)));
        }
        let log = self.applied.get_mut(&id).expect("known node");
        for a in out.applied {
            if a.applied
                .events
                .iter()
                .any(|e| matches!(e, Event::StreamDeleted { .. }))
                && a.proposal.is_none()
            {
                continue; // the end-of-recovery report, not an entry
            }
            log.push((a.index, a.proposal));
            if let Some(p) = a.proposal {
                // The context travels with the entry, so every node reports a verdict: the same one.
                if let Some(prev) = self.verdicts.insert(p, a.applied.result.clone())
                    && prev != a.applied.result
                {
                    self.fail(format!(
                        "proposal {p}: node {id} says {:?}, another said {prev:?}",
                        a.applied.result
                    ));
                }
            }
        }
    }

    fn deliver(&mut self, i: usize) {
        let (_, to, bytes) = self.net.swap_remove(i);
        let msg: Message =
            node::decode_message(&bytes).unwrap_or_else(|e| self.fail(format!("wire decode: {e}")));
        if let Some(sides) = &self.sides
            && sides.get(&msg.from) != sides.get(&to)
        {
            return; // cut
        }
        self.feed(to, Input::Message(Box::new(msg)));
    }

    fn random_step(&mut self) {
        self.step += 1;
        let roll = self.rng.below(100);
        let live: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|i| self.nodes.contains_key(i))
            .collect();
        match roll {
            0..=44 => {
                let ready: Vec<usize> = (0..self.net.len())
                    .filter(|&i| self.net[i].0 <= self.step)
                    .collect();
                if let Some(&i) = ready.get(self.rng.below(ready.len().max(1) as u64) as usize) {
                    if self.rng.chance(5) {
                        self.net.swap_remove(i); // lost
                    } else {
                        self.deliver(i);
                    }
                }
            }
            45..=74 => {
                if let Some(&id) = live.get(self.rng.below(live.len().max(1) as u64) as usize) {
                    self.feed(id, Input::Tick);
                }
            }
            75..=89 => {
                if let Some(&id) = live.get(self.rng.below(live.len().max(1) as u64) as usize) {
                    let p = self.next_proposal;
                    self.next_proposal += 1;
                    // Every tenth proposal repeats a name: its verdict must be AlreadyExists.
                    let name = if p.is_multiple_of(10) {
                        format!("s{}", p - 1)
                    } else {
                        format!("s{p}")
                    };
                    self.feed(
                        id,
                        Input::Propose {
                            id: p,
                            entry: Box::new(create(&name)),
                        },
                    );
                }
            }
            90..=91 => {
                if live.len() > 1 {
                    let id = live[self.rng.below(live.len() as u64) as usize];
                    self.nodes.remove(&id);
                    self.net.retain(|(_, to, _)| *to != id);
                }
            }
            92..=94 => {
                let down: Vec<u64> = self
                    .ids
                    .iter()
                    .copied()
                    .filter(|i| !self.nodes.contains_key(i))
                    .collect();
                if let Some(&id) = down.get(self.rng.below(down.len().max(1) as u64) as usize) {
                    self.restart(id);
                }
            }
            95..=96 => {
                let sides = self.ids.iter().map(|&i| (i, self.rng.chance(50))).collect();
                self.sides = Some(sides);
            }
            _ => self.sides = None,
        }
        self.check();
    }

    fn restart(&mut self, id: u64) {
        let disk = self.disks[&id].clone();
        let n = MetaNode::with_election_range(id, disk, Some(election(id)))
            .unwrap_or_else(|e| self.fail(format!("restart of {id}: {e}")));
        let mut n = n;
        n.set_snapshot_threshold(self.compaction);
        self.nodes.insert(id, n);
        self.applied.insert(id, Vec::new());
        // Replay what is on disk.
        self.feed(id, Input::Tick);
    }

    fn check(&mut self) {
        for (&id, n) in &self.nodes {
            if n.role() == StateRole::Leader {
                let first = *self.leaders.entry(n.term()).or_insert(id);
                if first != id {
                    self.fail(format!(
                        "two leaders in term {}: {first} and {id}",
                        n.term()
                    ));
                }
            }
        }
        let mut problems = Vec::new();
        for (&id, log) in &self.applied {
            for &(index, proposal) in log {
                match self.committed.get(&index) {
                    Some(&p) if p != proposal => problems.push(format!(
                        "node {id} applied {proposal:?} at index {index}, where {p:?} was applied before"
                    )),
                    Some(_) => {}
                    None => {
                        self.committed.insert(index, proposal);
                    }
                }
            }
        }
        if let Some(p) = problems.first() {
            self.fail(p.clone());
        }
        let mut by_index: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
        for (&id, n) in &self.nodes {
            let snap = n.fsm().snapshot();
            let at = n.fsm().applied_index();
            match by_index.get(&at) {
                Some((other, s)) if *s != snap => self.fail(format!(
                    "nodes {other} and {id} differ at applied index {at}"
                )),
                Some(_) => {}
                None => {
                    by_index.insert(at, (id, snap));
                }
            }
        }
    }

    /// Heals everything and runs until every node has applied every committed entry.
    fn converge(&mut self) {
        self.sides = None;
        let down: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|i| !self.nodes.contains_key(i))
            .collect();
        for id in down {
            self.restart(id);
        }
        // Once healed, a new proposal must commit: the group is live again.
        let final_proposal = 1_000_000 + self.seed * 10 + 1;
        let mut proposed = false;
        for round in 0..20_000u64 {
            let leader = self
                .nodes
                .values()
                .find(|n| n.role() == StateRole::Leader)
                .map(|n| n.id());
            if let (false, Some(leader)) = (proposed, leader) {
                let entry = Box::new(create(&format!("s{final_proposal}")));
                self.feed(
                    leader,
                    Input::Propose {
                        id: final_proposal,
                        entry,
                    },
                );
                proposed = true;
            }
            self.step += 1;
            while let Some(i) = (0..self.net.len()).next() {
                self.deliver(i);
            }
            if round % 3 == 0 {
                for id in self.ids.clone() {
                    self.feed(id, Input::Tick);
                }
            }
            self.check();
            let last = self.committed.keys().next_back().copied().unwrap_or(0);
            let done = self
                .ids
                .iter()
                .all(|id| self.nodes[id].fsm().applied_index() >= last.max(1))
                && self.verdicts.contains_key(&final_proposal)
                && self.net.is_empty();
            if done && round > 50 {
                break;
            }
        }
        if !self.verdicts.contains_key(&final_proposal) {
            self.fail("a proposal after healing never committed".into());
        }
        let last = self.committed.keys().next_back().copied().unwrap_or(0);
        for id in &self.ids {
            let n = &self.nodes[id];
            if n.fsm().applied_index() < last {
                self.fail(format!(
                    "node {id} stuck at {} of {last} after healing",
                    n.fsm().applied_index()
                ));
            }
        }
        // Per name, exactly one committed proposal created it and any other got AlreadyExists;
        // every node has every created stream.
        let mut by_name: HashMap<String, Vec<&Result<(), OpError>>> = HashMap::new();
        for (&p, verdict) in &self.verdicts {
            let name = if p.is_multiple_of(10) {
                format!("s{}", p - 1)
            } else {
                format!("s{p}")
            };
            by_name.entry(name).or_default().push(verdict);
        }
        for (name, verdicts) in &by_name {
            let ok = verdicts.iter().filter(|v| v.is_ok()).count();
            if ok != 1
                || verdicts
                    .iter()
                    .any(|v| matches!(v, Err(e) if !matches!(e, OpError::AlreadyExists(_))))
            {
                self.fail(format!("stream {name}: verdicts {verdicts:?}"));
            }
            for n in self.nodes.values() {
                if n.fsm().stream(name).is_none() {
                    self.fail(format!("node {} lost stream {name}", n.id()));
                }
            }
        }
    }
}

fn run(seed: u64) {
    let size = 3 + seed % 3; // 3, 4 or 5 nodes
    let mut sim = Sim::new(seed, size);
    for _ in 0..1500 {
        sim.random_step();
    }
    sim.converge();
}

#[test]
fn simulated_clusters_keep_their_invariants() {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        run(seed);
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 1..=seeds {
        run(seed);
    }
}

#[test]
fn a_proposal_on_a_follower_reaches_the_leader_and_gets_its_verdict() {
    let mut sim = Sim::new(7, 3);
    // No faults: tick and deliver until there is a leader.
    for _ in 0..200 {
        sim.step += 1;
        for id in [1, 2, 3] {
            sim.feed(id, Input::Tick);
        }
        while !sim.net.is_empty() {
            sim.deliver(0);
        }
        if sim.nodes.values().any(|n| n.role() == StateRole::Leader) {
            break;
        }
    }
    let leader = sim
        .nodes
        .values()
        .find(|n| n.role() == StateRole::Leader)
        .map(|n| n.id())
        .expect("a leader");
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    sim.feed(
        follower,
        Input::Propose {
            id: 1,
            entry: Box::new(create("orders")),
        },
    );
    sim.feed(
        leader,
        Input::Propose {
            id: 2,
            entry: Box::new(create("orders")),
        },
    );
    for _ in 0..50 {
        while !sim.net.is_empty() {
            sim.deliver(0);
        }
        for id in [1, 2, 3] {
            sim.feed(id, Input::Tick);
        }
    }
    let mut verdicts: Vec<_> = [1, 2].iter().map(|p| sim.verdicts[p].clone()).collect();
    verdicts.sort_by_key(|v| v.is_err());
    assert_eq!(verdicts[0], Ok(()));
    assert!(
        matches!(verdicts[1], Err(OpError::AlreadyExists(_))),
        "{verdicts:?}"
    );
    for n in sim.nodes.values() {
        assert!(
            n.fsm().stream("orders").is_some(),
            "node {} lacks the stream",
            n.id()
        );
    }
    sim.check();
}

#[test]
fn a_planned_stop_hands_metadata_leadership_to_the_most_up_to_date_voter() {
    let mut sim = Sim::new(11, 3);
    let settle = |sim: &mut Sim, ticks: usize| {
        for _ in 0..ticks {
            sim.step += 1;
            for id in [1, 2, 3] {
                sim.feed(id, Input::Tick);
            }
            while !sim.net.is_empty() {
                sim.deliver(0);
            }
        }
    };
    let leader_of = |sim: &Sim| {
        sim.nodes
            .values()
            .find(|n| n.role() == StateRole::Leader)
            .map(|n| n.id())
    };
    settle(&mut sim, 100);
    let old = leader_of(&sim).expect("a leader");
    // One follower misses an entry: the other is the only one fully up to date.
    let behind = [1, 2, 3].into_iter().find(|&i| i != old).unwrap();
    let ahead = [1, 2, 3]
        .into_iter()
        .find(|&i| i != old && i != behind)
        .unwrap();
    sim.feed(
        old,
        Input::Propose {
            id: 1,
            entry: Box::new(create("orders")),
        },
    );
    for _ in 0..20 {
        sim.net.retain(|(_, to, _)| *to != behind);
        if sim.net.is_empty() {
            break;
        }
        sim.deliver(0);
    }
    for n in sim.nodes.values() {
        if n.id() != old {
            assert_eq!(n.leader(), Some(old), "node {} follows another", n.id());
        }
    }
    assert_eq!(sim.nodes[&old].transferee(), Some(ahead));
    // A follower asked to transfer does nothing.
    sim.feed(behind, Input::TransferLeader);
    assert_eq!(leader_of(&sim), Some(old));
    sim.feed(old, Input::TransferLeader);
    for _ in 0..20 {
        while !sim.net.is_empty() {
            sim.deliver(0);
        }
    }
    assert_eq!(leader_of(&sim), Some(ahead), "leadership went elsewhere");
    settle(&mut sim, 20);
    assert_eq!(leader_of(&sim), Some(ahead));
    for n in sim.nodes.values() {
        assert!(
            n.fsm().stream("orders").is_some(),
            "node {} lost the entry",
            n.id()
        );
    }
    sim.check();
}

#[test]
fn a_seed_elects_itself_and_adds_members_by_configuration_change() {
    let mut seed = MetaNode::new(1, node::bootstrap_storage(&[1])).unwrap();
    for _ in 0..30 {
        seed.handle(Input::Tick).unwrap();
    }
    assert_eq!(
        seed.role(),
        StateRole::Leader,
        "a single seed elects itself"
    );
    let out = seed
        .handle(Input::Propose {
            id: 9,
            entry: Box::new(create("before-join")),
        })
        .unwrap();
    assert_eq!(node::verdicts(&out.applied)[&9].result, Ok(()));

    let mut nodes: HashMap<u64, MetaNode> = HashMap::new();
    nodes.insert(1, seed);
    nodes.insert(2, MetaNode::new(2, node::joining_storage()).unwrap());
    nodes.insert(3, MetaNode::new(3, node::joining_storage()).unwrap());
    let mut net: Vec<Message> = Vec::new();
    let pump = |nodes: &mut HashMap<u64, MetaNode>, net: &mut Vec<Message>, first: Input| {
        net.extend(nodes.get_mut(&1).unwrap().handle(first).unwrap().messages);
        for _ in 0..500 {
            let Some(m) = net.pop() else { break };
            let to = m.to;
            net.extend(
                nodes
                    .get_mut(&to)
                    .unwrap()
                    .handle(Input::Message(Box::new(m)))
                    .unwrap()
                    .messages,
            );
        }
    };
    pump(
        &mut nodes,
        &mut net,
        Input::AddMember {
            node: 2,
            learner: false,
        },
    );
    pump(
        &mut nodes,
        &mut net,
        Input::AddMember {
            node: 3,
            learner: true,
        },
    );
    for _ in 0..20 {
        pump(&mut nodes, &mut net, Input::Tick);
    }
    pump(
        &mut nodes,
        &mut net,
        Input::Propose {
            id: 10,
            entry: Box::new(create("after-join")),
        },
    );
    for _ in 0..20 {
        pump(&mut nodes, &mut net, Input::Tick);
    }
    for id in [2, 3] {
        let f = nodes[&id].fsm();
        assert!(
            f.stream("before-join").is_some() && f.stream("after-join").is_some(),
            "node {id} did not catch up"
        );
    }
    let voters = nodes[&1].storage().initial_state().unwrap().conf_state;
    assert_eq!(
        (voters.voters.clone(), voters.learners.clone()),
        (vec![1, 2], vec![3])
    );
}
