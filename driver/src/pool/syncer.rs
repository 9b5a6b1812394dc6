//! Syncing context: the state only the txg sync thread mutates, sync tasks, and the sync of
//! one txg (passes until convergence, then the commit of DESIGN.md §3).
//!
//! Pass 1: early sync tasks (before any free of the txg is routed), the volumes' overlays
//! folded into their trees, the other sync tasks, object destruction. Every pass: the
//! directory, dirty metadata objects, the root object set and its block; then the allocator's
//! metaslab sync, whose records are appended to the space-map objects — which dirties them for
//! the next pass. From pass 2 on, blocks born in this txg are rewritten in place, so passes stop
//! allocating and the loop ends when a metaslab sync produces nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ringpool_alloc::{SmAction as AAction, SmRecord as ARecord};
use ringpool_ondisk::blkptr::{BlockPointer, DataPtr, Dva};
use ringpool_ondisk::checksum::{Checksum, ChecksumAlgo};
use ringpool_ondisk::label::{LabelHeader, PoolState};
use ringpool_ondisk::object::{
    decode_object_block, encode_object_block, Bonus, ObjectFlags, ObjectRecord, ObjectType,
    OBJECT_RECORD_SIZE,
};
use ringpool_ondisk::space_map::{
    SmAction, SmDebug, SpaceMapEncoder, SpaceMapEntry, SpaceMapHeader, SpaceMapIter,
};
use ringpool_ondisk::uberblock::Uberblock;

use super::deferred::{self, free_in_sync};
use super::directory::Directory;
use super::error::{PoolError, Result};
use super::join::{join_all, try_join_chunks};
use super::objtree::{grow, paths_to_load, BlockKey, Change, TreeGeom, TreeUpdate};
use super::shared::Shared;
use super::vdev::Vdev;
use super::volume::VolumeInner;

/// Object number of the pool directory.
pub const DIRECTORY_OBJECT: u64 = 1;
/// First object number handed out to other objects.
pub const FIRST_FREE_OBJECT: u64 = 2;
/// Indirect block size of every object.
pub const INDIRECT_BLOCK_SIZE: u32 = 16 * 1024;
/// Data block size of the root object set (32 records per block).
pub const OBJSET_BLOCK_SIZE: u32 = 16 * 1024;
/// Data block size of metaslab space maps.
pub const SM_BLOCK_SIZE: u32 = 16 * 1024;
/// Data block size of checkpoint space maps.
pub const CKPT_SM_BLOCK_SIZE: u32 = 128 * 1024;
/// Data block size of the directory and u64 arrays.
pub const META_BLOCK_SIZE: u32 = 16 * 1024;
/// Size of the block the uberblock points to (holds the root object set's record).
pub const ROOT_BLOCK_SIZE: u32 = 4096;
/// Give up (and suspend the pool) if a txg needs more passes than this.
const MAX_PASSES: u32 = 64;

/// A sync task: runs in syncing context of the txg it was assigned to.
pub type SyncTask = Box<dyn FnOnce(&mut SyncCtx<'_>) -> Result<()> + Send>;

/// Now, in UTC seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writer state of one space-map object.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmTail {
    /// Bytes of the last, partial block (what precedes the next append in that block).
    pub tail: Vec<u8>,
}

/// Label-level facts the sync thread rewrites when the configuration changes.
#[derive(Debug, Clone)]
pub(crate) struct LabelInfo {
    pub pool_name: String,
    pub state: PoolState,
    pub host: ringpool_ondisk::label::HostInfo,
    pub creation_time: u64,
    pub config_txg: u64,
}

