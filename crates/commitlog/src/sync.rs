//! The locks and atomics the log is built on: parking_lot's locks and std's atomics in every
//! normal build; with the `shuttle` feature, shuttle's, behind the same (parking_lot-like) API,
//! so that `tests/shuttle.rs` can run the log's threads under a scheduler that tries their
//! interleavings and reports deadlocks. The feature is for those tests only.

#[cfg(not(feature = "shuttle"))]
pub(crate) use parking_lot::{
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

#[cfg(not(feature = "shuttle"))]
pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
}

#[cfg(feature = "shuttle")]
pub(crate) use model::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(feature = "shuttle")]
pub(crate) mod atomic {
    pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
}

/// parking_lot's API over shuttle's std-like primitives. A poisoned lock (a panicking thread
/// under test) is taken as it is: the panic itself fails the test.
#[cfg(feature = "shuttle")]
mod model {
    use std::fmt;
    use std::ops::{Deref, DerefMut};
    use std::time::{Duration, Instant};

    use shuttle::sync as s;

    fn take<G>(r: std::sync::LockResult<G>) -> G {
        r.unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[derive(Default)]
    pub(crate) struct Mutex<T: ?Sized>(s::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) const fn new(v: T) -> Self {
            Mutex(s::Mutex::new(v))
        }
    }

    impl<T: ?Sized> Mutex<T> {
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard {
                mutex: self,
                guard: Some(take(self.0.lock())),
            }
        }

        #[cfg(test)]
        pub(crate) fn is_locked(&self) -> bool {
            self.0.try_lock().is_err()
        }
    }

    impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Mutex")
        }
    }

    pub(crate) struct MutexGuard<'a, T: ?Sized> {
        mutex: &'a Mutex<T>,
        guard: Option<s::MutexGuard<'a, T>>,
    }

    impl<'a, T: ?Sized> MutexGuard<'a, T> {
        /// Runs `f` with the lock released, then takes it again.
        pub(crate) fn unlocked<U>(this: &mut Self, f: impl FnOnce() -> U) -> U {
            drop(this.guard.take());
            let out = f();
            this.guard = Some(take(this.mutex.0.lock()));
            out
        }
    }

    impl<T: ?Sized> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.guard.as_ref().expect("held")
        }
    }

    impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.guard.as_mut().expect("held")
        }
    }

    #[derive(Default)]
    pub(crate) struct RwLock<T>(s::RwLock<T>);

    pub(crate) type RwLockReadGuard<'a, T> = s::RwLockReadGuard<'a, T>;
    pub(crate) type RwLockWriteGuard<'a, T> = s::RwLockWriteGuard<'a, T>;

    impl<T> RwLock<T> {
        pub(crate) fn new(v: T) -> Self {
            RwLock(s::RwLock::new(v))
        }

        pub(crate) fn read(&self) -> s::RwLockReadGuard<'_, T> {
            take(self.0.read())
        }

        pub(crate) fn write(&self) -> s::RwLockWriteGuard<'_, T> {
            take(self.0.write())
        }
    }

    impl<T> fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("RwLock")
        }
    }

    /// Whether a timed wait ended by its deadline. Under shuttle a timed wait never times out
    /// (shuttle has no clock): tests must not depend on a timeout.
    pub(crate) struct WaitTimeoutResult(bool);

    impl WaitTimeoutResult {
        pub(crate) fn timed_out(&self) -> bool {
            self.0
        }
    }

    #[derive(Default, Debug)]
    pub(crate) struct Condvar(s::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(s::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
            let inner = g.guard.take().expect("held");
            g.guard = Some(take(self.0.wait(inner)));
        }

        pub(crate) fn wait_for<T>(
            &self,
            g: &mut MutexGuard<'_, T>,
            _: Duration,
        ) -> WaitTimeoutResult {
            self.wait(g);
            WaitTimeoutResult(false)
        }

        pub(crate) fn wait_until<T>(
            &self,
            g: &mut MutexGuard<'_, T>,
            _: Instant,
        ) -> WaitTimeoutResult {
            self.wait(g);
            WaitTimeoutResult(false)
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}
