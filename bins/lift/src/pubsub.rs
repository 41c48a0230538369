//! `lift pub` and `lift sub`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use liftbridge_client::{
    AckPolicy, Client, Error, Message, Partitioner, PublishOptions, StartAt, StopAt,
    SubscribeOptions,
};
use serde::Serialize;

use crate::cli::{Acks, PubArgs, SubArgs};
use crate::output::{Failure, Out};

/// Acks kept in flight while publishing many messages.
const WINDOW: usize = 256;

pub(crate) fn policy(a: Acks) -> AckPolicy {
    match a {
        Acks::Leader => AckPolicy::Leader,
        Acks::All => AckPolicy::All,
        Acks::None => AckPolicy::None,
    }
}

/// One ack, as printed.
#[derive(Debug, Serialize)]
struct AckRow {
    stream: String,
    partition: Option<i32>,
    offset: Option<i64>,
    subject: Option<String>,
}

fn print_ack(out: Out, row: &AckRow) {
    if out.json {
        out.line(row);
        return;
    }
    match (row.offset, &row.subject) {
        (Some(o), _) if !row.stream.is_empty() => match row.partition {
            Some(p) => println!("{} partition {p} offset {o}", row.stream),
            None => println!("{} offset {o}", row.stream),
        },
        (_, Some(s)) => println!("published on {s}"),
        _ => println!("published to {}", row.stream),
    }
}

fn options(a: &PubArgs) -> PublishOptions {
    let mut o = PublishOptions::default()
        .ack_policy(policy(a.ack_policy))
        .ack_wait(a.ack_wait);
    if let Some(k) = &a.key {
        o = o.key(k.clone().into_bytes());
        if a.partition.is_none() {
            o = o.partitioner(Partitioner::Key);
        }
    }
    if let Some(p) = a.partition {
        o = o.partition(p);
    }
    for (k, v) in &a.headers {
        o = o.header(k.clone(), v.clone().into_bytes());
    }
    o
}

