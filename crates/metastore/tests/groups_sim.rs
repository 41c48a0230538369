//! A seeded simulation of consumer groups under the metadata state machine: random streams
//! created and deleted, members joining, leaving and expiring, coordinators changing, and nodes
//! that restore from a snapshot at random points or apply the log late. After every step:
//! - every node holds identical groups at equal indexes;
//! - each partition of a stream is owned by exactly one member that consumes the stream, while
//!   the group has such a member, and by no one else;
//! - no member owns a partition of a stream it does not consume, or one that does not exist;
//! - a group's epoch never goes down, not even when it is deleted and created again.

use std::collections::BTreeMap;

use liftbridge_proto::internal::{self, Op, RaftLog};
use metastore::Fsm;
use proptest::prelude::*;

const STREAMS: [&str; 4] = ["a", "b", "c", "d"];
const GROUPS: [&str; 2] = ["g1", "g2"];
const CONSUMERS: [&str; 5] = ["c1", "c2", "c3", "c4", "c5"];
const BROKERS: [&str; 3] = ["x", "y", "z"];

#[derive(Debug, Clone)]
enum Step {
    CreateStream(usize, i32),
    DeleteStream(usize),
    Join(usize, usize, Vec<usize>),
    Leave(usize, usize),
    Coordinator(usize, usize),
    /// A lagging node restores from the leader's snapshot.
    Restore,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..STREAMS.len(), 1i32..5).prop_map(|(s, n)| Step::CreateStream(s, n)),
        1 => (0..STREAMS.len()).prop_map(Step::DeleteStream),
        5 => (0..GROUPS.len(), 0..CONSUMERS.len(), prop::collection::vec(0..STREAMS.len(), 1..4))
            .prop_map(|(g, c, s)| Step::Join(g, c, s)),
        3 => (0..GROUPS.len(), 0..CONSUMERS.len()).prop_map(|(g, c)| Step::Leave(g, c)),
        1 => (0..GROUPS.len(), 0..BROKERS.len()).prop_map(|(g, b)| Step::Coordinator(g, b)),
        1 => Just(Step::Restore),
    ]
}

