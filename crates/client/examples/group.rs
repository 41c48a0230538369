//! A member of consumer group `workers` reading the `example` stream: run it in two or three
//! terminals and the stream's partitions are shared among them; stop one and the others take
//! its partitions over from its last committed position.
//!
//! `cargo run -p liftbridge-client --example group -- [ADDR] [MEMBER-ID]`
//!
//! The server needs the cursors stream (`cursors.stream.partitions` ≥ 1; a `liftbridged`
//! started alone has it).

use futures_util::StreamExt;
use liftbridge_client::{AutoOffset, Client};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9292".into());
    let id = args
        .next()
        .unwrap_or_else(|| format!("member-{}", std::process::id()));
    let client = Client::connect([addr]).await?;
    let mut member = client
        .consumer("workers")
        .id(&id)
        .auto_offset(AutoOffset::Earliest)
        .subscribe(["example"])
        .await?;
    println!("{id} joined; Ctrl-C leaves the group");
    loop {
        tokio::select! {
            msg = member.next() => match msg {
                Some(msg) => {
                    let msg = msg?;
                    println!("{id} {}/{} {}: {}", msg.stream, msg.partition, msg.offset,
                        String::from_utf8_lossy(&msg.value));
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Commits what was read and leaves: the others take the partitions at once.
    member.close().await?;
    for lag in client.group_lag("workers", ["example"]).await? {
        println!(
            "partition {}: committed {}, {} behind",
            lag.partition, lag.committed, lag.lag
        );
    }
    Ok(())
}
