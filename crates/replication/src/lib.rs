//! `replication`: how a partition's replicas agree, as state machines with no I/O.
//!
//! Liftbridge replicates each partition with Kafka's in-sync-replica protocol. The partition's
//! leader appends what it receives; followers fetch from it and append the same records at the
//! same offsets. The leader tracks how far each follower got and commits (advances the high
//! watermark, HW) up to the smallest offset every in-sync replica (ISR) holds. Followers that
//! fall behind leave the ISR and come back once caught up; both changes go through the metadata
//! group. After a leader change, a follower asks the new leader where its last leader epoch ended
//! and truncates what diverged before it fetches.
//!
//! - [`Leader`] holds the leader's view: each follower's offset and when it last caught up, the
//!   ISR, and the HW. Events are appends, fetch requests, ISR changes applied by the metadata
//!   group, and ticks; it answers with the HW to set and the ISR changes to propose.
//! - [`Follower`] holds a follower's progress with one leader: first the truncation handshake,
//!   then fetching. Events are responses, timeouts and ticks; it answers with [`FollowerAction`]s.
//! - [`epoch_end`] (the leader's answer) and [`divergence`] (the follower's use of it) are the
//!   truncation rule.
//!
//! Time is a number of milliseconds the caller supplies, so a test drives a whole cluster from a
//! seed (`tests/sim.rs`).
//!
//! # Invariants
//! - The HW never decreases, and never passes an offset that some ISR member lacks.
//! - Epochs only grow: a leader leads under an epoch newer than any before it, a follower
//!   accepts only its leader's epoch, and a log records an epoch only if it is newer than every
//!   epoch it holds.
//! - Nothing commits while the ISR is smaller than min ISR.
//! - A leader serves only followers of its own epoch; a follower accepts data, and answers to
//!   its epoch question, only from the leader and epoch it follows (a deposed leader's answer
//!   is ignored, and a leader answers only its own epoch's followers).
//! - A follower's claim to hold more than the leader's log at the same epoch is not counted
//!   ([`FetchReply::OutOfRange`]); a claim to records the log holds but the state machine was
//!   not told of yet is served, and counts only once they are told.
//! - An ISR expansion names the partition epoch it was decided at ([`Leader::partition_epoch`]),
//!   and is retried only while [`Leader::is_pending`].
//! - A failover ([`judge`]) is decided on one generation (leader, epoch) and names it, so the
//!   metadata refuses it once that generation is gone; only an ISR member is elected.
//! - A message committed while acked with policy ALL survives any failure of fewer than min ISR
//!   brokers, because every ISR member holds it and only an ISR member can become leader.

use std::collections::{BTreeMap, BTreeSet};

pub mod groups;

/// An offset in a partition's log; -1 means "none".
pub type Offset = i64;

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// Timing and safety settings (Liftbridge's `clustering.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `replica.max.lag.time`: a follower that has not caught up for this long leaves the ISR.
    pub max_lag: Millis,
    /// `replica.max.leader.timeout`: a follower reports a leader silent for this long.
    pub leader_timeout: Millis,
    /// `replica.max.idle.wait`: how long a caught-up follower waits before fetching again
    /// (a notification from the leader ends the wait early).
    pub idle_wait: Millis,
    /// Minimum ISR size for a commit.
    pub min_isr: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_lag: 15_000,
            leader_timeout: 15_000,
            idle_wait: 10_000,
            min_isr: 1,
        }
    }
}

/// A change to the ISR that the leader asks the metadata group for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum IsrChange {
    /// Remove a follower that fell behind.
    Shrink(String),
    /// Add a follower that caught up.
    Expand(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FollowerView {
    /// The newest offset the follower said it holds.
    offset: Offset,
    /// When it last fetched.
    last_seen: Millis,
    /// When it last held everything the leader had.
    last_caught_up: Millis,
    /// Out of the ISR and not heard from since: what the leader knows of it may be stale (a
    /// replica that left the ISR to stop), so it must fetch before it can be added back.
    unheard: bool,
}

/// What the leader tells a follower in answer to a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReply {
    /// Send the records from `from` on (possibly none), with the leader's epoch and HW.
    Serve {
        /// The first offset to send.
        from: Offset,
        /// The leader's HW, for the follower to adopt.
        hw: Offset,
    },
    /// The request is for another epoch, or from a broker that holds no replica: ignore it.
    Reject,
    /// The follower claims more than the leader holds at the same epoch: the leader lost a tail
    /// it never synced (a power loss) that the follower copied. The claim does not count, and
    /// the follower must truncate (ask where the epoch ended) before it fetches again.
    OutOfRange {
        /// The leader's newest offset.
        newest: Offset,
    },
}

/// The leader's side of one partition.
#[derive(Debug, Clone)]
pub struct Leader {
    me: String,
    epoch: u64,
    settings: Settings,
    replicas: BTreeSet<String>,
    isr: BTreeSet<String>,
    followers: BTreeMap<String, FollowerView>,
    newest: Offset,
    hw: Offset,
    /// Changes asked for and not yet applied, so a tick does not ask twice.
    proposed: BTreeSet<IsrChange>,
    /// The partition epoch of the ISR it holds (0: unknown): an expansion names it, so that one
    /// decided on an ISR that changed since is refused.
    partition_epoch: u64,
}

