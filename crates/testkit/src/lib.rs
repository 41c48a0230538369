//! What several test crates need and no production code does: throw-away certificates
//! ([`TestCa`]) and the reference `nats-server` in a process of its own ([`RefNats`]). A
//! dev-dependency only.

mod nats;
mod pki;

pub use nats::RefNats;
pub use pki::{Leaf, TestCa};
