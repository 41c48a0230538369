//! Wake-ups for readers waiting on new data, a new high watermark, or a state change.
//!
//! Blocking readers wait on a condition variable; async readers register a `std::task::Waker`.
//! Both check a generation number read *before* their last attempt, so no wake-up is lost.

use std::task::Waker;
use std::time::Instant;

use crate::sync::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct Notify {
    generation: Mutex<u64>,
    cv: Condvar,
    wakers: Mutex<Vec<Waker>>,
}

impl Notify {
    /// Wakes every waiter.
    pub fn notify(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_all();
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for w in wakers {
            w.wake();
        }
    }

    /// The current generation; read it before checking for data.
    pub fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Waits until the generation differs from `seen` or the deadline passes. Returns `false` on
    /// timeout.
    pub fn wait(&self, seen: u64, deadline: Option<Instant>) -> bool {
        let mut g = self.generation.lock();
        while *g == seen {
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(&mut g, d).timed_out() {
                        return *g != seen;
                    }
                }
                None => self.cv.wait(&mut g),
            }
        }
        true
    }

    /// Registers a waker for the next notification.
    pub fn register(&self, waker: &Waker) {
        let mut ws = self.wakers.lock();
        if !ws.iter().any(|w| w.will_wake(waker)) {
            ws.push(waker.clone());
        }
    }
}
