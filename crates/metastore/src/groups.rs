//! Consumer groups: members, the streams each consumes, and which member owns which partition.
//!
//! Assignment follows Liftbridge exactly (`server/groups.go`), deterministically:
//! - Each member has a `count`: the partitions assigned to it over all streams.
//! - `balance(s)` takes every partition of stream `s` from its subscribers and hands them out
//!   again, partition 0 first, each to the subscriber with the smallest `(count, id)`.
//! - A join balances each of the new member's streams, in sorted order. A leave balances each
//!   of the leaver's streams on which it held a partition, in sorted order. A stream's deletion
//!   drops it from its subscribers and balances their other streams, in sorted order.
//!
//! Everything here is a pure function of the operations applied, so every node that applies the
//! same entries holds the same assignments. Snapshots carry the assignments themselves (our
//! addition to `Consumer`), so a restored node does not depend on replaying history.

use std::collections::{BTreeMap, BTreeSet};

use liftbridge_proto::internal;

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The streams it consumes.
    pub streams: BTreeSet<String>,
    /// Its partitions, by stream, in the order they were assigned (ascending).
    pub assignments: BTreeMap<String, Vec<i32>>,
}

impl Member {
    /// Partitions assigned over all streams.
    pub fn count(&self) -> usize {
        self.assignments.values().map(Vec::len).sum()
    }
}

/// One consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Its id.
    pub id: String,
    /// Members by consumer id.
    pub members: BTreeMap<String, Member>,
    /// Members in the order they joined; snapshots keep it.
    pub join_order: Vec<String>,
    /// Streams that have ever had a subscriber in this group (Liftbridge keeps a subscriber list
    /// per such stream and never prunes it); deleting one of them bumps the group's epoch.
    pub subscribed: BTreeSet<String>,
    /// The broker coordinating it.
    pub coordinator: String,
    /// The generation of membership, assignments and coordinator.
    pub epoch: u64,
}

impl GroupState {
    /// An empty group.
    pub fn new(id: &str, coordinator: &str, epoch: u64) -> GroupState {
        GroupState {
            id: id.to_owned(),
            members: BTreeMap::new(),
            join_order: Vec::new(),
            subscribed: BTreeSet::new(),
            coordinator: coordinator.to_owned(),
            epoch,
        }
    }

    /// Adds a member and balances each of its streams, in sorted order. `partitions` gives a
    /// stream's partition count (0 for a stream that does not exist).
    pub fn add_member(&mut self, id: &str, streams: &[String], partitions: &impl Fn(&str) -> i32) {
        let streams: BTreeSet<String> = streams.iter().cloned().collect();
        self.members.insert(
            id.to_owned(),
            Member {
                streams: streams.clone(),
                assignments: BTreeMap::new(),
            },
        );
        self.join_order.retain(|m| m != id);
        self.join_order.push(id.to_owned());
        for s in &streams {
            self.subscribed.insert(s.clone());
            self.balance(s, partitions(s));
        }
    }

    /// Removes a member and balances each stream on which it held a partition. Returns whether
    /// it was a member.
    pub fn remove_member(&mut self, id: &str, partitions: &impl Fn(&str) -> i32) -> bool {
        let Some(gone) = self.members.remove(id) else {
            return false;
        };
        self.join_order.retain(|m| m != id);
        for s in &gone.streams {
            if gone.assignments.get(s).is_some_and(|p| !p.is_empty()) {
                self.balance(s, partitions(s));
            }
        }
        true
    }

    /// A stream was deleted: its subscribers drop it, and their other streams are balanced.
    /// Returns whether the group ever had a subscriber on it (then its epoch moves).
    pub fn stream_deleted(&mut self, stream: &str, partitions: &impl Fn(&str) -> i32) -> bool {
        let mut touched = BTreeSet::new();
        for m in self.members.values_mut() {
            if m.streams.remove(stream) {
                m.assignments.remove(stream);
                touched.extend(m.streams.iter().cloned());
            }
        }
        for s in &touched {
            self.balance(s, partitions(s));
        }
        self.subscribed.remove(stream)
    }

    /// Hands out every partition of `stream` again among its subscribers.
    fn balance(&mut self, stream: &str, partitions: i32) {
        let subscribers: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.streams.contains(stream))
            .map(|(id, _)| id.clone())
            .collect();
        if subscribers.is_empty() {
            return;
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for id in &subscribers {
            let m = self.members.get_mut(id).expect("a subscriber is a member");
            m.assignments.remove(stream);
            counts.insert(id.clone(), m.count());
        }
        for p in 0..partitions.max(0) {
            let (owner, _) = counts
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
                .map(|(id, c)| (id.clone(), *c))
                .expect("at least one subscriber");
            *counts.get_mut(&owner).expect("counted") += 1;
            self.members
                .get_mut(&owner)
                .expect("a subscriber is a member")
                .assignments
                .entry(stream.to_owned())
                .or_default()
                .push(p);
        }
    }

