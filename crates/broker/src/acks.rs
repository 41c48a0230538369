//! Acks for this broker's own waiters, handed over in process.
//!
//! Unary publishes and PublishAsync sessions wait on inboxes that only this broker uses. When
//! this broker also leads the partition, the ack is handed to the waiter directly instead of
//! travelling through NATS and back. Acks for any other inbox, and acks from other leaders, use
//! NATS as always, so what NATS clients see does not change.

use std::collections::HashMap;

use liftbridge_proto::api;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

/// Inboxes with a waiter in this process.
#[derive(Default)]
pub(crate) struct LocalAcks {
    /// One waiter per inbox (unary publishes), with the stream it published to (empty: any,
    /// for a publish to a subject).
    waiters: Mutex<HashMap<String, (String, oneshot::Sender<api::Ack>)>>,
    /// A session per inbox (PublishAsync), receiving many acks.
    sessions: RwLock<HashMap<String, mpsc::UnboundedSender<api::Ack>>>,
}

impl LocalAcks {
    /// Waits for the one ack sent to `inbox` by a partition of `stream` (by any stream when
    /// `stream` is empty): other streams on the same subject ack the same inbox, and their acks
    /// are not the answer to this publish.
    pub fn wait(&self, inbox: &str, stream: &str) -> oneshot::Receiver<api::Ack> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .insert(inbox.to_owned(), (stream.to_owned(), tx));
        rx
    }

    /// Stops waiting on `inbox`.
    pub fn forget(&self, inbox: &str) {
        self.waiters.lock().remove(inbox);
    }

    /// Routes every ack sent to `inbox` to `tx` until [`close_session`](Self::close_session).
    pub fn open_session(&self, inbox: &str, tx: mpsc::UnboundedSender<api::Ack>) {
        self.sessions.write().insert(inbox.to_owned(), tx);
    }

    /// Ends a session.
    pub fn close_session(&self, inbox: &str) {
        self.sessions.write().remove(inbox);
    }

    /// Hands `ack` to its local waiter. Returns it when nobody here waits for it.
    pub fn deliver(&self, ack: api::Ack) -> Option<api::Ack> {
        if let Some(tx) = self.sessions.read().get(&ack.ack_inbox) {
            return tx.send(ack).err().map(|e| e.0);
        }
        let mut waiters = self.waiters.lock();
        match waiters.get(&ack.ack_inbox) {
            Some((stream, _)) if stream.is_empty() || *stream == ack.stream => {
                let (_, w) = waiters.remove(&ack.ack_inbox)?;
                w.send(ack).err()
            }
            // Another stream's ack for this inbox: not this waiter's answer.
            Some(_) => None,
            None => Some(ack),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(inbox: &str, offset: i64) -> api::Ack {
        api::Ack {
            ack_inbox: inbox.into(),
            offset,
            stream: "s1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_waiter_gets_only_the_ack_of_its_stream() {
        let l = LocalAcks::default();
        let mut one = l.wait("a.1", "s2");
        // The ack of another stream on the same subject is dropped, not handed over.
        assert!(l.deliver(ack("a.1", 4)).is_none());
        assert!(one.try_recv().is_err());
        let mut right = ack("a.1", 5);
        right.stream = "s2".into();
        assert!(l.deliver(right).is_none());
        assert_eq!(one.try_recv().unwrap().offset, 5);
    }

    #[test]
    fn local_inboxes_get_their_acks_and_others_are_returned() {
        let l = LocalAcks::default();
        let mut one = l.wait("a.1", "");
        let (tx, mut rx) = mpsc::unbounded_channel();
        l.open_session("s", tx);
        assert!(l.deliver(ack("a.1", 4)).is_none());
        assert_eq!(one.try_recv().unwrap().offset, 4);
        // A waiter gets one ack; a second one for its inbox goes on to NATS.
        assert_eq!(l.deliver(ack("a.1", 5)).map(|a| a.offset), Some(5));
        assert!(l.deliver(ack("s", 6)).is_none());
        assert!(l.deliver(ack("s", 7)).is_none());
        assert_eq!(
            (rx.try_recv().unwrap().offset, rx.try_recv().unwrap().offset),
            (6, 7)
        );
        assert_eq!(l.deliver(ack("elsewhere", 8)).map(|a| a.offset), Some(8));
        l.close_session("s");
        assert!(l.deliver(ack("s", 9)).is_some());
        let _w = l.wait("gone", "");
        l.forget("gone");
        assert!(l.deliver(ack("gone", 1)).is_some());
    }
}