impl Leader {
    /// A leader at `epoch` whose log ends at `log.0` (newest offset) with high watermark
    /// `log.1`. Followers count as caught up at `now`, so none leaves the ISR before it had time
    /// to fetch.
    pub fn new(
        me: impl Into<String>,
        epoch: u64,
        replicas: impl IntoIterator<Item = String>,
        isr: impl IntoIterator<Item = String>,
        log: (Offset, Offset),
        settings: Settings,
        now: Millis,
    ) -> Leader {
        let (newest, hw) = log;
        let me = me.into();
        let replicas: BTreeSet<String> = replicas.into_iter().collect();
        let mut isr: BTreeSet<String> = isr.into_iter().collect();
        isr.insert(me.clone());
        let followers = replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| {
                (
                    r.clone(),
                    FollowerView {
                        offset: -1,
                        last_seen: now,
                        last_caught_up: now,
                        unheard: !isr.contains(r),
                    },
                )
            })
            .collect();
        let mut l = Leader {
            me,
            epoch,
            settings,
            replicas,
            isr,
            followers,
            newest,
            hw,
            proposed: BTreeSet::new(),
            partition_epoch: 0,
        };
        l.commit();
        l
    }

    /// The partition epoch (metadata) of the ISR it holds: set with each ISR it is given.
    pub fn set_partition_epoch(&mut self, epoch: u64) {
        self.partition_epoch = self.partition_epoch.max(epoch);
    }

    /// The partition epoch of the ISR it holds, for the ISR changes it asks for.
    pub fn partition_epoch(&self) -> u64 {
        self.partition_epoch
    }

    /// Whether `change` is still asked for: not yet shown applied, nor refused. A proposal that
    /// got no verdict is retried only while this holds.
    pub fn is_pending(&self, change: &IsrChange) -> bool {
        self.proposed.contains(change)
    }

    /// The leader epoch it leads under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The high watermark.
    pub fn hw(&self) -> Offset {
        self.hw
    }

    /// The ISR it commits with.
    pub fn isr(&self) -> &BTreeSet<String> {
        &self.isr
    }

    /// Each follower's lag: messages the leader holds that the follower has not said it holds.
    pub fn follower_lag(&self) -> Vec<(String, i64)> {
        self.followers
            .iter()
            .map(|(r, v)| (r.clone(), (self.newest - v.offset).max(0)))
            .collect()
    }

    /// The leader appended up to `newest`. Returns the new HW if it advanced.
    pub fn on_append(&mut self, newest: Offset) -> Option<Offset> {
        self.newest = self.newest.max(newest);
        self.commit()
    }

    /// A follower fetches, holding up to `offset` and following `epoch`. Returns the reply and
    /// the new HW if it advanced. The leader's log holds no more than it was told of.
    pub fn on_fetch(
        &mut self,
        replica: &str,
        epoch: u64,
        offset: Offset,
        now: Millis,
    ) -> (FetchReply, Option<Offset>) {
        self.on_fetch_within(replica, epoch, offset, self.newest, now)
    }

    /// [`Leader::on_fetch`] for a leader whose log holds up to `log_newest`, which may be more
    /// than it was told of ([`Leader::on_append`] comes after the append): a follower that
    /// copied such records is served, and its claim counts toward the HW once they are told.
    /// Only a claim beyond the log itself is [`FetchReply::OutOfRange`].
    pub fn on_fetch_within(
        &mut self,
        replica: &str,
        epoch: u64,
        offset: Offset,
        log_newest: Offset,
        now: Millis,
    ) -> (FetchReply, Option<Offset>) {
        if epoch != self.epoch {
            return (FetchReply::Reject, None);
        }
        let Some(v) = self.followers.get_mut(replica) else {
            return (FetchReply::Reject, None);
        };
        let newest = self.newest.max(log_newest);
        if offset > newest {
            // Counting it would commit offsets this leader will write anew, differently.
            return (FetchReply::OutOfRange { newest }, None);
        }
        v.offset = offset;
        v.last_seen = now;
        v.unheard = false;
        if v.offset >= self.newest {
            v.last_caught_up = now;
        }
        let hw = self.commit();
        (
            FetchReply::Serve {
                from: offset + 1,
                hw: self.hw,
            },
            hw,
        )
    }

    /// The metadata group applied a new ISR. Returns the new HW if it advanced.
    pub fn on_isr(&mut self, isr: impl IntoIterator<Item = String>) -> Option<Offset> {
        let before = std::mem::replace(&mut self.isr, isr.into_iter().collect());
        self.isr.insert(self.me.clone());
        for (r, v) in self.followers.iter_mut() {
            if before.contains(r) && !self.isr.contains(r) {
                v.unheard = true;
            }
        }
        // Only the changes this ISR shows done are settled; the others may still be applied.
        let isr = &self.isr;
        self.proposed.retain(|c| match c {
            IsrChange::Shrink(r) => isr.contains(r),
            IsrChange::Expand(r) => !isr.contains(r),
        });
        self.commit()
    }

    /// Checks each follower's lag: the ISR changes to ask for.
    pub fn on_tick(&mut self, now: Millis) -> Vec<IsrChange> {
        let mut out = Vec::new();
        for (r, v) in &self.followers {
            let in_isr = self.isr.contains(r);
            let lagging = now.saturating_sub(v.last_caught_up) > self.settings.max_lag;
            let change = if in_isr && lagging {
                IsrChange::Shrink(r.clone())
            } else if !in_isr && !lagging && !v.unheard && v.offset >= self.newest {
                IsrChange::Expand(r.clone())
            } else {
                continue;
            };
            if self.proposed.insert(change.clone()) {
                out.push(change);
            }
        }
        out
    }

    /// The metadata group refused `change` (its verdict, not a timeout: a proposal that timed
    /// out may still be applied, and must keep counting). Forgets it, so a later tick may ask
    /// again.
    pub fn on_isr_change_refused(&mut self, change: &IsrChange) {
        self.proposed.remove(change);
    }

    /// Whether to answer an epoch question from a follower that follows `epoch`: only one that
    /// follows this leader's epoch. A follower of a newer leader must not get a deposed
    /// leader's answer (Kafka's KIP-320 fencing).
    pub fn answers_epoch_question(&self, epoch: u64) -> bool {
        epoch == self.epoch
    }

    /// Whether `replica` holds a replica of this partition.
    pub fn is_replica(&self, replica: &str) -> bool {
        self.replicas.contains(replica)
    }

    /// The ISR a commit must satisfy: the applied ISR plus every follower whose addition is
    /// proposed and not yet applied. The metadata group may already count such a follower in the
    /// ISR, and elect it, before this leader hears of the change; committing without it could
    /// then lose acked messages. (A removal counts only once applied, for the same reason.)
    fn commit_isr(&self) -> BTreeSet<&String> {
        let mut isr: BTreeSet<&String> = self.isr.iter().collect();
        for c in &self.proposed {
            if let IsrChange::Expand(r) = c {
                isr.insert(r);
            }
        }
        isr
    }

    fn commit(&mut self) -> Option<Offset> {
        if self.isr.len() < self.settings.min_isr.max(1) {
            return None;
        }
        let mut low = self.newest;
        for r in self.commit_isr() {
            if *r == self.me {
                continue;
            }
            let o = self.followers.get(r).map_or(-1, |v| v.offset);
            low = low.min(o);
        }
        if low > self.hw {
            self.hw = low;
            Some(low)
        } else {
            None
        }
    }
}

