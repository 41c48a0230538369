//! The log's locks, each with its place in the lock order, checked in debug builds.
//!
//! A thread takes the log's locks only in the order of [`Rank`]: never one of lower or equal
//! rank while it holds another. Equal rank includes the same lock: taking a lock that this
//! thread already holds, even a shared read lock, can deadlock, because parking_lot's locks
//! are fair (a second read waits for a writer queued after the first). In debug builds every
//! acquisition checks this against the ranks the thread holds and panics, naming both locks,
//! on a violation; release builds compile to plain parking_lot locks.

use std::ops::{Deref, DerefMut};

use crate::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// The lock order, outermost first. See the crate's `log` module docs for what each guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    Maintenance,
    Writer,
    Reading,
    Segments,
    HwCheckpoint,
    Sync,
    Epochs,
    TruncationHistory,
    Failed,
}

// Shuttle runs its tasks on one OS thread, so a per-thread stack of ranks would mix them up;
// shuttle reports deadlocks itself.
#[cfg(all(debug_assertions, not(feature = "shuttle")))]
mod held {
    use std::cell::RefCell;

    use super::Rank;

    thread_local! {
        static HELD: RefCell<Vec<Rank>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn acquire(rank: Rank) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(top) = h.iter().max().filter(|top| **top >= rank) {
                panic!(
                    "lock order violated: taking {rank:?} while holding {top:?} (held: {:?})",
                    *h
                );
            }
            h.push(rank);
        });
    }

    pub(super) fn release(rank: Rank) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|r| *r == rank) {
                h.remove(i);
            }
        });
    }
}

#[cfg(any(not(debug_assertions), feature = "shuttle"))]
mod held {
    use super::Rank;

    #[inline(always)]
    pub(super) fn acquire(_: Rank) {}

    #[inline(always)]
    pub(super) fn release(_: Rank) {}
}

/// Marks a rank held for as long as it lives.
struct Held(Rank);

impl Held {
    #[inline]
    fn take(rank: Rank) -> Held {
        held::acquire(rank);
        Held(rank)
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        held::release(self.0);
    }
}

/// A mutex with a place in the lock order.
pub(crate) struct OrderedMutex<T> {
    rank: Rank,
    inner: crate::sync::Mutex<T>,
}

/// A guard of an [`OrderedMutex`].
pub(crate) struct OrderedMutexGuard<'a, T> {
    // Declared first: unlocked before the rank is given back.
    guard: MutexGuard<'a, T>,
    _held: Held,
}

impl<T> OrderedMutex<T> {
    pub(crate) fn new(rank: Rank, value: T) -> Self {
        OrderedMutex {
            rank,
            inner: crate::sync::Mutex::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> OrderedMutexGuard<'_, T> {
        let held = Held::take(self.rank);
        OrderedMutexGuard {
            guard: self.inner.lock(),
            _held: held,
        }
    }

    /// Whether some thread holds the lock (a hint, for tests).
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}

impl<'a, T> OrderedMutexGuard<'a, T> {
    /// The parking_lot guard, for a condition variable's wait or `MutexGuard::unlocked`. The
    /// rank stays held meanwhile: the thread must take no lock of lower rank there either.
    pub(crate) fn raw(&mut self) -> &mut MutexGuard<'a, T> {
        &mut self.guard
    }
}

impl<T> Deref for OrderedMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for OrderedMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A reader-writer lock with a place in the lock order.
pub(crate) struct OrderedRwLock<T> {
    rank: Rank,
    inner: crate::sync::RwLock<T>,
}

/// A shared guard of an [`OrderedRwLock`].
pub(crate) struct OrderedReadGuard<'a, T> {
    guard: RwLockReadGuard<'a, T>,
    _held: Held,
}

/// An exclusive guard of an [`OrderedRwLock`].
pub(crate) struct OrderedWriteGuard<'a, T> {
    guard: RwLockWriteGuard<'a, T>,
    _held: Held,
}

impl<T> OrderedRwLock<T> {
    pub(crate) fn new(rank: Rank, value: T) -> Self {
        OrderedRwLock {
            rank,
            inner: crate::sync::RwLock::new(value),
        }
    }

    #[inline]
    pub(crate) fn read(&self) -> OrderedReadGuard<'_, T> {
        let held = Held::take(self.rank);
        OrderedReadGuard {
            guard: self.inner.read(),
            _held: held,
        }
    }

    #[inline]
    pub(crate) fn write(&self) -> OrderedWriteGuard<'_, T> {
        let held = Held::take(self.rank);
        OrderedWriteGuard {
            guard: self.inner.write(),
            _held: held,
        }
    }
}

impl<T> Deref for OrderedReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> Deref for OrderedWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for OrderedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(all(test, debug_assertions, not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_order_pass_and_released_ranks_are_forgotten() {
        let a = OrderedMutex::new(Rank::Writer, ());
        let b = OrderedRwLock::new(Rank::Segments, 1);
        let c = OrderedMutex::new(Rank::Failed, ());
        {
            let _a = a.lock();
            let _b = b.read();
            let _c = c.lock();
        }
        // Out of order once the outer ones are released.
        let _c = c.lock();
        drop(_c);
        let _b = b.write();
    }

    #[test]
    #[should_panic(expected = "taking Segments while holding Segments")]
    fn a_read_lock_taken_twice_by_one_thread_is_caught() {
        let segments = OrderedRwLock::new(Rank::Segments, ());
        let _first = segments.read();
        let _second = segments.read();
    }

    #[test]
    #[should_panic(expected = "taking Writer while holding Sync")]
    fn a_lock_taken_out_of_order_is_caught() {
        let writer = OrderedMutex::new(Rank::Writer, ());
        let sync = OrderedMutex::new(Rank::Sync, ());
        let _s = sync.lock();
        let _w = writer.lock();
    }
}