    /// The group as a snapshot record: members in join order, each with its assignments.
    pub fn to_proto(&self) -> internal::ConsumerGroup {
        internal::ConsumerGroup {
            id: self.id.clone(),
            members: self
                .join_order
                .iter()
                .filter_map(|id| self.members.get(id).map(|m| (id, m)))
                .map(|(id, m)| internal::Consumer {
                    id: id.clone(),
                    streams: m.streams.iter().cloned().collect(),
                    assignments: m
                        .assignments
                        .iter()
                        .map(|(s, p)| internal::PartitionAssignment {
                            stream: s.clone(),
                            partitions: p.clone(),
                        })
                        .collect(),
                })
                .collect(),
            coordinator: self.coordinator.clone(),
            epoch: self.epoch,
            subscribed: self.subscribed.iter().cloned().collect(),
        }
    }

    /// A group from a snapshot record. Records with assignments (ours) are taken as they are;
    /// records without (Liftbridge's) are rebuilt by adding the members in their order.
    pub fn from_proto(g: internal::ConsumerGroup, partitions: &impl Fn(&str) -> i32) -> GroupState {
        let mut out = GroupState::new(&g.id, &g.coordinator, g.epoch);
        let carries =
            g.members.iter().any(|m| !m.assignments.is_empty()) || !g.subscribed.is_empty();
        for m in g.members {
            if carries {
                out.join_order.push(m.id.clone());
                out.subscribed.extend(m.streams.iter().cloned());
                out.members.insert(
                    m.id,
                    Member {
                        streams: m.streams.into_iter().collect(),
                        assignments: m
                            .assignments
                            .into_iter()
                            .map(|a| (a.stream, a.partitions))
                            .collect(),
                    },
                );
            } else {
                out.add_member(&m.id, &m.streams, partitions);
            }
        }
        out.subscribed.extend(g.subscribed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &str) -> i32 {
        match s {
            "foo" | "bar" => 2,
            "three" => 3,
            _ => 0,
        }
    }

    fn of(g: &GroupState, m: &str) -> Vec<(String, Vec<i32>)> {
        g.members[m]
            .assignments
            .iter()
            .map(|(s, p)| (s.clone(), p.clone()))
            .collect()
    }

    fn v(items: &[(&str, &[i32])]) -> Vec<(String, Vec<i32>)> {
        items
            .iter()
            .map(|(s, p)| (s.to_string(), p.to_vec()))
            .collect()
    }

    #[test]
    fn the_lifecycle_example_of_the_original() {
        let mut g = GroupState::new("g", "a", 0);
        g.add_member("c1", &["foo".into(), "bar".into()], &counts);
        assert_eq!(of(&g, "c1"), v(&[("bar", &[0, 1]), ("foo", &[0, 1])]));
        // c2 on foo only: foo is balanced with counts c1 = 2 (bar), c2 = 0, so c2 takes both.
        g.add_member("c2", &["foo".into()], &counts);
        assert_eq!(of(&g, "c1"), v(&[("bar", &[0, 1])]));
        assert_eq!(of(&g, "c2"), v(&[("foo", &[0, 1])]));
        // c2 leaves: c1 has everything again.
        assert!(g.remove_member("c2", &counts));
        assert_eq!(of(&g, "c1"), v(&[("bar", &[0, 1]), ("foo", &[0, 1])]));
        assert!(!g.remove_member("c2", &counts));
    }

    #[test]
    fn ties_go_to_the_smallest_id_and_counts_span_streams() {
        let mut g = GroupState::new("g", "a", 0);
        g.add_member("b", &["three".into()], &counts);
        g.add_member("a", &["three".into()], &counts);
        // Both at 0: a (smaller id) takes 0, then b (a has 1) takes 1, then a takes 2.
        assert_eq!(of(&g, "a"), v(&[("three", &[0, 2])]));
        assert_eq!(of(&g, "b"), v(&[("three", &[1])]));
        g.add_member("c", &["foo".into(), "three".into()], &counts);
        // foo first (sorted): only c, takes 0 and 1; then three: a 0, b 0, c 2 → a, b, a.
        assert_eq!(of(&g, "c"), v(&[("foo", &[0, 1])]));
        assert_eq!(of(&g, "a"), v(&[("three", &[0, 2])]));
        assert_eq!(of(&g, "b"), v(&[("three", &[1])]));
    }

    #[test]
    fn a_deleted_stream_leaves_its_members_with_the_rest() {
        let mut g = GroupState::new("g", "a", 0);
        g.add_member("c1", &["foo".into(), "bar".into()], &counts);
        g.add_member("c2", &["bar".into()], &counts);
        let gone = |s: &str| if s == "foo" { 0 } else { counts(s) };
        assert!(g.stream_deleted("foo", &gone));
        assert_eq!(
            g.members["c1"].streams.iter().collect::<Vec<_>>(),
            vec!["bar"]
        );
        // bar balanced again: c1 0, c2 0 (its bar dropped first) → c1 0, c2 1.
        assert_eq!(of(&g, "c1"), v(&[("bar", &[0])]));
        assert_eq!(of(&g, "c2"), v(&[("bar", &[1])]));
        assert!(
            !g.stream_deleted("foo", &gone),
            "no subscriber list any more"
        );
    }

    #[test]
    fn snapshots_keep_assignments_and_join_order() {
        let mut g = GroupState::new("g", "a", 7);
        g.add_member("z", &["three".into()], &counts);
        g.add_member("a", &["three".into(), "foo".into()], &counts);
        g.remove_member("z", &counts);
        g.add_member("m", &["three".into()], &counts);
        let back = GroupState::from_proto(g.to_proto(), &|_| panic!("not replayed"));
        assert_eq!(back, g);
    }
}
