//! The volume write path (copy-on-write): lock the blocks, build the new contents (reading
//! the old block only for partial writes), allocate one extent for the batch when the
//! allocator can, write it with one device request, then publish the new pointers in the open
//! txg's overlay.
//!
//! A block-aligned request arriving in an owned, aligned buffer (an NBD WRITE payload) is
//! written straight from that buffer: no copy, no zero fill.

use ringpool_ondisk::blkptr::{BlockPointer, DataPtr, Dva};
use ringpool_ondisk::checksum::{Checksum, ChecksumAlgo};
use ringpool_ondisk::object::ObjectType;

use super::super::blocklock::RangeGuard;
use super::super::error::{PoolError, Result};
use super::super::txg::{TxgHold, TXG_DEFER_SIZE};
use super::Volume;
use crate::io::IoBuf;

/// Largest batch of blocks written (and holding one txg) at once.
pub(super) const BATCH_BYTES: u64 = 1 << 20;
/// Space-map bytes one written block can cost its txg's sync: an ALLOC and a FREE entry of up
/// to two words each.
const SM_BYTES_PER_BLOCK: u64 = 32;

/// True if `dvas` are back to back on one device, each `asize` bytes: one device write.
fn contiguous(dvas: &[Dva], asize: u32) -> bool {
    dvas.iter()
        .all(|d| d.asize == asize && d.device == dvas[0].device)
        && dvas
            .windows(2)
            .all(|w| w[1].offset == w[0].offset + u64::from(w[0].asize))
}

