//! Replication between brokers: the I/O around the state machines of the `replication` crate.
//!
//! - **Leader** ([`serve_followers`], [`watch_isr`]): answers `<ns>.<stream>.<p>.replicate`
//!   fetches with its epoch, its high watermark and raw records from the follower's next offset,
//!   and `<ns>.<stream>.<p>.offset` questions about where an epoch ended. A follower that is
//!   caught up is remembered, and the next append sends it a `PartitionNotification` on
//!   `<ns>.notify.<follower>`. A ticker proposes ISR shrinks and expansions to the metadata
//!   group, with this leader's id and epoch as the precondition.
//! - **Follower** ([`follow`]): first asks the leader where its own latest epoch ended and
//!   truncates what diverged, then fetches in a loop: at once after records arrived, else after
//!   `replica.max.idle.wait` or the leader's notification. A leader silent for
//!   `replica.max.leader.timeout` is reported to the metadata leader.
//! - **Failover** ([`judge_reports`]): on the metadata leader, reports are tallied per partition
//!   and, once more than (ISR − 1) / 2 followers agree, the least-loaded other ISR member is made
//!   leader.
//!
//! Every decision is the state machines'; this module only moves bytes and keeps time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use liftbridge_proto::internal::{self, Op, RaftLog};
use metastore::OpError;
use metastore::service::{LeaderReport, MetaError};
use natsbridge::envelope;
use natsbridge::{Subscriber, payload};
use replication::{FetchReply, Follower, FollowerAction, IsrChange};
use slog::{debug, error, info, warn};
use tokio::sync::{mpsc, watch};

use crate::partition::{Ctx, Partition, send_acks, write_log};

/// Milliseconds on this process's monotonic clock, for the state machines.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The replication settings of a partition.
pub(crate) fn settings(ctx: &Ctx, min_isr: i32) -> replication::Settings {
    let r = &ctx.cfg.replica;
    replication::Settings {
        max_lag: r.max_lag_time.as_millis() as u64,
        leader_timeout: r.max_leader_timeout.as_millis() as u64,
        idle_wait: r.max_idle_wait.as_millis() as u64,
        min_isr: min_isr.max(1) as usize,
    }
}

