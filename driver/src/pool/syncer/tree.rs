//! Tree maintenance in syncing context: applying a txg's changes to an object's tree (load
//! the paths, rebuild, write, free), and the walks that read whole trees back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ringpool_ondisk::blkptr::{BlockPointer, DataPtr};
use ringpool_ondisk::object::{ObjectRecord, ObjectType};

use super::super::deferred::free_in_sync;
use super::super::error::{PoolError, Result};
use super::super::indirect::Indirect;
use super::super::join::join_all;
use super::super::objtree::{grow, paths_to_load, BlockKey, Change, TreeGeom, TreeUpdate};
use super::super::shared::Shared;
use super::blockwrite::write_blocks;
use super::{SyncState, DIRECTORY_OBJECT};

pub(super) fn obj_name(obj: u64) -> String {
    match obj {
        0 => "root object set".into(),
        DIRECTORY_OBJECT => "pool directory".into(),
        n => format!("object {n}"),
    }
}

pub(super) fn geom_of(rec: &ObjectRecord) -> TreeGeom {
    TreeGeom {
        levels: rec.levels.max(1),
        ibs: rec.indirect_block_size,
        bs: rec.data_block_size,
    }
}

/// Loads the indirect blocks on the paths of `ids` (level by level, concurrently).
async fn preload(
    shared: &Shared,
    name: &str,
    geom: &TreeGeom,
    root: &BlockPointer,
    ids: &[u64],
    loaded: &mut HashMap<BlockKey, Arc<Indirect>>,
) -> Result<()> {
    loop {
        let need = paths_to_load(geom, root, ids, loaded)?;
        if need.is_empty() {
            return Ok(());
        }
        for chunk in need.chunks(64) {
            let futs = chunk.iter().map(|d| shared.load_indirect(d, name, 0));
            let res = join_all(futs).await;
            for (d, r) in chunk.iter().zip(res) {
                loaded.insert(super::super::objtree::key_of(d), r?);
            }
        }
    }
}

/// Applies `changes` to a tree: load, compute, write, free. Returns the new root and shape.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_tree(
    shared: &Shared,
    st: &mut SyncState,
    name: &str,
    kind: ObjectType,
    geom: TreeGeom,
    root: BlockPointer,
    changes: &[(u64, Change)],
    txg: u64,
) -> Result<(BlockPointer, TreeGeom)> {
    let Some(max) = changes.last().map(|c| c.0) else {
        return Ok((root, geom));
    };
    let mut geom = geom;
    let mut loaded = HashMap::new();
    let mut root = root;
    if max >= geom.capacity_blocks() {
        let want = geom.levels_for(max + 1);
        root = grow(&mut geom, root, want, &mut loaded, &mut || st.synth_key())?;
    }
    let ids: Vec<u64> = changes.iter().map(|c| c.0).collect();
    preload(shared, name, &geom, &root, &ids, &mut loaded).await?;
    // Every loaded block is on a changed path, so this update replaces it (new place, or new
    // contents in place) and its cache entry would only wait for eviction. Dropping the
    // entries now leaves `loaded` the only owner, so the update edits the pointer arrays in
    // place instead of copying them (a reader still holding one gets a copy made). A reader
    // that misses one of them reads the block from the device, as after an eviction.
    for key in loaded.keys() {
        shared.cache.remove(key);
    }
    let mut alloc = |asize: u32| shared.alloc_meta(asize, txg);
    let asize_of = |l: u32| shared.asize(l);
    let mut up = TreeUpdate {
        bufs: &mut st.bufs,
        txg,
        kind,
        loaded: &mut loaded,
        alloc: &mut alloc,
        asize_of: &asize_of,
        frees: Vec::new(),
        writes: Vec::new(),
        new_indirect: Vec::new(),
    };
    let new_root = up.apply(&geom, root, changes)?;
    let TreeUpdate {
        frees,
        writes,
        new_indirect,
        ..
    } = up;
    if !writes.is_empty() {
        st.wrote = true;
    }
    write_blocks(shared, &mut st.bufs, writes).await?;
    for (k, v) in new_indirect {
        shared
            .cache
            .insert(k, v, usize::try_from(geom.ibs).unwrap_or(0));
    }
    for f in frees {
        free_in_sync(shared, st, &f.dva, f.birth_txg, txg)?;
    }
    Ok((new_root, geom))
}

