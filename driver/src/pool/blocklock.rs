//! Async per-block locks: a read-modify-write of one logical block must not interleave with
//! another write of the same block (two 512-byte writes into one 4 KiB block must both land).
//! Waiting is a future, so a reactor never blocks; the map lock is only held for bookkeeping.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// A set of locked keys with their waiters.
#[derive(Debug, Default)]
pub struct KeyLocks {
    locked: Mutex<HashMap<u64, Vec<Waker>>>,
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