/// The values to publish: the argument (repeated by --count), or stdin's lines, read on a
/// thread of their own as they come (a pipe streams; memory stays bounded).
fn values(a: &PubArgs) -> tokio::sync::mpsc::Receiver<Result<String, Failure>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let value = a.value.clone();
    let count = a.count;
    std::thread::spawn(move || {
        let send = |v| tx.blocking_send(v).is_ok();
        match (value, count) {
            (Some(v), Some(n)) => {
                for i in 0..n {
                    if !send(Ok(v.replace("{n}", &i.to_string()))) {
                        return;
                    }
                }
            }
            (Some(v), None) => {
                send(Ok(v));
            }
            (None, count) => {
                for (taken, line) in std::io::stdin().lock().lines().enumerate() {
                    if count.is_some_and(|n| taken as u64 >= n) {
                        return;
                    }
                    let line = line.map_err(|e| Failure::usage(format!("reading stdin: {e}")));
                    let failed = line.is_err();
                    if !send(line) || failed {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Runs `lift pub`.
pub async fn publish(c: &Client, a: PubArgs, out: Out) -> Result<(), Failure> {
    let opts = options(&a);
    if let Some(subject) = a.subject.clone() {
        let subject = &subject;
        // `lift pub --subject S VALUE`: the first positional is the value.
        let value = a.value.clone().or(a.stream.clone());
        let args = PubArgs {
            value,
            stream: None,
            ..a
        };
        let mut vals = values(&args);
        while let Some(v) = vals.recv().await {
            let v = v?;
            let ack = c
                .publish_to_subject(subject, v.into_bytes(), opts.clone())
                .await
                .map_err(|e| Failure::server(format!("publishing on {subject}"), e))?;
            print_ack(
                out,
                &AckRow {
                    stream: ack.as_ref().map(|a| a.stream.clone()).unwrap_or_default(),
                    partition: None,
                    offset: ack.map(|a| a.offset),
                    subject: Some(subject.clone()),
                },
            );
        }
        return Ok(());
    }
    let stream = a
        .stream
        .clone()
        .expect("clap requires a stream without --subject");
    let partitions = c
        .fetch_metadata()
        .await
        .map_err(|e| Failure::server("fetching the metadata", e))?
        .streams
        .get(&stream)
        .map(|s| s.partitions.len() as i32)
        .ok_or_else(|| Failure::server(format!("stream {stream}"), Error::NoSuchStream))?;
    let partition_of = |o: &PublishOptions| match (o.partition, &o.key) {
        (Some(p), _) => Some(p),
        (None, Some(k)) if o.partitioner == Partitioner::Key => {
            Some(liftbridge_client::partition_for_key(k, partitions))
        }
        _ => Some(0),
    };
    let mut in_flight = std::collections::VecDeque::new();
    let mut expected = a.expected_offset;
    let mut sent = 0u64;
    let finish = |row: (
        Option<i32>,
        liftbridge_client::Result<Option<liftbridge_client::Ack>>,
    ),
                  n: u64| {
        let (partition, r) = row;
        let ack =
            r.map_err(|e| Failure::server(format!("publishing message {n} to {stream}"), e))?;
        print_ack(
            out,
            &AckRow {
                stream: stream.clone(),
                partition,
                offset: ack.map(|a| a.offset),
                subject: None,
            },
        );
        Ok::<(), Failure>(())
    };
    let mut done = 0u64;
    let mut vals = values(&a);
    while let Some(v) = vals.recv().await {
        let v = v?;
        let mut o = opts.clone();
        if let Some(e) = expected {
            // Each message of a run expects the offset after the previous one.
            o = o.expected_offset(e);
            expected = Some(e + 1);
        }
        let partition = partition_of(&o);
        let pending = c
            .publish_async(&stream, v.into_bytes(), o)
            .await
            .map_err(|e| Failure::server(format!("publishing to {stream}"), e))?;
        in_flight.push_back((partition, pending));
        sent += 1;
        if in_flight.len() >= WINDOW {
            let (p, ack) = in_flight.pop_front().expect("non-empty");
            finish((p, ack.await), done)?;
            done += 1;
        }
    }
    while let Some((p, ack)) = in_flight.pop_front() {
        finish((p, ack.await), done)?;
        done += 1;
    }
    if sent == 0 {
        return Err(Failure::usage(
            "nothing to publish: give a value, or lines on stdin",
        ));
    }
    Ok(())
}

/// One message, as `--json` prints it.
#[derive(Debug, Serialize)]
struct MessageRow {
    stream: String,
    partition: i32,
    offset: i64,
    timestamp: i64,
    subject: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    value: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn print_message(out: Out, raw: bool, m: &Message) {
    if raw {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&m.value);
        let _ = stdout.write_all(b"\n");
        return;
    }
    if out.json {
        out.line(&MessageRow {
            stream: m.stream.clone(),
            partition: m.partition,
            offset: m.offset,
            timestamp: m.timestamp,
            subject: m.subject.clone(),
            key: m.key.as_deref().map(text),
            headers: m
                .headers
                .iter()
                .filter(|(k, _)| k.as_str() != "subject" && k.as_str() != "reply")
                .map(|(k, v)| (k.clone(), text(v)))
                .collect(),
            value: text(&m.value),
        });
        return;
    }
    let key = m.key.as_deref().map(text).unwrap_or_default();
    println!("{}\t{}\t{}", m.offset, key, text(&m.value));
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// Runs `lift sub`.
pub async fn subscribe(c: &Client, a: SubArgs, out: Out) -> Result<(), Failure> {
    let start = if a.earliest {
        StartAt::Earliest
    } else if a.latest || a.reverse && a.offset.is_none() {
        StartAt::Latest
    } else if let Some(o) = a.offset {
        StartAt::Offset(o)
    } else if let Some(d) = a.since {
        StartAt::Timestamp(nanos(SystemTime::now() - d))
    } else if let Some(t) = a.time {
        StartAt::Timestamp(nanos(t))
    } else {
        StartAt::NewOnly
    };
    // Without --follow, a read from a position ends at the newest message there is now.
    let follow = a.follow || (start == StartAt::NewOnly && !a.reverse);
    let mut opts = SubscribeOptions::default()
        .partition(a.partition)
        .start(start)
        .reverse(a.reverse)
        .read_isr_replica(a.read_isr_replica);
    if !follow && !a.reverse {
        opts = opts.stop(StopAt::Latest);
    }
    let what = format!("reading {} partition {}", a.stream, a.partition);
    let mut sub = match c.subscribe(&a.stream, opts).await {
        Ok(s) => s,
        Err(Error::StreamEmpty) => return Ok(()),
        Err(e) => return Err(Failure::server(what, e)),
    };
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        match sub.next().await {
            Some(Ok(m)) => {
                print_message(out, a.raw, &m);
                seen += 1;
            }
            None | Some(Err(Error::StopPositionReached | Error::StreamEmpty)) => break,
            Some(Err(e)) => return Err(Failure::server(what, e)),
        }
    }
    Ok(())
}