/// Visits every block pointer (data and indirect) reachable from `root` with the id of the
/// first data block it covers, level by level; the indirect blocks of a level are loaded
/// concurrently, 64 at a time. Holes are skipped.
async fn visit_tree(
    shared: &Shared,
    name: &str,
    geom: &TreeGeom,
    root: &BlockPointer,
    mut visit: impl FnMut(u64, &DataPtr),
) -> Result<()> {
    let mut frontier: Vec<(DataPtr, u64)> = root.data().map(|d| vec![(*d, 0)]).unwrap_or_default();
    let bs = u64::from(geom.bs);
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for (d, base) in &frontier {
            visit(*base, d);
        }
        frontier.retain(|(d, _)| d.level > 0);
        for chunk in frontier.chunks(64) {
            let futs = chunk
                .iter()
                .map(|(d, base)| shared.load_indirect(d, name, base * bs));
            let res = join_all(futs).await;
            for ((d, base), r) in chunk.iter().zip(res) {
                let children = r?;
                let span = geom.span(d.level - 1);
                for (i, c) in children.iter().enumerate() {
                    if let Some(cd) = c?.data() {
                        next.push((*cd, base + span * u64::try_from(i).unwrap_or(0)));
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(())
}

/// Every block pointer (data and indirect) reachable from `root`, with its level; for
/// destruction and verification. Holes are skipped.
pub(crate) async fn walk_tree(
    shared: &Shared,
    name: &str,
    geom: &TreeGeom,
    root: &BlockPointer,
    out: &mut Vec<DataPtr>,
) -> Result<()> {
    visit_tree(shared, name, geom, root, |_, d| out.push(*d)).await
}

/// Reads bytes `[0, len)` of an object.
pub(crate) async fn read_object_bytes(
    shared: &Shared,
    name: &str,
    rec: &ObjectRecord,
    len: u64,
) -> Result<Vec<u8>> {
    let geom = geom_of(rec);
    let bs = u64::from(rec.data_block_size);
    let nblocks = len.div_ceil(bs);
    let mut out = vec![0u8; usize::try_from(nblocks * bs).unwrap_or(0)];
    let positions = leaf_positions(shared, name, &geom, &rec.roots[0]).await?;
    for chunk in positions.chunks(64) {
        let futs = chunk
            .iter()
            .filter(|(blk, _)| *blk < nblocks)
            .map(|(blk, d)| async move { (*blk, shared.read_verified(d, name, blk * bs).await) });
        for (blk, r) in join_all(futs).await {
            let data = r?;
            let s = usize::try_from(blk * bs).unwrap_or(0);
            let n = data.len().min(usize::try_from(bs).unwrap_or(0));
            out[s..s + n].copy_from_slice(&data[..n]);
        }
    }
    out.truncate(usize::try_from(len).unwrap_or(0));
    Ok(out)
}

/// Object `obj` of a committed state; a missing one is corruption of `what` (e.g. "volume
/// 'v'"), since a directory or array that names it was read and verified.
pub(crate) fn object_of(
    objects: &BTreeMap<u64, ObjectRecord>,
    obj: u64,
    what: impl FnOnce() -> String,
) -> Result<&ObjectRecord> {
    objects.get(&obj).ok_or_else(|| PoolError::Corrupt {
        object: what(),
        offset: 0,
        reason: format!("object {obj} missing"),
    })
}

/// The space-map object numbers stored in device `di`'s metaslab array object `ms_array`
/// (one little-endian u64 per metaslab).
pub(crate) async fn read_ms_array(
    shared: &Shared,
    objects: &BTreeMap<u64, ObjectRecord>,
    di: usize,
    ms_array: u64,
) -> Result<Vec<u64>> {
    let arr = object_of(objects, ms_array, || format!("device {di} metaslab array"))?;
    let bytes = read_object_bytes(shared, "metaslab array", arr, arr.length).await?;
    Ok(bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .collect())
}

/// (block id, pointer) of every data block of a tree.
pub(crate) async fn leaf_positions(
    shared: &Shared,
    name: &str,
    geom: &TreeGeom,
    root: &BlockPointer,
) -> Result<Vec<(u64, DataPtr)>> {
    let mut out = Vec::new();
    visit_tree(shared, name, geom, root, |base, d| {
        if d.level == 0 {
            out.push((base, *d));
        }
    })
    .await?;
    out.sort_unstable_by_key(|(b, _)| *b);
    Ok(out)
}
