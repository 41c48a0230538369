//! Reads the `example` stream from the beginning and prints every message, waiting for more.
//!
//! `cargo run -p liftbridge-client --example subscribe -- [ADDR]`

use futures_util::StreamExt;
use liftbridge_client::{Client, StartAt, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9292".into());
    let client = Client::connect([addr]).await?;
    let mut sub = client
        .subscribe(
            "example",
            SubscribeOptions::default().start(StartAt::Earliest),
        )
        .await?;
    while let Some(msg) = sub.next().await {
        let msg = msg?;
        println!("{}: {}", msg.offset, String::from_utf8_lossy(&msg.value));
    }
    Ok(())
}