fn entry(f: &Fsm, s: &Step) -> Option<RaftLog> {
    let strings = |v: &[usize]| v.iter().map(|i| STREAMS[*i].to_owned()).collect::<Vec<_>>();
    Some(match s {
        Step::CreateStream(i, n) => RaftLog {
            op: Op::CreateStream as i32,
            create_stream_op: Some(internal::CreateStreamOp {
                stream: Some(internal::Stream {
                    name: STREAMS[*i].into(),
                    subject: STREAMS[*i].into(),
                    partitions: (0..*n)
                        .map(|id| internal::Partition {
                            stream: STREAMS[*i].into(),
                            id,
                            replication_factor: 1,
                            replicas: vec!["x".into()],
                            leader: "x".into(),
                            isr: vec!["x".into()],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        },
        Step::DeleteStream(i) => RaftLog {
            op: Op::DeleteStream as i32,
            delete_stream_op: Some(internal::DeleteStreamOp {
                stream: STREAMS[*i].into(),
            }),
            ..Default::default()
        },
        // As the broker does: a join to a group that does not exist creates it.
        Step::Join(g, c, streams) if !f.groups().contains_key(GROUPS[*g]) => RaftLog {
            op: Op::CreateConsumerGroup as i32,
            create_consumer_group_op: Some(internal::CreateConsumerGroupOp {
                consumer_group: Some(internal::ConsumerGroup {
                    id: GROUPS[*g].into(),
                    members: vec![internal::Consumer {
                        id: CONSUMERS[*c].into(),
                        streams: strings(streams),
                        ..Default::default()
                    }],
                    coordinator: BROKERS[0].into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        },
        Step::Join(g, c, streams) => RaftLog {
            op: Op::JoinConsumerGroup as i32,
            join_consumer_group_op: Some(internal::JoinConsumerGroupOp {
                group_id: GROUPS[*g].into(),
                consumer_id: CONSUMERS[*c].into(),
                streams: strings(streams),
            }),
            ..Default::default()
        },
        Step::Leave(g, c) => RaftLog {
            op: Op::LeaveConsumerGroup as i32,
            leave_consumer_group_op: Some(internal::LeaveConsumerGroupOp {
                group_id: GROUPS[*g].into(),
                consumer_id: CONSUMERS[*c].into(),
                expired: c % 2 == 0,
            }),
            ..Default::default()
        },
        Step::Coordinator(g, b) => RaftLog {
            op: Op::ChangeConsumerGroupCoordinator as i32,
            change_consumer_group_coordinator_op: Some(
                internal::ChangeConsumerGroupCoordinatorOp {
                    group_id: GROUPS[*g].into(),
                    coordinator: BROKERS[*b].into(),
                },
            ),
            ..Default::default()
        },
        Step::Restore => return None,
    })
}

fn check_assignments(f: &Fsm) -> Result<(), TestCaseError> {
    for g in f.groups().values() {
        let mut owners: BTreeMap<(String, i32), Vec<String>> = BTreeMap::new();
        for (id, m) in &g.members {
            for (s, parts) in &m.assignments {
                prop_assert!(m.streams.contains(s), "{id} owns {s} without consuming it");
                let n = f.stream(s).map_or(0, |st| st.partitions.len() as i32);
                for p in parts {
                    prop_assert!(*p < n, "{id} owns {s}/{p}, which does not exist");
                    owners.entry((s.clone(), *p)).or_default().push(id.clone());
                }
            }
        }
        for (key, who) in &owners {
            prop_assert_eq!(who.len(), 1, "{:?} has owners {:?} in {}", key, who, g.id);
        }
        for m in g.members.values() {
            for s in &m.streams {
                let n = f.stream(s).map_or(0, |st| st.partitions.len() as i32);
                for p in 0..n {
                    prop_assert!(
                        owners.contains_key(&(s.clone(), p)),
                        "{}/{} unassigned in {} though {:?} consume it",
                        s,
                        p,
                        g.id,
                        g.members.keys().collect::<Vec<_>>()
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn groups_stay_consistent_on_every_node(steps in prop::collection::vec(step(), 1..80)) {
        // Node 0 applies at once; node 1 one step late; node 2 restores from snapshots.
        let mut nodes = [Fsm::new(), Fsm::new(), Fsm::new()];
        let mut log: Vec<RaftLog> = Vec::new();
        let mut epochs: BTreeMap<String, u64> = BTreeMap::new();
        for s in &steps {
            match entry(&nodes[0], s) {
                Some(e) => {
                    log.push(e);
                    let index = log.len() as u64;
                    nodes[0].apply(&log[index as usize - 1], index);
                    if index >= 2 {
                        nodes[1].apply(&log[index as usize - 2], index - 1);
                    }
                    nodes[2].apply(&log[index as usize - 1], index);
                }
                None => {
                    let snap = nodes[0].snapshot();
                    let mut fresh = Fsm::new();
                    fresh.restore(&snap, log.len() as u64).unwrap();
                    nodes[2] = fresh;
                }
            }
            check_assignments(&nodes[0])?;
            prop_assert_eq!(nodes[0].groups(), nodes[2].groups());
            // Also across a deletion: a re-created group starts above every epoch the old one
            // had, since partitions still fence with those.
            for g in nodes[0].groups().values() {
                let before = epochs.insert(g.id.clone(), g.epoch).unwrap_or(0);
                prop_assert!(g.epoch >= before, "{} went from epoch {} to {}", g.id, before, g.epoch);
            }
        }
        // The late node catches up to the same state.
        let n = log.len();
        if n >= 1 {
            nodes[1].apply(&log[n - 1], n as u64);
        }
        prop_assert_eq!(nodes[0].groups(), nodes[1].groups());
    }
}
