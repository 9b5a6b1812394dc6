//! Async per-block locks: a read-modify-write of one logical block must not interleave with
//! another write of the same block (two 512-byte writes into one 4 KiB block must both land).
//! Waiting is a future, so a reactor never blocks; the map lock is only held for bookkeeping.
//!
//! A run of consecutive keys (the blocks of one write) is locked with [`KeyLocks::lock_range`]:
//! in ascending order like single keys, but every free key in a row is taken under one
//! acquisition of the map lock, and released under one.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::idhash::IdMap;

/// A set of locked keys with their waiters.
#[derive(Debug, Default)]
pub struct KeyLocks {
    locked: Mutex<IdMap<Vec<Waker>>>,
}

/// Holds one key locked until dropped.
#[derive(Debug)]
pub struct KeyGuard {
    locks: Arc<KeyLocks>,
    key: u64,
}

/// Future of [`KeyLocks::lock`].
#[derive(Debug)]
pub struct LockKey {
    locks: Arc<KeyLocks>,
    key: u64,
}

impl KeyLocks {
    /// An empty lock set.
    pub fn new() -> Arc<Self> {
        Arc::new(KeyLocks::default())
    }

    /// Lock `key` (waits asynchronously while someone else holds it).
    pub fn lock(self: &Arc<Self>, key: u64) -> LockKey {
        LockKey {
            locks: Arc::clone(self),
            key,
        }
    }
}

impl KeyLocks {
    /// Locks the keys of `keys` in ascending order (waits asynchronously for each one someone
    /// else holds, keeping those already taken, as taking them one by one would).
    pub fn lock_range(self: &Arc<Self>, keys: Range<u64>) -> LockRange {
        LockRange {
            locks: Arc::clone(self),
            next: keys.start,
            keys,
            done: false,
        }
    }
}

/// Future of [`KeyLocks::lock_range`]. Dropped before completion, it releases what it took.
#[derive(Debug)]
pub struct LockRange {
    locks: Arc<KeyLocks>,
    keys: Range<u64>,
    /// Keys `keys.start..next` are held.
    next: u64,
    done: bool,
}

/// Holds a run of keys locked until dropped.
#[derive(Debug)]
pub struct RangeGuard {
    locks: Arc<KeyLocks>,
    keys: Range<u64>,
}

impl Future for LockRange {
    type Output = RangeGuard;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RangeGuard> {
        let this = &mut *self;
        {
            let mut g = this.locks.locked.lock();
            while this.next < this.keys.end {
                if let Some(waiters) = g.get_mut(&this.next) {
                    if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        waiters.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                g.insert(this.next, Vec::new());
                this.next += 1;
            }
        }
        this.done = true;
        Poll::Ready(RangeGuard {
            locks: Arc::clone(&this.locks),
            keys: this.keys.clone(),
        })
    }
}

/// Releases `keys` and wakes everyone who waits for one of them (the first to poll takes it,
/// the others re-register).
fn release(locks: &KeyLocks, keys: Range<u64>) {
    if keys.is_empty() {
        return;
    }
    let mut wake = Vec::new();
    {
        let mut g = locks.locked.lock();
        for k in keys {
            if let Some(w) = g.remove(&k) {
                wake.extend(w);
            }
        }
    }
    for w in wake {
        w.wake();
    }
}

impl Drop for LockRange {
    fn drop(&mut self) {
        if !self.done {
            release(&self.locks, self.keys.start..self.next);
        }
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        release(&self.locks, self.keys.clone());
    }
}

impl Future for LockKey {
    type Output = KeyGuard;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<KeyGuard> {
        let mut g = self.locks.locked.lock();
        match g.get_mut(&self.key) {
            Some(waiters) => {
                waiters.push(cx.waker().clone());
                Poll::Pending
            }
            None => {
                g.insert(self.key, Vec::new());
                Poll::Ready(KeyGuard {
                    locks: Arc::clone(&self.locks),
                    key: self.key,
                })
            }
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let waiters = self.locks.locked.lock().remove(&self.key);
        // Wake everyone; the first to poll takes the lock, the others re-register.
        for w in waiters.into_iter().flatten() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(f).poll(&mut cx)
    }

    #[test]
    fn a_range_waits_for_a_held_key_keeping_the_keys_below_it() {
        let locks = KeyLocks::new();
        let mut single = locks.lock(5);
        let Poll::Ready(held) = poll(&mut single) else {
            panic!("a free key is taken at once");
        };
        let mut range = locks.lock_range(3..8);
        assert!(poll(&mut range).is_pending());
        // 3 and 4 are taken (a writer of block 4 waits), 6 and 7 are not yet.
        assert!(poll(&mut locks.lock(4)).is_pending());
        let Poll::Ready(g7) = poll(&mut locks.lock(7)) else {
            panic!("key 7 is free while the range waits at 5");
        };
        drop(g7);
        drop(held);
        let Poll::Ready(guard) = poll(&mut range) else {
            panic!("the range completes once 5 is released");
        };
        for k in 3..8 {
            assert!(poll(&mut locks.lock(k)).is_pending(), "key {k} is held");
        }
        drop(guard);
        for k in 3..8 {
            assert!(poll(&mut locks.lock(k)).is_ready(), "key {k} is released");
        }
    }

    #[test]
    fn a_range_dropped_while_waiting_releases_what_it_took() {
        let locks = KeyLocks::new();
        let Poll::Ready(held) = poll(&mut locks.lock(10)) else {
            panic!("a free key is taken at once");
        };
        let mut range = locks.lock_range(8..12);
        assert!(poll(&mut range).is_pending());
        drop(range);
        for k in [8, 9, 11] {
            assert!(poll(&mut locks.lock(k)).is_ready(), "key {k} is free");
        }
        drop(held);
        assert!(poll(&mut locks.lock_range(8..12)).is_ready());
        assert!(
            poll(&mut locks.lock_range(0..0)).is_ready(),
            "an empty range"
        );
    }
}
