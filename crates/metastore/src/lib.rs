//! `metastore`: the cluster metadata of liftbridge-rs.
//!
//! - [`fsm`]: the metadata state machine. It covers streams, partitions (replicas, leader, ISR,
//!   epochs, paused and read-only flags) and consumer groups, changed only by applying committed
//!   log entries deterministically.
//! - [`node`]: one member of the Raft group (raft-rs) that commits those entries, driven as a
//!   state machine by its caller: ticks, proposals and messages in; messages, applied entries and
//!   role changes out.
//!
//! Durable storage, the transport over NATS and membership build on these; see
//! `docs/architecture.md` for their status.

pub mod fsm;
pub mod groups;
pub mod node;
pub mod service;
pub mod storage;

pub use fsm::{
    Applied, Event, Fsm, GroupState, MAX_PARTITIONS, OpError, PartitionState, StreamState,
};