/// Leader: answers fetches and epoch questions until `stop`.
pub(crate) async fn serve_followers(
    p: Arc<Partition>,
    ctx: Arc<Ctx>,
    mut fetches: Subscriber,
    mut questions: Subscriber,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            m = fetches.next() => match m {
                Some(m) => answer_fetch(&p, &ctx, m).await,
                None => break,
            },
            m = questions.next() => match m {
                Some(m) => answer_epoch_question(&p, &ctx, m).await,
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    let _ = fetches.unsubscribe().await;
    let _ = questions.unsubscribe().await;
}

async fn answer_fetch(p: &Arc<Partition>, ctx: &Ctx, m: natsbridge::Message) {
    let Some(reply) = m.reply.clone() else {
        return;
    };
    let Ok(req) = payload::decode::<internal::ReplicationRequest>(&m.payload) else {
        return;
    };
    let now = now_ms();
    // Remembered before reading: an append racing with this fetch then notifies the follower.
    p.waiting.lock().insert(req.replica_id.clone());
    let (answer, advanced) = {
        let mut commit = p.commit.lock();
        let Some(leader) = commit.as_mut() else {
            return;
        };
        // The log may hold records the state machine hears of only after their append returns;
        // a follower may already have copied them.
        let log_newest = p.log.newest_offset();
        leader.on_fetch_within(
            &req.replica_id,
            req.leader_epoch,
            req.offset,
            log_newest,
            now,
        )
    };
    if let Some(hw) = advanced {
        let due = p.advance_hw(ctx, hw);
        send_acks(ctx, due).await;
        // Idle followers learn the new high watermark now rather than after their idle wait.
        notify_followers(p, ctx, Some(&req.replica_id)).await;
    }
    let from = match answer {
        FetchReply::Serve { from, .. } => from,
        FetchReply::Reject => {
            p.waiting.lock().remove(&req.replica_id);
            return; // another epoch, or not a replica: Liftbridge drops these too
        }
        FetchReply::OutOfRange { newest } => {
            // A claim beyond this log's own end: the replication response has no field for it,
            // so the follower, unanswered, waits until this leader moves to a new epoch, which
            // it does at every start after a restart, when such a tail can be lost; the new
            // epoch makes it truncate.
            p.waiting.lock().remove(&req.replica_id);
            warn!(ctx.logger, "a follower claims records beyond this leader's log at its epoch";
                "stream" => &p.stream, "partition" => p.id, "replica" => &req.replica_id,
                "offset" => req.offset, "newest" => newest);
            return;
        }
    };
    let records = if from <= p.log.newest_offset() {
        // Within what one NATS message carries: every record was accepted within it.
        match p.log.read_raw(from, ctx.record_budget() as usize) {
            Ok(Some(batch)) => {
                p.counters.out_followers.0.inc_by(batch.count as u64);
                p.counters.out_followers.1.inc_by(batch.data.len() as u64);
                batch.data
            }
            Ok(None) => Bytes::new(),
            Err(e) => {
                warn!(ctx.logger, "reading records for a follower failed";
                    "stream" => &p.stream, "partition" => p.id, "error" => %e);
                return;
            }
        }
    } else {
        Bytes::new()
    };
    if !records.is_empty() {
        p.waiting.lock().remove(&req.replica_id);
    }
    let data = envelope::encode_replication_response(
        p.role.leader_epoch,
        p.log.high_watermark(),
        &records,
    );
    if let Err(e) = ctx.repl_conn.publish(&reply, data).await {
        debug!(ctx.logger, "answering a fetch failed"; "error" => %e);
    }
}

async fn answer_epoch_question(p: &Partition, ctx: &Ctx, m: natsbridge::Message) {
    let Some(reply) = m.reply.clone() else {
        return;
    };
    let Ok(req) = payload::decode::<internal::LeaderEpochOffsetRequest>(&m.payload) else {
        return;
    };
    // Fenced: a follower of another leader epoch (it follows a newer leader, and this one is
    // deposed) gets no answer, as a fetch of another epoch gets none.
    let answers = p
        .commit
        .lock()
        .as_ref()
        .is_some_and(|l| l.answers_epoch_question(req.current_leader_epoch));
    if !answers {
        debug!(ctx.logger, "ignoring an epoch question of another leader epoch";
            "stream" => &p.stream, "partition" => p.id, "replica" => &req.replica_id,
            "epoch" => req.current_leader_epoch, "own_epoch" => p.role.leader_epoch);
        return;
    }
    let (end_offset, leader_epoch, found) = match p.log.leader_epoch_end_offset(req.leader_epoch) {
        Some((epoch, end)) => (end - 1, epoch, true),
        None => (-1, 0, false),
    };
    let resp = internal::LeaderEpochOffsetResponse {
        end_offset,
        leader_epoch,
        found,
        leader_id: ctx.cfg.server_id.clone(),
        current_leader_epoch: p.role.leader_epoch,
    };
    let _ = ctx
        .repl_conn
        .publish(&reply, payload::encode(&resp, false))
        .await;
}

/// Leader: wakes followers waiting for data (after appends) or for a new high watermark, except
/// `except`.
pub(crate) async fn notify_followers(p: &Partition, ctx: &Ctx, except: Option<&str>) {
    let waiting: Vec<String> = {
        let mut w = p.waiting.lock();
        let woken = w
            .iter()
            .filter(|f| Some(f.as_str()) != except)
            .cloned()
            .collect();
        w.retain(|f| Some(f.as_str()) == except);
        woken
    };
    if waiting.is_empty() {
        return;
    }
    let note = internal::PartitionNotification {
        stream: p.stream.clone(),
        partition: p.id,
    };
    let data = payload::encode(&note, false);
    for f in waiting {
        let _ = ctx
            .repl_conn
            .publish(&ctx.subjects.notify(&f), data.clone())
            .await;
    }
}

/// Leader: checks follower lag and proposes ISR changes until `stop`.
pub(crate) async fn watch_isr(p: Arc<Partition>, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let every =
        (ctx.cfg.replica.max_lag_time / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        // The changes and the partition epoch they were decided at, read together.
        let (changes, at) = match p.commit.lock().as_mut() {
            Some(l) => (l.on_tick(now_ms()), l.partition_epoch()),
            None => continue,
        };
        for change in changes {
            let p = p.clone();
            let ctx = ctx.clone();
            // Proposals run on their own so a slow metadata group does not stall the ticks.
            tokio::spawn(async move { propose_isr_change(&p, &ctx, change, at).await });
        }
    }
}

/// Proposes `change`, decided on the ISR of partition epoch `at`.
async fn propose_isr_change(p: &Partition, ctx: &Ctx, change: IsrChange, at: u64) {
    let me = ctx.cfg.server_id.clone();
    let epoch = p.role.leader_epoch;
    let entry = match &change {
        IsrChange::Shrink(r) => RaftLog {
            op: Op::ShrinkIsr as i32,
            shrink_isr_op: Some(internal::ShrinkIsrOp {
                stream: p.stream.clone(),
                partition: p.id,
                replica_to_remove: r.clone(),
                leader: me,
                leader_epoch: epoch,
            }),
            ..Default::default()
        },
        IsrChange::Expand(r) => RaftLog {
            op: Op::ExpandIsr as i32,
            expand_isr_op: Some(internal::ExpandIsrOp {
                stream: p.stream.clone(),
                partition: p.id,
                replica_to_add: r.clone(),
                leader: me,
                leader_epoch: epoch,
                epoch: at,
            }),
            ..Default::default()
        },
    };
    // A proposal that timed out may still apply, so it keeps counting for commits and is asked
    // again until a verdict comes (asking twice is harmless: the second finds it done), while
    // the leader still wants it: an ISR it has seen since may show it applied, or undone.
    // An expansion names the partition epoch it was decided at, so a retry that arrives after
    // a later change is refused instead of re-adding a replica dropped since.
    for attempt in 0u32.. {
        if *p.stop.borrow() {
            return;
        }
        if attempt > 0
            && !p
                .commit
                .lock()
                .as_ref()
                .is_some_and(|l| l.is_pending(&change))
        {
            return;
        }
        match ctx.propose(entry.clone()).await {
            Ok(_) => {
                match &change {
                    IsrChange::Shrink(_) => p.counters.shrinks.inc(),
                    IsrChange::Expand(_) => p.counters.expands.inc(),
                };
                info!(ctx.logger, "changed the ISR"; "stream" => &p.stream,
                    "partition" => p.id, "change" => ?change);
                return;
            }
            Err(MetaError::Op(e)) => {
                warn!(ctx.logger, "the ISR change was refused"; "stream" => &p.stream,
                    "partition" => p.id, "change" => ?change, "error" => %e);
                if let Some(l) = p.commit.lock().as_mut() {
                    l.on_isr_change_refused(&change);
                }
                return;
            }
            Err(e) => {
                if attempt % 10 == 0 {
                    warn!(ctx.logger, "proposing an ISR change failed; retrying";
                        "stream" => &p.stream, "partition" => p.id, "change" => ?change,
                        "error" => %e);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Leader of a replicated partition: once its log has failed for good (a failed sync, or a
/// failed write that could not be undone), it refuses every publish, so it hands the partition
/// over. It reports itself as a failed leader; the metadata leader then moves leadership to an
/// in-sync follower at once. Until then, or if no follower is in sync, it keeps refusing.
pub(crate) async fn give_up_if_failed(
    p: Arc<Partition>,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(200);
    let why = loop {
        if let Some(why) = p.log.failure() {
            break why;
        }
        if pause(&mut stop, every).await {
            return;
        }
    };
    error!(ctx.logger, "the partition's log failed; handing leadership to an in-sync follower";
        "stream" => &p.stream, "partition" => p.id, "data_dir" => %ctx.cfg.data_dir.display(),
        "error" => &why);
    let op = self_report(&p, &ctx, false);
    ask_until_stopped(
        &mut stop,
        (Duration::from_secs(1), Duration::from_secs(1)),
        || ctx.meta.report_leader(op.clone()),
        |attempt, e| {
            if attempt % 10 == 0 {
                warn!(ctx.logger, "handing over a failed partition was refused; retrying";
                    "stream" => &p.stream, "partition" => p.id, "error" => %e);
            }
        },
    )
    .await;
}

/// This broker's report on itself as the partition's leader: it gives the partition up, or,
/// with `renew`, asks for a new leader epoch.
fn self_report(p: &Partition, ctx: &Ctx, renew: bool) -> internal::ReportLeaderOp {
    internal::ReportLeaderOp {
        stream: p.stream.clone(),
        partition: p.id,
        replica: ctx.cfg.server_id.clone(),
        leader: ctx.cfg.server_id.clone(),
        leader_epoch: p.role.leader_epoch,
        renew_epoch: renew,
    }
}

/// Leader of a partition whose epoch an earlier run of this broker led: asks the metadata
/// leader, with a report on itself that asks for renewal, for a new epoch, until a verdict or
/// `stop`. The metadata leader moves the partition to another in-sync replica if there is one
/// (this log may have lost a tail the others hold), else makes this broker leader again at a new
/// epoch; either restarts the partition. A refusal means leadership moved meanwhile, which
/// restarts the partition too; any failure (the metadata leader could not replicate the leader
/// change, or there was none) is asked again, since until then the partition takes no writes.
pub(crate) async fn renew_epoch(p: Arc<Partition>, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let op = self_report(&p, &ctx, true);
    ask_until_stopped(
        &mut stop,
        (Duration::from_millis(500), Duration::from_secs(5)),
        || ctx.meta.report_leader(op.clone()),
        |attempt, e| {
            if attempt % 10 == 0 {
                warn!(ctx.logger, "renewing the partition's leader epoch failed; retrying";
                    "stream" => &p.stream, "partition" => p.id, "error" => %e);
            }
        },
    )
    .await;
}

/// Asks `ask` until it succeeds or `stop`, telling `failed` of each failure and pausing after
/// it, `first` at first, doubling up to `most`. Every failure is retried: a refused operation cannot
/// be told from one the metadata leader failed to replicate (a timeout, a lost leadership), and
/// a real refusal means the partition moved on, which stops the asking.
async fn ask_until_stopped<F, Fut>(
    stop: &mut watch::Receiver<bool>,
    (first, most): (Duration, Duration),
    mut ask: F,
    mut failed: impl FnMut(u32, &MetaError),
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), MetaError>>,
{
    let mut wait = first;
    for attempt in 0u32.. {
        match unless_stopped(stop, ask()).await {
            None | Some(Ok(())) => return,
            Some(Err(e)) => {
                failed(attempt, &e);
                if pause(stop, wait).await {
                    return;
                }
                wait = (wait * 2).min(most);
            }
        }
    }
}

/// Follower: copies the leader's log until `stop`.
pub(crate) async fn follow(p: Arc<Partition>, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let epoch = p.role.leader_epoch;
    let leader = p.role.leader_id.clone();
    let me = ctx.cfg.server_id.clone();
    let fetch_timeout = ctx.cfg.replica.fetch_timeout;
    let retry = fetch_timeout.min(Duration::from_millis(200));
    let tick = ctx
        .cfg
        .replica
        .max_idle_wait
        .min(Duration::from_millis(100));
    let (mut f, first) = Follower::new(
        leader.clone(),
        epoch,
        settings(&ctx, p.settings.min_isr),
        now_ms(),
        p.log.last_leader_epoch(),
    );
    let mut todo: VecDeque<FollowerAction> = first.into();
    let replicate = ctx.subjects.replicate(&p.stream, p.id);
    let offset_subject = ctx.subjects.leader_epoch_offset(&p.stream, p.id);
    info!(ctx.logger, "following partition"; "stream" => &p.stream, "partition" => p.id,
        "leader" => &leader, "epoch" => epoch, "newest" => p.log.newest_offset());
    let mut ticked = now_ms();
    loop {
        if *stop.borrow() {
            break;
        }
        // Ticks also run between requests, so a leader that never answers gets reported.
        let now = now_ms();
        if now.saturating_sub(ticked) >= tick.as_millis() as u64 {
            ticked = now;
            todo.extend(f.on_tick(now));
        }
        let Some(action) = todo.pop_front() else {
            tokio::select! {
                _ = p.wake.notified() => todo.extend(f.on_notify()),
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => break,
            }
            continue;
        };
        match action {
            FollowerAction::AskEpochEnd { epoch: asked } => {
                let req = internal::LeaderEpochOffsetRequest {
                    leader_epoch: asked.unwrap_or(0),
                    current_leader_epoch: epoch,
                    replica_id: me.clone(),
                };
                let asked = ctx.repl_conn.request(
                    &offset_subject,
                    payload::encode(&req, false),
                    fetch_timeout,
                );
                let Some(answer) = unless_stopped(&mut stop, asked).await else {
                    break;
                };
                let answer = answer.ok().and_then(|m| {
                    payload::decode::<internal::LeaderEpochOffsetResponse>(&m.payload).ok()
                });
                match answer {
                    Some(r) => {
                        let answer = r.found.then_some((r.leader_epoch, r.end_offset + 1));
                        let epochs: Vec<(u64, i64)> = p
                            .log
                            .leader_epochs()
                            .iter()
                            .map(|e| (e.epoch, e.start_offset))
                            .collect();
                        let next = f.on_epoch_end(
                            &r.leader_id,
                            r.current_leader_epoch,
                            answer,
                            &epochs,
                            p.log.next_offset(),
                            now_ms(),
                        );
                        if next.is_empty() {
                            // Another broker or epoch answered (fenced): ask again.
                            debug!(ctx.logger, "ignored an epoch answer of another leader";
                                "stream" => &p.stream, "partition" => p.id,
                                "from" => &r.leader_id, "epoch" => r.current_leader_epoch);
                            if pause(&mut stop, retry).await {
                                break;
                            }
                            todo.extend(f.on_request_timeout(p.log.last_leader_epoch()));
                        }
                        todo.extend(next);
                    }
                    None => {
                        if pause(&mut stop, retry).await {
                            break;
                        }
                        todo.extend(f.on_request_timeout(p.log.last_leader_epoch()));
                    }
                }
            }
            FollowerAction::Truncate { keep_below } => {
                if keep_below < p.log.next_offset() {
                    let log = p.log.clone();
                    let result =
                        tokio::task::spawn_blocking(move || log.truncate(keep_below)).await;
                    let failed = match result {
                        Ok(Ok(())) => {
                            info!(ctx.logger, "truncated a diverging log";
                                "stream" => &p.stream, "partition" => p.id, "from" => keep_below);
                            None
                        }
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(e) = failed {
                        // Nothing may be fetched into a log that was not cut: the handshake
                        // starts over, unless the log failed for good.
                        error!(ctx.logger, "truncating the log failed; trying again";
                            "stream" => &p.stream, "partition" => p.id, "error" => e);
                        todo.clear();
                        if step_out_if_failed(&p, &ctx, &mut stop).await
                            || pause(&mut stop, retry).await
                        {
                            break;
                        }
                        todo.extend(f.on_truncate_failed(p.log.last_leader_epoch()));
                    }
                }
            }
            FollowerAction::Fetch => {
                let req = internal::ReplicationRequest {
                    replica_id: me.clone(),
                    offset: p.log.newest_offset(),
                    leader_epoch: epoch,
                };
                let asked =
                    ctx.repl_conn
                        .request(&replicate, payload::encode(&req, false), fetch_timeout);
                let Some(sent) = unless_stopped(&mut stop, asked).await else {
                    break;
                };
                let resp = sent
                    .ok()
                    .and_then(|m| envelope::decode_replication_response(&m.payload).ok())
                    .filter(|r| r.leader_epoch == epoch);
                let Some(resp) = resp else {
                    if pause(&mut stop, retry).await {
                        break;
                    }
                    todo.extend(f.on_request_timeout(p.log.last_leader_epoch()));
                    continue;
                };
                let mut had_records = false;
                if !resp.records.is_empty() {
                    let log = p.log.clone();
                    let records = resp.records.clone();
                    let appended = write_log(ctx.cfg.sync, move || log.append_raw(&records))
                        .await
                        .map(|r| r.map_err(|e| e.to_string()))
                        .unwrap_or_else(|| Err("the write task ended".into()));
                    match appended {
                        Ok(_) => had_records = true,
                        Err(e) => {
                            warn!(ctx.logger, "appending replicated records failed; trying again";
                                "stream" => &p.stream, "partition" => p.id, "error" => e);
                            if step_out_if_failed(&p, &ctx, &mut stop).await
                                || pause(&mut stop, retry).await
                            {
                                break;
                            }
                            todo.extend(f.on_request_timeout(p.log.last_leader_epoch()));
                            continue;
                        }
                    }
                }
                todo.extend(f.on_fetch_response(
                    &leader,
                    resp.leader_epoch,
                    resp.high_watermark,
                    had_records,
                    now_ms(),
                ));
            }
            FollowerAction::SetHw(hw) => {
                let _ = p.log.set_high_watermark(hw);
            }
            FollowerAction::ReportLeader => {
                let op = internal::ReportLeaderOp {
                    stream: p.stream.clone(),
                    partition: p.id,
                    replica: me.clone(),
                    leader: leader.clone(),
                    leader_epoch: epoch,
                    renew_epoch: false,
                };
                warn!(ctx.logger, "reporting a silent partition leader";
                    "stream" => &p.stream, "partition" => p.id, "leader" => &leader);
                let meta = ctx.meta.clone();
                let logger = ctx.logger.clone();
                tokio::spawn(async move {
                    if let Err(e) = meta.report_leader(op).await {
                        debug!(logger, "the leader report was not taken"; "error" => %e);
                    }
                });
            }
        }
    }
    debug!(ctx.logger, "stopped following"; "stream" => &p.stream, "partition" => p.id);
}

/// Follower: if the log failed for good (a failed sync, or a write that could not be undone),
/// leaves the ISR at once rather than after `replica.max.lag.time`, since it can copy nothing
/// more, and returns true: following stops. Otherwise false.
async fn step_out_if_failed(p: &Partition, ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> bool {
    let Some(why) = p.log.failure() else {
        return false;
    };
    error!(ctx.logger, "the partition's log failed; leaving the ISR and no longer following";
        "stream" => &p.stream, "partition" => p.id, "data_dir" => %ctx.cfg.data_dir.display(),
        "error" => &why);
    let entry = RaftLog {
        op: Op::ShrinkIsr as i32,
        shrink_isr_op: Some(internal::ShrinkIsrOp {
            stream: p.stream.clone(),
            partition: p.id,
            replica_to_remove: ctx.cfg.server_id.clone(),
            leader: p.role.leader_id.clone(),
            leader_epoch: p.role.leader_epoch,
        }),
        ..Default::default()
    };
    // Bounded: the leader drops a replica that stopped fetching after max lag anyway.
    for _ in 0..10 {
        match unless_stopped(stop, ctx.propose(entry.clone())).await {
            None | Some(Ok(_)) | Some(Err(MetaError::Op(_))) => break,
            Some(Err(_)) => {
                if pause(stop, Duration::from_millis(500)).await {
                    break;
                }
            }
        }
    }
    true
}

/// Awaits `f` unless `stop` comes first (then `None`), so a partition stops without waiting
/// out a request to a leader that does not answer.
async fn unless_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        v = f => Some(v),
        _ = stop.changed() => None,
    }
}

/// Sleeps `d` unless `stop` comes first; returns whether to stop.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

/// Metadata leader: judges reports of silent partition leaders, and fails over when enough
/// followers agree. Runs for the broker's life; reports arrive only while this node leads.
pub(crate) async fn judge_reports(
    broker: crate::Broker,
    mut reports: mpsc::Receiver<LeaderReport>,
    mut stop: watch::Receiver<bool>,
) {
    let timeout = broker.inner.cfg.replica.max_leader_timeout.as_millis() as u64;
    let mut tally: replication::FailoverTally<(String, i32)> =
        replication::FailoverTally::new(timeout);
    let mut coordinators: replication::FailoverTally<String> = replication::FailoverTally::new(
        broker.config().groups.coordinator_timeout.as_millis() as u64,
    );
    let mut term = 0;
    loop {
        let report = tokio::select! {
            r = reports.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let status = broker.inner.meta.status();
        if status.term != term {
            // Reports counted under an earlier leadership do not carry over.
            tally.clear();
            coordinators.clear();
            term = status.term;
        }
        let verdict = match &report.op {
            metastore::service::Report::Leader(op) => judge(&broker, &mut tally, op).await,
            metastore::service::Report::Coordinator(op) => {
                crate::groups::judge_coordinator(&broker, &mut coordinators, op).await
            }
        };
        let _ = report.reply.send(verdict);
    }
}

async fn judge(
    broker: &crate::Broker,
    tally: &mut replication::FailoverTally<(String, i32)>,
    op: &internal::ReportLeaderOp,
) -> Result<(), OpError> {
    let part = broker
        .inner
        .meta
        .with_state(|f| f.partition(&op.stream, op.partition).cloned());
    let Some(part) = part else {
        return Err(OpError::FailedPrecondition(format!(
            "No such partition [stream={}, partition={}]",
            op.stream, op.partition
        )));
    };
    let (_, leading) = broker.loads();
    let judgement = replication::judge(
        tally,
        (op.stream.clone(), op.partition),
        replication::Generation {
            leader: &part.leader,
            epoch: part.leader_epoch,
            isr: &part.isr,
        },
        replication::LeaderReport {
            replica: &op.replica,
            leader: &op.leader,
            epoch: op.leader_epoch,
            renew: op.renew_epoch,
        },
        |r| leading.get(r).copied().unwrap_or(0),
        now_ms(),
    );
    let new_leader = match judgement {
        replication::Judgement::Refuse(why) => return Err(OpError::FailedPrecondition(why)),
        replication::Judgement::Wait => return Ok(()),
        replication::Judgement::Elect(l) => l,
    };
    info!(broker.inner.logger, "failing over a partition"; "stream" => &op.stream,
        "partition" => op.partition, "old_leader" => &op.leader, "new_leader" => &new_leader,
        "restarted" => op.renew_epoch);
    change_leader(broker, op, new_leader).await
}

/// Proposes `new_leader` for the partition `op` reports on, replacing the generation it names.
async fn change_leader(
    broker: &crate::Broker,
    op: &internal::ReportLeaderOp,
    new_leader: String,
) -> Result<(), OpError> {
    let entry = RaftLog {
        op: Op::ChangeLeader as i32,
        // The generation it replaces: a failover decided on a stale state is refused at apply,
        // as is a new leader no longer in the ISR.
        change_leader_op: Some(internal::ChangeLeaderOp {
            stream: op.stream.clone(),
            partition: op.partition,
            leader: new_leader,
            expected_leader: op.leader.clone(),
            expected_leader_epoch: op.leader_epoch,
        }),
        ..Default::default()
    };
    match broker.inner.ctx.propose(entry).await {
        Ok(_) => Ok(()),
        Err(MetaError::Op(e)) => Err(e),
        Err(e) => Err(OpError::FailedPrecondition(format!(
            "failed to replicate the leader change: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A renewal whose proposal fails (here refused as the metadata leader refuses a leader
    /// change it could not replicate) asks again rather than leaving the partition leaderless.
    #[tokio::test]
    async fn a_failed_renewal_is_asked_again_until_it_succeeds() {
        let (_tx, mut stop) = watch::channel(false);
        let calls = AtomicU32::new(0);
        let mut failures = Vec::new();
        let asked = tokio::time::timeout(
            Duration::from_secs(30),
            ask_until_stopped(
                &mut stop,
                (Duration::from_millis(500), Duration::from_secs(5)),
                || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match n {
                            0 => Err(MetaError::Op(OpError::FailedPrecondition(
                                "failed to replicate the leader change: timed out".into(),
                            ))),
                            1 => Err(MetaError::Timeout),
                            _ => Ok(()),
                        }
                    }
                },
                |attempt, _| failures.push(attempt),
            ),
        )
        .await;
        assert!(asked.is_ok(), "the asking did not end");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(failures, vec![0, 1]);
    }

    /// The stop signal ends the asking.
    #[tokio::test]
    async fn asking_ends_at_the_stop_signal() {
        let (tx, mut stop) = watch::channel(false);
        let calls = AtomicU32::new(0);
        let asking = ask_until_stopped(
            &mut stop,
            (Duration::from_millis(500), Duration::from_secs(5)),
            || {
                if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                    let _ = tx.send(true);
                }
                async { Err(MetaError::NoLeader) }
            },
            |_, _| {},
        );
        let asked = tokio::time::timeout(Duration::from_secs(30), asking).await;
        assert!(asked.is_ok(), "the asking did not end");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
