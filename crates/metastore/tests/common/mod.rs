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

/// Ticks nodes 1 to 3 and delivers their messages (without faults) until `done` holds, a
/// bounded number of rounds. Every message a member sends must be admitted.
pub fn run<S: metastore::storage::LogStore>(
    nodes: &mut std::collections::HashMap<u64, metastore::node::MetaNode<S>>,
    done: impl Fn(&std::collections::HashMap<u64, metastore::node::MetaNode<S>>) -> bool,
) {
    use metastore::node::Input;
    let mut net: Vec<raft::eraftpb::Message> = Vec::new();
    for _ in 0..300 {
        for id in 1..=3 {
            net.extend(
                nodes
                    .get_mut(&id)
                    .unwrap()
                    .handle(Input::Tick)
                    .unwrap()
                    .messages,
            );
        }
        for _ in 0..1000 {
            let Some(m) = net.pop() else { break };
            let to = m.to;
            let out = nodes
                .get_mut(&to)
                .unwrap()
                .handle(Input::Message(Box::new(m)))
                .expect("a member's own messages are admitted");
            net.extend(out.messages);
        }
        if done(nodes) {
            return;
        }
    }
    panic!("did not converge");
}
