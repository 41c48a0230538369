//! `lift cursor`, `lift group`, `lift cluster` and `lift context`.

use std::collections::BTreeSet;

use liftbridge_client::Client;
use serde::Serialize;
use serde_json::json;

use crate::cli::{ClusterCmd, Conn, ContextCmd, CursorCmd, GroupCmd};
use crate::context::{self, Context, Contexts};
use crate::output::{Failure, Out, code, yes};

/// Runs a `lift cursor` command.
pub async fn cursor(c: &Client, cmd: CursorCmd, out: Out) -> Result<(), Failure> {
    match cmd {
        CursorCmd::Get {
            id,
            stream,
            partition,
        } => {
            let offset = c
                .fetch_cursor(&id, &stream, partition)
                .await
                .map_err(|e| Failure::server(format!("reading cursor {id}"), e))?;
            out.done(
                &offset.to_string(),
                &json!({"cursor": id, "stream": stream, "partition": partition, "offset": offset}),
            );
        }
        CursorCmd::Set {
            id,
            stream,
            offset,
            partition,
        } => {
            c.set_cursor(&id, &stream, partition, offset)
                .await
                .map_err(|e| Failure::server(format!("setting cursor {id}"), e))?;
            out.done(
                &format!("cursor {id} on {stream} partition {partition} is at {offset}"),
                &json!({"cursor": id, "stream": stream, "partition": partition, "offset": offset}),
            );
        }
    }
    Ok(())
}

/// One group in `group ls`.
#[derive(Debug, Serialize)]
struct GroupRow {
    group: String,
    coordinator: String,
    epoch: u64,
    members: usize,
}

/// One member in `group info`.
#[derive(Debug, Serialize)]
struct MemberRow {
    group: String,
    member: String,
    streams: Vec<String>,
    partitions: Vec<(String, Vec<i32>)>,
}

/// One partition's lag in `group info`.
#[derive(Debug, Serialize)]
struct LagRow {
    group: String,
    stream: String,
    partition: i32,
    member: Option<String>,
    committed: i64,
    high_watermark: i64,
    lag: i64,
}

/// Runs a `lift group` command.
pub async fn group(c: &Client, cmd: GroupCmd, out: Out) -> Result<(), Failure> {
    match cmd {
        GroupCmd::Ls => {
            let groups = c
                .groups(&[])
                .await
                .map_err(|e| Failure::server("listing consumer groups", e))?;
            let rows: Vec<GroupRow> = groups
                .into_iter()
                .map(|g| GroupRow {
                    group: g.id,
                    coordinator: g.coordinator,
                    epoch: g.epoch,
                    members: g.members.len(),
                })
                .collect();
            out.table(&["GROUP", "COORDINATOR", "EPOCH", "MEMBERS"], &rows, |r| {
                vec![
                    r.group.clone(),
                    r.coordinator.clone(),
                    r.epoch.to_string(),
                    r.members.to_string(),
                ]
            });
        }
        GroupCmd::Info { group } => {
            let found = c
                .groups(&[group.as_str()])
                .await
                .map_err(|e| Failure::server(format!("reading consumer group {group}"), e))?;
            let Some(g) = found.into_iter().next() else {
                return Err(Failure::server(
                    format!("consumer group {group}"),
                    liftbridge_client::Error::NoSuchGroup,
                ));
            };
            let streams: BTreeSet<String> =
                g.members.iter().flat_map(|m| m.streams.clone()).collect();
            let lags = c
                .group_lag(&group, streams.iter().cloned())
                .await
                .map_err(|e| Failure::server(format!("reading the lag of {group}"), e))?;
            let owner = |s: &str, p: i32| {
                g.members
                    .iter()
                    .find(|m| {
                        m.assignments
                            .iter()
                            .any(|(ms, ps)| ms == s && ps.contains(&p))
                    })
                    .map(|m| m.id.clone())
            };
            let lag_rows: Vec<LagRow> = lags
                .into_iter()
                .map(|l| LagRow {
                    group: group.clone(),
                    member: owner(&l.stream, l.partition),
                    stream: l.stream,
                    partition: l.partition,
                    committed: l.committed,
                    high_watermark: l.high_watermark,
                    lag: l.lag,
                })
                .collect();
            if out.json {
                out.line(&json!({
                    "group": g.id,
                    "coordinator": g.coordinator,
                    "epoch": g.epoch,
                    "members": g.members.iter().map(|m| MemberRow {
                        group: group.clone(),
                        member: m.id.clone(),
                        streams: m.streams.clone(),
                        partitions: m.assignments.clone(),
                    }).collect::<Vec<_>>(),
                    "lag": lag_rows,
                }));
                return Ok(());
            }
            println!(
                "group {} coordinated by {} at epoch {}, {} member(s)\n",
                g.id,
                g.coordinator,
                g.epoch,
                g.members.len()
            );
            out.table(
                &[
                    "STREAM",
                    "PARTITION",
                    "MEMBER",
                    "COMMITTED",
                    "HIGH WATERMARK",
                    "LAG",
                ],
                &lag_rows,
                |r| {
                    vec![
                        r.stream.clone(),
                        r.partition.to_string(),
                        r.member.clone().unwrap_or_else(|| "-".into()),
                        r.committed.to_string(),
                        r.high_watermark.to_string(),
                        r.lag.to_string(),
                    ]
                },
            );
        }
    }
    Ok(())
}

/// One broker in `cluster info`.
#[derive(Debug, Serialize)]
struct BrokerRow {
    id: String,
    address: String,
    metadata_leader: bool,
    partitions: i32,
    leaders: i32,
}

