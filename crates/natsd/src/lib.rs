//! `natsd`: an embedded NATS server for liftbridge-rs.
//!
//! It speaks the core NATS client protocol as nats-server 2.x does: INFO, CONNECT (verbose,
//! pedantic, echo, headers, no_responders, name, token or user/password authentication, or
//! several users with per-user publish and subscribe permissions ([`perms`])), PUB,
//! HPUB, SUB with queue groups, UNSUB with a message limit, MSG, HMSG, PING/PONG, +OK/-ERR;
//! subjects with `*` and `>` wildcards; request/reply with the 503 no-responders status; and
//! `max_payload`. Slow consumers are cut off when their queue passes `max_pending`, so memory
//! stays bounded. Protocol violations get nats-server's `-ERR` text and close behaviour.
//!
//! Its settings can come from a file in nats-server's syntax ([`conf`]), TLS included
//! ([`tls`]). It has no clustering, JetStream, NKeys, JWTs or accounts: a `liftbridged` that
//! needs those joins a real NATS cluster instead.
//!
//! ```no_run
//! # async fn run() -> Result<(), natsd::Error> {
//! let server = natsd::Server::start(natsd::ServerConfig { port: 0, ..Default::default() }).await?;
//! println!("clients connect to {}", server.client_url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod client;
pub mod conf;
mod local;
pub mod parser;
pub mod perms;
mod server;
pub mod sublist;
pub mod tls;

pub use local::{LocalMessage, LocalOptions, LocalSubscription};
pub use server::{Auth, COMPATIBLE_VERSION, Error, Handle, Server, ServerConfig, User};