/// The leader's answer to "where did epoch `asked` end?": its largest epoch at or below `asked`
/// and that epoch's end offset (exclusive: where the next epoch starts, or the log end offset
/// for its latest epoch). `None` when every epoch it has is newer. `epochs` holds
/// (epoch, first offset) pairs in ascending order.
pub fn epoch_end(epochs: &[(u64, Offset)], leo: Offset, asked: u64) -> Option<(u64, Offset)> {
    let i = epochs.iter().rposition(|e| e.0 <= asked)?;
    let end = epochs.get(i + 1).map_or(leo, |next| next.1);
    Some((epochs[i].0, end))
}

/// What a follower does with the leader's answer about its epoch: the logs agree only up to the
/// end of the newest epoch *both* hold. If the leader answered with an epoch the follower lacks,
/// the follower asks again about its next older epoch (Kafka's KIP-279); a single answer would
/// keep entries of an epoch the leader never had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// Keep the offsets below this one.
    TruncateAt(Offset),
    /// Ask the leader about this older epoch.
    AskAbout(u64),
}

/// Applies the divergence rule; `epochs` and `leo` describe the follower's log.
pub fn divergence(
    answer: Option<(u64, Offset)>,
    epochs: &[(u64, Offset)],
    leo: Offset,
) -> Divergence {
    let Some((epoch, leader_end)) = answer else {
        // The leader has no epoch this old: nothing of ours is known to match.
        return Divergence::TruncateAt(0);
    };
    if let Some(i) = epochs.iter().position(|e| e.0 == epoch) {
        let own_end = epochs.get(i + 1).map_or(leo, |next| next.1);
        return Divergence::TruncateAt(leader_end.min(own_end).min(leo));
    }
    match epochs.iter().rev().find(|e| e.0 < epoch) {
        Some(older) => Divergence::AskAbout(older.0),
        None => Divergence::TruncateAt(0),
    }
}

/// What a follower asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerAction {
    /// Ask the leader where epoch `epoch` (the follower's latest) ended.
    AskEpochEnd {
        /// The follower's latest leader epoch (None: its log has none).
        epoch: Option<u64>,
    },
    /// Cut the log: keep offsets below `keep_below`.
    Truncate {
        /// The first offset to remove.
        keep_below: Offset,
    },
    /// Fetch from the leader, saying the follower holds up to its newest offset.
    Fetch,
    /// Adopt this HW (never lower than the current one).
    SetHw(Offset),
    /// Tell the metadata group the leader has been silent too long.
    ReportLeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the epoch-end answer.
    Truncating,
    /// A fetch is out.
    Fetching,
    /// Caught up; fetch again at `until`.
    Idle { until: Millis },
}

/// A follower's side of one partition, following one leader at one epoch.
#[derive(Debug, Clone)]
pub struct Follower {
    leader: String,
    epoch: u64,
    settings: Settings,
    phase: Phase,
    last_contact: Millis,
    /// When the silent leader was last reported.
    reported: Option<Millis>,
}

