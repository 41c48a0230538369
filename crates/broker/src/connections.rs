//! The broker's NATS connections, one per role, and what happens to them.
//!
//! Each connection is named `LIFT.<namespace>.<server id>.<role>`. A slow-consumer drop, a
//! disconnect, a reconnect or an error on any of them is logged at WARN with the role and how
//! often it has happened, and counted ([`Broker::nats_stats`](crate::Broker::nats_stats)).
//! NATS core keeps no message for a connection that is away or too slow, so each of these
//! events can mean messages this broker never received; with an external NATS server that is
//! the one loss the broker cannot prevent, and so it is never silent.

use natsbridge::{Connection, Event, EventHook, EventKind, NatsConfig, connection_name};
use slog::{Logger, warn};

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};

/// Messages the `streams` connection buffers per subscription: four times the client's
/// default, so that a partition's ingest is not the slow consumer during a burst. With
/// embedded NATS the ingest does not use it (it subscribes in process).
const STREAMS_SUBSCRIPTION_CAPACITY: usize = 256 * 1024;

/// The connections, by role.
pub(crate) struct Connections {
    pub raft: Connection,
    /// Partition subjects (ingest) and the publishes this broker takes itself; echo off.
    pub streams: Connection,
    pub acks: Connection,
    pub replication: Connection,
    pub publishes: Connection,
}

impl Connections {
    /// Connects every role.
    pub(crate) async fn open(cfg: &BrokerConfig, logger: &Logger) -> Result<Connections> {
        let mut nats = cfg.nats.clone();
        nats.events = Some(log_events(logger.clone(), cfg.nats.events.clone()));
        // Answers to this broker's requests (follower fetches among them) stay inside the
        // namespace, out of applications' reach.
        nats.inbox_prefix = natsbridge::Subjects::new(&cfg.namespace)
            .ok()
            .map(|s| s.inbox_prefix());
        let name = |role| connection_name(&cfg.namespace, &cfg.server_id, role);
        let failed = |e| BrokerError::internal("connecting to NATS", e);
        let raft = Connection::connect(&nats, &name("raft"))
            .await
            .map_err(failed)?;
        // Echo off: publishes this broker takes reach its own partitions in process.
        let streams_cfg = NatsConfig {
            subscription_capacity: nats
                .subscription_capacity
                .max(STREAMS_SUBSCRIPTION_CAPACITY),
            ..nats.clone()
        };
        let streams = Connection::connect_without_echo(&streams_cfg, &name("streams"))
            .await
            .map_err(failed)?;
        let acks = Connection::connect(&nats, &name("acks"))
            .await
            .map_err(failed)?;
        let replication = Connection::connect(&nats, &name("replication"))
            .await
            .map_err(failed)?;
        let publishes = Connection::connect(&nats, &name("publishes"))
            .await
            .map_err(failed)?;
        Ok(Connections {
            raft,
            streams,
            acks,
            replication,
            publishes,
        })
    }
}

/// A hook that logs every event at WARN, then passes it on to `then`.
fn log_events(logger: Logger, then: Option<EventHook>) -> EventHook {
    EventHook::new(move |e: &Event| {
        let role = e.connection.rsplit('.').next().unwrap_or_default();
        let consequence = match e.kind {
            EventKind::SlowConsumer => {
                "the NATS client dropped messages it could not buffer; see the README on max_pending"
            }
            EventKind::Disconnected => {
                "messages published while disconnected do not reach this broker"
            }
            EventKind::Reconnected => "subscriptions are restored",
            _ => "",
        };
        warn!(logger, "NATS connection event";
            "event" => e.kind.as_str(), "role" => role, "count" => e.count,
            "connection" => &e.connection, "detail" => &e.detail, "consequence" => consequence);
        if let Some(then) = &then {
            then.call(e);
        }
    })
}
