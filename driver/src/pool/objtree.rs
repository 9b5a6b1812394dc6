//! Copy-on-write trees of block pointers: the shape of every object.
//!
//! An object of `levels` levels has data blocks at level 0 and indirect blocks (arrays of block
//! pointers, `fanout` of them) above; its record holds the pointer to the top block, at level
//! `levels - 1` (a one-level object points straight at its only data block). Every pointer
//! carries the checksum of its child, so a read from the uberblock down is verified.
//!
//! Updates happen only in syncing context and in three steps so that the tree surgery itself is
//! plain synchronous code: [`paths_to_load`] names the indirect blocks on the paths of the
//! changed blocks (the caller reads them, through the cache, concurrently), [`TreeUpdate::apply`]
//! builds the new tree (allocating new locations, or rewriting blocks born in this very txg in
//! place, and collecting the frees of replaced blocks), then the caller issues the writes.

use std::collections::HashMap;
use std::sync::Arc;

use ringpool_ondisk::blkptr::{BlockPointer, DataPtr, Dva, HolePtr};
use ringpool_ondisk::checksum::{Checksum, ChecksumAlgo};
use ringpool_ondisk::object::ObjectType;

use super::error::PoolError;
use super::indirect::Indirect;
use super::syncer::BufPool;
use crate::io::IoBuf;

/// Size of an encoded block pointer.
pub const BP_SIZE: u64 = 64;

/// Shape of an object's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeGeom {
    /// Levels, data level included (>= 1).
    pub levels: u8,
    /// Indirect block size in bytes.
    pub ibs: u32,
    /// Data block size in bytes.
    pub bs: u32,
}

impl TreeGeom {
    /// Pointers per indirect block.
    pub fn fanout(&self) -> u64 {
        u64::from(self.ibs) / BP_SIZE
    }

    /// log2 of the fanout.
    pub fn fanout_shift(&self) -> u32 {
        self.fanout().trailing_zeros()
    }

    /// Number of data blocks addressable with the current levels.
    pub fn capacity_blocks(&self) -> u64 {
        let bits = u32::from(self.levels.saturating_sub(1)) * self.fanout_shift();
        1u64.checked_shl(bits).unwrap_or(u64::MAX)
    }

    /// Levels needed to address `nblocks` data blocks.
    pub fn levels_for(&self, nblocks: u64) -> u8 {
        let mut levels = 1u8;
        let mut cap = 1u64;
        while cap < nblocks {
            cap = cap.saturating_mul(self.fanout());
            levels += 1;
        }
        levels
    }

    /// Index, inside its parent at `level`, of the child covering data block `blkid`.
    pub fn child_index(&self, level: u8, blkid: u64) -> usize {
        let shift = u32::from(level - 1) * self.fanout_shift();
        usize::try_from((blkid >> shift) & (self.fanout() - 1)).unwrap_or(0)
    }

    /// Data blocks covered by one pointer at `level`.
    pub fn span(&self, level: u8) -> u64 {
        1u64.checked_shl(u32::from(level) * self.fanout_shift())
            .unwrap_or(u64::MAX)
    }
}

/// What changes for one data block.
#[derive(Debug, Clone)]
pub enum Change {
    /// The data is already on disk (volume writes) or a hole: install this pointer; the old
    /// pointer is freed.
    Ptr(BlockPointer),
    /// New content for a metadata block: written at sync (in place if born in this txg).
    Data(Arc<Vec<u8>>),
}

/// Key of a loaded indirect block: where it lives and what its parent says its checksum is.
pub type BlockKey = (Dva, Checksum);

/// The key of a data pointer.
pub fn key_of(d: &DataPtr) -> BlockKey {
    (d.dva, d.checksum)
}

/// Indirect blocks (by key) that must be loaded to apply changes to `blkids` (sorted),
/// level by level: call with the children of each loaded level until it returns nothing.
/// `loaded` answers the pointers of already loaded blocks.
pub fn paths_to_load(
    geom: &TreeGeom,
    root: &BlockPointer,
    blkids: &[u64],
    loaded: &HashMap<BlockKey, Arc<Indirect>>,
) -> Result<Vec<DataPtr>, PoolError> {
    let mut need = Vec::new();
    if geom.levels <= 1 || blkids.is_empty() {
        return Ok(need);
    }
    walk_need(geom, root, geom.levels - 1, blkids, loaded, &mut need)?;
    Ok(need)
}

