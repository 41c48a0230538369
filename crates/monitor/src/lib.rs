//! `monitor`: the broker's HTTP port for operators.
//!
//! - `/metrics`: Prometheus text format: gauges read from [`broker::Broker::snapshot`] at each
//!   scrape, the broker's counters and histograms ([`broker::Metrics`]), and the standard
//!   process metrics from `/proc` ([`Process`]).
//! - `/healthz`: 200 while the process serves.
//! - `/readyz`: 200 once [`broker::Broker::ready`]: a metadata leader is known, every partition
//!   of this broker is open, and it is in sync on every partition it follows; else 503 with the
//!   reason. Both are suitable as Kubernetes probes.
//!
//! Metric names follow Prometheus conventions (`liftbridge_…`, `_total`, `_bytes`). Labels are
//! `stream` and `partition` for partitions this broker holds, `group` for consumer groups, and
//! `connection` for NATS connections; their number grows with the streams and groups, nothing
//! else.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use broker::{Broker, Metrics, Snapshot};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every metric name this port exposes (without the `_total` suffix counters get); the
/// dashboard and alerting rules in `deploy/` use only these.
pub const METRICS: &[&str] = &[
    "liftbridge_up",
    "liftbridge_metadata_leader",
    "liftbridge_metadata_leader_known",
    "liftbridge_raft_term",
    "liftbridge_raft_commit_index",
    "liftbridge_raft_applied_index",
    "liftbridge_partitions_led",
    "liftbridge_partitions_under_replicated",
    "liftbridge_partitions_below_min_isr",
    "liftbridge_partitions_offline",
    "liftbridge_partition_high_watermark",
    "liftbridge_partition_newest_offset",
    "liftbridge_partition_isr",
    "liftbridge_partition_replicas",
    "liftbridge_partition_subscriptions",
    "liftbridge_partition_disk_bytes",
    "liftbridge_partition_segments",
    "liftbridge_pending_all_acks",
    "liftbridge_data_free_bytes",
    "liftbridge_nats_slow_consumer_drops",
    "liftbridge_nats_disconnects",
    "liftbridge_nats_reconnects",
    "liftbridge_nats_connected",
    "liftbridge_consumer_group_members",
    "liftbridge_consumer_group_epoch",
    "liftbridge_partition_follower_lag_messages",
    "liftbridge_cursor_lag_messages",
    "liftbridge_consumer_group_lag_messages",
    "liftbridge_messages_in",
    "liftbridge_bytes_in",
    "liftbridge_messages_out",
    "liftbridge_bytes_out",
    "liftbridge_isr_changes",
    "liftbridge_cleaned_messages",
    "liftbridge_log_append_seconds",
    "liftbridge_log_append_batch_messages",
    "liftbridge_log_fsync_seconds",
    "liftbridge_log_fsync_messages",
    "liftbridge_publish_ack_seconds",
    "liftbridge_publish_errors",
    "liftbridge_metadata_proposal_seconds",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// Metrics of [`METRICS`] with series only once there is something to report (followers,
/// cursors, errors): until then a scrape leaves them out.
pub const SPARSE: &[&str] = &[
    "liftbridge_partition_follower_lag_messages",
    "liftbridge_cursor_lag_messages",
    "liftbridge_consumer_group_lag_messages",
    "liftbridge_publish_errors",
    "liftbridge_publish_ack_seconds",
];

/// The prefix of a consumer group's cursor id (as `liftbridge-client` names it): cursor lags
/// under it add up to the group's lag.
pub const GROUP_CURSOR_PREFIX: &str = "__group:";

mod process;
pub use process::Process;

type Labels = Vec<(String, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn family(reg: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, i64)>) {
    let f = Family::<Labels, Gauge<i64>>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).set(v);
    }
    reg.register(name, help, f);
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics of one snapshot, the broker's counters and this process, in the Prometheus
/// text format.
pub fn render(s: &Snapshot, counters: &Metrics) -> String {
    let mut reg = Registry::default();
    counters.register(&mut reg);
    if let Some(p) = Process::read() {
        p.register(&mut reg);
    }
    gauge(&mut reg, "liftbridge_up", "1 while the broker serves", 1);
    gauge(
        &mut reg,
        "liftbridge_metadata_leader",
        "1 when this broker leads the metadata group",
        i64::from(s.metadata_leader),
    );
    gauge(
        &mut reg,
        "liftbridge_metadata_leader_known",
        "1 when this broker knows a metadata leader",
        i64::from(s.metadata_leader_known),
    );
    gauge(
        &mut reg,
        "liftbridge_raft_term",
        "Metadata Raft term",
        clamp(s.raft_term),
    );
    gauge(
        &mut reg,
        "liftbridge_raft_commit_index",
        "Highest metadata index known committed",
        clamp(s.raft_commit),
    );
    gauge(
        &mut reg,
        "liftbridge_raft_applied_index",
        "Last metadata index applied",
        clamp(s.raft_applied),
    );
    let led: Vec<_> = s.partitions.iter().filter(|p| p.leader).collect();
    gauge(
        &mut reg,
        "liftbridge_partitions_led",
        "Partitions this broker leads",
        led.len() as i64,
    );
    gauge(
        &mut reg,
        "liftbridge_partitions_under_replicated",
        "Partitions this broker leads whose ISR is smaller than their replicas",
        led.iter().filter(|p| p.isr < p.replicas).count() as i64,
    );
    gauge(
        &mut reg,
        "liftbridge_partitions_below_min_isr",
        "Partitions this broker leads whose ISR is below their minimum: ALL acks wait",
        led.iter()
            .filter(|p| (p.isr as i64) < i64::from(p.min_isr))
            .count() as i64,
    );
    gauge(
        &mut reg,
        "liftbridge_partitions_offline",
        "Partitions of the cluster without a leader (the same on every broker)",
        s.partitions.iter().filter(|p| !p.has_leader).count() as i64,
    );
    let local: Vec<_> = s.partitions.iter().filter(|p| p.local).collect();
    let per = |f: &dyn Fn(&broker::PartitionView) -> i64| -> Vec<(Labels, i64)> {
        local
            .iter()
            .map(|p| {
                (
                    vec![
                        ("stream".to_owned(), p.stream.clone()),
                        ("partition".to_owned(), p.partition.to_string()),
                    ],
                    f(p),
                )
            })
            .collect()
    };
    family(
        &mut reg,
        "liftbridge_partition_high_watermark",
        "Newest committed offset (-1: none)",
        per(&|p| p.high_watermark),
    );
    family(
        &mut reg,
        "liftbridge_partition_newest_offset",
        "Newest offset on this broker (-1: none)",
        per(&|p| p.newest_offset),
    );
    family(
        &mut reg,
        "liftbridge_partition_isr",
        "In-sync replicas",
        per(&|p| p.isr as i64),
    );
    family(
        &mut reg,
        "liftbridge_partition_replicas",
        "Replicas",
        per(&|p| p.replicas as i64),
    );
    family(
        &mut reg,
        "liftbridge_partition_subscriptions",
        "Active subscriptions on this broker",
        per(&|p| p.subscribers as i64),
    );
    family(
        &mut reg,
        "liftbridge_partition_disk_bytes",
        "Bytes of the partition's segments on this broker",
        per(&|p| clamp(p.bytes)),
    );
    family(
        &mut reg,
        "liftbridge_partition_segments",
        "Segments of the partition on this broker",
        per(&|p| p.segments as i64),
    );
    gauge(
        &mut reg,
        "liftbridge_pending_all_acks",
        "ALL acks waiting for their messages to commit",
        s.pending_acks as i64,
    );
    gauge(
        &mut reg,
        "liftbridge_data_free_bytes",
        "Free bytes on the data folder's file system (-1: unknown)",
        s.free_bytes.map_or(-1, clamp),
    );
    let conn = |i: usize| -> Vec<(Labels, i64)> {
        s.nats
            .iter()
            .map(|c| {
                let v = [c.1, c.2, c.3][i];
                (vec![("connection".to_owned(), c.0.clone())], clamp(v))
            })
            .collect()
    };
    family(
        &mut reg,
        "liftbridge_nats_slow_consumer_drops",
        "Messages the NATS client dropped for a full subscription buffer",
        conn(0),
    );
    family(
        &mut reg,
        "liftbridge_nats_disconnects",
        "NATS connections lost",
        conn(1),
    );
    family(
        &mut reg,
        "liftbridge_nats_reconnects",
        "NATS connections regained",
        conn(2),
    );
    family(
        &mut reg,
        "liftbridge_nats_connected",
        "1 while the NATS connection is up",
        s.nats
            .iter()
            .map(|c| (vec![("connection".to_owned(), c.0.clone())], i64::from(c.4)))
            .collect(),
    );
    family(
        &mut reg,
        "liftbridge_consumer_group_members",
        "Members of each consumer group",
        s.groups
            .iter()
            .map(|g| (vec![("group".to_owned(), g.0.clone())], g.1 as i64))
            .collect(),
    );
    family(
        &mut reg,
        "liftbridge_consumer_group_epoch",
        "Epoch of each consumer group",
        s.groups
            .iter()
            .map(|g| (vec![("group".to_owned(), g.0.clone())], clamp(g.2)))
            .collect(),
    );
    family(
        &mut reg,
        "liftbridge_partition_follower_lag_messages",
        "On the leader: messages each follower has yet to copy",
        local
            .iter()
            .flat_map(|p| {
                p.follower_lag.iter().map(|(f, lag)| {
                    (
                        vec![
                            ("stream".to_owned(), p.stream.clone()),
                            ("partition".to_owned(), p.partition.to_string()),
                            ("follower".to_owned(), f.clone()),
                        ],
                        *lag,
                    )
                })
            })
            .collect(),
    );
    family(
        &mut reg,
        "liftbridge_cursor_lag_messages",
        "Committed messages past each cursor (on the broker keeping the cursor, when it holds the partition)",
        s.cursors
            .iter()
            .map(|c| {
                (
                    vec![
                        ("stream".to_owned(), c.stream.clone()),
                        ("partition".to_owned(), c.partition.to_string()),
                        ("cursor".to_owned(), c.cursor.clone()),
                    ],
                    c.lag,
                )
            })
            .collect(),
    );
    let mut group_lag: std::collections::BTreeMap<&str, i64> = Default::default();
    for c in &s.cursors {
        if let Some(g) = c.cursor.strip_prefix(GROUP_CURSOR_PREFIX) {
            *group_lag.entry(g).or_default() += c.lag;
        }
    }
    family(
        &mut reg,
        "liftbridge_consumer_group_lag_messages",
        "Committed messages past a consumer group's cursors, summed over the partitions seen here",
        group_lag
            .into_iter()
            .map(|(g, lag)| (vec![("group".to_owned(), g.to_owned())], lag))
            .collect(),
    );
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

async fn metrics(State(b): State<Broker>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&b.snapshot(), b.metrics()),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(b): State<Broker>) -> impl IntoResponse {
    match b.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The running HTTP port.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Serves the operators' port for `broker` on `listener`.
///
/// # Errors
/// The listener's address.
pub async fn serve(broker: Broker, listener: tokio::net::TcpListener) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(broker);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Server {
        addr,
        stop: Some(stop),
        task,
    })
}
