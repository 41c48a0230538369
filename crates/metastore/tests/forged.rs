//! Forged Raft messages: anyone who can publish on NATS can send a node one. Each kind that
//! raft-rs would treat as a fatal bug (a panic that takes the metadata node down) is refused
//! before raft-rs sees it, and the node's state is unchanged.

mod common;

use std::collections::HashMap;

use common::run;
use metastore::node::{self, Input, MetaNode, NodeError};
use raft::StateRole;
use raft::eraftpb::{Entry, Message, MessageType, Snapshot};

fn group() -> (HashMap<u64, MetaNode>, u64, u64) {
    let ids = [1, 2, 3];
    let mut nodes: HashMap<u64, MetaNode> = ids
        .iter()
        .map(|&id| {
            (
                id,
                MetaNode::new(id, node::bootstrap_storage(&ids)).unwrap(),
            )
        })
        .collect();
    run(&mut nodes, |n| {
        n.values().any(|n| n.role() == StateRole::Leader)
    });
    let leader = nodes
        .values()
        .find(|n| n.role() == StateRole::Leader)
        .unwrap()
        .id();
    nodes
        .get_mut(&leader)
        .unwrap()
        .handle(Input::Propose {
            id: 1,
            entry: Box::new(common::create("s")),
        })
        .unwrap();
    run(&mut nodes, |n| {
        n.values().all(|n| n.fsm().stream("s").is_some())
    });
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    (nodes, leader, follower)
}

fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

#[test]
fn forged_messages_are_refused_and_change_nothing() {
    let (mut nodes, leader, follower) = group();
    let n = nodes.get_mut(&follower).unwrap();
    let (term, applied, streams) = (n.term(), n.applied_index(), n.fsm().streams().len());
    let last = {
        let mut probe = message(MessageType::MsgHeartbeat, leader, follower, term);
        probe.commit = 0;
        n.handle(Input::Message(Box::new(probe))).unwrap();
        n.applied_index()
    };

    let mut forged = Vec::new();
    // A heartbeat that commits beyond the log: raft-rs's commit_to panics on it.
    let mut m = message(MessageType::MsgHeartbeat, leader, follower, term);
    m.commit = last + 1000;
    forged.push(("heartbeat beyond the log", m));
    // Entries that rewrite a committed one with another term.
    let mut m = message(MessageType::MsgAppend, leader, follower, term);
    m.index = applied - 1;
    m.log_term = term;
    m.commit = applied;
    let e = Entry {
        index: applied,
        term: term + 7,
        ..Default::default()
    };
    m.entries = vec![e].into();
    forged.push(("a committed entry rewritten", m));
    // Entries with a gap.
    let mut m = message(MessageType::MsgAppend, leader, follower, term);
    m.index = applied;
    m.log_term = term;
    let e = Entry {
        index: applied + 5,
        term,
        ..Default::default()
    };
    m.entries = vec![e].into();
    forged.push(("entries with a gap", m));
    // From a node that is not a member.
    let mut m = message(MessageType::MsgHeartbeat, 99, follower, term + 1);
    m.commit = 0;
    forged.push(("a stranger", m));
    // A term near the end of u64, which would overflow the next election.
    forged.push((
        "a term from nowhere",
        message(MessageType::MsgHeartbeat, leader, follower, u64::MAX - 1),
    ));
    // Addressed to someone else.
    forged.push((
        "someone else's message",
        message(MessageType::MsgHeartbeat, leader, 42, term),
    ));
    // A snapshot with an impossible membership, one without this node, and one whose data is
    // not metadata.
    for (what, voters, learners, data) in [
        (
            "a voter that is also a learner",
            vec![1, 2, 3],
            vec![2],
            vec![],
        ),
        (
            "a snapshot without this node",
            vec![7, 8, 9],
            vec![],
            vec![],
        ),
        (
            "a snapshot of garbage",
            vec![1, 2, 3],
            vec![],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
        ),
    ] {
        let mut m = message(MessageType::MsgSnapshot, leader, follower, term);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = applied + 100;
        snap.mut_metadata().term = term;
        snap.mut_metadata().mut_conf_state().voters = voters;
        snap.mut_metadata().mut_conf_state().learners = learners;
        snap.data = data.into();
        m.set_snapshot(snap);
        forged.push((what, m));
    }

    for (what, m) in forged {
        let n = nodes.get_mut(&follower).unwrap();
        match n.handle(Input::Message(Box::new(m))) {
            Err(NodeError::Refused(reason)) => assert!(!reason.is_empty(), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(n.term(), term, "{what}: the term moved");
        assert_eq!(n.fsm().streams().len(), streams, "{what}");
        assert!(n.applied_index() >= applied, "{what}");
    }
    // The group goes on: a new stream commits everywhere.
    nodes
        .get_mut(&leader)
        .unwrap()
        .handle(Input::Propose {
            id: 2,
            entry: Box::new(common::create("t")),
        })
        .unwrap();
    run(&mut nodes, |n| {
        n.values().all(|n| n.fsm().stream("t").is_some())
    });
}
