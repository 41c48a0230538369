//! A bound in bytes on a queue: a sender takes a share of the budget before it queues a message
//! and the share comes back when the message leaves the queue, so that a queue of at most N
//! messages cannot also hold N of the largest ones.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes are counted in units of this size.
const UNIT: usize = 1024;

/// A byte budget shared by a queue's senders.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    permits: Arc<Semaphore>,
    units: usize,
}

/// A share of a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Share(#[allow(dead_code)] OwnedSemaphorePermit);

impl ByteBudget {
    /// A budget of `bytes` (at least one unit).
    pub(crate) fn new(bytes: usize) -> ByteBudget {
        let units = (bytes / UNIT).max(1);
        ByteBudget {
            permits: Arc::new(Semaphore::new(units)),
            units,
        }
    }

    /// Waits until `bytes` fit in what is left, and takes them. A message larger than the
    /// whole budget takes all of it, so that it waits for an empty queue instead of forever.
    /// `None` once the budget is closed.
    pub(crate) async fn take(&self, bytes: usize) -> Option<Share> {
        let need = bytes.div_ceil(UNIT).clamp(1, self.units);
        let need = u32::try_from(need).unwrap_or(u32::MAX);
        self.permits
            .clone()
            .acquire_many_owned(need)
            .await
            .ok()
            .map(Share)
    }

    /// Bytes not taken, in whole units.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn senders_wait_once_the_bytes_are_taken_and_go_on_when_they_come_back() {
        let b = ByteBudget::new(10 * UNIT);
        let first = b.take(6 * UNIT).await.unwrap();
        let second = b.take(4 * UNIT).await.unwrap();
        assert_eq!(b.available(), 0);
        // A third must wait...
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.take(1)).await;
        assert!(waiting.is_err(), "a share beyond the budget was granted");
        // ...until a share comes back.
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), b.take(5 * UNIT))
            .await
            .expect("granted once bytes came back")
            .unwrap();
        drop((second, third));
        // A message larger than the whole budget takes it all rather than waiting forever.
        let huge = tokio::time::timeout(Duration::from_secs(5), b.take(1 << 30))
            .await
            .expect("granted on an empty budget")
            .unwrap();
        assert_eq!(b.available(), 0);
        drop(huge);
        assert_eq!(b.available(), 10 * UNIT);
    }
}
