//! Creates a stream (if needed) and publishes messages one at a time, printing each ack.
//!
//! Start a server (`cargo run --release -p liftbridged`), then:
//! `cargo run -p liftbridge-client --example publish -- [ADDR] [COUNT]`

use liftbridge_client::{Client, Error, PublishOptions, StreamOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9292".into());
    let count: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(10);
    let client = Client::connect([addr]).await?;
    match client
        .create_stream("example", "example", StreamOptions::default())
        .await
    {
        Ok(()) | Err(Error::StreamExists) => {}
        Err(e) => return Err(e.into()),
    }
    for i in 0..count {
        let ack = client
            .publish(
                "example",
                format!("message {i}"),
                PublishOptions::default().key("example"),
            )
            .await?
            .expect("policy LEADER sends an ack");
        println!("message {i} stored at offset {}", ack.offset);
    }
    Ok(())
}