/// Everything the sync thread owns.
#[derive(Debug)]
pub struct SyncState {
    pub(crate) objects: BTreeMap<u64, ObjectRecord>,
    pub(crate) meta: ObjectRecord,
    pub(crate) root_bp: BlockPointer,
    pub(crate) dirty_records: BTreeSet<u64>,
    pub(crate) dirty_data: BTreeMap<u64, BTreeMap<u64, Change>>,
    pub(crate) dir: Directory,
    pub(crate) dir_dirty: bool,
    pub(crate) sm_tails: HashMap<u64, SmTail>,
    /// dev -> metaslab -> space-map object.
    pub(crate) ms_objects: Vec<Vec<u64>>,
    pub(crate) destroying: Vec<u64>,
    /// Destroyed volumes whose late overlay entries must still be freed: (volume, last txg).
    pub(crate) zombies: Vec<(Arc<VolumeInner>, u64)>,
    pub(crate) ub: Uberblock,
    /// Checkpoint txg to stamp into the next uberblock (a rewind keeps it once).
    pub(crate) ub_checkpoint_txg: u64,
    pub(crate) labels_dirty: bool,
    /// Something was written in the txg being synced (else it is a no-op txg).
    pub(crate) wrote: bool,
    pub(crate) label: LabelInfo,
    /// Sync pass of the txg being synced (1-based; 0 between txgs).
    pub(crate) pass: u32,
    /// Frees deferred from late passes of the txg being synced (see [`super::deferred`]).
    pub(crate) defer_next: Vec<super::deferred::DeferredFree>,
    /// Frees the last committed txg deferred: issued in pass 1 of the next one.
    pub(crate) defer_prev: Vec<super::deferred::DeferredFree>,
    /// The deferred list changed since it was last written into its object.
    pub(crate) defer_dirty: bool,
    /// Metaslabs (device, index) whose space map was appended to in the txg being synced.
    pub(crate) ms_synced: std::collections::HashSet<(u32, u64)>,
    synth: u64,
}

impl SyncState {
    pub(crate) fn new(
        objects: BTreeMap<u64, ObjectRecord>,
        meta: ObjectRecord,
        root_bp: BlockPointer,
        dir: Directory,
        ms_objects: Vec<Vec<u64>>,
        ub: Uberblock,
        label: LabelInfo,
    ) -> SyncState {
        SyncState {
            objects,
            meta,
            root_bp,
            dirty_records: BTreeSet::new(),
            dirty_data: BTreeMap::new(),
            dir,
            dir_dirty: false,
            sm_tails: HashMap::new(),
            ms_objects,
            destroying: Vec::new(),
            zombies: Vec::new(),
            ub,
            ub_checkpoint_txg: 0,
            labels_dirty: false,
            wrote: false,
            label,
            pass: 0,
            defer_next: Vec::new(),
            defer_prev: Vec::new(),
            defer_dirty: false,
            ms_synced: Default::default(),
            synth: 0,
        }
    }

    /// The directory (read).
    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// The directory, marked dirty.
    pub fn directory_mut(&mut self) -> &mut Directory {
        self.dir_dirty = true;
        &mut self.dir
    }

    /// The last committed uberblock.
    pub fn last_uberblock(&self) -> &Uberblock {
        &self.ub
    }

    /// Allocates an object number and installs `rec`.
    pub(crate) fn new_object(&mut self, rec: ObjectRecord) -> u64 {
        let id = self.dir.next_object.max(FIRST_FREE_OBJECT);
        self.dir.next_object = id + 1;
        self.dir_dirty = true;
        self.objects.insert(id, rec);
        self.dirty_records.insert(id);
        id
    }

    /// Replaces the whole content of object `obj` with `bytes` (blocks of the object's size).
    pub(crate) fn set_object_bytes(&mut self, obj: u64, bytes: &[u8]) -> Result<()> {
        let rec = self
            .objects
            .get_mut(&obj)
            .ok_or_else(|| PoolError::Internal(format!("object {obj} missing")))?;
        let bs = usize::try_from(rec.data_block_size).unwrap_or(1);
        let old_blocks = rec.length.div_ceil(u64::from(rec.data_block_size));
        let new_blocks = u64::try_from(bytes.len().div_ceil(bs)).unwrap_or(0);
        rec.length = u64::try_from(bytes.len()).unwrap_or(0);
        let changes = self.dirty_data.entry(obj).or_default();
        for (i, chunk) in bytes.chunks(bs).enumerate() {
            let mut b = chunk.to_vec();
            b.resize(bs, 0);
            changes.insert(u64::try_from(i).unwrap_or(0), Change::Data(Arc::new(b)));
        }
        for blk in new_blocks..old_blocks {
            changes.insert(blk, Change::Ptr(BlockPointer::EMPTY));
        }
        self.dirty_records.insert(obj);
        Ok(())
    }

    fn synth_key(&mut self) -> BlockKey {
        self.synth += 1;
        (
            Dva {
                device: u32::MAX,
                offset: self.synth,
                asize: 0,
            },
            Checksum {
                algo: ChecksumAlgo::Crc32c,
                value: u128::from(self.synth),
            },
        )
    }
}

