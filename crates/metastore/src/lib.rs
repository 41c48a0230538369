//! `metastore`: the cluster metadata of liftbridge-rs.
//!
//! Today this crate holds the metadata state machine ([`fsm::Fsm`]). It covers streams, partitions
//! (replicas, leader, ISR, epochs, paused and read-only flags) and consumer groups, changed only
//! by applying committed log entries deterministically. The Raft group that commits those entries
//! (raft-rs, durable storage, transport over NATS, membership) builds on it; see
//! `docs/architecture.md` for its status.

pub mod fsm;

pub use fsm::{Applied, Event, Fsm, GroupState, OpError, PartitionState, StreamState};