fn walk_need(
    geom: &TreeGeom,
    bp: &BlockPointer,
    level: u8,
    blkids: &[u64],
    loaded: &HashMap<BlockKey, Arc<Indirect>>,
    need: &mut Vec<DataPtr>,
) -> Result<(), PoolError> {
    if level == 0 {
        return Ok(());
    }
    let BlockPointer::Data(d) = bp else {
        return Ok(());
    };
    let Some(children) = loaded.get(&key_of(d)) else {
        need.push(*d);
        return Ok(());
    };
    if level == 1 {
        // The children are data blocks: nothing below to load (and nothing to decode).
        return Ok(());
    }
    for (idx, ids) in group_by_child(geom, level, blkids) {
        if idx < children.len() {
            walk_need(geom, &children.get(idx)?, level - 1, ids, loaded, need)?;
        }
    }
    Ok(())
}

/// Splits sorted `blkids` into runs sharing the same child index at `level`.
fn group_by_child<'a>(geom: &TreeGeom, level: u8, blkids: &'a [u64]) -> Vec<(usize, &'a [u64])> {
    let mut out = Vec::new();
    let span = geom.span(level - 1);
    let mut start = 0;
    while start < blkids.len() {
        let child = blkids[start] / span;
        let mut end = start + 1;
        while end < blkids.len() && blkids[end] / span == child {
            end += 1;
        }
        out.push((geom.child_index(level, blkids[start]), &blkids[start..end]));
        start = end;
    }
    out
}

/// The contents of a block to write.
#[derive(Debug)]
pub enum WriteData {
    /// Exactly `asize` bytes (zero padded), in a buffer of the sync's pool.
    Buf(IoBuf),
    /// An indirect block's encoded bytes (its logical size; the write pads with zeroes up to
    /// `asize`): the block the cache gets, written without an intermediate buffer of its own.
    Indirect(Arc<Indirect>),
}

impl WriteData {
    /// The block's bytes (the logical ones for an indirect block).
    pub fn bytes(&self) -> &[u8] {
        match self {
            WriteData::Buf(b) => b,
            WriteData::Indirect(i) => i.bytes(),
        }
    }
}

/// One block to write after the update.
#[derive(Debug)]
pub struct BlockWrite {
    /// Where.
    pub dva: Dva,
    /// What.
    pub data: WriteData,
    /// Level of the block (0 = data).
    pub level: u8,
    /// The pointer the parent now holds.
    pub bp: DataPtr,
}

/// Builds a new tree from the old one plus changes (syncing context, synchronous).
pub struct TreeUpdate<'a> {
    /// The txg being synced.
    pub txg: u64,
    /// Object type recorded in the pointers.
    pub kind: ObjectType,
    /// Indirect blocks loaded by the caller. The update takes each one it rewrites out of the
    /// map and, when nothing else shares it, edits its encoded bytes in place into the new
    /// block's, re-encoding only the changed slots (a copy of the block, its allocation and
    /// its later free were a tenth of the sync thread's CPU under random writes, re-encoding
    /// all 256 pointers a third).
    pub loaded: &'a mut HashMap<BlockKey, Arc<Indirect>>,
    /// Allocates `size` bytes (the caller rounds to the device's block size): returns the place.
    pub alloc: &'a mut dyn FnMut(u32) -> Result<Dva, PoolError>,
    /// Allocated size for a block of `len` logical bytes.
    pub asize_of: &'a dyn Fn(u32) -> u32,
    /// Where block buffers come from (reused across txgs, never zero-filled on the way).
    pub(crate) bufs: &'a mut BufPool,
    /// Blocks replaced or dropped (the caller frees them with their birth txg).
    pub frees: Vec<DataPtr>,
    /// Blocks to write.
    pub writes: Vec<BlockWrite>,
    /// New indirect blocks (for the cache).
    pub new_indirect: Vec<(BlockKey, Arc<Indirect>)>,
}

impl std::fmt::Debug for TreeUpdate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeUpdate")
            .field("txg", &self.txg)
            .field("frees", &self.frees.len())
            .field("writes", &self.writes.len())
            .finish()
    }
}

