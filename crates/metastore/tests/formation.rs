//! How metadata groups form, and how formation is kept from happening twice in one namespace:
//! a refused or wiped seed, two seeds at once, two processes with one server id, and a member
//! that lost its Raft state. A cluster that silently forms twice is the worst outcome: each half
//! accepts writes the other never sees.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::create;
use metastore::service::{Bootstrap, MetaConfig, MetaError, Metastore, raft_id};
use natsbridge::{Connection, NatsConfig};

const WAIT: Duration = Duration::from_secs(20);

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(dir: &Path, folder: &str, id: &str, bootstrap: Bootstrap) -> MetaConfig {
    let mut cfg = MetaConfig::new(id, dir.join(folder), bootstrap);
    cfg.tick = Duration::from_millis(20);
    cfg.join_attempts = 5;
    cfg
}

async fn try_start(nats: &NatsConfig, cfg: MetaConfig) -> Result<Metastore, MetaError> {
    let conn = Connection::connect(nats, &format!("LIFT.test.{}.raft", cfg.server_id))
        .await
        .unwrap();
    Metastore::start(cfg, conn).await
}

async fn start(nats: &NatsConfig, dir: &Path, id: &str, bootstrap: Bootstrap) -> Metastore {
    try_start(nats, config(dir, id, id, bootstrap))
        .await
        .unwrap()
}

/// The membership saved in a node's folder (empty: nothing saved).
fn saved_members(dir: &Path, folder: &str) -> Vec<u64> {
    use raft::Storage as _;
    let disk =
        metastore::storage::DiskStorage::open(&dir.join(folder).join("raft.redb"), None).unwrap();
    let cs = disk.initial_state().unwrap().conf_state;
    cs.voters.into_iter().chain(cs.learners).collect()
}

/// A second seed is refused before it writes anything, so when it is restarted to join, as the
/// refusal says, it joins the existing group instead of electing itself in a group of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_second_seed_saves_nothing_and_later_joins() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let first = start(&nats, dir.path(), "first", Bootstrap::Seed).await;
    until("the first seed to lead", || first.is_leader()).await;
    first.propose(create("kept")).await.unwrap();
    match try_start(
        &nats,
        config(dir.path(), "second", "second", Bootstrap::Seed),
    )
    .await
    {
        Err(MetaError::SecondSeed(other)) => assert_eq!(other, "first"),
        other => panic!("expected SecondSeed, got {other:?}"),
    }
    assert_eq!(
        saved_members(dir.path(), "second"),
        Vec::<u64>::new(),
        "a refused seed saves no membership"
    );
    let second = start(&nats, dir.path(), "second", Bootstrap::Join).await;
    until("the second to follow the first", || {
        second.leader() == Some(raft_id("first"))
            && second.with_state(|f| f.stream("kept").is_some())
    })
    .await;
    assert!(!second.is_leader());
    second.shutdown().await;
    first.shutdown().await;
    server.shutdown().await;
}

/// Two seeds started at the same moment: at most one forms a group. Three rounds, each in its
/// own namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_seeds_started_together_never_both_form_a_group() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let ns = format!("together{round}");
        let seed = |id: &str| {
            let mut cfg = config(dir.path(), &format!("{ns}-{id}"), id, Bootstrap::Seed);
            cfg.subjects = natsbridge::Subjects::new(&ns).unwrap();
            try_start(&nats, cfg)
        };
        let (a, b) = tokio::join!(seed("a"), seed("b"));
        let formed = [&a, &b].iter().filter(|r| r.is_ok()).count();
        for r in [&a, &b] {
            match r {
                Ok(_) | Err(MetaError::SecondSeed(_)) => {}
                Err(e) => panic!("round {round}: unexpected {e}"),
            }
        }
        assert!(formed <= 1, "round {round}: both seeds formed a group");
        for n in [a, b].into_iter().flatten() {
            n.shutdown().await;
        }
    }
    server.shutdown().await;
}

