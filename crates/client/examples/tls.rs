//! Connects over TLS, with a client certificate for servers that require one (mutual TLS, and
//! authorization, which names the client by its certificate's common name), and lists the
//! streams.
//!
//! `cargo run -p liftbridge-client --example tls -- ADDR CA.pem [CLIENT.pem CLIENT.key]`

use liftbridge_client::{Client, ClientTls};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, ca) = match (args.first(), args.get(1)) {
        (Some(a), Some(c)) => (a.clone(), c.clone()),
        _ => {
            eprintln!("usage: tls ADDR CA.pem [CLIENT.pem CLIENT.key]");
            std::process::exit(2);
        }
    };
    let mut tls = ClientTls::new(std::fs::read(&ca)?);
    if let (Some(cert), Some(key)) = (args.get(2), args.get(3)) {
        tls = tls.identity(std::fs::read(cert)?, std::fs::read(key)?);
    }
    let client = Client::builder([addr]).tls(tls).connect().await?;
    for (name, s) in client.fetch_metadata().await?.streams {
        println!("{name}: {} partitions on {}", s.partitions.len(), s.subject);
    }
    client.close();
    Ok(())
}
