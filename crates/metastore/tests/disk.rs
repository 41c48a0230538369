//! A group on durable storage: stop every node, reopen them from their database files, and the
//! group carries on with everything it committed.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::run;
use liftbridge_proto::internal::RaftLog;
use metastore::node::{Input, MetaNode};
use metastore::storage::DiskStorage;
use raft::StateRole;
use raft::eraftpb::ConfState;

fn create(name: &str) -> Box<RaftLog> {
    Box::new(common::create(name))
}

fn open(dir: &Path) -> HashMap<u64, MetaNode<DiskStorage>> {
    (1..=3)
        .map(|id| {
            let path = dir.join(format!("node{id}.redb"));
            let disk =
                DiskStorage::open(&path, Some(ConfState::from((vec![1, 2, 3], vec![])))).unwrap();
            (id, MetaNode::new(id, disk).unwrap())
        })
        .collect()
}

fn leader(nodes: &HashMap<u64, MetaNode<DiskStorage>>) -> Option<u64> {
    nodes
        .values()
        .find(|n| n.role() == StateRole::Leader)
        .map(|n| n.id())
}

#[test]
fn a_whole_group_restarts_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = open(dir.path());
    run(&mut nodes, |n| leader(n).is_some());
    for i in 0..5 {
        let l = leader(&nodes).unwrap();
        nodes
            .get_mut(&l)
            .unwrap()
            .handle(Input::Propose {
                id: i,
                entry: create(&format!("s{i}")),
            })
            .unwrap();
    }
    run(&mut nodes, |n| {
        n.values().all(|m| m.fsm().streams().len() == 5)
    });
    let before = nodes[&1].fsm().snapshot();
    drop(nodes);

    // Everything reopens from its file; the state comes back by replay.
    let mut nodes = open(dir.path());
    run(&mut nodes, |n| {
        leader(n).is_some() && n.values().all(|m| m.fsm().streams().len() == 5)
    });
    assert_eq!(nodes[&2].fsm().snapshot(), before);
    let l = leader(&nodes).unwrap();
    nodes
        .get_mut(&l)
        .unwrap()
        .handle(Input::Propose {
            id: 9,
            entry: create("after"),
        })
        .unwrap();
    run(&mut nodes, |n| {
        n.values().all(|m| m.fsm().stream("after").is_some())
    });
}