impl Follower {
    /// Starts following `leader` at `epoch`. The first action asks where the follower's own
    /// latest epoch ended, for truncation.
    pub fn new(
        leader: impl Into<String>,
        epoch: u64,
        settings: Settings,
        now: Millis,
        own_latest_epoch: Option<u64>,
    ) -> (Follower, Vec<FollowerAction>) {
        let f = Follower {
            leader: leader.into(),
            epoch,
            settings,
            phase: Phase::Truncating,
            last_contact: now,
            reported: None,
        };
        (
            f,
            vec![FollowerAction::AskEpochEnd {
                epoch: own_latest_epoch,
            }],
        )
    }

    /// The leader followed.
    pub fn leader(&self) -> &str {
        &self.leader
    }

    /// The epoch followed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `leader`, leading at `epoch`, answered the epoch question (see [`epoch_end`]); `epochs`
    /// and `leo` describe the follower's log. Either truncate and fetch, or ask about an older
    /// epoch. An answer from another broker or epoch (a deposed leader still answering) is
    /// ignored: its log may hold what the followed leader never had.
    pub fn on_epoch_end(
        &mut self,
        leader: &str,
        epoch: u64,
        answer: Option<(u64, Offset)>,
        epochs: &[(u64, Offset)],
        leo: Offset,
        now: Millis,
    ) -> Vec<FollowerAction> {
        if leader != self.leader || epoch != self.epoch || self.phase != Phase::Truncating {
            return Vec::new();
        }
        self.last_contact = now;
        match divergence(answer, epochs, leo) {
            Divergence::AskAbout(epoch) => vec![FollowerAction::AskEpochEnd { epoch: Some(epoch) }],
            Divergence::TruncateAt(keep_below) => {
                self.phase = Phase::Fetching;
                vec![
                    FollowerAction::Truncate { keep_below },
                    FollowerAction::Fetch,
                ]
            }
        }
    }

    /// A fetch response from `leader` at `epoch`, with the leader's HW and whether it carried
    /// records. The caller appends the records (those beyond its newest offset) before this.
    pub fn on_fetch_response(
        &mut self,
        leader: &str,
        epoch: u64,
        hw: Offset,
        had_records: bool,
        now: Millis,
    ) -> Vec<FollowerAction> {
        if leader != self.leader || epoch != self.epoch || self.phase != Phase::Fetching {
            return Vec::new();
        }
        self.last_contact = now;
        self.reported = None;
        let mut out = vec![FollowerAction::SetHw(hw)];
        if had_records {
            out.push(FollowerAction::Fetch);
        } else {
            self.phase = Phase::Idle {
                until: now + self.settings.idle_wait,
            };
        }
        out
    }

    /// The leader answered a fetch with [`FetchReply::OutOfRange`]: this log holds more than
    /// the leader's, so it starts over with the truncation handshake.
    pub fn on_out_of_range(
        &mut self,
        leader: &str,
        epoch: u64,
        own_latest_epoch: Option<u64>,
        now: Millis,
    ) -> Vec<FollowerAction> {
        if leader != self.leader || epoch != self.epoch || self.phase != Phase::Fetching {
            return Vec::new();
        }
        self.last_contact = now;
        self.phase = Phase::Truncating;
        vec![FollowerAction::AskEpochEnd {
            epoch: own_latest_epoch,
        }]
    }

    /// Cutting the log failed: whatever was queued after the cut must not run. Starts the
    /// truncation handshake again (the caller waits a little first).
    pub fn on_truncate_failed(&mut self, own_latest_epoch: Option<u64>) -> Vec<FollowerAction> {
        self.phase = Phase::Truncating;
        vec![FollowerAction::AskEpochEnd {
            epoch: own_latest_epoch,
        }]
    }

    /// The leader has new data: stop waiting.
    pub fn on_notify(&mut self) -> Vec<FollowerAction> {
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Fetching;
            return vec![FollowerAction::Fetch];
        }
        Vec::new()
    }

    /// A request got no answer in time: ask again.
    pub fn on_request_timeout(&mut self, own_latest_epoch: Option<u64>) -> Vec<FollowerAction> {
        match self.phase {
            Phase::Truncating => vec![FollowerAction::AskEpochEnd {
                epoch: own_latest_epoch,
            }],
            Phase::Fetching => vec![FollowerAction::Fetch],
            Phase::Idle { .. } => Vec::new(),
        }
    }

    /// Time passed: fetch after an idle wait; report a silent leader, again after each further
    /// timeout of silence.
    pub fn on_tick(&mut self, now: Millis) -> Vec<FollowerAction> {
        let mut out = Vec::new();
        if let Phase::Idle { until } = self.phase
            && now >= until
        {
            self.phase = Phase::Fetching;
            out.push(FollowerAction::Fetch);
        }
        // Reported again after each further timeout of silence: a report can be lost (the
        // metadata group may be electing a leader itself), and the tally forgets old ones.
        let timeout = self.settings.leader_timeout;
        let silent = now.saturating_sub(self.last_contact) > timeout;
        let due = self
            .reported
            .is_none_or(|at| now.saturating_sub(at) > timeout);
        if silent && due {
            self.reported = Some(now);
            out.push(FollowerAction::ReportLeader);
        }
        out
    }
}

/// Whether enough followers reported the leader silent to replace it: more than (ISR − 1) / 2
/// witnesses (ISR 2 needs 1, ISR 3 needs 2), as Liftbridge.
pub fn failover_due(witnesses: usize, isr_size: usize) -> bool {
    witnesses > isr_size.saturating_sub(1) / 2
}

