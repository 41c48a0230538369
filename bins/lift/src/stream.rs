//! `lift stream`: create, list, inspect, delete, pause, resume, read-only.

use liftbridge_client::{Client, PartitionSet, StartAt, StreamOptions, SubscribeOptions};
use serde::Serialize;
use serde_json::json;

use crate::cli::{CreateArgs, StreamCmd};
use crate::output::{Failure, Out, yes};

/// One stream in `ls`.
#[derive(Debug, Serialize)]
struct StreamRow {
    name: String,
    subject: String,
    partitions: usize,
}

/// One partition in `info`.
#[derive(Debug, Serialize)]
struct PartitionRow {
    stream: String,
    partition: i32,
    leader: String,
    replicas: Vec<String>,
    isr: Vec<String>,
    high_watermark: i64,
    newest_offset: i64,
    paused: bool,
    readonly: bool,
}

fn options(a: &CreateArgs) -> StreamOptions {
    StreamOptions {
        group: a.group.clone(),
        replication_factor: Some(a.replication_factor),
        partitions: Some(a.partitions),
        retention_max_bytes: a.retention_max_bytes,
        retention_max_messages: a.retention_max_messages,
        retention_max_age: a.retention_max_age,
        cleaner_interval: a.cleaner_interval,
        segment_max_bytes: a.segment_max_bytes,
        segment_max_age: a.segment_max_age,
        compact_max_goroutines: a.compact_max_goroutines,
        compact_enabled: a.compact,
        auto_pause_time: a.auto_pause_time,
        auto_pause_disable_if_subscribers: a.auto_pause_disable_if_subscribers,
        min_isr: a.min_isr,
        optimistic_concurrency_control: a.concurrency_control,
        encryption: a.encryption,
    }
}

fn set(partitions: &[i32]) -> PartitionSet {
    PartitionSet(partitions.to_vec())
}

/// The partition ids of `name`, checked against `wanted` (empty: all).
async fn partitions_of(c: &Client, name: &str, wanted: &[i32]) -> Result<Vec<i32>, Failure> {
    let md = c
        .fetch_metadata()
        .await
        .map_err(|e| Failure::server("fetching the metadata", e))?;
    let s = md.streams.get(name).ok_or_else(|| {
        Failure::server(
            format!("stream {name}"),
            liftbridge_client::Error::NoSuchStream,
        )
    })?;
    let all: Vec<i32> = s.partitions.keys().copied().collect();
    if let Some(p) = wanted.iter().find(|p| !all.contains(p)) {
        return Err(Failure::server(
            format!("stream {name} partition {p}"),
            liftbridge_client::Error::NoSuchPartition,
        ));
    }
    Ok(if wanted.is_empty() {
        all
    } else {
        wanted.to_vec()
    })
}

/// Runs a `lift stream` command.
pub async fn run(c: &Client, cmd: StreamCmd, out: Out) -> Result<(), Failure> {
    match cmd {
        StreamCmd::Create(a) => {
            let subject = a.subject.clone().unwrap_or_else(|| a.name.clone());
            c.create_stream(&subject, &a.name, options(&a))
                .await
                .map_err(|e| Failure::server(format!("creating stream {}", a.name), e))?;
            out.done(
                &format!(
                    "created stream {} on subject {subject} ({} partition{}, replication factor {})",
                    a.name,
                    a.partitions,
                    if a.partitions == 1 { "" } else { "s" },
                    a.replication_factor
                ),
                &json!({"stream": a.name, "subject": subject, "partitions": a.partitions,
                        "replication_factor": a.replication_factor}),
            );
        }
        StreamCmd::Ls => {
            let md = c
                .fetch_metadata()
                .await
                .map_err(|e| Failure::server("fetching the metadata", e))?;
            let mut rows: Vec<StreamRow> = md
                .streams
                .values()
                .map(|s| StreamRow {
                    name: s.name.clone(),
                    subject: s.subject.clone(),
                    partitions: s.partitions.len(),
                })
                .collect();
            rows.sort_by(|a, b| a.name.cmp(&b.name));
            out.table(&["STREAM", "SUBJECT", "PARTITIONS"], &rows, |r| {
                vec![r.name.clone(), r.subject.clone(), r.partitions.to_string()]
            });
        }
        StreamCmd::Info { name } => {
            let ids = partitions_of(c, &name, &[]).await?;
            let mut rows = Vec::new();
            for id in ids {
                let p = c
                    .fetch_partition_metadata(&name, id)
                    .await
                    .map_err(|e| Failure::server(format!("reading partition {id} of {name}"), e))?;
                rows.push(PartitionRow {
                    stream: name.clone(),
                    partition: id,
                    leader: p.leader,
                    replicas: p.replicas,
                    isr: p.isr,
                    high_watermark: p.high_watermark,
                    newest_offset: p.newest_offset,
                    paused: p.paused,
                    readonly: p.readonly,
                });
            }
            out.table(
                &[
                    "PARTITION",
                    "LEADER",
                    "REPLICAS",
                    "ISR",
                    "HIGH WATERMARK",
                    "NEWEST OFFSET",
                    "PAUSED",
                    "READONLY",
                ],
                &rows,
                |r| {
                    vec![
                        r.partition.to_string(),
                        r.leader.clone(),
                        r.replicas.join(","),
                        r.isr.join(","),
                        r.high_watermark.to_string(),
                        r.newest_offset.to_string(),
                        yes(r.paused),
                        yes(r.readonly),
                    ]
                },
            );
        }
        StreamCmd::Delete { name } => {
            c.delete_stream(&name)
                .await
                .map_err(|e| Failure::server(format!("deleting stream {name}"), e))?;
            out.done(
                &format!("deleted stream {name}"),
                &json!({"stream": name, "deleted": true}),
            );
        }
        StreamCmd::Pause {
            name,
            partitions,
            resume_all,
        } => {
            let ids = partitions_of(c, &name, &partitions).await?;
            c.pause_stream(&name, set(&partitions), resume_all)
                .await
                .map_err(|e| Failure::server(format!("pausing stream {name}"), e))?;
            out.done(
                &format!("paused {} partition(s) of {name}", ids.len()),
                &json!({"stream": name, "partitions": ids, "paused": true}),
            );
        }
        StreamCmd::Resume { name, partitions } => {
            // A subscription that asks to resume a paused partition resumes it; the
            // subscription itself is not needed.
            let ids = partitions_of(c, &name, &partitions).await?;
            for id in &ids {
                let opts = SubscribeOptions::default()
                    .partition(*id)
                    .start(StartAt::NewOnly)
                    .resume(true);
                drop(c.subscribe(&name, opts).await.map_err(|e| {
                    Failure::server(format!("resuming partition {id} of {name}"), e)
                })?);
            }
            out.done(
                &format!("resumed {} partition(s) of {name}", ids.len()),
                &json!({"stream": name, "partitions": ids, "paused": false}),
            );
        }
        StreamCmd::Readonly {
            name,
            partitions,
            off,
        } => {
            let ids = partitions_of(c, &name, &partitions).await?;
            c.set_stream_readonly(&name, set(&partitions), !off)
                .await
                .map_err(|e| Failure::server(format!("changing read-only on {name}"), e))?;
            out.done(
                &format!(
                    "{} {} partition(s) of {name}",
                    if off {
                        "made writable"
                    } else {
                        "made read-only"
                    },
                    ids.len()
                ),
                &json!({"stream": name, "partitions": ids, "readonly": !off}),
            );
        }
    }
    Ok(())
}