/// What `cluster health` found.
#[derive(Debug, Serialize)]
struct Health {
    healthy: bool,
    brokers: usize,
    partitions: usize,
    offline: Vec<String>,
    under_replicated: Vec<String>,
    reason: String,
}

/// Runs a `lift cluster` command.
pub async fn cluster(c: &Client, cmd: ClusterCmd, out: Out) -> Result<(), Failure> {
    let md = c
        .fetch_metadata()
        .await
        .map_err(|e| Failure::server("fetching the metadata", e))?;
    match cmd {
        ClusterCmd::Info => {
            let mut rows: Vec<BrokerRow> = md
                .brokers
                .iter()
                .map(|b| BrokerRow {
                    id: b.id.clone(),
                    address: b.addr(),
                    metadata_leader: b.metadata_leader,
                    partitions: b.partition_count,
                    leaders: b.leader_count,
                })
                .collect();
            rows.sort_by(|a, b| a.id.cmp(&b.id));
            out.table(
                &[
                    "BROKER",
                    "ADDRESS",
                    "METADATA LEADER",
                    "PARTITIONS",
                    "LEADING",
                ],
                &rows,
                |r| {
                    vec![
                        r.id.clone(),
                        r.address.clone(),
                        if r.metadata_leader { "yes" } else { "" }.to_owned(),
                        r.partitions.to_string(),
                        r.leaders.to_string(),
                    ]
                },
            );
        }
        ClusterCmd::Health => {
            let mut offline = Vec::new();
            let mut under = Vec::new();
            let mut count = 0;
            let mut streams: Vec<_> = md.streams.values().collect();
            streams.sort_by(|a, b| a.name.cmp(&b.name));
            for s in streams {
                for p in s.partitions.values() {
                    count += 1;
                    let name = format!("{}/{}", s.name, p.id);
                    if p.leader.is_empty() {
                        offline.push(name);
                    } else if p.isr.len() < p.replicas.len() {
                        under.push(name);
                    }
                }
            }
            let (healthy, reason, exit) = if !offline.is_empty() {
                (
                    false,
                    format!(
                        "{} partition(s) without a leader: {}",
                        offline.len(),
                        offline.join(", ")
                    ),
                    code::OFFLINE,
                )
            } else if !under.is_empty() {
                (
                    false,
                    format!(
                        "{} partition(s) with replicas out of sync: {}",
                        under.len(),
                        under.join(", ")
                    ),
                    code::UNDER_REPLICATED,
                )
            } else {
                (
                    true,
                    format!(
                        "healthy: {} broker(s), {count} partition(s), all led and in sync",
                        md.brokers.len()
                    ),
                    0,
                )
            };
            let h = Health {
                healthy,
                brokers: md.brokers.len(),
                partitions: count,
                offline,
                under_replicated: under,
                reason: reason.clone(),
            };
            if out.json {
                out.line(&h);
            } else if healthy {
                println!("{reason}");
            }
            if !healthy {
                return Err(Failure::with_code(format!("unhealthy: {reason}"), exit));
            }
        }
    }
    Ok(())
}

/// One context in `context ls`.
#[derive(Debug, Serialize)]
struct ContextRow {
    name: String,
    current: bool,
    servers: Vec<String>,
    tls: bool,
}

/// Runs a `lift context` command (no connection needed).
pub fn context(conn: &Conn, cmd: ContextCmd, out: Out) -> Result<(), Failure> {
    let mut all = Contexts::load()?;
    match cmd {
        ContextCmd::Add { name } => {
            let servers: Vec<String> = conn
                .servers
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect();
            if servers.is_empty() {
                return Err(Failure::usage(
                    "a context needs at least one --server host:port",
                ));
            }
            let absolute = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            };
            all.contexts.insert(
                name.clone(),
                Context {
                    servers,
                    tls_ca: absolute(&conn.tls_ca),
                    tls_cert: absolute(&conn.tls_cert),
                    tls_key: absolute(&conn.tls_key),
                    tls_domain: conn.tls_domain.clone(),
                },
            );
            all.current = Some(name.clone());
            all.save()?;
            out.done(
                &format!(
                    "context {name} added and current ({})",
                    context::path()?.display()
                ),
                &json!({"context": name, "current": true}),
            );
        }
        ContextCmd::Use { name } => {
            if !all.contexts.contains_key(&name) {
                return Err(Failure::usage(format!(
                    "no context named {name:?}; `lift context ls` lists them"
                )));
            }
            all.current = Some(name.clone());
            all.save()?;
            out.done(
                &format!("context {name} is current"),
                &json!({"context": name, "current": true}),
            );
        }
        ContextCmd::Ls => {
            let rows: Vec<ContextRow> = all
                .contexts
                .iter()
                .map(|(n, c)| ContextRow {
                    name: n.clone(),
                    current: all.current.as_deref() == Some(n.as_str()),
                    servers: c.servers.clone(),
                    tls: c.tls_ca.is_some(),
                })
                .collect();
            out.table(&["CONTEXT", "CURRENT", "SERVERS", "TLS"], &rows, |r| {
                vec![
                    r.name.clone(),
                    if r.current { "*" } else { "" }.to_owned(),
                    r.servers.join(","),
                    yes(r.tls),
                ]
            });
        }
        ContextCmd::Rm { name } => {
            if all.contexts.remove(&name).is_none() {
                return Err(Failure::usage(format!("no context named {name:?}")));
            }
            if all.current.as_deref() == Some(name.as_str()) {
                all.current = None;
            }
            all.save()?;
            out.done(
                &format!("context {name} removed"),
                &json!({"context": name, "removed": true}),
            );
        }
    }
    Ok(())
}