/// The metadata leader's tally of followers that report a partition's leader silent (spec §4.5).
/// Reports count toward one leader at one epoch; a report for a newer generation starts over.
/// A tally nobody adds to for `timeout` expires, so old reports do not combine with much later
/// ones.
#[derive(Debug, Clone)]
pub struct FailoverTally<K: Ord> {
    timeout: Millis,
    tallies: BTreeMap<K, Tally>,
}

#[derive(Debug, Clone)]
struct Tally {
    leader: String,
    epoch: u64,
    witnesses: BTreeSet<String>,
    expires: Millis,
}

impl<K: Ord + Clone> FailoverTally<K> {
    /// An empty tally whose entries expire `timeout` after their latest report.
    pub fn new(timeout: Millis) -> Self {
        FailoverTally {
            timeout,
            tallies: BTreeMap::new(),
        }
    }

    /// Counts `witness`'s report that `leader` (at `epoch`) of partition `key` is silent, the
    /// partition's ISR having `isr_size` members. Returns true when failover is due (see
    /// [`failover_due`]); the tally is then forgotten.
    pub fn report(
        &mut self,
        key: K,
        leader: &str,
        epoch: u64,
        witness: &str,
        isr_size: usize,
        now: Millis,
    ) -> bool {
        self.expire(now);
        let t = self.tallies.entry(key.clone()).or_insert_with(|| Tally {
            leader: leader.to_owned(),
            epoch,
            witnesses: BTreeSet::new(),
            expires: now,
        });
        if t.leader != leader || t.epoch != epoch {
            t.leader = leader.to_owned();
            t.epoch = epoch;
            t.witnesses.clear();
        }
        t.witnesses.insert(witness.to_owned());
        t.expires = now + self.timeout;
        if failover_due(t.witnesses.len(), isr_size) {
            self.tallies.remove(&key);
            return true;
        }
        false
    }

    /// How many distinct witnesses count against `key`'s leader now.
    pub fn witnesses(&self, key: &K) -> usize {
        self.tallies.get(key).map_or(0, |t| t.witnesses.len())
    }

    /// Forgets tallies with no report for the timeout.
    pub fn expire(&mut self, now: Millis) {
        self.tallies.retain(|_, t| t.expires > now);
    }

    /// Forgets everything (leadership of the metadata group was lost).
    pub fn clear(&mut self) {
        self.tallies.clear();
    }
}

/// A partition's generation as the metadata holds it: leader, leader epoch and ISR.
#[derive(Debug, Clone, Copy)]
pub struct Generation<'a> {
    /// The leader.
    pub leader: &'a str,
    /// Its leader epoch.
    pub epoch: u64,
    /// The in-sync replicas.
    pub isr: &'a [String],
}

/// A report on a partition's leader, as the metadata leader receives it.
#[derive(Debug, Clone, Copy)]
pub struct LeaderReport<'a> {
    /// Who reports: a follower (the leader is silent), or the leader itself (its log failed,
    /// it is stopping, or it restarted).
    pub replica: &'a str,
    /// The leader reported on.
    pub leader: &'a str,
    /// Its leader epoch.
    pub epoch: u64,
    /// The leader restarted and must move to a new epoch (see [`judge`]).
    pub renew: bool,
}

/// The metadata leader's verdict on a [`LeaderReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The report is about another generation, or malformed.
    Refuse(String),
    /// Counted; nothing to do yet.
    Wait,
    /// Propose this leader, naming the reported generation as the one it replaces.
    Elect(String),
}

/// Judges a report (spec §4.5, with this crate's fencing): only a report on the current
/// generation counts; an in-sync follower's report goes to the tally, and failover is due when
/// [`failover_due`]; a leader reporting itself needs no second opinion. A restarted leader
/// (`renew`) moves to a new epoch: on another in-sync replica if there is one (its log may have
/// lost a tail the others hold), else on itself. The new leader is picked by [`pick_leader`].
pub fn judge<K: Ord + Clone>(
    tally: &mut FailoverTally<K>,
    key: K,
    current: Generation<'_>,
    report: LeaderReport<'_>,
    leading: impl Fn(&str) -> usize,
    now: Millis,
) -> Judgement {
    if current.leader != report.leader || current.epoch != report.epoch {
        return Judgement::Refuse(format!(
            "Leader generation mismatch, current leader: {} epoch: {}, got leader: {} epoch: {}",
            current.leader, current.epoch, report.leader, report.epoch
        ));
    }
    let resigning = report.replica == report.leader;
    if report.renew {
        if !resigning {
            return Judgement::Refuse("only a partition's leader may renew its epoch".into());
        }
        let to = pick_leader(current.isr, report.leader, &leading)
            .unwrap_or_else(|| report.leader.to_owned());
        return Judgement::Elect(to);
    }
    if !resigning && !current.isr.iter().any(|r| r == report.replica) {
        // Only in-sync followers vouch for a failover: a lagging one may simply be cut off.
        return Judgement::Wait;
    }
    if !resigning
        && !tally.report(
            key,
            report.leader,
            report.epoch,
            report.replica,
            current.isr.len(),
            now,
        )
    {
        return Judgement::Wait;
    }
    match pick_leader(current.isr, report.leader, leading) {
        Some(l) => Judgement::Elect(l),
        None => Judgement::Refuse("No ISR candidates".into()),
    }
}