impl Volume {
    /// Writes `data` at `offset` (copy-on-write). With `fua`, returns once the txg holding the
    /// write has committed.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.check_writable()?;
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.check_range(offset, len)?;
        if data.is_empty() {
            return Ok(());
        }
        let bs = self.bs();
        let first = offset / bs;
        let last = (offset + len - 1) / bs;
        let mut txg = 0;
        // Bounded batches keep a huge write from pinning a txg and memory for too long.
        let batch = BATCH_BYTES / bs;
        let mut blk = first;
        while blk <= last {
            let end = (blk + batch.max(1) - 1).min(last);
            txg = txg.max(self.write_blocks(offset, data, blk, end).await?);
            blk = end + 1;
        }
        if fua {
            self.shared.wait_synced(txg).await?;
        }
        Ok(())
    }

    /// Like [`write`](Self::write), from an owned buffer: a block-aligned write of at most
    /// 1 MiB in a page-aligned buffer goes to the device straight from `data`. The buffer comes
    /// back with the result.
    pub async fn write_buf(&self, offset: u64, data: IoBuf, fua: bool) -> (Result<()>, IoBuf) {
        let bs = self.bs();
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let direct = !data.is_empty()
            && offset.is_multiple_of(bs)
            && len.is_multiple_of(bs)
            && len <= BATCH_BYTES
            && data.addr().is_multiple_of(crate::io::buf::DEFAULT_ALIGN);
        if !direct {
            let r = self.write(offset, &data, fua).await;
            return (r, data);
        }
        if let Err(e) = self
            .check_writable()
            .and_then(|()| self.check_range(offset, len))
        {
            return (Err(e), data);
        }
        let first = offset / bs;
        let last = (offset + len - 1) / bs;
        let guards = self.lock_blocks(first, last).await;
        let nblk = usize::try_from(last - first + 1).unwrap_or(0);
        let (r, data) = self.commit_blocks(first, data, nblk).await;
        drop(guards);
        let r = match r {
            Ok(txg) if fua => self.shared.wait_synced(txg).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        (r, data)
    }

    /// Locks blocks `first..=last` (in ascending order, as every writer does: no deadlock).
    pub(super) async fn lock_blocks(&self, first: u64, last: u64) -> RangeGuard {
        let mut lock = std::pin::pin!(self.inner.locks.lock_range(first..last + 1));
        let mut wanted = None;
        std::future::poll_fn(|cx| {
            let r = std::future::Future::poll(lock.as_mut(), cx);
            if r.is_pending() && wanted.is_none() {
                // The holder may be a write-back whose device write this reactor defers or is
                // about to (`crate::io::deferred_writes`): a read or a rewrite of the blocks
                // should wait for the device, not for the deferral.
                wanted = Some(crate::io::writes_wanted());
            }
            r
        })
        .await
    }

    /// Writes blocks `first..=last` of the request (`offset`, `data`).
    async fn write_blocks(&self, offset: u64, data: &[u8], first: u64, last: u64) -> Result<u64> {
        let bs = self.bs();
        let bsu = usize::try_from(bs).unwrap_or(0);
        let guards = self.lock_blocks(first, last).await;
        let nblk = usize::try_from(last - first + 1).unwrap_or(0);
        let mut content = crate::io::buf::alloc(nblk * bsu);
        content.set_len(nblk * bsu);
        let req_end = offset + u64::try_from(data.len()).unwrap_or(0);
        for (i, b) in (first..=last).enumerate() {
            let bstart = b * bs;
            let bend = bstart + bs;
            let lo = bstart.max(offset);
            let hi = bend.min(req_end);
            let dst = &mut content[i * bsu..(i + 1) * bsu];
            if lo > bstart || hi < bend {
                // Partial block: read-modify-write under the block lock.
                match self.read_block(b).await? {
                    Some(old) => dst.copy_from_slice(&old),
                    None => dst.fill(0),
                }
            }
            let s = usize::try_from(lo - offset).unwrap_or(0);
            let e = usize::try_from(hi - offset).unwrap_or(0);
            let o = usize::try_from(lo - bstart).unwrap_or(0);
            dst[o..o + (e - s)].copy_from_slice(&data[s..e]);
        }
        let (r, _content) = self.commit_blocks(first, content, nblk).await;
        drop(guards);
        r
    }

    /// Stores `content` (`nblk` whole blocks) as blocks `first..` in the open txg: allocate,
    /// write, publish. The caller holds the blocks' locks. Returns the txg.
    async fn commit_blocks(&self, first: u64, content: IoBuf, nblk: usize) -> (Result<u64>, IoBuf) {
        self.commit_runs(&[(first, nblk)], content).await
    }

    /// Stores `content` as the block runs `runs` (`(first block, block count)`, their blocks
    /// back to back in `content` in that order) in the open txg with one allocation and, when
    /// the allocator gives one extent, one device write; each run is published on its own.
    /// The caller holds every block's lock. Returns the txg.
    pub(super) async fn commit_runs(
        &self,
        runs: &[(u64, usize)],
        content: IoBuf,
    ) -> (Result<u64>, IoBuf) {
        let nblk: usize = runs.iter().map(|r| r.1).sum();
        match self.prepare_commit(nblk, &content).await {
            Ok(p) => self.finish_commit(runs, content, p, false).await,
            Err(e) => (Err(e), content),
        }
    }

    /// The first half of a commit of `nblk` blocks from `content`: checksums, the write
    /// throttle, a hold on the open txg and the new places. Nothing is written yet; dropping
    /// the result gives the hold back (the places are then leaked until the txg's sync:
    /// callers finish every commit they prepare).
    pub(super) async fn prepare_commit(&self, nblk: usize, content: &IoBuf) -> Result<Prepared> {
        let bs = self.bs();
        let bsu = usize::try_from(bs).unwrap_or(0);
        if content.len() < nblk * bsu {
            return Err(PoolError::Invalid(format!(
                "{nblk} blocks to commit from a buffer of {} bytes",
                content.len()
            )));
        }
        let sums: Vec<Checksum> = content
            .chunks_exact(bsu.max(1))
            .take(nblk)
            .map(|blk| Checksum::compute(ChecksumAlgo::Crc32c, blk))
            .collect();
        // The write throttle: a smooth delay as the open txg nears its dirty limits (the data
        // is not written yet, so the delay holds back the device too), a wait at the limit.
        let delay = self.shared.txg.write_delay();
        if !delay.is_zero() {
            crate::io::sleep(delay).await;
        }
        let mut waits = 0u64;
        loop {
            let hold = self
                .shared
                .txg
                .hold_throttled()
                .await
                .map_err(PoolError::Suspended)?;
            match self.shared.alloc_blocks(bs, nblk, hold.txg()) {
                Ok(dvas) => return Ok(Prepared { sums, hold, dvas }),
                Err(PoolError::NoSpace) if self.space_on_its_way(waits) => {
                    // Short of space only for now: wait for a sync, as OpenZFS's
                    // `dsl_dir_tempreserve_space` answers ERESTART and `dmu_tx_assign` waits
                    // for the next txg. Our own hold goes first, or the sync waits for us.
                    let txg = hold.txg();
                    drop(hold);
                    waits += 1;
                    self.shared.count_space_wait();
                    self.shared.wait_synced(txg).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether an allocation that found no space may find it after one more sync, `waits`
    /// syncs having been waited for so far.
    ///
    /// An overwrite allocates its new block at once, but its old block comes back only
    /// [`TXG_DEFER_SIZE`] txgs after the txg that freed it. So random overwrites run a pool
    /// short of space for a few txgs at a time while its volumes fit with room to spare (a 3
    /// GiB volume on a 4 GiB pool got ENOSPC over NBD with 500 MiB free). A free made in the
    /// open txg `t` is allocatable again after the sync of `t + TXG_DEFER_SIZE`, so while frees
    /// are deferred the write waits for up to `TXG_DEFER_SIZE + 1` syncs, and no more: a pool
    /// that is really full answers ENOSPC after at most that many syncs, and after one when
    /// nothing is deferred. (A rule that stopped at the first sync that gave no space back
    /// failed 140-170 of 150,000 overwrites of a 450 MiB volume on a 512 MiB pool, because the
    /// first sync after a free gives nothing back by design; this one failed none.)
    fn space_on_its_way(&self, waits: u64) -> bool {
        if waits == 0 {
            return true;
        }
        waits <= TXG_DEFER_SIZE && self.shared.class.stats().total.deferred > 0
    }

    /// The second half of a commit: write `content` to the places `p` reserved, then publish
    /// the runs in `p`'s txg and charge it. A failed device write gives the places back and
    /// fails; with `acked` (the write was already acknowledged, see `write_back`) it also
    /// suspends the pool before the txg hold is released.
    pub(super) async fn finish_commit(
        &self,
        runs: &[(u64, usize)],
        content: IoBuf,
        p: Prepared,
        acked: bool,
    ) -> (Result<u64>, IoBuf) {
        let Prepared { sums, hold, dvas } = p;
        let txg = hold.txg();
        let bs = self.bs();
        let bsu = usize::try_from(bs).unwrap_or(0);
        let nblk = dvas.len();
        let asize = self.shared.asize(self.inner.block_size);
        let (r, content) = if asize == self.inner.block_size && contiguous(&dvas, asize) {
            self.shared
                .write_raw(dvas[0].device, dvas[0].offset, content)
                .await
        } else {
            let r = self.shared.write_extents(&dvas, &content, bsu).await;
            (r, content)
        };
        if let Err(e) = r {
            for d in &dvas {
                self.shared.free_now(d, txg);
            }
            if acked {
                self.shared.suspend_write_back(txg, &e);
            }
            drop(hold);
            return (Err(e), content);
        }
        let bps: Vec<BlockPointer> = dvas
            .iter()
            .zip(sums)
            .map(|(dva, checksum)| {
                BlockPointer::Data(DataPtr {
                    dva: *dva,
                    lsize: self.inner.block_size,
                    kind: ObjectType::VolumeData,
                    level: 0,
                    birth_txg: txg,
                    fill: 1,
                    checksum,
                })
            })
            .collect();
        let mut replaced = Vec::new();
        let mut meta = 0;
        let mut at = 0;
        for &(first, n) in runs {
            let (r, m) = self.inner.publish_range(txg, first, &bps[at..at + n]);
            replaced.extend(r);
            meta += m;
            at += n;
        }
        for old in replaced {
            if let BlockPointer::Data(old) = old {
                if old.birth_txg == txg {
                    // Born and replaced in the open txg: give the space back once no reader
                    // can still be reading the old place.
                    self.shared.free_after_readers(old.dva, txg);
                }
            }
        }
        // Charge the tree blocks the sync will rewrite (counted once per txg, by
        // `publish_range`) and the space-map records of the allocation and of the free of the
        // old block: the metadata limit then bounds what the sync takes from the slop.
        let n = u64::try_from(nblk).unwrap_or(0);
        hold.add_dirty(bs * n, meta + SM_BYTES_PER_BLOCK * n);
        self.shared.mark_dirty(txg);
        drop(hold);
        (Ok(txg), content)
    }
}

/// A commit between its two halves ([`Volume::prepare_commit`], [`Volume::finish_commit`]).
pub(super) struct Prepared {
    sums: Vec<Checksum>,
    hold: TxgHold,
    dvas: Vec<Dva>,
}

impl Prepared {
    /// The txg the commit holds.
    pub(super) fn txg(&self) -> u64 {
        self.hold.txg()
    }

    /// Another hold on the commit's txg (see `TxgHold::another`).
    pub(super) fn hold_another(&self) -> TxgHold {
        self.hold.another()
    }
}
