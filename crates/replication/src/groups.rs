//! A consumer-group coordinator's view of its members' liveness, with no I/O.
//!
//! The coordinator of a group expects each member to fetch its assignments at least once per
//! consumer timeout. [`Liveness`] holds a deadline per member of the groups this broker
//! coordinates: [`sync`](Liveness::sync) follows the metadata (new members get a fresh
//! deadline, departed ones are forgotten), [`heartbeat`](Liveness::heartbeat) pushes a deadline
//! back, and [`expired`](Liveness::expired) names the members whose deadline passed. Each named
//! member gets a fresh deadline at once, so that if the leave proposed for it fails, it is named
//! again one timeout later (Liftbridge re-arms the timer and retries the same way).

use std::collections::{BTreeMap, BTreeSet};

use crate::Millis;

/// Deadlines of the members of the groups one broker coordinates.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    timeout: Millis,
    /// (group, member) → deadline.
    deadlines: BTreeMap<(String, String), Millis>,
}

impl Liveness {
    /// No members yet; each must be heard from every `timeout` ms.
    pub fn new(timeout: Millis) -> Liveness {
        Liveness {
            timeout,
            deadlines: BTreeMap::new(),
        }
    }

    /// Follows the metadata: `coordinated` lists every (group, member) this broker coordinates
    /// now. Newcomers get a full timeout from `now`; the rest keep their deadlines; the others
    /// are forgotten.
    pub fn sync(&mut self, coordinated: impl IntoIterator<Item = (String, String)>, now: Millis) {
        let now_set: BTreeSet<(String, String)> = coordinated.into_iter().collect();
        self.deadlines.retain(|k, _| now_set.contains(k));
        for k in now_set {
            self.deadlines.entry(k).or_insert(now + self.timeout);
        }
    }

    /// `member` of `group` was heard from. Returns false when this broker does not track it
    /// (not a member, or not coordinated here).
    pub fn heartbeat(&mut self, group: &str, member: &str, now: Millis) -> bool {
        match self
            .deadlines
            .get_mut(&(group.to_owned(), member.to_owned()))
        {
            Some(d) => {
                *d = now + self.timeout;
                true
            }
            None => false,
        }
    }

    /// Starts tracking `member` of `group` with a fresh deadline, if it is not tracked.
    pub fn track(&mut self, group: &str, member: &str, now: Millis) {
        self.deadlines
            .entry((group.to_owned(), member.to_owned()))
            .or_insert(now + self.timeout);
    }

    /// The members whose deadline passed, in order; each gets a fresh deadline.
    pub fn expired(&mut self, now: Millis) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, d) in self.deadlines.iter_mut() {
            if *d <= now {
                out.push(k.clone());
                *d = now + self.timeout;
            }
        }
        out
    }

    /// How many members are tracked.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

/// Whether reports from `witnesses` distinct members of a group of `members` are enough to
/// replace its coordinator: more than half, as Liftbridge (1 of 1, 2 of 2, 2 of 3, 3 of 4).
pub fn coordinator_failover_due(witnesses: usize, members: usize) -> bool {
    witnesses > members / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(g: &str, m: &str) -> (String, String) {
        (g.to_owned(), m.to_owned())
    }

    #[test]
    fn members_expire_unless_heard_from_and_are_named_again_a_timeout_later() {
        let mut l = Liveness::new(100);
        l.sync([k("g", "a"), k("g", "b")], 0);
        assert!(l.expired(99).is_empty());
        assert!(l.heartbeat("g", "a", 50));
        assert_eq!(l.expired(100), vec![k("g", "b")]);
        assert!(l.expired(149).is_empty());
        assert_eq!(l.expired(150), vec![k("g", "a")]);
        assert_eq!(
            l.expired(200),
            vec![k("g", "b")],
            "named again: its leave failed"
        );
        // b left: forgotten; c joined: a fresh deadline.
        l.sync([k("g", "a"), k("g", "c")], 210);
        assert!(!l.heartbeat("g", "b", 210));
        assert_eq!(l.len(), 2);
        assert_eq!(l.expired(250), vec![k("g", "a")]);
        assert_eq!(l.expired(310), vec![k("g", "c")]);
        l.sync(Vec::new(), 400);
        assert!(l.is_empty());
    }

    #[test]
    fn failover_needs_more_than_half_of_the_members() {
        assert!(coordinator_failover_due(1, 1));
        assert!(!coordinator_failover_due(1, 2));
        assert!(coordinator_failover_due(2, 2));
        assert!(coordinator_failover_due(2, 3));
        assert!(!coordinator_failover_due(2, 4));
        assert!(coordinator_failover_due(3, 4));
    }
}