/// A seed whose folder was wiped, started again as a seed while the rest of its group runs, is
/// refused: every member answers the bootstrap probe, not only seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_seed_does_not_bootstrap_next_to_its_group() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&nats, dir.path(), "a", Bootstrap::Seed).await;
    until("the seed to lead", || a.is_leader()).await;
    let b = start(&nats, dir.path(), "b", Bootstrap::Join).await;
    let c = start(&nats, dir.path(), "c", Bootstrap::Join).await;
    a.propose(create("s")).await.unwrap();
    until("all three to hold the stream", || {
        [&a, &b, &c]
            .iter()
            .all(|n| n.with_state(|f| f.stream("s").is_some()))
    })
    .await;
    a.shutdown().await;
    until("a new leader", || b.is_leader() || c.is_leader()).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // let a's task drop its database
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    match try_start(&nats, config(dir.path(), "a", "a", Bootstrap::Seed)).await {
        Err(e @ MetaError::SecondSeed(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("--join"), "{msg}");
        }
        other => panic!("expected SecondSeed, got {other:?}"),
    }
    assert_eq!(saved_members(dir.path(), "a"), Vec::<u64>::new());
    b.shutdown().await;
    c.shutdown().await;
    server.shutdown().await;
}

/// A second live process with a server id that a running one has is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_server_id_is_refused() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&nats, dir.path(), "a", Bootstrap::Seed).await;
    until("the seed to lead", || a.is_leader()).await;
    for bootstrap in [Bootstrap::Join, Bootstrap::Seed] {
        match try_start(&nats, config(dir.path(), "a-twin", "a", bootstrap)).await {
            Err(MetaError::DuplicateId(id)) => assert_eq!(id, "a"),
            other => panic!("expected DuplicateId, got {other:?}"),
        }
    }
    assert!(a.is_leader());
    a.shutdown().await;
    server.shutdown().await;
}

/// A member that lost its Raft state (its folder was wiped) could vote twice in a term: it is
/// refused, with what to do, until it is removed from the group; then it joins afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_state_must_be_removed_before_it_rejoins() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&nats, dir.path(), "a", Bootstrap::Seed).await;
    until("the seed to lead", || a.is_leader()).await;
    let b = start(&nats, dir.path(), "b", Bootstrap::Join).await;
    let c = start(&nats, dir.path(), "c", Bootstrap::Join).await;
    a.propose(create("s")).await.unwrap();
    until("c to hold the stream", || {
        c.with_state(|f| f.stream("s").is_some())
    })
    .await;
    c.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await; // let c's task drop its database
    std::fs::remove_dir_all(dir.path().join("c")).unwrap();
    match try_start(&nats, config(dir.path(), "c", "c", Bootstrap::Join)).await {
        Err(e @ MetaError::LostState(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("remove"), "{msg}");
        }
        other => panic!("expected LostState, got {other:?}"),
    }
    // The operator removes it (from any member), and it joins again.
    b.remove_member("c").await.unwrap();
    until("the leader to drop c", || {
        !a.status().voters.contains(&raft_id("c"))
    })
    .await;
    let c = start(&nats, dir.path(), "c", Bootstrap::Join).await;
    until("c to be back with the state", || {
        c.with_state(|f| f.stream("s").is_some()) && a.status().voters.contains(&raft_id("c"))
    })
    .await;
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
    server.shutdown().await;
}

/// The backstop: should a second group form anyway (here one started from a static peer list,
/// which does not probe), the seed's periodic probe finds a group with none of its members, and
/// the seed stops and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_finds_a_disjoint_group_stops() {
    let (server, nats) = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&nats, dir.path(), "a", Bootstrap::Seed).await;
    let mut watch = a.watch();
    until("the seed to lead", || a.is_leader()).await;
    let b = start(&nats, dir.path(), "b", Bootstrap::Peers(vec!["b".into()])).await;
    until("b to lead its own group", || b.is_leader()).await;
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            match watch.recv().await {
                Ok(metastore::service::WatchEvent::SecondSeed { server }) => return server,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("watch ended: {e}"),
            }
        }
    })
    .await
    .expect("the seed reports the other group");
    assert_eq!(seen, "b");
    b.shutdown().await;
    a.shutdown().await;
    server.shutdown().await;
}