/// The new leader after a failover: an ISR member other than the old leader, the one leading
/// the fewest partitions (`leading`), ties broken by id. `None` when the ISR has no one else.
pub fn pick_leader<'a>(
    isr: impl IntoIterator<Item = &'a String>,
    old_leader: &str,
    leading: impl Fn(&str) -> usize,
) -> Option<String> {
    isr.into_iter()
        .filter(|r| r.as_str() != old_leader)
        .min_by(|a, b| leading(a).cmp(&leading(b)).then_with(|| a.cmp(b)))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn settings() -> Settings {
        Settings {
            max_lag: 100,
            leader_timeout: 100,
            idle_wait: 50,
            min_isr: 1,
        }
    }

    #[test]
    fn hw_is_the_smallest_isr_offset_and_never_falls() {
        let mut l = Leader::new(
            "a",
            1,
            s(&["a", "b", "c"]),
            s(&["a", "b", "c"]),
            (-1, -1),
            settings(),
            0,
        );
        assert_eq!(l.on_append(4), None, "followers have nothing yet");
        assert_eq!(l.on_fetch("b", 1, 4, 1).1, None);
        assert_eq!(l.on_fetch("c", 1, 2, 1).1, Some(2));
        assert_eq!(l.on_fetch("c", 1, 4, 2).1, Some(4));
        // A stale fetch from behind does not lower it.
        assert_eq!(l.on_fetch("c", 1, 1, 3).1, None);
        assert_eq!(l.hw(), 4);
    }

    #[test]
    fn fetches_of_another_epoch_or_from_strangers_are_rejected() {
        let mut l = Leader::new(
            "a",
            7,
            s(&["a", "b"]),
            s(&["a", "b"]),
            (3, 3),
            settings(),
            0,
        );
        assert_eq!(l.on_fetch("b", 6, 3, 1).0, FetchReply::Reject);
        assert_eq!(l.on_fetch("x", 7, 3, 1).0, FetchReply::Reject);
        assert_eq!(
            l.on_fetch("b", 7, 2, 1).0,
            FetchReply::Serve { from: 3, hw: 3 }
        );
    }

    #[test]
    fn lagging_followers_leave_the_isr_and_return_when_caught_up() {
        let mut l = Leader::new(
            "a",
            1,
            s(&["a", "b"]),
            s(&["a", "b"]),
            (9, -1),
            settings(),
            0,
        );
        assert!(l.on_tick(50).is_empty());
        assert_eq!(l.on_tick(101), vec![IsrChange::Shrink("b".into())]);
        assert!(l.on_tick(102).is_empty(), "asked once");
        assert_eq!(l.on_isr(s(&["a"])), Some(9), "alone, the leader commits");
        l.on_fetch("b", 1, 9, 110);
        assert_eq!(l.on_tick(111), vec![IsrChange::Expand("b".into())]);
    }

    #[test]
    fn a_replica_taken_out_of_the_isr_must_fetch_again_to_return() {
        let mut l = Leader::new(
            "a",
            1,
            s(&["a", "b", "c"]),
            s(&["a", "b", "c"]),
            (9, -1),
            settings(),
            0,
        );
        l.on_fetch("b", 1, 9, 10);
        l.on_fetch("c", 1, 9, 10);
        // b leaves the ISR by its own request (it is stopping), caught up as far as we know.
        assert_eq!(l.on_isr(s(&["a", "c"])), None);
        assert!(l.on_tick(20).is_empty(), "b is not added back unheard");
        assert_eq!(
            l.follower_lag(),
            vec![("b".to_owned(), 0), ("c".to_owned(), 0)]
        );
        l.on_append(12);
        l.on_fetch("b", 1, 9, 30);
        l.on_fetch("b", 1, 12, 31);
        assert_eq!(
            l.follower_lag(),
            vec![("b".to_owned(), 0), ("c".to_owned(), 3)]
        );
        assert_eq!(l.on_tick(32), vec![IsrChange::Expand("b".into())]);
    }

    #[test]
    fn a_replica_out_of_the_isr_from_the_start_is_added_only_after_a_fetch() {
        // An empty log: offset -1 is "caught up", but nothing was heard from b.
        let mut l = Leader::new("a", 1, s(&["a", "b"]), s(&["a"]), (-1, -1), settings(), 0);
        assert!(l.on_tick(5).is_empty());
        l.on_fetch("b", 1, -1, 6);
        assert_eq!(l.on_tick(7), vec![IsrChange::Expand("b".into())]);
    }

    #[test]
    fn a_follower_being_added_counts_for_commits_at_once() {
        let mut l = Leader::new("a", 1, s(&["a", "b"]), s(&["a"]), (3, 3), settings(), 0);
        l.on_fetch("b", 1, 3, 5);
        assert_eq!(l.on_tick(6), vec![IsrChange::Expand("b".into())]);
        // The metadata group may count b already: nothing commits without it.
        assert_eq!(l.on_append(4), None);
        assert_eq!(l.on_fetch("b", 1, 4, 7).1, Some(4));
    }

    #[test]
    fn an_isr_update_settles_only_the_changes_it_shows() {
        let mut l = Leader::new(
            "a",
            1,
            s(&["a", "b", "c"]),
            s(&["a", "b"]),
            (3, 3),
            settings(),
            0,
        );
        l.on_fetch("c", 1, 3, 100);
        // b lags and c caught up: both changes are asked for in one tick.
        let mut changes = l.on_tick(120);
        changes.sort();
        assert_eq!(
            changes,
            vec![IsrChange::Shrink("b".into()), IsrChange::Expand("c".into())]
        );
        // The shrink lands first; c's addition is still pending and still counts.
        assert_eq!(l.on_isr(s(&["a"])), None);
        assert_eq!(l.on_append(5), None, "c holds only 3");
        assert_eq!(l.on_fetch("c", 1, 5, 121).1, Some(5));
        l.on_isr_change_refused(&IsrChange::Expand("c".into()));
        assert_eq!(l.on_append(6), Some(6), "refused: no longer counted");
    }

    #[test]
    fn nothing_commits_below_min_isr() {
        let st = Settings {
            min_isr: 2,
            ..settings()
        };
        let mut l = Leader::new("a", 1, s(&["a", "b"]), s(&["a"]), (5, -1), st, 0);
        assert_eq!(l.hw(), -1);
        assert_eq!(l.on_append(6), None);
        assert_eq!(l.on_isr(s(&["a", "b"])), None, "b holds nothing yet");
        assert_eq!(l.on_fetch("b", 1, 6, 1).1, Some(6));
    }

    #[test]
    fn a_follower_truncates_then_fetches_and_reports_a_silent_leader() {
        let (mut f, first) = Follower::new("a", 3, settings(), 0, Some(2));
        assert_eq!(first, vec![FollowerAction::AskEpochEnd { epoch: Some(2) }]);
        assert!(
            f.on_fetch_response("a", 3, 5, true, 1).is_empty(),
            "no data before truncation"
        );
        assert_eq!(
            f.on_epoch_end("a", 3, Some((2, 7)), &[(1, 0), (2, 5)], 9, 2),
            vec![
                FollowerAction::Truncate { keep_below: 7 },
                FollowerAction::Fetch
            ]
        );
        assert!(
            f.on_fetch_response("b", 3, 5, true, 3).is_empty(),
            "only from its leader"
        );
        assert_eq!(
            f.on_fetch_response("a", 3, 5, true, 3),
            vec![FollowerAction::SetHw(5), FollowerAction::Fetch]
        );
        assert_eq!(
            f.on_fetch_response("a", 3, 6, false, 4),
            vec![FollowerAction::SetHw(6)]
        );
        assert_eq!(f.on_notify(), vec![FollowerAction::Fetch]);
        assert_eq!(f.on_tick(200), vec![FollowerAction::ReportLeader]);
        assert!(f.on_tick(300).is_empty(), "not again within the timeout");
        assert_eq!(
            f.on_tick(301),
            vec![FollowerAction::ReportLeader],
            "again after another timeout of silence"
        );
    }

    /// A deposed leader's answer to the epoch question: c follows b at epoch 20, and a (epoch
    /// 10) still holds 101..110 that b never had.
    #[test]
    fn only_the_followed_leader_answers_the_epoch_question() {
        let c_epochs = [(1, 0), (10, 101)];
        let (mut f, first) = Follower::new("b", 20, settings(), 0, Some(10));
        assert_eq!(first, vec![FollowerAction::AskEpochEnd { epoch: Some(10) }]);
        // a answers first, at its own epoch 10: its epoch 10 reaches 111.
        assert!(
            f.on_epoch_end("a", 10, Some((10, 111)), &c_epochs, 111, 1)
                .is_empty(),
            "a deposed leader's answer is ignored"
        );
        assert!(
            f.on_epoch_end("b", 10, Some((10, 111)), &c_epochs, 111, 1)
                .is_empty(),
            "an answer from another epoch of the leader is ignored"
        );
        assert_eq!(
            f.on_epoch_end("b", 20, Some((10, 101)), &c_epochs, 111, 2),
            vec![
                FollowerAction::Truncate { keep_below: 101 },
                FollowerAction::Fetch
            ]
        );
        // The leader side: a follower of another epoch gets no answer.
        let l = Leader::new(
            "a",
            10,
            s(&["a", "b", "c"]),
            s(&["a", "c"]),
            (110, 100),
            settings(),
            0,
        );
        assert!(!l.answers_epoch_question(20));
        assert!(l.answers_epoch_question(10));
    }

    /// A restarted leader lost its unsynced 101..120, which b copied, and leads again at the
    /// same epoch: b's claim must not count, or the HW would cover offsets the leader writes
    /// anew; b truncates to the leader's end.
    #[test]
    fn a_follower_ahead_of_its_leader_truncates_and_does_not_count() {
        let mut l = Leader::new(
            "a",
            10,
            s(&["a", "b"]),
            s(&["a", "b"]),
            (100, 100),
            settings(),
            0,
        );
        assert_eq!(
            l.on_fetch("b", 10, 120, 1),
            (FetchReply::OutOfRange { newest: 100 }, None)
        );
        assert_eq!(
            l.on_append(125),
            None,
            "b's stale claim does not commit 101..120"
        );
        assert_eq!(l.hw(), 100);
        let (mut f, _) = Follower::new("a", 10, settings(), 0, Some(10));
        let b_epochs = [(10, 50)];
        f.on_epoch_end("a", 10, Some((10, 121)), &b_epochs, 121, 1);
        assert_eq!(
            f.on_out_of_range("a", 10, Some(10), 2),
            vec![FollowerAction::AskEpochEnd { epoch: Some(10) }]
        );
        assert_eq!(
            f.on_epoch_end("a", 10, Some((10, 101)), &b_epochs, 121, 3),
            vec![
                FollowerAction::Truncate { keep_below: 101 },
                FollowerAction::Fetch
            ]
        );
    }

    /// The leader's log already holds 101..105, which b copied, but the append that wrote them
    /// has not told the state machine yet: b's fetch is served (not out of range), and its claim
    /// commits nothing beyond what the state machine was told until the append is.
    #[test]
    fn a_follower_ahead_of_the_told_offsets_but_within_the_log_is_served() {
        let mut l = Leader::new(
            "a",
            10,
            s(&["a", "b"]),
            s(&["a", "b"]),
            (100, 100),
            settings(),
            0,
        );
        assert_eq!(
            l.on_fetch_within("b", 10, 105, 105, 1),
            (FetchReply::Serve { from: 106, hw: 100 }, None)
        );
        assert_eq!(l.on_append(105), Some(105), "b's claim counts once told");
        assert_eq!(
            l.on_fetch_within("b", 10, 107, 105, 2),
            (FetchReply::OutOfRange { newest: 105 }, None),
            "beyond the log itself is still out of range"
        );
        assert_eq!(l.on_append(110), None);
    }

    #[test]
    fn a_failed_truncation_is_tried_again_before_any_fetch() {
        let (mut f, _) = Follower::new("a", 3, settings(), 0, Some(2));
        f.on_epoch_end("a", 3, Some((2, 7)), &[(2, 5)], 9, 1);
        assert_eq!(
            f.on_truncate_failed(Some(2)),
            vec![FollowerAction::AskEpochEnd { epoch: Some(2) }]
        );
        assert!(
            f.on_fetch_response("a", 3, 5, true, 2).is_empty(),
            "no data into a log that was not cut"
        );
        assert_eq!(
            f.on_epoch_end("a", 3, Some((2, 7)), &[(2, 5)], 9, 3),
            vec![
                FollowerAction::Truncate { keep_below: 7 },
                FollowerAction::Fetch
            ]
        );
    }

    #[test]
    fn truncation_keeps_only_what_both_logs_share() {
        let leader = [(1, 0), (2, 652), (4, 710)];
        assert_eq!(epoch_end(&leader, 800, 3), Some((2, 710)));
        assert_eq!(epoch_end(&leader, 800, 4), Some((4, 800)));
        assert_eq!(epoch_end(&leader, 800, 0), None);
        // The follower wrote epoch 1 up to 707 and led epoch 3; the leader never had epoch 3.
        let follower = [(1, 0), (3, 707)];
        assert_eq!(
            divergence(Some((2, 710)), &follower, 720),
            Divergence::AskAbout(1)
        );
        assert_eq!(
            divergence(Some((1, 652)), &follower, 720),
            Divergence::TruncateAt(652)
        );
        // Same epoch: cut where it ended on the leader, never beyond our own end.
        assert_eq!(
            divergence(Some((3, 715)), &follower, 720),
            Divergence::TruncateAt(715)
        );
        assert_eq!(
            divergence(Some((3, 900)), &follower, 720),
            Divergence::TruncateAt(720)
        );
        assert_eq!(divergence(None, &follower, 720), Divergence::TruncateAt(0));
        assert_eq!(
            divergence(Some((1, 5)), &[(2, 0)], 9),
            Divergence::TruncateAt(0)
        );
    }

    #[test]
    fn a_tally_counts_distinct_witnesses_of_one_generation_until_it_expires() {
        let mut t = FailoverTally::new(100);
        assert!(!t.report("p", "a", 5, "b", 3, 0));
        assert!(!t.report("p", "a", 5, "b", 3, 10), "the same witness twice");
        assert_eq!(t.witnesses(&"p"), 1);
        // A report about a newer generation starts over.
        assert!(!t.report("p", "c", 6, "b", 3, 20));
        assert!(t.report("p", "c", 6, "d", 3, 30), "two of an ISR of three");
        assert_eq!(t.witnesses(&"p"), 0, "forgotten once due");
        assert!(!t.report("q", "a", 5, "b", 3, 40));
        assert!(
            !t.report("q", "a", 5, "c", 3, 200),
            "the first report expired"
        );
        assert!(t.report("r", "a", 5, "b", 2, 0), "ISR of two: one report");
        t.report("s", "a", 5, "b", 3, 0);
        t.clear();
        assert_eq!(t.witnesses(&"s"), 0);
    }

    #[test]
    fn the_new_leader_is_the_least_loaded_other_isr_member() {
        let isr = s(&["a", "b", "c", "d"]);
        let load = |r: &str| match r {
            "a" => 0,
            "b" => 3,
            "c" => 1,
            _ => 1,
        };
        assert_eq!(pick_leader(&isr, "a", load), Some("c".to_string()));
        assert_eq!(pick_leader(&s(&["a"]), "a", load), None);
    }

    #[test]
    fn failover_needs_a_majority_of_the_other_isr_members() {
        assert!(failover_due(1, 2));
        assert!(!failover_due(1, 3));
        assert!(failover_due(2, 3));
        assert!(!failover_due(0, 1));
    }
}
