//! Publishes many messages with PublishAsync, keeping all of them in flight, then waits for
//! every ack and reports how many arrived.
//!
//! `cargo run --release -p liftbridge-client --example async_publish -- [ADDR] [COUNT]`

use std::time::Instant;

use liftbridge_client::{Client, Error, PublishOptions, StreamOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9292".into());
    let count: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000);
    let client = Client::connect([addr]).await?;
    match client
        .create_stream("example-async", "example-async", StreamOptions::default())
        .await
    {
        Ok(()) | Err(Error::StreamExists) => {}
        Err(e) => return Err(e.into()),
    }
    let started = Instant::now();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        pending.push(
            client
                .publish_async("example-async", format!("{i}"), PublishOptions::default())
                .await?,
        );
    }
    let mut acked = 0;
    let mut last = -1;
    for p in pending {
        if let Some(ack) = p.await? {
            acked += 1;
            last = ack.offset;
        }
    }
    println!(
        "{acked} of {count} acked in {:?}; last offset {last}",
        started.elapsed()
    );
    Ok(())
}
