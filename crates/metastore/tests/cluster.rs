//! Three metadata nodes on NATS (our embedded server): a seed, two joiners, proposals from
//! followers, watchers, and the loss of the leader.

mod common;

use std::time::{Duration, Instant};

use common::create;
use liftbridge_proto::internal::{Op, RaftLog};
use metastore::service::{Bootstrap, MetaConfig, MetaError, Metastore, WatchEvent, raft_id};
use metastore::{Event, OpError};
use natsbridge::{Connection, NatsConfig};

const WAIT: Duration = Duration::from_secs(20);

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node(
    nats: &NatsConfig,
    dir: &std::path::Path,
    id: &str,
    bootstrap: Bootstrap,
) -> Metastore {
    let conn = Connection::connect(nats, &format!("LIFT.test.{id}.raft"))
        .await
        .unwrap();
    let mut cfg = MetaConfig::new(id, dir.join(id), bootstrap);
    cfg.tick = Duration::from_millis(20);
    Metastore::start(cfg, conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_forms_forwards_and_survives_its_leader() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();

    let a = node(&nats, dir.path(), "a", Bootstrap::Seed).await;
    until("the seed to lead", || a.is_leader()).await;
    let mut watch_a = a.watch();
    a.propose(create("first")).await.unwrap();

    let b = node(&nats, dir.path(), "b", Bootstrap::Join).await;
    let c = node(&nats, dir.path(), "c", Bootstrap::Join).await;
    let mut watch_c = c.watch();
    until("the joiners to catch up", || {
        b.with_state(|f| f.stream("first").is_some())
            && c.with_state(|f| f.stream("first").is_some())
    })
    .await;
    assert_eq!(b.leader(), Some(raft_id("a")));

    // A follower's proposal goes to the leader and its verdict comes back, typed.
    c.propose(create("second")).await.unwrap();
    match c.propose(create("second")).await {
        Err(MetaError::Op(OpError::AlreadyExists(m))) => assert!(m.contains("second")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // Leaders originate leader changes; a follower cannot forward one.
    let change = RaftLog {
        op: Op::ChangeLeader as i32,
        change_leader_op: Some(Default::default()),
        ..Default::default()
    };
    assert!(matches!(
        c.propose(change).await,
        Err(MetaError::NotForwardable(Op::ChangeLeader))
    ));
    until("everyone to have the second stream", || {
        a.with_state(|f| f.stream("second").is_some())
            && b.with_state(|f| f.stream("second").is_some())
    })
    .await;

    // Watchers see the applied events in order.
    let mut seen_a = Vec::new();
    while let Ok(ev) = watch_a.try_recv() {
        if let WatchEvent::Applied {
            event: Event::StreamCreated { stream },
            ..
        } = ev
        {
            seen_a.push(stream);
        }
    }
    assert_eq!(seen_a, ["first", "second"]);
    let mut seen_c = Vec::new();
    while let Ok(ev) = watch_c.try_recv() {
        if let WatchEvent::Applied {
            event: Event::StreamCreated { stream },
            ..
        } = ev
        {
            seen_c.push(stream);
        }
    }
    assert!(seen_c.ends_with(&["second".to_string()]), "{seen_c:?}");

    // The leader goes; the other two elect a new one and keep everything committed.
    a.shutdown().await;
    until("a new leader", || b.is_leader() || c.is_leader()).await;
    let survivor = if b.is_leader() { &c } else { &b };
    survivor.propose(create("third")).await.unwrap();
    for n in [&b, &c] {
        until("the third stream", || {
            n.with_state(|f| f.stream("third").is_some())
        })
        .await;
        n.with_state(|f| assert!(f.stream("first").is_some() && f.stream("second").is_some()));
    }
    b.shutdown().await;
    c.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_from_its_database() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&nats, dir.path(), "solo", Bootstrap::Seed).await;
    until("the seed to lead", || a.is_leader()).await;
    a.propose(create("kept")).await.unwrap();
    a.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The bootstrap setting is ignored now: the database says who the group is.
    let again = node(&nats, dir.path(), "solo", Bootstrap::Join).await;
    until("the restarted node to lead with its state", || {
        again.is_leader() && again.with_state(|f| f.stream("kept").is_some())
    })
    .await;
    again.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_join_with_no_group_is_a_clear_error() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::connect(&nats, "LIFT.test.lonely.raft")
        .await
        .unwrap();
    let mut cfg = MetaConfig::new("lonely", dir.path().join("lonely"), Bootstrap::Join);
    cfg.join_attempts = 2;
    let err = Metastore::start(cfg, conn).await.unwrap_err();
    assert!(matches!(err, MetaError::Join(_)), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_rejoins_and_catches_up() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&nats, dir.path(), "a", Bootstrap::Seed).await;
    until("the seed to lead", || a.is_leader()).await;
    let b = node(&nats, dir.path(), "b", Bootstrap::Join).await;
    let c = node(&nats, dir.path(), "c", Bootstrap::Join).await;
    a.propose(create("s1")).await.unwrap();
    until("all to have s1", || {
        [&a, &b, &c]
            .iter()
            .all(|n| n.with_state(|f| f.stream("s1").is_some()))
    })
    .await;
    a.shutdown().await;
    until("a new leader", || b.is_leader() || c.is_leader()).await;
    let l = if b.is_leader() { &b } else { &c };
    l.propose(create("s2")).await.unwrap();
    let a = node(&nats, dir.path(), "a", Bootstrap::Join).await;
    until("the old leader to catch up", || {
        a.with_state(|f| f.stream("s2").is_some())
    })
    .await;
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_seed_in_one_namespace_is_refused() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let first = node(&nats, dir.path(), "first", Bootstrap::Seed).await;
    until("the first seed to lead", || first.is_leader()).await;
    let conn = Connection::connect(&nats, "LIFT.test.second.raft")
        .await
        .unwrap();
    let cfg = MetaConfig::new("second", dir.path().join("second"), Bootstrap::Seed);
    match Metastore::start(cfg, conn.clone()).await {
        Err(MetaError::SecondSeed(other)) => assert_eq!(other, "first"),
        other => panic!("expected SecondSeed, got {other:?}"),
    }
    // Another namespace is another cluster: a seed there is fine.
    let mut cfg = MetaConfig::new("other-ns", dir.path().join("other-ns"), Bootstrap::Seed);
    cfg.subjects = natsbridge::Subjects::new("elsewhere").unwrap();
    cfg.tick = Duration::from_millis(20);
    let elsewhere = Metastore::start(cfg, conn).await.unwrap();
    until("the other namespace's seed to lead", || {
        elsewhere.is_leader()
    })
    .await;
    first.shutdown().await;
    elsewhere.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_peer_list_forms_a_group_and_extras_join_as_learners() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let peers = Bootstrap::Peers(vec!["p1".into(), "p2".into(), "p3".into()]);
    let start = |id: &'static str, bootstrap: Bootstrap| {
        let nats = nats.clone();
        let path = dir.path().join(id);
        async move {
            let conn = Connection::connect(&nats, &format!("LIFT.test.{id}.raft"))
                .await
                .unwrap();
            let mut cfg = MetaConfig::new(id, path, bootstrap);
            cfg.tick = Duration::from_millis(20);
            cfg.max_quorum_size = 3;
            Metastore::start(cfg, conn).await.unwrap()
        }
    };
    let (p1, p2, p3) = tokio::join!(
        start("p1", peers.clone()),
        start("p2", peers.clone()),
        start("p3", peers)
    );
    until("one of the peers to lead", || {
        [&p1, &p2, &p3].iter().filter(|n| n.is_leader()).count() == 1
    })
    .await;
    p2.propose(create("shared")).await.unwrap();
    let voters = {
        let mut v: Vec<u64> = ["p1", "p2", "p3"].iter().map(|p| raft_id(p)).collect();
        v.sort_unstable();
        v
    };
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    assert_eq!(sorted(p1.status().voters), voters);
    // A fourth server, beyond max_quorum_size = 3, joins as a learner and still gets everything.
    let p4 = start("p4", Bootstrap::Join).await;
    until("the learner to catch up", || {
        p4.with_state(|f| f.stream("shared").is_some())
    })
    .await;
    until("the leader to list the learner", || {
        let leader = [&p1, &p2, &p3]
            .into_iter()
            .find(|n| n.is_leader())
            .map(|n| n.status());
        leader.is_some_and(|s| {
            s.learners == vec![raft_id("p4")] && sorted(s.voters.clone()) == voters
        })
    })
    .await;
    for n in [&p1, &p2, &p3, &p4] {
        n.shutdown().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_reports_reach_the_leaders_handler_and_its_verdict_comes_back() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let a = node(&nats, dir.path(), "a", Bootstrap::Seed).await;
    until("the seed to lead", || a.is_leader()).await;
    let b = node(&nats, dir.path(), "b", Bootstrap::Join).await;
    until("b to know the leader", || b.leader() == Some(raft_id("a"))).await;
    let mut reports = a.take_reports().expect("the first call takes the receiver");
    assert!(a.take_reports().is_none(), "only once");
    // The handler accepts reports from "b" and refuses the rest.
    let handler = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(r) = reports.recv().await {
            let metastore::service::Report::Leader(op) = &r.op else {
                panic!("a leader report: {:?}", r.op);
            };
            let verdict = if op.replica == "b" {
                Ok(())
            } else {
                Err(OpError::FailedPrecondition(
                    "Leader generation mismatch".into(),
                ))
            };
            seen.push((op.stream.clone(), op.replica.clone()));
            let _ = r.reply.send(verdict);
            if seen.len() == 3 {
                break;
            }
        }
        seen
    });
    let report = |replica: &str| liftbridge_proto::internal::ReportLeaderOp {
        stream: "s".into(),
        partition: 0,
        replica: replica.into(),
        leader: "a".into(),
        leader_epoch: 4,
        renew_epoch: false,
    };
    // Forwarded from a follower, and made on the leader itself.
    b.report_leader(report("b")).await.unwrap();
    match b.report_leader(report("x")).await {
        Err(MetaError::Op(OpError::FailedPrecondition(m))) => {
            assert!(m.contains("mismatch"), "{m}")
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    a.report_leader(report("b")).await.unwrap();
    let seen = handler.await.unwrap();
    assert_eq!(
        seen,
        vec![
            ("s".to_string(), "b".to_string()),
            ("s".to_string(), "x".to_string()),
            ("s".to_string(), "b".to_string())
        ]
    );
    // Reports are never logged: the metadata holds nothing new.
    assert!(a.with_state(|f| f.streams().is_empty()));
    b.shutdown().await;
    a.shutdown().await;
    server.shutdown().await;
}
