//! Block pointer resolution: which pointer a volume block has now (the open txgs' overlays,
//! newest first, then the committed tree through the block cache), for one block, for a run
//! of blocks (one walk per level-1 block), and which blocks of a range are not holes.

use std::sync::Arc;

use ringpool_ondisk::blkptr::BlockPointer;

use super::super::error::Result;
use super::super::indirect::Indirect;
use super::{VolMap, Volume};

impl Volume {
    /// Current pointer of block `blkid` (overlays, then the committed tree).
    pub(super) async fn lookup(&self, blkid: u64) -> Result<BlockPointer> {
        let map = match self.inner.overlay_or_map(blkid) {
            Ok(bp) => return Ok(bp),
            Err(map) => map,
        };
        self.lookup_tree(&map, blkid).await
    }

    /// Current pointers of blocks `first..=last`, resolved one level-1 block at a time: the
    /// walk down to a level-1 block happens once for all of its blocks in the range (256 with
    /// 16 KiB indirect blocks), whose pointers are then copied out of it in one go, and the
    /// indirect blocks above are reused from the previous walk (neighbours share their
    /// parents). A level-1 block whose blocks of the range are all in the overlays is not
    /// walked at all.
    pub(super) async fn lookup_range(&self, first: u64, last: u64) -> Result<Vec<BlockPointer>> {
        let (overlay, map) = self.inner.overlay_or_map_range(first, last);
        let geom = map.geom;
        if geom.levels < 2 {
            return self.lookup_range_flat(&overlay, &map, first).await;
        }
        let cap = geom.capacity_blocks();
        let fanout = geom.span(1);
        // Per level: (index of the node at that level, its children).
        let mut memo: Vec<Option<(u64, Arc<Indirect>)>> = vec![None; usize::from(geom.levels)];
        let mut out = Vec::with_capacity(overlay.len());
        let mut b = first;
        while b <= last {
            // The blocks of the range under the level-1 block holding `b`.
            let seg_end = ((b / fanout + 1) * fanout).min(last + 1);
            let seg = usize::try_from(seg_end - b).unwrap_or(0);
            let at = out.len();
            if b >= cap || overlay[at..at + seg].iter().all(Option::is_some) {
                out.resize(at + seg, BlockPointer::EMPTY);
            } else {
                let mut bp = map.root;
                let mut level = geom.levels - 1;
                loop {
                    let BlockPointer::Data(d) = bp else {
                        // A hole (or an empty pointer) above level 0 covers the whole segment.
                        out.resize(at + seg, bp);
                        break;
                    };
                    let span = geom.span(level);
                    let node = b / span;
                    let li = usize::from(level);
                    let children = match &memo[li] {
                        Some((n, c)) if *n == node => Arc::clone(c),
                        _ => {
                            let c = self
                                .shared
                                .load_indirect(&d, &self.inner.obj_name, node * span * self.bs())
                                .await?;
                            memo[li] = Some((node, Arc::clone(&c)));
                            c
                        }
                    };
                    let idx = geom.child_index(level, b);
                    if level == 1 {
                        children.extend_range(idx, idx + seg, &mut out)?;
                        break;
                    }
                    bp = children.get(idx)?;
                    level -= 1;
                }
            }
            // Overlay entries (newer than the tree) win.
            for (slot, ov) in out[at..].iter_mut().zip(&overlay[at..at + seg]) {
                if let Some(bp) = ov {
                    *slot = *bp;
                }
            }
            b = seg_end;
        }
        Ok(out)
    }

    /// `lookup_range` for a one-level tree (the root is block 0).
    pub(super) async fn lookup_range_flat(
        &self,
        overlay: &[Option<BlockPointer>],
        map: &VolMap,
        first: u64,
    ) -> Result<Vec<BlockPointer>> {
        let mut out = Vec::with_capacity(overlay.len());
        for (blkid, ov) in (first..).zip(overlay) {
            out.push(match ov {
                Some(bp) => *bp,
                None => self.lookup_tree(map, blkid).await?,
            });
        }
        Ok(out)
    }

    pub(super) async fn lookup_tree(&self, map: &VolMap, blkid: u64) -> Result<BlockPointer> {
        let geom = map.geom;
        if blkid >= geom.capacity_blocks() {
            return Ok(BlockPointer::EMPTY);
        }
        let mut bp = map.root;
        let mut level = geom.levels - 1;
        while level > 0 {
            let BlockPointer::Data(d) = bp else {
                return Ok(bp);
            };
            let first = (blkid / geom.span(level)) * geom.span(level) * self.bs();
            let children = self
                .shared
                .load_indirect(&d, &self.inner.obj_name, first)
                .await?;
            let idx = geom.child_index(level, blkid);
            bp = children.get(idx)?;
            level -= 1;
        }
        Ok(bp)
    }

    /// Block ids in `[lo, hi)` that are not holes (overlays + committed tree).
    pub(super) async fn present_blocks(&self, lo: u64, hi: u64) -> Result<Vec<u64>> {
        let map = *self.inner.map.read();
        let overlay = self.inner.overlay_range(lo, hi);
        let tree = self.tree_leaves(&map, lo, hi).await?;
        let mut set: std::collections::BTreeMap<u64, bool> =
            tree.into_iter().map(|b| (b, true)).collect();
        for (b, bp) in overlay {
            set.insert(b, !bp.is_hole());
        }
        let out: Vec<u64> = set
            .into_iter()
            .filter(|(_, p)| *p)
            .map(|(b, _)| b)
            .collect();
        Ok(out)
    }

    /// Non-hole leaves of the committed tree in `[lo, hi)`.
    pub(super) async fn tree_leaves(&self, map: &VolMap, lo: u64, hi: u64) -> Result<Vec<u64>> {
        let geom = map.geom;
        let hi = hi.min(geom.capacity_blocks());
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        // Frontier of (pointer, level, first block id covered).
        let mut frontier = vec![(map.root, geom.levels - 1, 0u64)];
        while let Some((bp, level, base)) = frontier.pop() {
            let BlockPointer::Data(d) = bp else {
                continue;
            };
            if level == 0 {
                out.push(base);
                continue;
            }
            let children = self
                .shared
                .load_indirect(&d, &self.inner.obj_name, base * self.bs())
                .await?;
            let span = geom.span(level - 1);
            // Push in reverse so blocks come out in ascending order.
            for i in (0..children.len()).rev() {
                let cb = base + span * u64::try_from(i).unwrap_or(0);
                if cb + span <= lo || cb >= hi {
                    continue;
                }
                let c = children.get(i)?;
                if !c.is_hole() {
                    frontier.push((c, level - 1, cb));
                }
            }
        }
        Ok(out)
    }
}
