//! A planned stop (SIGTERM): the broker hands what it leads to its peers before it goes, so
//! clients see a leader change (and retry there) instead of waiting out a failover.
//!
//! 1. Each partition it leads with another in-sync replica: it reports itself as the leader
//!    giving up (the same report a leader with a failed log sends), and the metadata leader
//!    moves leadership to an in-sync follower with a `ChangeLeader` proposal. A partition with
//!    no other in-sync replica stays, and is offline until the broker is back.
//! 2. Each consumer group it coordinates: it reports itself, and the metadata leader moves the
//!    group to another broker.
//! 3. If it leads the metadata group, it hands Raft leadership to the most up-to-date voter.
//! 4. At shutdown, once its partitions have stopped, it leaves the ISR of every partition it
//!    follows, so acks with policy ALL do not wait `replica.max.lag.time` for it. It rejoins
//!    when it has caught up after the restart, as any follower does.
//!
//! Every step is bounded by `shutdown.handoff.timeout`; what has not moved by then fails over
//! as after a crash. Nothing here can lose a committed message: leadership only moves to an
//! in-sync replica, which holds everything committed.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use liftbridge_proto::internal::{self, Op, RaftLog};
use slog::{info, warn};
use tokio::time::Instant;

use crate::Broker;

/// What a hand-off achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandOff {
    /// Partitions whose leadership moved to a peer.
    pub partitions_moved: usize,
    /// Partitions still led here: no other in-sync replica, or not moved in time.
    pub partitions_kept: Vec<(String, i32)>,
    /// Consumer groups moved to another coordinator.
    pub groups_moved: usize,
    /// Whether this broker no longer leads the metadata group (true if it never did).
    pub metadata_moved: bool,
}

/// A partition this broker leads: (stream, partition, epoch, whether another replica is in sync).
type Led = (String, i32, u64, bool);

impl Broker {
    fn led_here(&self) -> (Vec<Led>, Vec<(String, u64)>) {
        let me = self.id().to_owned();
        self.inner.meta.with_state(|f| {
            let mut led = Vec::new();
            for s in f.streams().values().filter(|s| !s.tombstoned) {
                for p in s.partitions.values().filter(|p| p.leader == me) {
                    let peer = p.isr.iter().any(|r| *r != me);
                    led.push((s.name.clone(), p.id, p.leader_epoch, peer));
                }
            }
            let groups = f
                .groups()
                .iter()
                .filter(|(_, g)| g.coordinator == me)
                .map(|(id, g)| (id.clone(), g.epoch))
                .collect();
            (led, groups)
        })
    }

