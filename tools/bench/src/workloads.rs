//! The workloads, each written once per system with the same shape: the same message sizes,
//! publishers, window of messages in flight, and counts.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use liftbridge_client::{
    AckPolicy, Client, PublishOptions, StartAt, StreamOptions, SubscribeOptions,
};

/// Messages in flight per publisher in the async workloads, the same for both systems.
pub const WINDOW: usize = 1024;

/// A connection to the system under test.
#[derive(Clone)]
pub enum Target {
    Liftbridge(String),
    JetStream(String),
}

fn payload(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn lb(addr: &str) -> Result<Client, String> {
    Client::builder([addr.to_owned()])
        .request_timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| e.to_string())
}

async fn js(url: &str) -> Result<(async_nats::Client, jetstream::Context), String> {
    let nc = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let ctx = jetstream::new(nc.clone());
    Ok((nc, ctx))
}

/// Creates the stream `name` on subject `name`.
pub async fn create(t: &Target, name: &str) -> Result<(), String> {
    match t {
        Target::Liftbridge(a) => lb(a)
            .await?
            .create_stream(name, name, StreamOptions::default())
            .await
            .map_err(|e| e.to_string()),
        Target::JetStream(u) => {
            let (_, ctx) = js(u).await?;
            ctx.create_stream(stream::Config {
                name: name.into(),
                subjects: vec![name.into()],
                storage: stream::StorageType::File,
                max_message_size: 16 * 1024 * 1024,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    }
}

/// Publishes `count` messages of `size` bytes from one publisher, up to [`WINDOW`] awaiting
/// their acks at any time. Returns when every ack is in.
async fn publish_window(t: &Target, name: &str, size: usize, count: usize) -> Result<(), String> {
    let data = payload(size);
    match t {
        Target::Liftbridge(a) => {
            let c = lb(a).await?;
            let mut pending = VecDeque::with_capacity(WINDOW);
            for _ in 0..count {
                if pending.len() >= WINDOW {
                    let p: liftbridge_client::PendingAck = pending.pop_front().expect("non-empty");
                    p.await.map_err(|e| e.to_string())?;
                }
                let opts = PublishOptions::default().ack_wait(Duration::from_secs(60));
                pending.push_back(
                    c.publish_async(name, data.clone(), opts)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            for p in pending {
                p.await.map_err(|e| e.to_string())?;
            }
            c.close();
        }
        Target::JetStream(u) => {
            let (_, ctx) = js(u).await?;
            let mut pending = VecDeque::with_capacity(WINDOW);
            for _ in 0..count {
                if pending.len() >= WINDOW {
                    let p: jetstream::context::PublishAckFuture =
                        pending.pop_front().expect("non-empty");
                    p.await.map_err(|e| e.to_string())?;
                }
                pending.push_back(
                    ctx.publish(name.to_owned(), data.clone())
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            for p in pending {
                p.await.map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// Async publish with acks from `publishers` publishers, `count` messages in all. Returns the
/// elapsed time.
pub async fn async_publish(
    t: &Target,
    name: &str,
    size: usize,
    count: usize,
    publishers: usize,
) -> Result<Duration, String> {
    let each = count / publishers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (t, name) = (t.clone(), name.to_owned());
        tasks.push(tokio::spawn(async move {
            publish_window(&t, &name, size, each).await
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed())
}

/// Runs `call` `count` times, one after the other. Returns each latency in nanoseconds.
async fn timed<F, Fut, T, E>(count: usize, mut call: F) -> Result<Vec<u64>, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        call().await.map_err(|e| e.to_string())?;
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(lat)
}

/// One publish at a time, each waiting for its ack. Returns each latency in nanoseconds.
pub async fn sync_publish(
    t: &Target,
    name: &str,
    size: usize,
    count: usize,
) -> Result<Vec<u64>, String> {
    let data = payload(size);
    match t {
        Target::Liftbridge(a) => {
            let c = lb(a).await?;
            let lat = timed(count, || {
                c.publish(name, data.clone(), PublishOptions::default())
            })
            .await;
            c.close();
            lat
        }
        Target::JetStream(u) => {
            let (_, ctx) = js(u).await?;
            timed(count, || async {
                let ack = ctx
                    .publish(name.to_owned(), data.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())
            })
            .await
        }
    }
}

/// Asks `count` times, one at a time, for the metadata of stream `name`, the cheapest request
/// each server answers without touching the log: Liftbridge's FetchPartitionMetadata of
/// partition 0, JetStream's stream info. The floor under a sync publish. Returns each latency in
/// ns.
pub async fn info_requests(t: &Target, name: &str, count: usize) -> Result<Vec<u64>, String> {
    match t {
        Target::Liftbridge(a) => {
            let c = lb(a).await?;
            let lat = timed(count, || c.fetch_partition_metadata(name, 0)).await;
            c.close();
            lat
        }
        Target::JetStream(u) => {
            let (_, ctx) = js(u).await?;
            timed(count, || ctx.get_stream(name)).await
        }
    }
}

/// Reads `count` stored messages from the start. Returns the elapsed time.
pub async fn replay(t: &Target, name: &str, count: usize) -> Result<Duration, String> {
    match t {
        Target::Liftbridge(a) => {
            let c = lb(a).await?;
            let started = Instant::now();
            let mut sub = c
                .subscribe(name, SubscribeOptions::default().start(StartAt::Earliest))
                .await
                .map_err(|e| e.to_string())?;
            for _ in 0..count {
                match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                    Ok(Some(Ok(_))) => {}
                    other => return Err(format!("replay stopped early: {other:?}")),
                }
            }
            let d = started.elapsed();
            c.close();
            Ok(d)
        }
        Target::JetStream(u) => {
            let (_, ctx) = js(u).await?;
            let started = Instant::now();
            let s = ctx.get_stream(name).await.map_err(|e| e.to_string())?;
            let consumer = s
                .create_consumer(consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut msgs = consumer
                .stream()
                .max_messages_per_batch(1000)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            for _ in 0..count {
                match tokio::time::timeout(Duration::from_secs(30), msgs.next()).await {
                    Ok(Some(Ok(_))) => {}
                    other => {
                        return Err(format!(
                            "replay stopped early: {:?}",
                            other.map(|o| o.map(|r| r.map(|_| ())))
                        ));
                    }
                }
            }
            Ok(started.elapsed())
        }
    }
}

/// Publish-to-delivery latency: a live subscriber, and one message at a time carrying its send
/// time. Returns each latency in nanoseconds.
pub async fn end_to_end(
    t: &Target,
    name: &str,
    size: usize,
    count: usize,
) -> Result<Vec<u64>, String> {
    let mut data = payload(size.max(8)).to_vec();
    let mut lat = Vec::with_capacity(count);
    let stamp = |data: &mut Vec<u8>| {
        data[..8].copy_from_slice(&now_ns().to_be_bytes());
        Bytes::from(data.clone())
    };
    let elapsed = |value: &[u8]| {
        let sent = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
        now_ns().saturating_sub(sent)
    };
    match t {
        Target::Liftbridge(a) => {
            let c = lb(a).await?;
            let mut sub = c
                .subscribe(name, SubscribeOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            for _ in 0..count {
                let opts = PublishOptions::default().ack_policy(AckPolicy::None);
                let _ack = c
                    .publish_async(name, stamp(&mut data), opts)
                    .await
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                    Ok(Some(Ok(m))) => lat.push(elapsed(&m.value)),
                    other => return Err(format!("no delivery: {other:?}")),
                }
            }
            c.close();
        }
        Target::JetStream(u) => {
            let (_, ctx) = js(u).await?;
            let s = ctx.get_stream(name).await.map_err(|e| e.to_string())?;
            let consumer = s
                .create_consumer(consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut msgs = consumer.messages().await.map_err(|e| e.to_string())?;
            for _ in 0..count {
                let _ack = ctx
                    .publish(name.to_owned(), stamp(&mut data))
                    .await
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
                    Ok(Some(Ok(m))) => lat.push(elapsed(&m.payload)),
                    _ => return Err("no delivery".into()),
                }
            }
        }
    }
    Ok(lat)
}

/// How many messages stream `name` holds.
async fn stored(t: &Target, name: &str) -> Result<u64, String> {
    match t {
        Target::Liftbridge(a) => {
            let c = lb(a).await?;
            let md = c
                .fetch_partition_metadata(name, 0)
                .await
                .map_err(|e| e.to_string());
            c.close();
            Ok((md?.newest_offset + 1).max(0) as u64)
        }
        Target::JetStream(u) => {
            let (_, ctx) = js(u).await?;
            let mut s = ctx.get_stream(name).await.map_err(|e| e.to_string())?;
            let info = s.info().await.map_err(|e| e.to_string())?;
            Ok(info.state.messages)
        }
    }
}

/// Plain core-NATS publishes, no Liftbridge client and no acks: `publishers` connections to
/// `nats_url` publish `count` messages in all to the subject of stream `name`, as fast as
/// they can. Returns the time until the stream held everything, or stopped growing for 3 s,
/// and how many messages it holds then.
pub async fn nats_ingest(
    t: &Target,
    nats_url: &str,
    name: &str,
    size: usize,
    count: usize,
    publishers: usize,
) -> Result<(Duration, u64), String> {
    let each = count / publishers;
    let total = (each * publishers) as u64;
    let data = payload(size);
    let mut clients = Vec::new();
    for _ in 0..publishers {
        clients.push(
            async_nats::connect(nats_url)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for nc in clients {
        let (name, data) = (name.to_owned(), data.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                nc.publish(name.clone(), data.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            nc.flush().await.map_err(|e| e.to_string())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    // The stream's count, polled; both systems are asked the same way.
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let n = stored(t, name).await?;
        if n >= total {
            return Ok((started.elapsed(), n));
        }
        if n != last {
            (last, last_change) = (n, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(3) {
            return Ok((last_change.duration_since(started), n));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The p-th percentile (0–100) of `v`, in microseconds.
pub fn percentile_us(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)] as f64 / 1000.0
}
