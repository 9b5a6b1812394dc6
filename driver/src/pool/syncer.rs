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

use ringpool_ondisk::blkptr::{BlockPointer, Dva};
use ringpool_ondisk::checksum::{Checksum, ChecksumAlgo};
use ringpool_ondisk::label::PoolState;
use ringpool_ondisk::object::{Bonus, ObjectFlags, ObjectRecord, ObjectType};
use ringpool_ondisk::space_map::SpaceMapHeader;
use ringpool_ondisk::uberblock::Uberblock;

use super::deferred;
use super::directory::Directory;
use super::error::{PoolError, Result};
use super::objtree::{BlockKey, Change};
use super::shared::Shared;
use super::volume::VolumeInner;

mod blockwrite;
mod bufpool;
mod commit;
mod spacemap;
mod tree;

pub(crate) use bufpool::BufPool;
use commit::{commit, sync_root};
pub(crate) use commit::{decode_root_block, guid_sum, label_header, read_objects, write_labels};
use spacemap::checkpoint_sm;
pub(crate) use spacemap::{read_space_map, sm_append, SmTail};
use tree::{geom_of, obj_name};
pub(crate) use tree::{
    leaf_positions, object_of, read_ms_array, read_object_bytes, update_tree, walk_tree,
};

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
    /// Write buffers of tree blocks, reused from txg to txg.
    pub(crate) bufs: BufPool,
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
            bufs: BufPool::default(),
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

/// Marks an object for destruction in this txg (its blocks are freed in pass 1).
pub(crate) fn destroy_object(st: &mut SyncState, obj: u64) {
    if let Some(r) = st.objects.get_mut(&obj) {
        r.flags = r.flags.with(ObjectFlags::DESTROYING);
    }
    st.destroying.push(obj);
}