    /// A planned stop's first half: moves the partitions and consumer groups this broker
    /// leads, and the metadata leadership, to peers, waiting at most `shutdown.handoff.timeout`
    /// (see the module docs). Call [`shutdown`](Broker::shutdown) afterwards; the broker keeps
    /// serving until then. With a zero timeout, or no peers, it does nothing.
    pub async fn hand_off(&self) -> HandOff {
        let wait = self.inner.cfg.handoff_timeout;
        let mut out = HandOff {
            metadata_moved: !self.inner.meta.is_leader(),
            ..HandOff::default()
        };
        // From here on the broker reports itself not ready.
        self.inner.leaving.store(true, Ordering::Relaxed);
        let me = self.id().to_owned();
        if wait.is_zero() || !self.known_servers().iter().any(|s| *s != me) {
            return out;
        }
        let deadline = Instant::now() + wait;
        let (led, groups) = self.led_here();
        let movable: BTreeSet<(String, i32)> = led
            .iter()
            .filter(|l| l.3)
            .map(|l| (l.0.clone(), l.1))
            .collect();
        info!(self.inner.logger, "handing off before stopping";
            "partitions" => movable.len(), "partitions_without_peer" => led.len() - movable.len(),
            "groups" => groups.len(), "timeout" => ?wait);
        let mut asked: Option<Instant> = None;
        loop {
            let (led_now, groups_now) = self.led_here();
            let pending: Vec<&Led> = led_now
                .iter()
                .filter(|l| movable.contains(&(l.0.clone(), l.1)))
                .collect();
            if pending.is_empty() && groups_now.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            // Reports are asked again each second: one may meet a metadata leader election.
            if asked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                asked = Some(Instant::now());
                let meta = &self.inner.meta;
                let reports = pending.iter().map(|(stream, partition, epoch, _)| {
                    meta.report_leader(internal::ReportLeaderOp {
                        stream: stream.clone(),
                        partition: *partition,
                        replica: me.clone(),
                        leader: me.clone(),
                        leader_epoch: *epoch,
                        renew_epoch: false,
                    })
                });
                let group_reports = groups_now.iter().map(|(group, epoch)| {
                    meta.report_coordinator(internal::ReportConsumerGroupCoordinatorOp {
                        group_id: group.clone(),
                        consumer_id: me.clone(),
                        coordinator: me.clone(),
                        epoch: *epoch,
                    })
                });
                let both = futures_util::future::join(
                    futures_util::future::join_all(reports),
                    futures_util::future::join_all(group_reports),
                );
                let _ = tokio::time::timeout_at(deadline, both).await;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let (led_after, groups_after) = self.led_here();
        out.partitions_kept = led_after.iter().map(|l| (l.0.clone(), l.1)).collect();
        out.partitions_moved = movable
            .iter()
            .filter(|k| !out.partitions_kept.contains(k))
            .count();
        out.groups_moved = groups.len().saturating_sub(groups_after.len());
        let left = deadline.saturating_duration_since(Instant::now());
        out.metadata_moved = self.inner.meta.hand_off_leadership(left).await;
        if out.partitions_kept.is_empty() && groups_after.is_empty() && out.metadata_moved {
            info!(self.inner.logger, "handed off everything";
                "partitions" => out.partitions_moved, "groups" => out.groups_moved);
        } else {
            warn!(self.inner.logger, "stopping with some leadership not handed off; it fails over";
                "partitions_moved" => out.partitions_moved,
                "partitions_kept" => ?out.partitions_kept, "groups_kept" => groups_after.len(),
                "metadata_moved" => out.metadata_moved);
        }
        out
    }

    /// A planned stop's last step, once the partitions have stopped: leaves the ISR of every
    /// partition this broker follows (see the module docs). Bounded by the hand-off timeout,
    /// and by five seconds.
    pub(crate) async fn leave_isrs(&self) {
        if self.inner.cfg.handoff_timeout.is_zero() {
            return;
        }
        let me = self.id().to_owned();
        let shrinks: Vec<RaftLog> = self.inner.meta.with_state(|f| {
            f.streams()
                .values()
                .filter(|s| !s.tombstoned)
                .flat_map(|s| s.partitions.values().map(move |p| (s, p)))
                .filter(|(_, p)| p.leader != me && p.isr.contains(&me))
                .map(|(s, p)| RaftLog {
                    op: Op::ShrinkIsr as i32,
                    shrink_isr_op: Some(internal::ShrinkIsrOp {
                        stream: s.name.clone(),
                        partition: p.id,
                        replica_to_remove: me.clone(),
                        leader: p.leader.clone(),
                        leader_epoch: p.leader_epoch,
                    }),
                    ..Default::default()
                })
                .collect()
        });
        if shrinks.is_empty() {
            return;
        }
        let wait = self.inner.cfg.handoff_timeout.min(Duration::from_secs(5));
        let ctx = &self.inner.ctx;
        let all = futures_util::future::join_all(shrinks.into_iter().map(|e| ctx.propose(e)));
        match tokio::time::timeout(wait, all).await {
            Ok(results) => {
                let left = results.iter().filter(|r| r.is_ok()).count();
                info!(self.inner.logger, "left the ISRs of the partitions followed here";
                    "left" => left, "refused" => results.len() - left);
            }
            Err(_) => warn!(
                self.inner.logger,
                "leaving the ISRs took too long; the leaders drop this broker after replica.max.lag.time"
            ),
        }
    }
}