/// What a sync task sees.
pub struct SyncCtx<'a> {
    pub(crate) st: &'a mut SyncState,
    pub(crate) shared: &'a Arc<Shared>,
    /// The txg being synced.
    pub txg: u64,
}

impl std::fmt::Debug for SyncCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCtx").field("txg", &self.txg).finish()
    }
}

impl SyncCtx<'_> {
    /// The sync thread's state.
    pub fn state(&mut self) -> &mut SyncState {
        self.st
    }

    /// The allocator.
    pub fn class(&self) -> &ringpool_alloc::MetaslabClass {
        &self.shared.class
    }

    /// Appends a history record.
    pub fn log(&mut self, text: impl Into<String>) {
        let txg = self.txg;
        self.st.directory_mut().log(now_secs(), txg, text);
    }
}

fn obj_name(obj: u64) -> String {
    match obj {
        0 => "root object set".into(),
        DIRECTORY_OBJECT => "pool directory".into(),
        n => format!("object {n}"),
    }
}

fn geom_of(rec: &ObjectRecord) -> TreeGeom {
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
    loaded: &mut HashMap<BlockKey, Arc<Vec<BlockPointer>>>,
) -> Result<()> {
    loop {
        let need = paths_to_load(geom, root, ids, loaded);
        if need.is_empty() {
            return Ok(());
        }
        for chunk in need.chunks(64) {
            let futs = chunk.iter().map(|d| shared.load_indirect(d, name, 0));
            let res = join_all(futs).await;
            for (d, r) in chunk.iter().zip(res) {
                loaded.insert(super::objtree::key_of(d), r?);
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
        root = grow(&mut geom, root, want, &mut loaded, &mut || st.synth_key());
    }
    let ids: Vec<u64> = changes.iter().map(|c| c.0).collect();
    preload(shared, name, &geom, &root, &ids, &mut loaded).await?;
    let mut alloc = |asize: u32| shared.alloc_meta(asize, txg);
    let asize_of = |l: u32| shared.asize(l);
    let mut up = TreeUpdate {
        txg,
        kind,
        loaded: &loaded,
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
    let mut futs = Vec::with_capacity(writes.len());
    for w in &writes {
        let vdev = shared.vdev(w.dva.device)?;
        let buf = crate::io::buf::IoBuf::from_slice(&w.data);
        let off = w.dva.offset;
        futs.push(async move { vdev.write(off, buf).await });
    }
    if !writes.is_empty() {
        st.wrote = true;
    }
    try_join_chunks(futs, 64).await?;
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

/// Every block pointer (data and indirect) reachable from `root`, with its level; for
/// destruction and verification. Holes are skipped.
pub(crate) async fn walk_tree(
    shared: &Shared,
    name: &str,
    geom: &TreeGeom,
    root: &BlockPointer,
    out: &mut Vec<DataPtr>,
) -> Result<()> {
    let mut frontier: Vec<(BlockPointer, u64)> = vec![(*root, 0)];
    let bs = u64::from(geom.bs);
    while !frontier.is_empty() {
        let mut next = Vec::new();
        let batch: Vec<(DataPtr, u64)> = frontier
            .iter()
            .filter_map(|(bp, base)| bp.data().map(|d| (*d, *base)))
            .collect();
        for (d, _) in &batch {
            out.push(*d);
        }
        let indirect: Vec<(DataPtr, u64)> =
            batch.into_iter().filter(|(d, _)| d.level > 0).collect();
        for chunk in indirect.chunks(64) {
            let futs = chunk
                .iter()
                .map(|(d, base)| shared.load_indirect(d, name, base * bs));
            let res = join_all(futs).await;
            for ((d, base), r) in chunk.iter().zip(res) {
                let children = r?;
                let span = geom.span(d.level - 1);
                for (i, c) in children.iter().enumerate() {
                    if !c.is_hole() {
                        next.push((*c, base + span * u64::try_from(i).unwrap_or(0)));
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(())
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

/// (block id, pointer) of every data block of a tree.
pub(crate) async fn leaf_positions(
    shared: &Shared,
    name: &str,
    geom: &TreeGeom,
    root: &BlockPointer,
) -> Result<Vec<(u64, DataPtr)>> {
    let mut out = Vec::new();
    let mut frontier: Vec<(DataPtr, u64)> = root.data().map(|d| vec![(*d, 0)]).unwrap_or_default();
    let bs = u64::from(geom.bs);
    while !frontier.is_empty() {
        let mut next = Vec::new();
        let (leaves, ind): (Vec<_>, Vec<_>) = frontier.into_iter().partition(|(d, _)| d.level == 0);
        for (d, base) in leaves {
            out.push((base, d));
        }
        for chunk in ind.chunks(64) {
            let futs = chunk
                .iter()
                .map(|(d, base)| shared.load_indirect(d, name, base * bs));
            let res = join_all(futs).await;
            for ((d, base), r) in chunk.iter().zip(res) {
                let children = r?;
                let span = geom.span(d.level - 1);
                for (i, c) in children.iter().enumerate() {
                    if let Some(cd) = c.data() {
                        next.push((*cd, base + span * u64::try_from(i).unwrap_or(0)));
                    }
                }
            }
        }
        frontier = next;
    }
    out.sort_unstable_by_key(|(b, _)| *b);
    Ok(out)
}

/// Syncs one txg. On error the pool must be suspended (the caller does it).
pub(crate) async fn sync_txg(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
    // Tasks assigned to this txg (or earlier ones that raced the close).
    let mut tasks = {
        let mut q = shared.tasks.lock();
        let (now, later): (Vec<_>, Vec<_>) = q.drain(..).partition(|t| t.txg <= txg);
        *q = later;
        now
    };
    tasks.sort_by_key(|t| !t.early);
    let (early, normal): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.early);
    let started = std::time::Instant::now();
    st.pass = 1;
    for t in early {
        let mut ctx = SyncCtx { st, shared, txg };
        let r = (t.task)(&mut ctx);
        *t.result.lock() = Some(r);
    }
    deferred::free_previous(shared, st, txg)?;
    sync_volumes(shared, st, txg).await?;
    shared.free_overwritten(txg)?;
    for t in normal {
        let mut ctx = SyncCtx { st, shared, txg };
        let r = (t.task)(&mut ctx);
        *t.result.lock() = Some(r);
    }
    destroy_objects(shared, st, txg).await?;

    let mut pass: u32 = 1;
    let mut condensed = 0u64;
    loop {
        st.pass = pass;
        deferred::write_list(st, txg)?;
        if st.dir_dirty {
            st.dir_dirty = false;
            let bytes = st.dir.encode();
            st.set_object_bytes(DIRECTORY_OBJECT, &bytes)?;
        }
        sync_dirty_objects(shared, st, txg).await?;
        sync_root(shared, st, txg).await?;
        let out = shared.class.sync(txg)?;
        if out.devices.is_empty() && !st.defer_dirty && !st.dir_dirty {
            break;
        }
        for dev in out.devices {
            for (ms, o) in dev.metaslabs {
                condensed += u64::from(o.condensed);
                st.ms_synced.insert((dev.dev, ms));
                let obj = st
                    .ms_objects
                    .get(dev.dev as usize)
                    .and_then(|v| v.get(usize::try_from(ms).unwrap_or(usize::MAX)))
                    .copied()
                    .ok_or_else(|| {
                        PoolError::Internal(format!("no space map for metaslab {}/{ms}", dev.dev))
                    })?;
                let vdev = shared.vdev(dev.dev)?;
                let (start, _) = vdev.layout.metaslab_range(vdev.ms_shift, ms)?;
                sm_append(
                    shared,
                    st,
                    obj,
                    &vdev,
                    start,
                    &o.sm_records,
                    o.condensed,
                    txg,
                    pass,
                )?;
                let hist =
                    shared
                        .class
                        .with_metaslab(dev.dev, usize::try_from(ms).unwrap_or(0), |m| {
                            let mut h = SpaceMapHeader::default();
                            m.walk_free(|_, l| h.histogram_add(l, vdev.ashift));
                            h.histogram
                        })?;
                if let Some(Bonus::SpaceMap(h)) = st.objects.get_mut(&obj).map(|r| &mut r.bonus) {
                    h.histogram = hist;
                }
            }
            if !dev.ckpt_records.is_empty() {
                let vdev = shared.vdev(dev.dev)?;
                let obj = checkpoint_sm(st, dev.dev, txg)?;
                sm_append(
                    shared,
                    st,
                    obj,
                    &vdev,
                    0,
                    &dev.ckpt_records,
                    false,
                    txg,
                    pass,
                )?;
            }
        }
        pass += 1;
        if pass > MAX_PASSES {
            return Err(PoolError::Internal(format!(
                "txg {txg} did not converge in {MAX_PASSES} passes"
            )));
        }
    }
    // Every txg gets its uberblock (a txg that changed nothing keeps the same root), so the
    // last committed uberblock is always the last synced txg (the checkpoint relies on it).
    commit(shared, st, txg).await?;
    st.wrote = false;
    st.pass = 0;
    st.ms_synced.clear();
    let deferred_now = u64::try_from(st.defer_next.len()).unwrap_or(u64::MAX);
    deferred::rotate(st);
    shared.class.sync_done(txg)?;
    shared
        .sync_stats
        .lock()
        .record(pass, deferred_now, condensed, started.elapsed());
    Ok(())
}

/// The device's checkpoint space map object, created on first use.
fn checkpoint_sm(st: &mut SyncState, dev: u32, txg: u64) -> Result<u64> {
    let di = dev as usize;
    if let Some(d) = st.dir.devices.get(di) {
        if d.checkpoint_sm != 0 {
            return Ok(d.checkpoint_sm);
        }
    }
    let mut rec = ObjectRecord::new(
        ObjectType::SpaceMap,
        CKPT_SM_BLOCK_SIZE,
        INDIRECT_BLOCK_SIZE,
        txg,
    )?;
    rec.bonus = Bonus::SpaceMap(Box::default());
    let obj = st.new_object(rec);
    let d = st
        .dir
        .devices
        .get_mut(di)
        .ok_or_else(|| PoolError::Internal(format!("device {dev} not in the directory")))?;
    d.checkpoint_sm = obj;
    st.dir_dirty = true;
    Ok(obj)
}

/// Appends (or, when `condensed`, replaces the map with) `records` to space map `obj`, whose
/// region starts at device byte `region_start`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sm_append(
    _shared: &Shared,
    st: &mut SyncState,
    obj: u64,
    vdev: &Vdev,
    region_start: u64,
    records: &[ARecord],
    condensed: bool,
    txg: u64,
    pass: u32,
) -> Result<()> {
    let shift = vdev.ashift;
    let rec = st
        .objects
        .get(&obj)
        .ok_or_else(|| PoolError::Internal(format!("space map object {obj} missing")))?;
    let bs = rec.data_block_size;
    let mut header = match &rec.bonus {
        Bonus::SpaceMap(h) => **h,
        _ => SpaceMapHeader::default(),
    };
    let old_len = header.length;
    if condensed {
        header.length = 0;
        header.alloc = 0;
    }
    let base = header.length;
    let mut enc = SpaceMapEncoder::new(usize::try_from(bs).unwrap_or(0), base)?;
    let sync_pass = u16::try_from(pass).unwrap_or(u16::MAX);
    for action in [AAction::Alloc, AAction::Free] {
        let mut first = true;
        for r in records.iter().filter(|r| r.action == action) {
            let a = match action {
                AAction::Alloc => SmAction::Alloc,
                AAction::Free => SmAction::Free,
            };
            if first {
                enc.debug(SmDebug {
                    action: a,
                    sync_pass,
                    txg,
                })?;
                first = false;
            }
            let off = (r.start - region_start) >> shift;
            let run = r.len >> shift;
            enc.entry(SpaceMapEntry::new(a, off, run))?;
        }
    }
    header.apply(&enc, shift)?;
    let tail = if condensed {
        Vec::new()
    } else {
        st.sm_tails
            .get(&obj)
            .map(|t| t.tail.clone())
            .unwrap_or_default()
    };
    let bsu = usize::try_from(bs).unwrap_or(1);
    let mut full = tail;
    full.extend_from_slice(enc.bytes());
    let first_blk = base / u64::from(bs);
    let changes = st.dirty_data.entry(obj).or_default();
    let mut new_tail = Vec::new();
    for (i, chunk) in full.chunks(bsu).enumerate() {
        let mut b = chunk.to_vec();
        if chunk.len() < bsu {
            new_tail = chunk.to_vec();
        }
        b.resize(bsu, 0);
        changes.insert(
            first_blk + u64::try_from(i).unwrap_or(0),
            Change::Data(Arc::new(b)),
        );
    }
    if condensed {
        let new_blocks = header.length.div_ceil(u64::from(bs));
        let old_blocks = old_len.div_ceil(u64::from(bs));
        for blk in new_blocks..old_blocks {
            changes.insert(blk, Change::Ptr(BlockPointer::EMPTY));
        }
    }
    st.sm_tails.insert(obj, SmTail { tail: new_tail });
    let rec = st
        .objects
        .get_mut(&obj)
        .ok_or_else(|| PoolError::Internal(format!("space map object {obj} missing")))?;
    rec.length = header.length;
    rec.bonus = Bonus::SpaceMap(Box::new(header));
    st.dirty_records.insert(obj);
    Ok(())
}

/// Reads a space map object and returns its records (absolute device offsets) and tail.
pub(crate) async fn read_space_map(
    shared: &Shared,
    rec: &ObjectRecord,
    name: &str,
    region_start: u64,
    shift: u8,
    region_len: u64,
) -> Result<(Vec<ARecord>, SmTail)> {
    let header = match &rec.bonus {
        Bonus::SpaceMap(h) => **h,
        _ => SpaceMapHeader::default(),
    };
    let bytes = read_object_bytes(shared, name, rec, header.length).await?;
    let bs = usize::try_from(rec.data_block_size).unwrap_or(1);
    let corrupt = |e: ringpool_ondisk::error::OnDiskError| PoolError::Corrupt {
        object: name.to_string(),
        offset: 0,
        reason: e.to_string(),
    };
    let it = SpaceMapIter::new(&bytes, bs, 0)
        .map_err(corrupt)?
        .with_region(region_len >> shift);
    let mut out = Vec::new();
    for e in it {
        let e = e.map_err(corrupt)?;
        let start = region_start + (e.entry.offset << shift);
        let len = e.entry.run << shift;
        out.push(match e.entry.action {
            SmAction::Alloc => ARecord::alloc(start, len),
            SmAction::Free => ARecord::free(start, len),
        });
    }
    let whole = (bytes.len() / bs) * bs;
    let tail = SmTail {
        tail: bytes[whole..].to_vec(),
    };
    Ok((out, tail))
}

async fn sync_volumes(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
    let vols: Vec<Arc<VolumeInner>> = shared.volumes.read().values().cloned().collect();
    for v in vols {
        let changes = v.overlay_of(txg);
        if changes.is_empty() {
            continue;
        }
        let rec =
            st.objects.get(&v.object).cloned().ok_or_else(|| {
                PoolError::Internal(format!("volume object {} missing", v.object))
            })?;
        let ch: Vec<(u64, Change)> = changes
            .into_iter()
            .map(|(b, bp)| (b, Change::Ptr(bp)))
            .collect();
        let name = format!("volume '{}' (object {})", v.name, v.object);
        let (root, geom) = update_tree(
            shared,
            st,
            &name,
            ObjectType::VolumeData,
            geom_of(&rec),
            rec.roots[0],
            &ch,
            txg,
        )
        .await?;
        let mut rec = rec;
        rec.roots[0] = root;
        rec.levels = geom.levels;
        if let Some((last, _)) = ch.last() {
            rec.max_block_id = rec.max_block_id.max(*last);
        }
        st.objects.insert(v.object, rec);
        st.dirty_records.insert(v.object);
        v.install(txg, super::volume::VolMap { root, geom });
    }
    // Writes that raced a destroy: free what they published.
    let mut keep = Vec::new();
    for (v, until) in std::mem::take(&mut st.zombies) {
        for (_, bp) in v.overlay_of(txg) {
            if let BlockPointer::Data(d) = bp {
                shared.free(&d.dva, d.birth_txg, txg)?;
            }
        }
        if txg < until {
            keep.push((v, until));
        }
    }
    st.zombies = keep;
    Ok(())
}

async fn destroy_objects(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
    for obj in std::mem::take(&mut st.destroying) {
        let Some(rec) = st.objects.get(&obj).cloned() else {
            continue;
        };
        let mut all = Vec::new();
        walk_tree(
            shared,
            &obj_name(obj),
            &geom_of(&rec),
            &rec.roots[0],
            &mut all,
        )
        .await?;
        for d in all {
            shared.free(&d.dva, d.birth_txg, txg)?;
        }
        st.objects.remove(&obj);
        st.dirty_data.remove(&obj);
        st.sm_tails.remove(&obj);
        st.dirty_records.insert(obj);
    }
    Ok(())
}

async fn sync_dirty_objects(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
    let dirty = std::mem::take(&mut st.dirty_data);
    for (obj, changes) in dirty {
        let Some(rec) = st.objects.get(&obj).cloned() else {
            continue;
        };
        let ch: Vec<(u64, Change)> = changes.into_iter().collect();
        let (root, geom) = update_tree(
            shared,
            st,
            &obj_name(obj),
            rec.kind,
            geom_of(&rec),
            rec.roots[0],
            &ch,
            txg,
        )
        .await?;
        if let Some(r) = st.objects.get_mut(&obj) {
            r.roots[0] = root;
            r.levels = geom.levels;
            if let Some((last, _)) = ch.last() {
                r.max_block_id = r.max_block_id.max(*last);
            }
        }
        st.dirty_records.insert(obj);
    }
    Ok(())
}

/// Records per block of the root object set.
fn records_per_block() -> u64 {
    u64::from(OBJSET_BLOCK_SIZE) / u64::try_from(OBJECT_RECORD_SIZE).unwrap_or(512)
}

/// Writes the dirty records into the root object set, then the root block.
async fn sync_root(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
    let dirty = std::mem::take(&mut st.dirty_records);
    if !dirty.is_empty() {
        let per = records_per_block();
        let blocks: BTreeSet<u64> = dirty.iter().map(|o| o / per).collect();
        let mut changes = Vec::new();
        for blk in blocks {
            let recs: Vec<Option<ObjectRecord>> = (blk * per..(blk + 1) * per)
                .map(|o| st.objects.get(&o).cloned())
                .collect();
            let mut buf = vec![0u8; usize::try_from(OBJSET_BLOCK_SIZE).unwrap_or(0)];
            encode_object_block(&recs, &mut buf)?;
            changes.push((blk, Change::Data(Arc::new(buf))));
        }
        let meta = st.meta.clone();
        let (root, geom) = update_tree(
            shared,
            st,
            &obj_name(0),
            ObjectType::ObjectSet,
            geom_of(&meta),
            meta.roots[0],
            &changes,
            txg,
        )
        .await?;
        st.meta.roots[0] = root;
        st.meta.levels = geom.levels;
        let maxobj = st.objects.keys().next_back().copied().unwrap_or(0);
        st.meta.max_block_id = maxobj / per;
        st.meta.length = maxobj + 1;
    } else {
        // The root object set did not change: the root block stays.
        return Ok(());
    }
    // The root block: the root object set's record.
    let mut buf = vec![0u8; usize::try_from(ROOT_BLOCK_SIZE).unwrap_or(0)];
    encode_object_block(&[Some(st.meta.clone())], &mut buf)?;
    let asize = shared.asize(ROOT_BLOCK_SIZE);
    let old_root = st.root_bp;
    let dva = match &old_root {
        BlockPointer::Data(d) if d.birth_txg == txg && d.dva.asize == asize => d.dva,
        other => {
            let dva = shared.alloc_meta(asize, txg)?;
            if let BlockPointer::Data(d) = other {
                free_in_sync(shared, st, &d.dva, d.birth_txg, txg)?;
            }
            dva
        }
    };
    let checksum = Checksum::compute(ChecksumAlgo::Crc32c, &buf);
    let mut data = buf;
    data.resize(usize::try_from(asize).unwrap_or(0), 0);
    let vdev = shared.vdev(dva.device)?;
    vdev.write(dva.offset, crate::io::buf::IoBuf::from_slice(&data))
        .await?;
    st.wrote = true;
    st.root_bp = BlockPointer::Data(DataPtr {
        dva,
        lsize: ROOT_BLOCK_SIZE,
        kind: ObjectType::ObjectSet,
        level: 0,
        birth_txg: txg,
        fill: 1,
        checksum,
    });
    Ok(())
}

/// Decodes the root block into the root object set's record.
pub(crate) fn decode_root_block(bytes: &[u8]) -> Result<ObjectRecord> {
    let recs = decode_object_block(bytes)?;
    recs.into_iter()
        .next()
        .flatten()
        .ok_or_else(|| PoolError::Corrupt {
            object: "root block".into(),
            offset: 0,
            reason: "no root object set record".into(),
        })
}

/// Reads every object record of the root object set.
pub(crate) async fn read_objects(
    shared: &Shared,
    meta: &ObjectRecord,
) -> Result<BTreeMap<u64, ObjectRecord>> {
    let geom = geom_of(meta);
    let per = records_per_block();
    let mut out = BTreeMap::new();
    for (blk, d) in leaf_positions(shared, &obj_name(0), &geom, &meta.roots[0]).await? {
        let data = shared
            .read_verified(&d, &obj_name(0), blk * u64::from(meta.data_block_size))
            .await?;
        for (i, r) in decode_object_block(&data)?.into_iter().enumerate() {
            if let Some(r) = r {
                out.insert(blk * per + u64::try_from(i).unwrap_or(0), r);
            }
        }
    }
    Ok(out)
}

/// The label header of `vdev` for the current configuration.
pub(crate) fn label_header(shared: &Shared, st: &SyncState, vdev: &Vdev) -> LabelHeader {
    let vdevs = shared.vdevs.read();
    LabelHeader {
        pool_name: st.label.pool_name.clone(),
        pool_guid: shared.guid(),
        device_guid: vdev.guid,
        device_index: vdev.index,
        devices: vdevs
            .iter()
            .map(|v| ringpool_ondisk::label::DeviceEntry {
                guid: v.guid,
                size: v.layout.device_size(),
                ashift: v.ashift,
                ms_shift: v.ms_shift,
                added_txg: v.added_txg,
            })
            .collect(),
        ashift: vdev.ashift,
        ms_shift: vdev.ms_shift,
        state: st.label.state,
        host: st.label.host.clone(),
        creation_time: st.label.creation_time,
        config_txg: st.label.config_txg,
    }
}

async fn flush_all(vdevs: &[Arc<Vdev>]) -> Result<()> {
    let futs: Vec<_> = vdevs.iter().map(|v| v.flush()).collect();
    try_join_chunks(futs, 64).await
}

/// Writes the label headers of every device: front pair, flush, back pair, flush.
pub(crate) async fn write_labels(shared: &Shared, st: &SyncState) -> Result<()> {
    let vdevs: Vec<Arc<Vdev>> = shared.vdevs.read().clone();
    for pair in [[0usize, 1], [2, 3]] {
        let mut futs = Vec::new();
        for v in &vdevs {
            let h = label_header(shared, st, v);
            for l in pair {
                let v = Arc::clone(v);
                let h = h.clone();
                futs.push(async move { v.write_label_header(l, &h).await });
            }
        }
        try_join_chunks(futs, 64).await?;
        flush_all(&vdevs).await?;
    }
    Ok(())
}

/// Sum of the device GUIDs (wrapping).
pub(crate) fn guid_sum(vdevs: &[Arc<Vdev>]) -> u64 {
    vdevs.iter().fold(0u64, |a, v| a.wrapping_add(v.guid))
}

/// Data and tree blocks -> flush -> uberblock to the front labels -> flush -> back labels ->
/// flush.
async fn commit(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
    let vdevs: Vec<Arc<Vdev>> = shared.vdevs.read().clone();
    flush_all(&vdevs).await?;
    if st.labels_dirty {
        st.label.config_txg = txg;
        write_labels(shared, st).await?;
        st.labels_dirty = false;
    }
    let ub = Uberblock {
        txg,
        guid_sum: guid_sum(&vdevs),
        timestamp: now_secs(),
        checkpoint_txg: st.ub_checkpoint_txg,
        root: st.root_bp,
        pool_guid: shared.guid(),
    };
    for pair in [[0usize, 1], [2, 3]] {
        let mut futs = Vec::new();
        for v in &vdevs {
            for l in pair {
                let v = Arc::clone(v);
                futs.push(async move { v.write_uberblock(l, &ub).await });
            }
        }
        try_join_chunks(futs, 64).await?;
        flush_all(&vdevs).await?;
    }
    st.ub = ub;
    st.ub_checkpoint_txg = 0;
    *shared.last_ub.lock() = Some(ub);
    Ok(())
}

/// Marks an object for destruction in this txg (its blocks are freed in pass 1).
pub(crate) fn destroy_object(st: &mut SyncState, obj: u64) {
    if let Some(r) = st.objects.get_mut(&obj) {
        r.flags = r.flags.with(ObjectFlags::DESTROYING);
    }
    st.destroying.push(obj);
}
