//! Placement: which brokers hold a new stream's partitions, and which of them leads, by load.

use std::collections::HashMap;

use liftbridge_proto::api::{self};
use liftbridge_proto::internal::{self, Op, RaftLog};

use crate::broker::*;
use crate::error::{BrokerError, Result};
use crate::partition::now_nanos;

impl Broker {
    /// Partitions held and partitions led, per server, over the live streams.
    pub(crate) fn loads(&self) -> (HashMap<String, usize>, HashMap<String, usize>) {
        self.inner.meta.with_state(|f| {
            let mut held: HashMap<String, usize> = HashMap::new();
            let mut led: HashMap<String, usize> = HashMap::new();
            for s in f.streams().values().filter(|s| !s.tombstoned) {
                for p in s.partitions.values() {
                    for r in &p.replicas {
                        *held.entry(r.clone()).or_default() += 1;
                    }
                    *led.entry(p.leader.clone()).or_default() += 1;
                }
            }
            (held, led)
        })
    }

    /// Builds the CreateStream entry: replicas on the least-loaded brokers, the leader the
    /// replica leading the fewest partitions.
    pub(crate) fn create_stream_entry(
        &self,
        req: &api::CreateStreamRequest,
        config: internal::StreamConfig,
    ) -> Result<RaftLog> {
        let status = self.inner.meta.status();
        let mut ids: Vec<u64> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .collect();
        ids.sort_unstable();
        let size = ids.len().max(1) as i32;
        // Server ids from Raft ids: this server, and the others the metadata knows of.
        let servers = self.known_servers();
        let rf = match req.replication_factor {
            0 => 1,
            -1 => size,
            n if n < 0 => {
                return Err(BrokerError::InvalidArgument(format!(
                    "Invalid replicationFactor {n}"
                )));
            }
            n if n > size => {
                return Err(BrokerError::InvalidArgument(format!(
                    "Invalid replicationFactor {n}, cluster size {size}"
                )));
            }
            n => n,
        };
        if servers.len() < rf as usize {
            return Err(BrokerError::Internal(format!(
                "replication factor {rf} needs {rf} known brokers; {} are known",
                servers.len()
            )));
        }
        let partitions = req.partitions.max(1);
        let (mut load, mut leads) = self.loads();
        let mut parts = Vec::with_capacity(partitions as usize);
        for id in 0..partitions {
            let mut order = servers.clone();
            order.sort_by_key(|s| load.get(s).copied().unwrap_or(0));
            let replicas: Vec<String> = order.into_iter().take(rf as usize).collect();
            let leader = replicas
                .iter()
                .min_by_key(|s| leads.get(*s).copied().unwrap_or(0))
                .cloned()
                .unwrap_or_default();
            for r in &replicas {
                *load.entry(r.clone()).or_default() += 1;
            }
            *leads.entry(leader.clone()).or_default() += 1;
            parts.push(internal::Partition {
                subject: req.subject.clone(),
                stream: req.name.clone(),
                id,
                group: req.group.clone(),
                replication_factor: rf,
                isr: replicas.clone(),
                replicas,
                leader,
                ..Default::default()
            });
        }
        Ok(RaftLog {
            op: Op::CreateStream as i32,
            create_stream_op: Some(internal::CreateStreamOp {
                stream: Some(internal::Stream {
                    name: req.name.clone(),
                    subject: req.subject.clone(),
                    partitions: parts,
                    config: Some(config),
                    creation_timestamp: now_nanos(),
                    resume_all: false,
                }),
            }),
            ..Default::default()
        })
    }

    /// Server ids of the members: this one plus those seen in the metadata or the survey.
    pub(crate) fn known_servers(&self) -> Vec<String> {
        let status = self.inner.meta.status();
        let members: std::collections::HashSet<u64> = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .collect();
        let mut names: Vec<String> = vec![self.inner.cfg.server_id.clone()];
        if let Some((_, _, list)) = &*self.inner.brokers_cache.lock() {
            names.extend(list.iter().map(|b| b.id.clone()));
        }
        self.inner.meta.with_state(|f| {
            for s in f.streams().values() {
                for p in s.partitions.values() {
                    names.extend(p.replicas.iter().cloned());
                }
            }
        });
        names.sort();
        names.dedup();
        names.retain(|n| members.contains(&metastore::service::raft_id(n)));
        names
    }
}
