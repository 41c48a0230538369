//! Liftbridge's wire types, generated from `proto/`.
//!
//! - [`api`] (protobuf package `proto`): the public gRPC API. Service `API`, 16 RPCs, and
//!   liftbridge-api v1.9.0's messages and field numbers, plus `SubscribeRequest.reverse`. Both a
//!   tonic client ([`api::api_client::ApiClient`]) and server trait ([`api::api_server::Api`]).
//! - [`internal`] (package `protocol`): what brokers send each other in envelopes over NATS, and
//!   the metadata Raft log's entries.
//!
//! This crate has no logic: it is generated code and nothing else.

#![allow(missing_docs)]

/// The public gRPC API (protobuf package `proto`).
pub mod api {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/proto.rs"));
}

/// Messages between brokers (protobuf package `protocol`).
pub mod internal {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/protocol.rs"));
}

/// The gRPC service name, also used to register the standard health service.
pub const SERVICE_NAME: &str = "proto.API";
