//! `lift bench`: publishers and subscribers against one stream, a live progress bar per client,
//! then throughput per client and in all, and latency percentiles from HDR histograms.
//!
//! Publish latency runs from when a message was due to its ack. Without `--rate` a message is
//! due when it is sent; with `--rate` it is due on the schedule, so a stall counts against
//! every message it delayed (no coordinated omission). End-to-end latency runs from the time
//! a publisher stamped in the message's first 8 bytes to its arrival at a subscriber.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use liftbridge_client::{Client, Error, PublishOptions, StartAt, StreamOptions, SubscribeOptions};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::output::{Failure, Out};
use crate::pubsub::policy;

/// What one client did.
#[derive(Debug, Clone, Serialize)]
pub struct ClientResult {
    /// `publisher` or `subscriber`.
    pub role: &'static str,
    /// Its number within its role.
    pub id: u32,
    /// Messages acked (publishers) or received (subscribers).
    pub messages: u64,
    /// Publishes that failed.
    pub errors: u64,
    /// Bytes of values.
    pub bytes: u64,
    /// Seconds from its first message to its last.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Megabytes (10^6 bytes) of values per second.
    pub mb_per_sec: f64,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
    let _ = h.record(us);
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn result(
    role: &'static str,
    id: u32,
    messages: u64,
    errors: u64,
    size: usize,
    took: Duration,
) -> ClientResult {
    ClientResult::new(
        role,
        id,
        messages,
        errors,
        messages * size as u64,
        took.as_secs_f64(),
    )
}

impl ClientResult {
    /// A result with its rates over `seconds` (at least a nanosecond).
    fn new(
        role: &'static str,
        id: u32,
        messages: u64,
        errors: u64,
        bytes: u64,
        seconds: f64,
    ) -> Self {
        let seconds = seconds.max(1e-9);
        ClientResult {
            role,
            id,
            messages,
            errors,
            bytes,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
        }
    }
}

fn bar(multi: &MultiProgress, len: Option<u64>, label: String) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {per_sec} {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    let b = multi.add(ProgressBar::new(len.unwrap_or(0)));
    b.set_style(style);
    b.set_prefix(label);
    b
}

/// The settings every publisher shares.
struct PubPlan {
    stream: String,
    partitions: i32,
    messages: u64,
    duration: Option<Duration>,
    size: usize,
    rate: u64,
    sync: bool,
    window: usize,
    opts: PublishOptions,
}

/// A publisher's outcomes so far.
struct Tally {
    hist: Histogram<u64>,
    acked: u64,
    errors: u64,
    progress: ProgressBar,
}

impl Tally {
    /// One publish ended: its latency from when it was due, or an error.
    fn settle(&mut self, due: Instant, r: liftbridge_client::Result<()>) {
        match r {
            Ok(()) => {
                record(&mut self.hist, due.elapsed());
                self.acked += 1;
            }
            Err(_) => self.errors += 1,
        }
        self.progress.inc(1);
    }
}

async fn publisher(
    c: Client,
    plan: Arc<PubPlan>,
    id: u32,
    progress: ProgressBar,
) -> (ClientResult, Histogram<u64>) {
    let mut tally = Tally {
        hist: histogram(),
        acked: 0,
        errors: 0,
        progress,
    };
    let start = Instant::now();
    let end = plan.duration.map(|d| start + d);
    let mut in_flight = FuturesUnordered::new();
    let mut n = 0u64;
    let mut value = vec![b'x'; plan.size.max(8)];
    loop {
        let more = match end {
            Some(e) => Instant::now() < e,
            None => n < plan.messages,
        };
        if !more {
            break;
        }
        let due = if plan.rate > 0 {
            let due = start + Duration::from_secs_f64(n as f64 / plan.rate as f64);
            tokio::time::sleep_until(due.into()).await;
            due
        } else {
            Instant::now()
        };
        value[..8].copy_from_slice(&now_nanos().to_be_bytes());
        let payload = bytes::Bytes::copy_from_slice(&value[..plan.size.max(8)]);
        let opts = plan
            .opts
            .clone()
            .partition((n % plan.partitions.max(1) as u64) as i32);
        n += 1;
        if plan.sync {
            let r = c.publish(&plan.stream, payload, opts).await.map(|_| ());
            tally.settle(due, r);
            continue;
        }
        match c.publish_async(&plan.stream, payload, opts).await {
            Ok(pending) => in_flight.push(async move { (due, pending.await) }),
            Err(e) => tally.settle(due, Err(e)),
        }
        while in_flight.len() >= plan.window {
            if let Some((due, r)) = in_flight.next().await {
                tally.settle(due, r.map(|_| ()));
            }
        }
    }
    while let Some((due, r)) = in_flight.next().await {
        tally.settle(due, r.map(|_| ()));
    }
    tally.progress.finish();
    let size = plan.size.max(8);
    let r = result(
        "publisher",
        id,
        tally.acked,
        tally.errors,
        size,
        start.elapsed(),
    );
    (r, tally.hist)
}

/// What a subscriber needs to know.
struct SubPlan {
    stream: String,
    partitions: i32,
    size: usize,
}

/// Reads every partition until `expected` messages arrived (or nothing came for `idle`).
async fn subscriber(
    c: Client,
    plan: Arc<SubPlan>,
    expected: tokio::sync::watch::Receiver<Option<u64>>,
    id: u32,
    progress: ProgressBar,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<(ClientResult, Histogram<u64>), Failure> {
    let (stream, partitions, size) = (&plan.stream, plan.partitions, plan.size);
    let mut subs = futures_util::stream::SelectAll::new();
    for p in 0..partitions.max(1) {
        let s = c
            .subscribe(
                stream,
                SubscribeOptions::default()
                    .partition(p)
                    .start(StartAt::NewOnly),
            )
            .await
            .map_err(|e| Failure::server(format!("subscriber {id} on partition {p}"), e))?;
        subs.push(s);
    }
    let _ = ready.send(()).await;
    // Publishing waits for every subscriber's sender to go.
    drop(ready);
    let mut hist = histogram();
    let mut got = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let idle = Duration::from_secs(10);
    loop {
        if let Some(total) = *expected.borrow()
            && got >= total
        {
            break;
        }
        match tokio::time::timeout(idle, subs.next()).await {
            Ok(Some(Ok(m))) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                got += 1;
                if m.value.len() >= 8 {
                    let sent = u64::from_be_bytes(m.value[..8].try_into().expect("8 bytes"));
                    let lat = now_nanos().saturating_sub(sent);
                    record(&mut hist, Duration::from_nanos(lat));
                }
                progress.inc(1);
            }
            Ok(Some(Err(e))) => {
                return Err(Failure::server(format!("subscriber {id}"), e));
            }
            Ok(None) => break,
            // Nothing for a while: once the publishers are done, what is missing is lost.
            Err(_) if expected.borrow().is_some() => break,
            Err(_) => {}
        }
    }
    progress.finish();
    let took = first.map_or(Duration::ZERO, |f| last - f);
    Ok((result("subscriber", id, got, 0, size.max(8), took), hist))
}

/// The report `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    clients: Vec<ClientResult>,
    publishers: Option<ClientResult>,
    subscribers: Option<ClientResult>,
    publish_latency_us: Option<Latency>,
    end_to_end_latency_us: Option<Latency>,
}

