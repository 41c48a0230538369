//! Helpers shared by the metastore tests.
#![allow(dead_code)]

use liftbridge_proto::internal::{self, Op, RaftLog};

/// A CreateStream entry for a one-partition stream named and subjected `name`.
pub fn create(name: &str) -> RaftLog {
    RaftLog {
        op: Op::CreateStream as i32,
        create_stream_op: Some(internal::CreateStreamOp {
            stream: Some(internal::Stream {
                name: name.into(),
                subject: name.into(),
                partitions: vec![internal::Partition {
                    id: 0,
                    replicas: vec!["a".into()],
                    leader: "a".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Our embedded NATS server on a free 127.0.0.1 port, and the configuration to reach it.
pub async fn nats() -> (natsd::Server, natsbridge::NatsConfig) {
    let server = natsd::Server::start(natsd::ServerConfig {
        port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = natsbridge::NatsConfig {
        servers: vec![server.client_url()],
        ..natsbridge::NatsConfig::default()
    };
    (server, cfg)
}
