//! Gathered writes: small whole-block writes that arrive together (an NBD client with many
//! 4 KiB writes in flight) are stored with one allocation and one device write instead of one
//! device write each.
//!
//! Random 4 KiB writes at queue depth 32 otherwise cost the device one small write per request;
//! copy-on-write lets them land side by side wherever the allocator has room, so a batch of 32
//! becomes one 128 KiB write. Each request is still published on its own (its blocks get their
//! own pointers and checksums), under the same block locks, throttle and txg hold as a single
//! write, so a batch is exactly as durable and as visible as its writes done one by one.

use super::super::error::Result;
use super::Volume;
use crate::io::IoBuf;

/// Most bytes gathered into one device write (as for one large write request).
const GATHER_BYTES: u64 = 1 << 20;
/// Writes of a batch considered for gathering (the overlap check is quadratic); the rest are
/// written one by one.
const MAX_CANDIDATES: usize = 256;

impl Volume {
    /// Writes each `(offset, data)` as [`write_buf`](Self::write_buf) without FUA would, and
    /// returns each result with its buffer, in the order given.
    ///
    /// Block-aligned writes (whole blocks) that overlap no earlier write of the batch are
    /// committed together, up to 1 MiB: their blocks are locked in ascending order, copied
    /// into one buffer, allocated as one extent when the allocator has one and written with
    /// one device request, then each write's blocks are published in the open txg. The others
    /// (partial blocks, overlaps, beyond the byte bound) and, if the gathered commit fails,
    /// the gathered ones too, are then written one after the other in the given order. So the
    /// result is that of the writes done one by one in the given order, and every failure is
    /// reported by the write it belongs to.
    pub async fn write_gather(&self, writes: Vec<(u64, IoBuf)>) -> Vec<(Result<()>, IoBuf)> {
        self.gather(writes, false).await
    }

    /// Like [`write_gather`](Self::write_gather), but the gathered writes are acknowledged as
    /// soon as they are ordered, as [`write_back`](Self::write_back) does for one write: once
    /// their blocks are locked, checksummed, their txg held and their new places allocated,
    /// the device write and the publication go on in a task of their own (within the volume's
    /// write-back bound; past it, or off a reactor thread, the batch is written the ordinary
    /// way). The same guarantees hold as for a single write-back: a later read, block-status
    /// query or write of those blocks waits for their locks, a later FLUSH waits for their
    /// txg, and a failed device write suspends the pool. Every buffer comes back (the batch
    /// is written from a copy).
    ///
    /// Why: at queue depth 32 a batch otherwise waits for its device write before any of its
    /// replies goes out, so the client's next writes wait for the disk while the reactor idles.
    pub async fn write_gather_back(&self, writes: Vec<(u64, IoBuf)>) -> Vec<(Result<()>, IoBuf)> {
        self.gather(writes, true).await
    }

    async fn gather(&self, writes: Vec<(u64, IoBuf)>, back: bool) -> Vec<(Result<()>, IoBuf)> {
        let bs = self.bs();
        let n = writes.len();
        let mut slots: Vec<Option<(u64, IoBuf)>> = writes.into_iter().map(Some).collect();
        let mut results: Vec<Option<(Result<()>, IoBuf)>> = (0..n).map(|_| None).collect();
        // A write is gathered only if it overlaps no earlier write of the batch (gathered or
        // not): the others are written afterwards in the given order, so of two overlapping
        // writes the later one always lands last.
        let mut earlier: Vec<(u64, u64)> = Vec::with_capacity(n.min(MAX_CANDIDATES));
        let mut chosen = Vec::new();
        let mut total = 0u64;
        for (i, slot) in slots.iter().enumerate().take(MAX_CANDIDATES) {
            let Some((off, d)) = slot.as_ref() else {
                continue;
            };
            let len = u64::try_from(d.len()).unwrap_or(u64::MAX);
            let end = off.saturating_add(len);
            let free = earlier.iter().all(|&(s, e)| end <= s || *off >= e);
            earlier.push((*off, end));
            if free
                && len > 0
                && off.is_multiple_of(bs)
                && len.is_multiple_of(bs)
                && total + len <= GATHER_BYTES
                && self.check_writable().is_ok()
                && self.check_range(*off, len).is_ok()
            {
                total += len;
                chosen.push(i);
            }
        }
        // Locks are taken in ascending block order (as every writer takes them: no deadlock)
        // and the blocks laid out in that order.
        chosen.sort_by_key(|&i| slots[i].as_ref().map_or(0, |s| s.0));
        if chosen.len() > 1 {
            let mut guards = Vec::new();
            let mut runs = Vec::with_capacity(chosen.len());
            let mut content = crate::io::buf::alloc(usize::try_from(total).unwrap_or(0));
            content.set_len(usize::try_from(total).unwrap_or(0));
            let mut at = 0usize;
            for &i in &chosen {
                let Some((off, d)) = slots[i].as_ref() else {
                    continue;
                };
                let len = u64::try_from(d.len()).unwrap_or(0);
                let (first, last) = (off / bs, (off + len - 1) / bs);
                guards.push(self.lock_blocks(first, last).await);
                content[at..at + d.len()].copy_from_slice(d);
                at += d.len();
                runs.push((first, usize::try_from(last - first + 1).unwrap_or(0)));
            }
            let r = if back {
                self.commit_runs_back(runs, content, guards, total).await
            } else {
                let (r, _content) = self.commit_runs(&runs, content).await;
                drop(guards);
                r.map(drop)
            };
            if r.is_ok() {
                for &i in &chosen {
                    if let Some((_, d)) = slots[i].take() {
                        results[i] = Some((Ok(()), d));
                    }
                }
            }
        }
        // Everything not committed above, in the given order.
        for i in 0..n {
            if let Some((off, d)) = slots[i].take() {
                results[i] = Some(self.write_buf(off, d, false).await);
            }
        }
        results.into_iter().flatten().collect()
    }
}
