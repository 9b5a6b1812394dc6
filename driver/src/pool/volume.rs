//! Thin, copy-on-write volumes: the data path.
//!
//! A volume is an object whose level-0 blocks are the volume's blocks. Its committed tree is
//! only changed by the sync thread; between syncs, changes live in per-txg overlays (one map per
//! txg slot, sharded by block range so reactors do not contend): a write allocates new space,
//! writes the data there with O_DIRECT, then publishes the new block pointer in the overlay of
//! the txg it holds. Readers look in the overlays (newest txg first), then walk the tree through
//! the block cache. The sync of txg `t` folds overlay `t` into the tree, installs the new root and
//! clears the overlay in one step under the volume's map lock.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use ringpool_ondisk::blkptr::{BlockPointer, HolePtr};
use ringpool_ondisk::object::ObjectType;

use super::blocklock::KeyLocks;
use super::error::{PoolError, Result};
use super::idhash::{IdMap, IdSet};
use super::objtree::TreeGeom;
use super::shared::Shared;
use super::txg::TXG_SIZE;

mod gather;
mod lookup;
mod read;
mod readahead;
mod write;
mod writeback;

const SHARDS: usize = 16;
/// Consecutive blocks that share a shard: a sequential write stays on one lock, and with 16 KiB
/// indirect blocks (256 pointers) a run is exactly the span of one level-1 block, so a shard
/// can tell which level-1 blocks a txg dirties first (the metadata estimate of the throttle).
const SHARD_RUN_SHIFT: u32 = 8;

/// Smallest and largest volume block size.
pub const MIN_VOLUME_BLOCK: u32 = 4096;
/// Largest volume block size.
pub const MAX_VOLUME_BLOCK: u32 = 128 * 1024;

#[derive(Debug, Default)]
struct Shard {
    slot_txg: [u64; TXG_SIZE],
    slots: [IdMap<BlockPointer>; TXG_SIZE],
    /// Level-1 blocks (block id >> fanout shift) with an entry in the slot's txg.
    l1s: [IdSet; TXG_SIZE],
}

/// Level-2 blocks (level-1 index >> fanout shift) a txg dirties, per txg slot.
#[derive(Debug, Default)]
struct UpperDirty {
    slot_txg: [u64; TXG_SIZE],
    l2s: [IdSet; TXG_SIZE],
}

impl Shard {
    /// Makes slot `s` belong to `txg` (dropping what an older txg left there).
    fn claim(&mut self, s: usize, txg: u64) {
        if self.slot_txg[s] != txg {
            self.slots[s].clear();
            self.l1s[s].clear();
            self.slot_txg[s] = txg;
        }
    }

    fn lookup(&self, blkid: u64) -> Option<(u64, BlockPointer)> {
        let mut best: Option<(u64, BlockPointer)> = None;
        for s in 0..TXG_SIZE {
            if let Some(bp) = self.slots[s].get(&blkid) {
                let t = self.slot_txg[s];
                if best.is_none_or(|(bt, _)| t > bt) {
                    best = Some((t, *bp));
                }
            }
        }
        best
    }
}

/// The committed shape of a volume (changed only by the sync thread).
#[derive(Debug, Clone, Copy)]
pub(crate) struct VolMap {
    pub root: BlockPointer,
    pub geom: TreeGeom,
}

/// In-memory state of one volume, shared by every handle.
#[derive(Debug)]
pub(crate) struct VolumeInner {
    pub name: String,
    /// "volume 'NAME' (object N)", built once for error messages.
    pub obj_name: String,
    pub object: u64,
    pub block_size: u32,
    pub size: RwLock<u64>,
    pub map: RwLock<VolMap>,
    shards: Vec<Mutex<Shard>>,
    upper: Mutex<UpperDirty>,
    locks: Arc<KeyLocks>,
    pub destroyed: Mutex<bool>,
    /// Bytes of acknowledged writes still on their way to the device (`write_back`).
    write_back_bytes: AtomicU64,
}

