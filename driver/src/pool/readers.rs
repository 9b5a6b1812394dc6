//! Reader epochs: when can a block overwritten in the open txg be handed back at once?
//!
//! A reader looks a block pointer up, then reads the device asynchronously. If a writer
//! overwrites that block in the same open txg and returned the old extent to the allocator
//! immediately (free-now), another writer could reuse it and the first reader would return
//! someone else's data. Readers therefore register in the current epoch; a free-now is queued
//! with the epoch current at the time of the overwrite and released only once every reader that
//! registered at or before that epoch has finished.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

type ReleaseFn<T> = Box<dyn Fn(Vec<T>) + Send + Sync>;

struct Inner<T> {
    epoch: u64,
    /// epoch -> readers still active that registered in it.
    active: BTreeMap<u64, usize>,
    /// (epoch of the overwrite, item), in epoch order.
    pending: Vec<(u64, T)>,
}

/// Tracks active readers and the frees waiting for them.
pub struct ReaderTracker<T: Send + 'static> {
    inner: Mutex<Inner<T>>,
    release: ReleaseFn<T>,
}

impl<T: Send + 'static> std::fmt::Debug for ReaderTracker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.lock();
        f.debug_struct("ReaderTracker")
            .field("epoch", &g.epoch)
            .field("active", &g.active.values().sum::<usize>())
            .field("pending", &g.pending.len())
            .finish()
    }
}

/// A registered reader; dropping it may release pending frees.
pub struct ReadGuard<T: Send + 'static> {
    tracker: Arc<ReaderTracker<T>>,
    epoch: u64,
}

impl<T: Send + 'static> std::fmt::Debug for ReadGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGuard")
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl<T: Send + 'static> ReaderTracker<T> {
    /// A tracker handing released items to `release` (called without the tracker's lock held).
    pub fn new(release: impl Fn(Vec<T>) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(ReaderTracker {
            inner: Mutex::new(Inner {
                epoch: 1,
                active: BTreeMap::new(),
                pending: Vec::new(),
            }),
            release: Box::new(release),
        })
    }

    /// Register a reader: hold the guard until the device read has completed.
    pub fn enter(self: &Arc<Self>) -> ReadGuard<T> {
        let mut g = self.inner.lock();
        let epoch = g.epoch;
        *g.active.entry(epoch).or_insert(0) += 1;
        ReadGuard {
            tracker: Arc::clone(self),
            epoch,
        }
    }

    /// Queue `item` for release once no reader that might have seen it remains. Returns the
    /// item back immediately if there is no such reader (the caller then frees it itself).
    pub fn defer(&self, item: T) -> Option<T> {
        let mut g = self.inner.lock();
        let epoch = g.epoch;
        g.epoch += 1;
        match g.active.first_key_value() {
            Some((&oldest, _)) if oldest <= epoch => {
                g.pending.push((epoch, item));
                None
            }
            _ => Some(item),
        }
    }

    /// Removes and returns the pending items matching `pred` (the sync thread takes those
    /// born in the txg it syncs, so none outlives its txg unfreed).
    pub fn take_pending(&self, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let mut g = self.inner.lock();
        let (take, keep): (Vec<_>, Vec<_>) = g.pending.drain(..).partition(|(_, t)| pred(t));
        g.pending = keep;
        take.into_iter().map(|(_, t)| t).collect()
    }

    /// Items currently waiting for readers.
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }

    fn leave(&self, epoch: u64) {
        let ready = {
            let mut g = self.inner.lock();
            if let Some(n) = g.active.get_mut(&epoch) {
                *n -= 1;
                if *n == 0 {
                    g.active.remove(&epoch);
                }
            }
            let oldest = g.active.first_key_value().map_or(u64::MAX, |(&e, _)| e);
            // Items queued at an epoch older than every active reader are safe.
            let split = g.pending.partition_point(|(e, _)| *e < oldest);
            if split == 0 {
                return;
            }
            g.pending.drain(..split).map(|(_, t)| t).collect::<Vec<_>>()
        };
        (self.release)(ready);
    }
}

impl<T: Send + 'static> Drop for ReadGuard<T> {
    fn drop(&mut self) {
        self.tracker.leave(self.epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_waits_for_older_readers_only() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o2 = Arc::clone(&out);
        let t = ReaderTracker::new(move |v: Vec<u32>| o2.lock().extend(v));
        assert_eq!(t.defer(1), Some(1)); // no readers: free at once
        let r1 = t.enter();
        assert_eq!(t.defer(2), None); // r1 may have seen it
        let r2 = t.enter(); // registered after the overwrite: cannot see 2
        assert_eq!(t.defer(3), None);
        drop(r1);
        assert_eq!(*out.lock(), vec![2]);
        drop(r2);
        assert_eq!(*out.lock(), vec![2, 3]);
        assert_eq!(t.pending(), 0);
    }
}