impl TreeUpdate<'_> {
    /// Applies `changes` (sorted by block id, unique) to the tree under `root`; returns the new
    /// root. `geom.levels` must already be high enough for every block id (see [`grow`]).
    pub fn apply(
        &mut self,
        geom: &TreeGeom,
        root: BlockPointer,
        changes: &[(u64, Change)],
    ) -> Result<BlockPointer, PoolError> {
        if changes.is_empty() {
            return Ok(root);
        }
        self.update(geom, root, geom.levels - 1, changes)
    }

    fn update(
        &mut self,
        geom: &TreeGeom,
        old: BlockPointer,
        level: u8,
        changes: &[(u64, Change)],
    ) -> Result<BlockPointer, PoolError> {
        if level == 0 {
            // One change for this leaf (block ids are unique).
            let Some((_, change)) = changes.last() else {
                return Ok(old);
            };
            return match change {
                Change::Ptr(new) => {
                    if let BlockPointer::Data(o) = &old {
                        let same = matches!(new, BlockPointer::Data(n) if n.dva == o.dva);
                        if !same {
                            self.frees.push(*o);
                        }
                    }
                    Ok(*new)
                }
                Change::Data(bytes) => {
                    let buf = self.block_buf(geom.bs, |out| {
                        let n = bytes.len().min(out.len());
                        out[..n].copy_from_slice(&bytes[..n]);
                        out[n..].fill(0);
                        Ok(())
                    })?;
                    self.place(old, WriteData::Buf(buf), 0, 1, geom.bs)
                }
            };
        }
        let ibs = usize::try_from(geom.ibs).unwrap_or(0);
        let mut children: Indirect = match &old {
            // Each block on a changed path is rewritten exactly once per update.
            BlockPointer::Data(d) => match self.loaded.remove(&key_of(d)) {
                Some(c) => Arc::try_unwrap(c).unwrap_or_else(|shared| shared.as_ref().clone()),
                None => {
                    return Err(PoolError::Internal(format!(
                        "indirect block {:?} not loaded before the update",
                        d.dva
                    )))
                }
            },
            BlockPointer::Hole(_) => Indirect::empty(ibs),
        };
        // The object's block size (only a damaged pointer's size could differ): extra slots
        // are dropped, missing ones are holes.
        children.resize(ibs);
        let span = geom.span(level - 1);
        let mut start = 0;
        while start < changes.len() {
            let child = changes[start].0 / span;
            let mut end = start + 1;
            while end < changes.len() && changes[end].0 / span == child {
                end += 1;
            }
            let idx = geom.child_index(level, changes[start].0);
            let new = self.update(geom, children.get(idx)?, level - 1, &changes[start..end])?;
            children.set(idx, &new)?;
            start = end;
        }
        // Only the changed slots were re-encoded; the fill and whether any data is left are
        // read off the encoded slots.
        let summary = children.summary()?;
        if summary.data == 0 {
            if let BlockPointer::Data(o) = &old {
                if !is_synthetic(o) {
                    self.frees.push(*o);
                }
            }
            return Ok(BlockPointer::Hole(HolePtr {
                birth_txg: self.txg,
                kind: self.kind,
                level,
                lsize: 0,
            }));
        }
        let children = Arc::new(children);
        let data = WriteData::Indirect(Arc::clone(&children));
        let bp = self.place(old, data, level, summary.fill, geom.ibs)?;
        if let BlockPointer::Data(d) = &bp {
            self.new_indirect.push((key_of(d), children));
        }
        Ok(bp)
    }

    /// A pooled buffer of the allocated size of an `lsize`-byte block: `fill` writes the
    /// logical bytes (all of them), the allocation padding past them is zeroed here.
    fn block_buf(
        &mut self,
        lsize: u32,
        fill: impl FnOnce(&mut [u8]) -> Result<(), PoolError>,
    ) -> Result<IoBuf, PoolError> {
        let asize = usize::try_from((self.asize_of)(lsize)).unwrap_or(0);
        let lsz = usize::try_from(lsize).unwrap_or(0).min(asize);
        let mut buf = self.bufs.take(asize);
        let r = fill(&mut buf[..lsz]);
        if let Err(e) = r {
            self.bufs.give(buf);
            return Err(e);
        }
        buf[lsz..].fill(0);
        Ok(buf)
    }

    /// Writes `data` (an `lsize`-byte block) as the new version of `old`: in place when `old`
    /// was born in this txg (no committed uberblock can reach it), else at a new place,
    /// freeing `old`.
    fn place(
        &mut self,
        old: BlockPointer,
        data: WriteData,
        level: u8,
        fill: u64,
        lsize: u32,
    ) -> Result<BlockPointer, PoolError> {
        let asize = (self.asize_of)(lsize);
        let dva = match &old {
            BlockPointer::Data(o) if is_synthetic(o) => (self.alloc)(asize)?,
            BlockPointer::Data(o) if o.birth_txg == self.txg && o.dva.asize == asize => o.dva,
            BlockPointer::Data(o) => {
                let dva = (self.alloc)(asize)?;
                self.frees.push(*o);
                dva
            }
            BlockPointer::Hole(_) => (self.alloc)(asize)?,
        };
        let bytes = data.bytes();
        let lsz = usize::try_from(lsize).unwrap_or(0).min(bytes.len());
        let checksum = Checksum::compute(ChecksumAlgo::Crc32c, &bytes[..lsz]);
        let bp = DataPtr {
            dva,
            lsize,
            kind: self.kind,
            level,
            birth_txg: self.txg,
            fill,
            checksum,
        };
        self.writes.push(BlockWrite {
            dva,
            data,
            level,
            bp,
        });
        Ok(BlockPointer::Data(bp))
    }
}