fn total(role: &'static str, rs: &[&ClientResult]) -> Option<ClientResult> {
    if rs.is_empty() {
        return None;
    }
    let messages = rs.iter().map(|r| r.messages).sum::<u64>();
    let errors = rs.iter().map(|r| r.errors).sum::<u64>();
    let bytes = rs.iter().map(|r| r.bytes).sum::<u64>();
    let seconds = rs.iter().map(|r| r.seconds).fold(0.0, f64::max);
    Some(ClientResult::new(role, 0, messages, errors, bytes, seconds))
}

/// Runs `lift bench`.
pub async fn run(c: &Client, a: BenchArgs, out: Out) -> Result<(), Failure> {
    if a.publishers == 0 {
        return Err(Failure::usage("--publishers must be at least 1"));
    }
    if a.create {
        match c.delete_stream(&a.stream).await {
            Ok(()) | Err(Error::NoSuchStream) => {}
            Err(e) => return Err(Failure::server(format!("deleting stream {}", a.stream), e)),
        }
        c.create_stream(
            &a.stream,
            &a.stream,
            StreamOptions::default()
                .partitions(a.partitions)
                .replication_factor(a.replication_factor),
        )
        .await
        .map_err(|e| Failure::server(format!("creating stream {}", a.stream), e))?;
    }
    let partitions = c
        .fetch_metadata()
        .await
        .map_err(|e| Failure::server("fetching the metadata", e))?
        .streams
        .get(&a.stream)
        .map(|s| s.partitions.len() as i32)
        .ok_or_else(|| {
            Failure::server(
                format!("stream {} (use --create to make it)", a.stream),
                Error::NoSuchStream,
            )
        })?;
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let per_pub = a.duration.is_none().then_some(a.messages);
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(None);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.subscribers.max(1) as usize);
    let mut subs = Vec::new();
    let sub_plan = Arc::new(SubPlan {
        stream: a.stream.clone(),
        partitions,
        size: a.size,
    });
    for id in 0..a.subscribers {
        let total = per_pub.map(|m| m * u64::from(a.publishers));
        let b = bar(&multi, total, format!("subscriber {id}"));
        subs.push(tokio::spawn(subscriber(
            c.clone(),
            sub_plan.clone(),
            expected_rx.clone(),
            id,
            b,
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    // Publishing starts once every subscriber is in place (or has failed).
    while ready_rx.recv().await.is_some() {}
    let plan = Arc::new(PubPlan {
        stream: a.stream.clone(),
        partitions,
        messages: a.messages,
        duration: a.duration,
        size: a.size,
        rate: a.rate,
        sync: a.sync,
        window: a.window.max(1),
        opts: PublishOptions::default().ack_policy(policy(a.ack_policy)),
    });
    let mut pubs = Vec::new();
    for id in 0..a.publishers {
        let b = bar(&multi, per_pub, format!("publisher {id}"));
        pubs.push(tokio::spawn(publisher(c.clone(), plan.clone(), id, b)));
    }
    let mut clients = Vec::new();
    let mut pub_hist = histogram();
    let mut published = 0u64;
    for p in pubs {
        let (r, h) = p
            .await
            .map_err(|e| Failure::with_code(format!("a publisher failed: {e}"), 1))?;
        published += r.messages;
        let _ = pub_hist.add(&h);
        clients.push(r);
    }
    let _ = expected_tx.send(Some(published));
    let mut e2e = histogram();
    for s in subs {
        let (r, h) = s
            .await
            .map_err(|e| Failure::with_code(format!("a subscriber failed: {e}"), 1))??;
        let _ = e2e.add(&h);
        clients.push(r);
    }
    let _ = multi.clear();
    let pubs: Vec<&ClientResult> = clients.iter().filter(|c| c.role == "publisher").collect();
    let subs: Vec<&ClientResult> = clients.iter().filter(|c| c.role == "subscriber").collect();
    let report = Report {
        publishers: total("publishers", &pubs),
        subscribers: total("subscribers", &subs),
        publish_latency_us: (!pub_hist.is_empty()).then(|| latency(&pub_hist)),
        end_to_end_latency_us: (!e2e.is_empty()).then(|| latency(&e2e)),
        clients: clients.clone(),
    };
    if out.json {
        out.line(&report);
    } else if a.csv {
        println!("role,id,messages,errors,bytes,seconds,msgs_per_sec,mb_per_sec");
        for r in clients
            .iter()
            .chain(&report.publishers)
            .chain(&report.subscribers)
        {
            println!(
                "{},{},{},{},{},{:.3},{:.1},{:.3}",
                r.role,
                r.id,
                r.messages,
                r.errors,
                r.bytes,
                r.seconds,
                r.msgs_per_sec,
                r.mb_per_sec
            );
        }
    } else {
        let rows: Vec<ClientResult> = clients
            .iter()
            .cloned()
            .chain(report.publishers.clone())
            .chain(report.subscribers.clone())
            .collect();
        out.table(
            &[
                "CLIENT", "ID", "MESSAGES", "ERRORS", "SECONDS", "MSGS/S", "MB/S",
            ],
            &rows,
            |r| {
                vec![
                    r.role.to_owned(),
                    if r.role.ends_with('s') {
                        "all".into()
                    } else {
                        r.id.to_string()
                    },
                    r.messages.to_string(),
                    r.errors.to_string(),
                    format!("{:.2}", r.seconds),
                    format!("{:.0}", r.msgs_per_sec),
                    format!("{:.2}", r.mb_per_sec),
                ]
            },
        );
        for (what, l) in [
            ("publish latency (due to ack)", &report.publish_latency_us),
            (
                "end-to-end latency (publish to subscriber)",
                &report.end_to_end_latency_us,
            ),
        ] {
            if let Some(l) = l {
                let ms = |us: u64| us as f64 / 1000.0;
                println!(
                    "\n{what}, ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p999),
                    ms(l.max),
                    l.count
                );
            }
        }
    }
    Ok(())
}
