//! The metadata state machine: preconditions, epochs, recovery, snapshots and replay.

use liftbridge_proto::internal::{self, Op, RaftLog};
use metastore::{Event, Fsm, OpError};
use proptest::prelude::*;

fn partition(stream: &str, id: i32, replicas: &[&str]) -> internal::Partition {
    internal::Partition {
        subject: format!("{stream}.subject"),
        stream: stream.into(),
        id,
        replication_factor: replicas.len() as i32,
        replicas: replicas.iter().map(|r| r.to_string()).collect(),
        leader: replicas[0].into(),
        ..Default::default()
    }
}

fn create(stream: &str, partitions: i32) -> RaftLog {
    RaftLog {
        op: Op::CreateStream as i32,
        create_stream_op: Some(internal::CreateStreamOp {
            stream: Some(internal::Stream {
                name: stream.into(),
                subject: format!("{stream}.subject"),
                partitions: (0..partitions)
                    .map(|i| partition(stream, i, &["a", "b", "c"]))
                    .collect(),
                creation_timestamp: 1,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn delete(stream: &str) -> RaftLog {
    RaftLog {
        op: Op::DeleteStream as i32,
        delete_stream_op: Some(internal::DeleteStreamOp {
            stream: stream.into(),
        }),
        ..Default::default()
    }
}

fn shrink(stream: &str, p: i32, replica: &str, leader: &str, epoch: u64) -> RaftLog {
    RaftLog {
        op: Op::ShrinkIsr as i32,
        shrink_isr_op: Some(internal::ShrinkIsrOp {
            stream: stream.into(),
            partition: p,
            replica_to_remove: replica.into(),
            leader: leader.into(),
            leader_epoch: epoch,
        }),
        ..Default::default()
    }
}

fn expand(stream: &str, p: i32, replica: &str, leader: &str, epoch: u64) -> RaftLog {
    RaftLog {
        op: Op::ExpandIsr as i32,
        expand_isr_op: Some(internal::ExpandIsrOp {
            stream: stream.into(),
            partition: p,
            replica_to_add: replica.into(),
            leader: leader.into(),
            leader_epoch: epoch,
            epoch: 0,
        }),
        ..Default::default()
    }
}

fn change_leader(stream: &str, p: i32, leader: &str) -> RaftLog {
    change_leader_from(stream, p, leader, "", 0)
}

/// A leader change that names the leader it replaces and that leader's epoch.
fn change_leader_from(stream: &str, p: i32, leader: &str, old: &str, old_epoch: u64) -> RaftLog {
    RaftLog {
        op: Op::ChangeLeader as i32,
        change_leader_op: Some(internal::ChangeLeaderOp {
            stream: stream.into(),
            partition: p,
            leader: leader.into(),
            expected_leader: old.into(),
            expected_leader_epoch: old_epoch,
        }),
        ..Default::default()
    }
}

fn expand_at(stream: &str, p: i32, replica: &str, leader: &str, epoch: u64, at: u64) -> RaftLog {
    let mut e = expand(stream, p, replica, leader, epoch);
    e.expand_isr_op.as_mut().unwrap().epoch = at;
    e
}

fn pause(stream: &str, partitions: &[i32], resume: bool) -> RaftLog {
    if resume {
        RaftLog {
            op: Op::ResumeStream as i32,
            resume_stream_op: Some(internal::ResumeStreamOp {
                stream: stream.into(),
                partitions: partitions.to_vec(),
            }),
            ..Default::default()
        }
    } else {
        RaftLog {
            op: Op::PauseStream as i32,
            pause_stream_op: Some(internal::PauseStreamOp {
                stream: stream.into(),
                partitions: partitions.to_vec(),
                resume_all: false,
            }),
            ..Default::default()
        }
    }
}

fn readonly(stream: &str, partitions: &[i32], on: bool) -> RaftLog {
    RaftLog {
        op: Op::SetStreamReadonly as i32,
        set_stream_readonly_op: Some(internal::SetStreamReadonlyOp {
            stream: stream.into(),
            partitions: partitions.to_vec(),
            readonly: on,
        }),
        ..Default::default()
    }
}

#[test]
fn streams_are_created_once_and_deleted_once() {
    let mut f = Fsm::new();
    let a = f.apply(&create("s", 2), 1);
    assert_eq!(a.result, Ok(()));
    assert_eq!(a.events, vec![Event::StreamCreated { stream: "s".into() }]);
    let p = f.partition("s", 1).unwrap();
    assert_eq!(
        (p.leader.as_str(), p.isr.len(), p.leader_epoch, p.epoch),
        ("a", 3, 1, 1)
    );
    assert!(matches!(
        f.apply(&create("s", 1), 2).result,
        Err(OpError::AlreadyExists(_))
    ));
    assert_eq!(
        f.apply(&delete("s"), 3).events,
        vec![Event::StreamDeleted { stream: "s".into() }]
    );
    assert!(matches!(
        f.apply(&delete("s"), 4).result,
        Err(OpError::NotFound(_))
    ));
    assert!(f.stream("s").is_none());
    assert_eq!(
        f.apply(&create("s", 1), 5).result,
        Ok(()),
        "a deleted name can be reused"
    );
}

/// The stream inside a CreateStream entry.
fn stream_of(entry: &mut RaftLog) -> &mut internal::Stream {
    entry
        .create_stream_op
        .as_mut()
        .and_then(|o| o.stream.as_mut())
        .expect("a CreateStream entry")
}

#[test]
fn a_stream_that_could_not_come_from_the_api_is_refused_at_apply() {
    let mut f = Fsm::new();
    let refused = |f: &mut Fsm, entry: RaftLog| {
        let before = f.streams().len();
        let index = f.applied_index() + 1;
        let a = f.apply(&entry, index);
        assert!(
            matches!(a.result, Err(OpError::InvalidArgument(_))),
            "{:?} for {:?}",
            a.result,
            entry
                .create_stream_op
                .as_ref()
                .and_then(|o| o.stream.as_ref())
                .map(|s| &s.name)
        );
        assert!(a.events.is_empty());
        assert_eq!(f.streams().len(), before);
    };
    // Names that would put a log outside `<data>/streams`, or are not names at all.
    for name in [
        "../../x", "/abs", "..", ".", "a/b", "a\\b", "nul\0", "a b", "x*",
    ] {
        refused(&mut f, create(name, 1));
    }
    refused(&mut f, create(&"n".repeat(256), 1));
    // Partition counts and numbers.
    refused(&mut f, create("none", 0));
    let mut gap = create("gap", 2);
    stream_of(&mut gap).partitions[1].id = 5;
    refused(&mut f, gap);
    let mut negative = create("neg", 1);
    stream_of(&mut negative).partitions[0].id = -1;
    refused(&mut f, negative);
    let mut bad_subject = create("subj", 1);
    stream_of(&mut bad_subject).subject = "a..b".into();
    refused(&mut f, bad_subject);
    let mut huge = create("huge", 1);
    let parts = &mut stream_of(&mut huge).partitions;
    let template = parts[0].clone();
    parts.clear();
    parts.extend(
        (0..=metastore::MAX_PARTITIONS as i32).map(|id| internal::Partition {
            id,
            ..template.clone()
        }),
    );
    refused(&mut f, huge);
    // A good one still goes through, with a 255-byte name.
    let index = f.applied_index() + 1;
    assert_eq!(f.apply(&create(&"n".repeat(255), 1), index).result, Ok(()));
}

#[test]
fn isr_changes_check_the_leader_generation_and_set_the_epoch() {
    let mut f = Fsm::new();
    f.apply(&create("s", 1), 1);
    let stale = f.apply(&shrink("s", 0, "c", "a", 0), 2);
    assert!(
        matches!(stale.result, Err(OpError::FailedPrecondition(ref m)) if m.contains("leader generation mismatch"))
    );
    assert!(matches!(
        f.apply(&shrink("s", 0, "c", "b", 1), 3).result,
        Err(OpError::FailedPrecondition(_))
    ));
    assert!(matches!(
        f.apply(&shrink("s", 0, "z", "a", 1), 4).result,
        Err(OpError::FailedPrecondition(_))
    ));
    assert!(matches!(
        f.apply(&shrink("s", 7, "c", "a", 1), 5).result,
        Err(OpError::NotFound(_))
    ));
    // The leader never leaves the ISR.
    assert!(matches!(
        f.apply(&shrink("s", 0, "a", "a", 1), 6).result,
        Err(OpError::FailedPrecondition(ref m)) if m.contains("leads the partition")
    ));
    assert_eq!(f.apply(&shrink("s", 0, "c", "a", 1), 7).result, Ok(()));
    let p = f.partition("s", 0).unwrap();
    assert_eq!(
        (p.isr.clone(), p.leader_epoch, p.epoch),
        (vec!["a".to_string(), "b".to_string()], 1, 7)
    );
    assert_eq!(f.apply(&expand("s", 0, "c", "a", 1), 8).result, Ok(()));
    assert_eq!(f.partition("s", 0).unwrap().isr.len(), 3);
    assert_eq!(f.partition("s", 0).unwrap().epoch, 8);
}

#[test]
fn a_leader_change_bumps_both_epochs() {
    let mut f = Fsm::new();
    f.apply(&create("s", 1), 1);
    f.apply(&shrink("s", 0, "c", "a", 1), 2);
    assert_eq!(f.apply(&change_leader("s", 0, "b"), 3).result, Ok(()));
    let p = f.partition("s", 0).unwrap();
    assert_eq!((p.leader.as_str(), p.leader_epoch, p.epoch), ("b", 3, 3));
    assert_eq!(p.isr, vec!["a".to_string(), "b".to_string()]);
    assert!(matches!(
        f.apply(&change_leader("s", 0, "z"), 4).result,
        Err(OpError::FailedPrecondition(_))
    ));
    // The old leader's ISR change is now stale.
    assert!(matches!(
        f.apply(&shrink("s", 0, "c", "a", 1), 5).result,
        Err(OpError::FailedPrecondition(_))
    ));
}

/// An unclean election: a follower that left the ISR must not lead, even when the failover was
/// decided on a state that still had it in the ISR.
#[test]
fn a_replica_out_of_the_isr_never_becomes_leader() {
    let mut f = Fsm::new();
    f.apply(&create("s", 1), 1);
    // a drops b (the link broke); the failover judged on the state before it picks b.
    assert_eq!(f.apply(&shrink("s", 0, "b", "a", 1), 2).result, Ok(()));
    assert!(matches!(
        f.apply(&change_leader_from("s", 0, "b", "a", 1), 3).result,
        Err(OpError::FailedPrecondition(_))
    ));
    let p = f.partition("s", 0).unwrap();
    assert_eq!((p.leader.as_str(), p.leader_epoch, p.epoch), ("a", 1, 2));
    assert_eq!(p.isr, vec!["a".to_string(), "c".to_string()]);
    // The same holds for a change that names no expected leader.
    assert!(matches!(
        f.apply(&change_leader("s", 0, "b"), 4).result,
        Err(OpError::FailedPrecondition(_))
    ));
    assert_eq!(f.partition("s", 0).unwrap().leader, "a");
}

/// A leader change names the leader it replaces and its epoch: a stale one is refused.
#[test]
fn a_stale_leader_change_is_refused() {
    let mut f = Fsm::new();
    f.apply(&create("s", 1), 1);
    assert!(matches!(
        f.apply(&change_leader_from("s", 0, "b", "a", 0), 2).result,
        Err(OpError::FailedPrecondition(_))
    ));
    assert!(matches!(
        f.apply(&change_leader_from("s", 0, "b", "c", 1), 3).result,
        Err(OpError::FailedPrecondition(_))
    ));
    assert_eq!(
        f.apply(&change_leader_from("s", 0, "b", "a", 1), 4).result,
        Ok(())
    );
    // A second failover decided on the old generation.
    assert!(matches!(
        f.apply(&change_leader_from("s", 0, "c", "a", 1), 5).result,
        Err(OpError::FailedPrecondition(_))
    ));
    let p = f.partition("s", 0).unwrap();
    assert_eq!((p.leader.as_str(), p.leader_epoch), ("b", 4));
    // A leader may move its own leadership to a new epoch (after a restart).
    assert_eq!(
        f.apply(&change_leader_from("s", 0, "b", "b", 4), 6).result,
        Ok(())
    );
    let p = f.partition("s", 0).unwrap();
    assert_eq!((p.leader.as_str(), p.leader_epoch), ("b", 6));
}

/// An ISR expansion decided at one partition epoch is refused after another change: a retry
/// must not re-add a replica that was dropped since.
#[test]
fn a_stale_isr_expansion_does_not_re_add_a_dropped_replica() {
    let mut f = Fsm::new();
    f.apply(&create("s", 1), 1);
    f.apply(&shrink("s", 0, "b", "a", 1), 2);
    assert_eq!(
        f.apply(&expand_at("s", 0, "b", "a", 1, 2), 3).result,
        Ok(())
    );
    assert_eq!(f.apply(&shrink("s", 0, "b", "a", 1), 4).result, Ok(()));
    // The first expansion's retry (its verdict was lost).
    assert!(matches!(
        f.apply(&expand_at("s", 0, "b", "a", 1, 2), 5).result,
        Err(OpError::FailedPrecondition(_))
    ));
    let p = f.partition("s", 0).unwrap();
    assert_eq!(
        (p.isr.clone(), p.epoch),
        (vec!["a".to_string(), "c".to_string()], 4)
    );
    // A retry that finds the change done is answered Ok, whatever epoch it names.
    assert_eq!(
        f.apply(&expand_at("s", 0, "b", "a", 1, 4), 6).result,
        Ok(())
    );
    assert_eq!(
        f.apply(&expand_at("s", 0, "b", "a", 1, 4), 7).result,
        Ok(())
    );
    assert_eq!(f.partition("s", 0).unwrap().epoch, 6);
}

#[test]
fn pause_resume_and_readonly_select_partitions() {
    let mut f = Fsm::new();
    f.apply(&create("s", 3), 1);
    let a = f.apply(&pause("s", &[], false), 2);
    assert_eq!(
        a.events,
        vec![Event::Paused {
            stream: "s".into(),
            partitions: vec![0, 1, 2]
        }]
    );
    f.apply(&pause("s", &[1], true), 3);
    let paused: Vec<bool> = (0..3)
        .map(|i| f.partition("s", i).unwrap().paused)
        .collect();
    assert_eq!(paused, [true, false, true]);
    assert!(matches!(
        f.apply(&pause("s", &[9], true), 4).result,
        Err(OpError::NotFound(_))
    ));
    assert!(matches!(
        f.apply(&pause("nope", &[], true), 5).result,
        Err(OpError::NotFound(_))
    ));
    f.apply(&readonly("s", &[2], true), 6);
    assert!(f.partition("s", 2).unwrap().readonly && !f.partition("s", 0).unwrap().readonly);
}

#[test]
fn recovery_tombstones_deletes_until_it_ends() {
    let mut f = Fsm::new();
    f.start_recovery();
    f.apply(&create("kept", 1), 1);
    f.apply(&create("gone", 1), 2);
    f.apply(&delete("kept"), 3);
    assert!(
        f.apply(&delete("gone"), 4).events.is_empty(),
        "no deletion event during recovery"
    );
    assert!(
        f.stream("kept").is_none() && f.streams().contains_key("kept"),
        "tombstoned, data kept"
    );
    // Re-created during the replay: it comes back, with its data.
    assert_eq!(f.apply(&create("kept", 1), 5).result, Ok(()));
    assert_eq!(
        f.finish_recovery(),
        vec![Event::StreamDeleted {
            stream: "gone".into()
        }]
    );
    assert!(f.stream("kept").is_some() && !f.streams().contains_key("gone"));
}

fn create_group(group: &str, consumer: &str, streams: &[&str], coordinator: &str) -> RaftLog {
    RaftLog {
        op: Op::CreateConsumerGroup as i32,
        create_consumer_group_op: Some(internal::CreateConsumerGroupOp {
            consumer_group: Some(internal::ConsumerGroup {
                id: group.into(),
                members: vec![internal::Consumer {
                    id: consumer.into(),
                    streams: streams.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }],
                coordinator: coordinator.into(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn join(group: &str, consumer: &str, streams: &[&str]) -> RaftLog {
    RaftLog {
        op: Op::JoinConsumerGroup as i32,
        join_consumer_group_op: Some(internal::JoinConsumerGroupOp {
            group_id: group.into(),
            consumer_id: consumer.into(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    }
}

fn leave(group: &str, consumer: &str) -> RaftLog {
    RaftLog {
        op: Op::LeaveConsumerGroup as i32,
        leave_consumer_group_op: Some(internal::LeaveConsumerGroupOp {
            group_id: group.into(),
            consumer_id: consumer.into(),
            expired: false,
        }),
        ..Default::default()
    }
}

fn assigned(f: &Fsm, group: &str, consumer: &str) -> Vec<(String, Vec<i32>)> {
    f.groups()[group].members[consumer]
        .assignments
        .iter()
        .map(|(s, p)| (s.clone(), p.clone()))
        .collect()
}

fn pairs(items: &[(&str, &[i32])]) -> Vec<(String, Vec<i32>)> {
    items
        .iter()
        .map(|(s, p)| (s.to_string(), p.to_vec()))
        .collect()
}

#[test]
fn consumer_groups() {
    let mut f = Fsm::new();
    let refused = |f: &mut Fsm, e: RaftLog, i: u64| f.apply(&e, i).result.unwrap_err();
    // Streams must exist, as in the original.
    assert_eq!(
        refused(&mut f, create_group("g", "c1", &["foo", "bar"], "a"), 1),
        OpError::FailedPrecondition("stream does not exist".into())
    );
    f.apply(&create("foo", 2), 2);
    f.apply(&create("bar", 2), 3);
    // A new group starts at its entry's index (the original's starts at 0).
    assert_eq!(
        f.apply(&create_group("g", "c1", &["foo", "bar"], "a"), 4)
            .join,
        Some(("a".into(), 4))
    );
    assert_eq!(
        refused(&mut f, create_group("g", "c9", &["foo"], "a"), 5),
        OpError::FailedPrecondition("consumer group already exists".into())
    );
    assert_eq!(
        assigned(&f, "g", "c1"),
        pairs(&[("bar", &[0, 1]), ("foo", &[0, 1])])
    );
    // The original's lifecycle test: c2 on foo takes both foo partitions.
    assert_eq!(
        f.apply(&join("g", "c2", &["foo"]), 6).join,
        Some(("a".into(), 6))
    );
    assert_eq!(assigned(&f, "g", "c1"), pairs(&[("bar", &[0, 1])]));
    assert_eq!(assigned(&f, "g", "c2"), pairs(&[("foo", &[0, 1])]));
    assert_eq!(
        refused(&mut f, join("g", "c2", &["foo"]), 7),
        OpError::FailedPrecondition("consumer is already a member of the consumer group".into())
    );
    assert_eq!(
        refused(&mut f, join("nope", "c2", &["foo"]), 8),
        OpError::NotFound("consumer group does not exist".into())
    );
    let coord = RaftLog {
        op: Op::ChangeConsumerGroupCoordinator as i32,
        change_consumer_group_coordinator_op: Some(internal::ChangeConsumerGroupCoordinatorOp {
            group_id: "g".into(),
            coordinator: "b".into(),
        }),
        ..Default::default()
    };
    f.apply(&coord, 9);
    assert_eq!(
        (f.groups()["g"].coordinator.as_str(), f.groups()["g"].epoch),
        ("b", 9)
    );
    assert_eq!(f.coordinator_loads()["b"], 1);

    // Deleting foo: c1 keeps bar, c2 is left with nothing, and the epoch moves.
    f.apply(&delete("foo"), 10);
    assert_eq!(f.groups()["g"].epoch, 10);
    assert_eq!(assigned(&f, "g", "c1"), pairs(&[("bar", &[0, 1])]));
    assert!(assigned(&f, "g", "c2").is_empty());
    assert!(f.groups()["g"].members["c2"].streams.is_empty());

    // A snapshot restores the same groups.
    let mut g = Fsm::new();
    g.restore(&f.snapshot(), 10).unwrap();
    assert_eq!(g.groups(), f.groups());

    f.apply(&leave("g", "c1"), 11);
    assert_eq!(
        refused(&mut f, leave("g", "c1"), 12),
        OpError::FailedPrecondition("consumer is not a member of the consumer group".into())
    );
    f.apply(&leave("g", "c2"), 13);
    assert!(
        f.groups().is_empty(),
        "the last member leaving removes the group"
    );
}

#[test]
fn malformed_entries_are_refused_not_fatal() {
    let mut f = Fsm::new();
    let empty = RaftLog {
        op: Op::CreateStream as i32,
        ..Default::default()
    };
    assert!(matches!(
        f.apply(&empty, 1).result,
        Err(OpError::InvalidArgument(_))
    ));
    let unknown = RaftLog {
        op: 99,
        ..Default::default()
    };
    assert!(matches!(
        f.apply(&unknown, 2).result,
        Err(OpError::InvalidArgument(_))
    ));
    let report = RaftLog {
        op: Op::ReportLeader as i32,
        ..Default::default()
    };
    assert!(matches!(
        f.apply(&report, 3).result,
        Err(OpError::InvalidArgument(_))
    ));
    assert!(f.restore(b"xx", 4).is_err());
    assert!(f.restore(&[0, 0, 0, 9, 1], 4).is_err());
    assert_eq!(f.applied_index(), 3, "a bad snapshot changes nothing");
}

fn op() -> impl Strategy<Value = RaftLog> {
    let stream = prop::sample::select(vec!["s0", "s1", "s2"]);
    let replica = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        (stream.clone(), 1..3i32).prop_map(|(s, n)| create(s, n)),
        stream.clone().prop_map(delete),
        (
            stream.clone(),
            0..2i32,
            replica.clone(),
            replica.clone(),
            0..30u64
        )
            .prop_map(|(s, p, r, l, e)| shrink(s, p, r, l, e)),
        (
            stream.clone(),
            0..2i32,
            replica.clone(),
            replica.clone(),
            0..30u64
        )
            .prop_map(|(s, p, r, l, e)| expand(s, p, r, l, e)),
        (stream.clone(), 0..2i32, replica).prop_map(|(s, p, l)| change_leader(s, p, l)),
        (stream.clone(), any::<bool>()).prop_map(|(s, r)| pause(s, &[], r)),
        (stream, any::<bool>()).prop_map(|(s, on)| readonly(s, &[0], on)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Snapshot at any index, restore, apply the rest: the same state as applying everything.
    /// Replaying applied entries changes nothing.
    #[test]
    fn snapshots_and_replays_agree(ops in prop::collection::vec(op(), 1..40), cut in any::<prop::sample::Index>()) {
        let mut full = Fsm::new();
        let mut results = Vec::new();
        for (i, e) in ops.iter().enumerate() {
            results.push(full.apply(e, i as u64 + 1).result);
        }
        let k = cut.index(ops.len() + 1);
        let mut prefix = Fsm::new();
        for (i, e) in ops[..k].iter().enumerate() {
            prefix.apply(e, i as u64 + 1);
        }
        let mut restored = Fsm::new();
        restored.restore(&prefix.snapshot(), k as u64).unwrap();
        for (i, e) in ops[k..].iter().enumerate() {
            let r = restored.apply(e, (k + i) as u64 + 1);
            prop_assert_eq!(&r.result, &results[k + i], "the same verdict after a restore");
        }
        prop_assert_eq!(restored.snapshot(), full.snapshot());
        let before = full.snapshot();
        for (i, e) in ops.iter().enumerate() {
            prop_assert!(full.apply(e, i as u64 + 1).events.is_empty());
        }
        prop_assert_eq!(full.snapshot(), before);
        // Epochs never exceed the index that set them, and a leader is always a replica.
        for s in full.streams().values() {
            for p in s.partitions.values() {
                prop_assert!(p.leader_epoch <= p.epoch && p.epoch <= ops.len() as u64);
                prop_assert!(p.replicas.contains(&p.leader));
                prop_assert!(p.isr.iter().all(|r| p.replicas.contains(r)));
            }
        }
    }
}

/// A group deleted when its last member left, then created again, must start above every epoch
/// it had: partitions still hold the old group's fencing epoch, and a new member at a lower
/// epoch would be refused while the departed one kept consuming.
#[test]
fn a_re_created_group_starts_above_its_old_epochs() {
    let mut f = Fsm::new();
    f.apply(&create("foo", 1), 1);
    f.apply(&create_group("g", "c1", &["foo"], "a"), 2);
    f.apply(&join("g", "c2", &["foo"]), 3);
    f.apply(&leave("g", "c2"), 4);
    assert_eq!(f.apply(&leave("g", "c1"), 5).result, Ok(()));
    assert!(!f.groups().contains_key("g"), "the empty group is gone");
    let created = f.apply(&create_group("g", "c3", &["foo"], "a"), 6);
    assert_eq!(created.join, Some(("a".into(), 6)));
    assert_eq!(f.groups()["g"].epoch, 6);
}