/// A parent made up by [`grow`]: it exists only in memory, nothing to free.
fn is_synthetic(d: &DataPtr) -> bool {
    d.birth_txg == u64::MAX
}

/// Raises the tree to `levels` levels: the old root becomes child 0 of a chain of new indirect
/// blocks. Returns the new root (an in-memory indirect, registered in `extra` so the update
/// can load it) — implemented by synthesising the pointer arrays.
pub fn grow(
    geom: &mut TreeGeom,
    root: BlockPointer,
    levels: u8,
    extra: &mut HashMap<BlockKey, Arc<Indirect>>,
    synth_key: &mut dyn FnMut() -> BlockKey,
) -> Result<BlockPointer, PoolError> {
    let mut root = root;
    while geom.levels < levels {
        if !root.is_hole() {
            // A synthetic parent: a fake key only this update knows; `place` will see a
            // Hole-like old pointer via the Data arm with an impossible birth and allocate.
            let key = synth_key();
            let mut parent = Indirect::empty(usize::try_from(geom.ibs).unwrap_or(0));
            parent.set(0, &root)?;
            extra.insert(key, Arc::new(parent));
            root = BlockPointer::Data(DataPtr {
                dva: key.0,
                lsize: geom.ibs,
                kind: root.kind(),
                level: geom.levels,
                birth_txg: u64::MAX,
                fill: root.fill(),
                checksum: key.1,
            });
        }
        geom.levels += 1;
    }
    Ok(root)
}

/// Walks the data pointers at level 0 reachable from `root` whose block id is >= `from`,
/// for truncation and destruction. `children` returns a loaded indirect block.
pub fn collect_leaves_from(
    geom: &TreeGeom,
    root: &BlockPointer,
    from: u64,
    children: &dyn Fn(&DataPtr) -> Option<Arc<Indirect>>,
    out: &mut Vec<u64>,
) -> Result<(), DataPtr> {
    fn walk(
        geom: &TreeGeom,
        bp: &BlockPointer,
        level: u8,
        base: u64,
        from: u64,
        children: &dyn Fn(&DataPtr) -> Option<Arc<Indirect>>,
        out: &mut Vec<u64>,
    ) -> Result<(), DataPtr> {
        let BlockPointer::Data(d) = bp else {
            return Ok(());
        };
        let span = geom.span(level);
        if base + span <= from {
            return Ok(());
        }
        if level == 0 {
            out.push(base);
            return Ok(());
        }
        let c = children(d).ok_or(*d)?;
        let child_span = geom.span(level - 1);
        for (i, child) in c.iter().enumerate() {
            // A slot that does not decode cannot be walked: report its parent.
            let child = child.map_err(|_| *d)?;
            let cb = base + child_span * u64::try_from(i).unwrap_or(0);
            walk(geom, &child, level - 1, cb, from, children, out)?;
        }
        Ok(())
    }
    walk(geom, root, geom.levels - 1, 0, from, children, out)
}

#[cfg(test)]
#[path = "objtree_tests.rs"]
mod tests;