impl VolumeInner {
    pub(crate) fn new(name: String, object: u64, block_size: u32, size: u64, map: VolMap) -> Self {
        VolumeInner {
            obj_name: format!("volume '{name}' (object {object})"),
            name,
            object,
            block_size,
            size: RwLock::new(size),
            map: RwLock::new(map),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            upper: Mutex::new(UpperDirty::default()),
            locks: KeyLocks::new(),
            destroyed: Mutex::new(false),
            write_back_bytes: AtomicU64::new(0),
        }
    }

    fn shard(&self, blkid: u64) -> &Mutex<Shard> {
        let i = usize::try_from((blkid >> SHARD_RUN_SHIFT) % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// Publishes `bp` for `blkid` in txg `txg`; returns the pointer it replaced in the same txg.
    fn publish(&self, txg: u64, blkid: u64, bp: BlockPointer) -> Option<BlockPointer> {
        let m = self.map.read();
        let mut sh = self.shard(blkid).lock();
        let s = usize::try_from(txg % TXG_SIZE as u64).unwrap_or(0);
        sh.claim(s, txg);
        sh.l1s[s].insert(blkid >> m.geom.fanout_shift());
        sh.slots[s].insert(blkid, bp)
    }

    /// The overlay entry for `blkid`, or the committed map snapshot to walk.
    fn overlay_or_map(&self, blkid: u64) -> std::result::Result<BlockPointer, VolMap> {
        let m = self.map.read();
        let sh = self.shard(blkid).lock();
        match sh.lookup(blkid) {
            Some((_, bp)) => Ok(bp),
            None => Err(*m),
        }
    }

    /// Overlay entries (or `None`) for blocks `first..=last`, with the committed map to walk
    /// for the others: one consistent snapshot (the sync installs a tree and drops its
    /// overlay under the map lock).
    fn overlay_or_map_range(&self, first: u64, last: u64) -> (Vec<Option<BlockPointer>>, VolMap) {
        let m = self.map.read();
        let mut out = Vec::with_capacity(usize::try_from(last - first + 1).unwrap_or(0));
        let mut b = first;
        while b <= last {
            // Blocks of one shard run share one lock acquisition.
            let run_end = (((b >> SHARD_RUN_SHIFT) + 1) << SHARD_RUN_SHIFT).min(last + 1);
            let sh = self.shard(b).lock();
            for k in b..run_end {
                out.push(sh.lookup(k).map(|(_, bp)| bp));
            }
            b = run_end;
        }
        (out, *m)
    }

    /// Publishes consecutive blocks `first..` of txg `txg`; returns the pointers they replaced
    /// in the same txg and the estimated metadata bytes the sync of `txg` needs for them
    /// beyond what earlier writes of `txg` already need: a level-1 block for each one this
    /// txg had not dirtied yet, and the blocks above it when its level-2 block is new too.
    fn publish_range(
        &self,
        txg: u64,
        first: u64,
        bps: &[BlockPointer],
    ) -> (Vec<BlockPointer>, u64) {
        let m = self.map.read();
        let shift = m.geom.fanout_shift();
        let s = usize::try_from(txg % TXG_SIZE as u64).unwrap_or(0);
        let mut replaced = Vec::new();
        let mut new_l1 = Vec::new();
        let last = first + u64::try_from(bps.len()).unwrap_or(0);
        let mut b = first;
        while b < last {
            let run_end = (((b >> SHARD_RUN_SHIFT) + 1) << SHARD_RUN_SHIFT).min(last);
            let mut sh = self.shard(b).lock();
            sh.claim(s, txg);
            for l1 in (b >> shift)..=((run_end - 1) >> shift) {
                if sh.l1s[s].insert(l1) {
                    new_l1.push(l1);
                }
            }
            for k in b..run_end {
                let bp = bps[usize::try_from(k - first).unwrap_or(0)];
                if let Some(old) = sh.slots[s].insert(k, bp) {
                    replaced.push(old);
                }
            }
            b = run_end;
        }
        let ibs = u64::from(m.geom.ibs);
        let mut meta = ibs * u64::try_from(new_l1.len()).unwrap_or(0);
        if !new_l1.is_empty() && m.geom.levels > 2 {
            // A new level-2 block can bring a new block on every level above it.
            let above = u64::from(m.geom.levels - 2) * ibs;
            let mut up = self.upper.lock();
            if up.slot_txg[s] != txg {
                up.l2s[s].clear();
                up.slot_txg[s] = txg;
            }
            for l1 in new_l1 {
                if up.l2s[s].insert(l1 >> shift) {
                    meta += above;
                }
            }
        }
        (replaced, meta)
    }

    /// Overlay entries of txg `txg`, sorted by block id (sync thread, after quiesce).
    pub(crate) fn overlay_of(&self, txg: u64) -> Vec<(u64, BlockPointer)> {
        let s = usize::try_from(txg % TXG_SIZE as u64).unwrap_or(0);
        let mut out = Vec::new();
        for sh in &self.shards {
            let g = sh.lock();
            if g.slot_txg[s] == txg {
                out.extend(g.slots[s].iter().map(|(k, v)| (*k, *v)));
            }
        }
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    /// Every overlay entry in `[lo, hi)` of every live txg (newest wins), sorted.
    fn overlay_range(&self, lo: u64, hi: u64) -> Vec<(u64, BlockPointer)> {
        let mut best: HashMap<u64, (u64, BlockPointer)> = HashMap::new();
        for sh in &self.shards {
            let g = sh.lock();
            for s in 0..TXG_SIZE {
                let t = g.slot_txg[s];
                for (k, v) in &g.slots[s] {
                    if *k >= lo && *k < hi {
                        let e = best.entry(*k).or_insert((t, *v));
                        if t > e.0 {
                            *e = (t, *v);
                        }
                    }
                }
            }
        }
        let mut out: Vec<(u64, BlockPointer)> =
            best.into_iter().map(|(k, (_, v))| (k, v)).collect();
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    /// Installs the tree built by the sync of `txg` and drops that txg's overlay.
    pub(crate) fn install(&self, txg: u64, map: VolMap) {
        let mut m = self.map.write();
        *m = map;
        let s = usize::try_from(txg % TXG_SIZE as u64).unwrap_or(0);
        for sh in &self.shards {
            let mut g = sh.lock();
            if g.slot_txg[s] == txg {
                g.slots[s].clear();
                g.l1s[s].clear();
            }
        }
    }
}

/// Allocation status of a byte range (NBD `base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the volume.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// True if the range is a hole (reads as zeroes, no space used).
    pub hole: bool,
}

/// A handle on an open volume; cheap to clone, usable from any reactor.
#[derive(Debug, Clone)]
pub struct Volume {
    pub(crate) shared: Arc<Shared>,
    pub(crate) inner: Arc<VolumeInner>,
}

impl Volume {
    /// Volume name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        *self.inner.size.read()
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.inner.block_size
    }

    /// The object number of the volume's data object.
    pub fn object(&self) -> u64 {
        self.inner.object
    }

    /// Whether the pool is read-only.
    pub fn read_only(&self) -> bool {
        self.shared.read_only
    }

    fn bs(&self) -> u64 {
        u64::from(self.inner.block_size)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if *self.inner.destroyed.lock() {
            return Err(PoolError::NoSuchVolume(self.inner.name.clone()));
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(PoolError::Invalid(format!(
                "range {offset}+{len} beyond volume size {size}"
            ))),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.shared.read_only {
            return Err(PoolError::ReadOnly);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`. Holes read as zeroes; every block is verified
    /// against its checksum.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_holes(offset, buf, None).await
    }

    /// Like [`read`](Self::read), also collecting the byte ranges (relative to `offset`) that
    /// were holes. (Goes through an aligned bounce buffer; [`read_into`](Self::read_into)
    /// reads straight into an [`IoBuf`](crate::io::IoBuf).)
    pub async fn read_holes(
        &self,
        offset: u64,
        buf: &mut [u8],
        holes: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> Result<()> {
        let mut tmp = crate::io::buf::alloc(buf.len());
        tmp.set_len(buf.len());
        let n = buf.len();
        let (r, tmp) = self.read_into(offset, tmp, 0..n, holes).await;
        r?;
        buf.copy_from_slice(&tmp[..n]);
        Ok(())
    }

    /// One whole block (`None` for a hole).
    async fn read_block(&self, blkid: u64) -> Result<Option<Vec<u8>>> {
        let mut attempt = 0;
        loop {
            let guard = self.shared.readers.enter();
            let bp = self.lookup(blkid).await?;
            let BlockPointer::Data(d) = bp else {
                return Ok(None);
            };
            let res = self
                .shared
                .read_verified(&d, &self.inner.obj_name, blkid * self.bs())
                .await;
            drop(guard);
            match res {
                Ok(data) => return Ok(Some(data)),
                Err(e) if e.is_checksum() && attempt < 3 => {
                    // The block may have been replaced (and its old place reused) while we
                    // read: retry if the pointer changed, otherwise it is real damage.
                    let now = self.lookup(blkid).await?;
                    if now == bp {
                        return Err(e);
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes `bp` for `blkid` and hands back what it replaced in the same txg.
    fn replace(&self, blkid: u64, bp: BlockPointer, txg: u64) {
        if let Some(BlockPointer::Data(old)) = self.inner.publish(txg, blkid, bp) {
            if old.birth_txg == txg {
                // Born and replaced in the open txg: give the space back once no reader can
                // still be reading the old place.
                self.shared.free_after_readers(old.dva, txg);
            }
        }
    }

    /// Punches holes over `[offset, offset+len)`: whole blocks become holes, partial blocks
    /// are zeroed (read-modify-write). With `fua`, waits for the commit.
    pub async fn punch(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let bs = self.bs();
        let end = offset + len;
        let first_full = offset.div_ceil(bs);
        let end_full = end / bs;
        // Head and tail partial blocks are zeroed.
        if first_full > end_full {
            let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
            return self.write(offset, &zeros, fua).await;
        }
        if offset < first_full * bs {
            let n = usize::try_from(first_full * bs - offset).unwrap_or(0);
            self.write(offset, &vec![0u8; n], false).await?;
        }
        if end > end_full * bs {
            let n = usize::try_from(end - end_full * bs).unwrap_or(0);
            self.write(end_full * bs, &vec![0u8; n], false).await?;
        }
        if first_full < end_full {
            self.punch_blocks(first_full, end_full).await?;
        }
        if fua {
            self.shared.flush().await?;
        }
        Ok(())
    }

    /// Like `punch_blocks`, for resize (no range check against the current size).
    pub(crate) async fn punch_blocks_raw(&self, lo: u64, hi: u64) -> Result<()> {
        self.punch_blocks(lo, hi).await.map(|_| ())
    }

    /// Makes blocks `[lo, hi)` holes, touching only blocks that are not holes already.
    async fn punch_blocks(&self, lo: u64, hi: u64) -> Result<u64> {
        let present = self.present_blocks(lo, hi).await?;
        let mut txg = 0;
        for chunk in present.chunks(256) {
            let mut guards = Vec::with_capacity(chunk.len());
            for b in chunk {
                guards.push(self.inner.locks.lock(*b).await);
            }
            let hold = self
                .shared
                .txg
                .hold_throttled()
                .await
                .map_err(PoolError::Suspended)?;
            let t = hold.txg();
            for b in chunk {
                let hole = BlockPointer::Hole(HolePtr {
                    birth_txg: t,
                    kind: ObjectType::VolumeData,
                    level: 0,
                    lsize: 0,
                });
                self.replace(*b, hole, t);
            }
            // No data; the tree blocks above the new holes (one per block at worst).
            hold.add_dirty(
                0,
                u64::from(super::syncer::INDIRECT_BLOCK_SIZE)
                    * u64::try_from(chunk.len()).unwrap_or(0),
            );
            self.shared.mark_dirty(t);
            txg = t;
        }
        Ok(txg)
    }

    /// Allocation status of `[offset, offset+len)`, as runs of data and holes.
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let bs = self.bs();
        let lo = offset / bs;
        let hi = (offset + len).div_ceil(bs);
        self.wait_write_back(lo, hi - 1).await;
        let present = self.present_blocks(lo, hi).await?;
        let mut push = |start: u64, end: u64, hole: bool| {
            let s = start.max(offset);
            let e = end.min(offset + len);
            if e <= s {
                return;
            }
            if let Some(last) = out.last_mut() {
                if last.hole == hole && last.offset + last.len == s {
                    last.len += e - s;
                    return;
                }
            }
            out.push(Extent {
                offset: s,
                len: e - s,
                hole,
            });
        };
        let mut cur = lo;
        for b in present {
            if b > cur {
                push(cur * bs, b * bs, true);
            }
            push(b * bs, (b + 1) * bs, false);
            cur = b + 1;
        }
        if cur < hi {
            push(cur * bs, hi * bs, true);
        }
        Ok(out)
    }

    /// Commits everything written so far (NBD FLUSH).
    pub async fn flush(&self) -> Result<()> {
        self.shared.flush().await
    }
}

/// Volume geometry helpers.
pub(crate) fn volume_geom(block_size: u32, size: u64, ibs: u32) -> TreeGeom {
    let mut g = TreeGeom {
        levels: 1,
        ibs,
        bs: block_size,
    };
    let nblocks = size.div_ceil(u64::from(block_size)).max(1);
    g.levels = g.levels_for(nblocks).max(2);
    g
}

/// Validates a volume block size.
pub(crate) fn check_block_size(bs: u32) -> Result<()> {
    if !(MIN_VOLUME_BLOCK..=MAX_VOLUME_BLOCK).contains(&bs) || !bs.is_power_of_two() {
        return Err(PoolError::Invalid(format!(
            "volume block size {bs} must be a power of two in 4 KiB..128 KiB"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringpool_ondisk::blkptr::{DataPtr, Dva};
    use ringpool_ondisk::checksum::{Checksum, ChecksumAlgo};

    fn bp(n: u64, txg: u64) -> BlockPointer {
        BlockPointer::Data(DataPtr {
            dva: Dva {
                device: 0,
                offset: n << 12,
                asize: 4096,
            },
            lsize: 4096,
            kind: ObjectType::VolumeData,
            level: 0,
            birth_txg: txg,
            fill: 1,
            checksum: Checksum::compute(ChecksumAlgo::Crc32c, &n.to_le_bytes()),
        })
    }

    #[test]
    fn metadata_estimate_counts_each_tree_block_once_per_txg() {
        let ibs = super::super::syncer::INDIRECT_BLOCK_SIZE;
        // 1 TiB of 4 KiB blocks: levels 0..=3 plus the top (256 pointers per indirect).
        let geom = volume_geom(4096, 1 << 40, ibs);
        assert_eq!(geom.levels, 5);
        let v = VolumeInner::new(
            "v".into(),
            2,
            4096,
            1 << 40,
            VolMap {
                root: BlockPointer::EMPTY,
                geom,
            },
        );
        let ibs = u64::from(ibs);
        let above = 3 * ibs;
        let meta = |txg: u64, first: u64, n: u64| {
            let bps: Vec<_> = (first..first + n).map(|b| bp(b, txg)).collect();
            v.publish_range(txg, first, &bps).1
        };
        // A new level-1 block under a new level-2 block, then the same ones again.
        assert_eq!(meta(7, 0, 1), ibs + above);
        assert_eq!(meta(7, 1, 1), 0);
        assert_eq!(meta(7, 255, 1), 0);
        // The next level-1 block under the same level-2 block; then a run over two of them.
        assert_eq!(meta(7, 256, 1), ibs);
        assert_eq!(meta(7, 600, 200), 2 * ibs);
        // Another level-2 block.
        assert_eq!(meta(7, 256 * 256, 1), ibs + above);
        // The next txg starts from nothing; the one after that reuses txg 7's slot cleanly.
        assert_eq!(meta(8, 0, 1), ibs + above);
        assert_eq!(meta(11, 1, 1), ibs + above);
        assert_eq!(meta(11, 2, 1), 0);
        // Installing txg 8's tree forgets its level-1 blocks.
        let map = *v.map.read();
        v.install(8, map);
        assert_eq!(meta(12, 0, 1), ibs + above);
    }
}
