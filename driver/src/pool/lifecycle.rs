//! Pool lifecycle: options, create, and the helpers create and import share; finding and
//! importing a pool (label scan, best uberblock, load) is in [`import`].

use std::collections::BTreeMap;
use std::sync::Arc;

use ringpool_alloc::{ClassConfig, DeviceSpec, MetaslabClass, MetaslabConfig};
use ringpool_ondisk::blkptr::BlockPointer;
use ringpool_ondisk::label::{HostInfo, PoolState};
use ringpool_ondisk::layout::{DeviceLayout, ALLOC_START, MAX_ASHIFT, MIN_ASHIFT};
use ringpool_ondisk::object::{Bonus, ObjectRecord, ObjectType};
use ringpool_ondisk::uberblock::Uberblock;

use crate::io::engine::BlockEngine;

use super::directory::{DeviceObjects, Directory};
use super::error::{PoolError, Result};
use super::shared::Shared;
use super::syncer::{
    now_secs, sync_txg, LabelInfo, SyncState, DIRECTORY_OBJECT, FIRST_FREE_OBJECT,
    INDIRECT_BLOCK_SIZE, META_BLOCK_SIZE, OBJSET_BLOCK_SIZE, SM_BLOCK_SIZE,
};
use super::txg::{TxgConfig, TxgEngine};
use super::vdev::Vdev;

mod import;

pub use import::FoundPool;
pub(crate) use import::{commit_rewind, discover, import, load};

/// First txg of a new pool (OpenZFS TXG_INITIAL).
pub const TXG_INITIAL: u64 = 4;

/// Options shared by create and import.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Txg engine tunables.
    pub txg: TxgConfig,
    /// Byte budget of the tree-block cache.
    pub cache_bytes: usize,
    /// Allocator shards (one per reactor).
    pub shards: usize,
    /// Reactor configuration of the sync thread's ring.
    pub reactor: crate::io::ReactorConfig,
    /// Host name recorded in the labels.
    pub hostname: String,
    /// Host id recorded in the labels.
    pub host_id: u64,
}

impl Default for PoolOptions {
    fn default() -> Self {
        let reactor = crate::io::ReactorConfig {
            reactors: 1,
            pin: false,
            entries: 256,
            arena_bytes: 0,
            thread_name: "ringpool-txg".into(),
            // The sync sizes its own writes (it merges adjacent tree blocks up to 32 KiB, and
            // measured larger merges to crowd the writers' data writes): the ring does not
            // merge them further.
            write_aggregate: 0,
            ..Default::default()
        };
        PoolOptions {
            txg: TxgConfig::default(),
            cache_bytes: 64 << 20,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            reactor,
            hostname: hostname(),
            host_id: host_id(),
        }
    }
}

/// Options of [`super::Pool::create`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Common options.
    pub pool: PoolOptions,
    /// Allocation unit shift (default: from the devices' physical block size).
    pub ashift: Option<u8>,
    /// Metaslab shift (default: from the device size).
    pub ms_shift: Option<u8>,
}

/// Options of [`super::Pool::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Common options.
    pub pool: PoolOptions,
    /// Pool name or GUID (decimal) to import when the devices hold several pools.
    pub name: Option<String>,
    /// Import even if the labels say the pool is active elsewhere.
    pub force: bool,
    /// Open read-only: nothing is written.
    pub read_only: bool,
    /// Only consider uberblocks up to this txg (rewind, `-T`).
    pub max_txg: Option<u64>,
    /// On a load failure, retry with older uberblocks (`-F`).
    pub rewind: bool,
    /// Rewind to the pool checkpoint (`--rewind-to-checkpoint`; with `read_only`, a preview).
    pub rewind_to_checkpoint: bool,
}

/// Pools this process has imported (GUID -> number of open handles).
static IMPORTED: parking_lot::Mutex<BTreeMap<u64, usize>> =
    parking_lot::Mutex::new(BTreeMap::new());

/// Records that this process holds pool `guid` (until [`release_imported`]).
pub(crate) fn note_imported(guid: u64) {
    *IMPORTED.lock().entry(guid).or_insert(0) += 1;
}

/// This process let go of pool `guid`.
pub(crate) fn release_imported(guid: u64) {
    let mut g = IMPORTED.lock();
    if let Some(n) = g.get_mut(&guid) {
        *n -= 1;
        if *n == 0 {
            g.remove(&guid);
        }
    }
}

fn imported_here(guid: u64) -> bool {
    IMPORTED.lock().contains_key(&guid)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn host_id() -> u64 {
    let s = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let s = s.trim();
    u64::from_str_radix(s.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

pub(crate) fn random_guid() -> u64 {
    loop {
        let g: u64 = rand::random();
        if g != 0 {
            return g;
        }
    }
}

fn my_host(opts: &PoolOptions) -> HostInfo {
    HostInfo {
        hostname: opts.hostname.clone(),
        host_id: opts.host_id,
        pid: std::process::id(),
    }
}

fn class_for(opts: &PoolOptions) -> Arc<MetaslabClass> {
    Arc::new(MetaslabClass::new(ClassConfig {
        shards: opts.shards.max(1) + 1,
        metaslab: MetaslabConfig {
            // The sync's tree and space-map blocks: the slop is kept in pieces this large.
            reserve_piece: u64::from(super::syncer::META_BLOCK_SIZE),
            ..MetaslabConfig::default()
        },
        ..ClassConfig::default()
    }))
}

fn spec_of(v: &Vdev) -> DeviceSpec {
    let start = ALLOC_START;
    let end = start + (v.ms_count() << v.ms_shift);
    DeviceSpec {
        dev: v.index,
        start,
        end,
        ashift: u32::from(v.ashift),
        ms_shift: u32::from(v.ms_shift),
    }
}

fn ashift_of(engine: &dyn BlockEngine) -> u8 {
    let g = engine.geometry();
    let pb = g.physical_block_size.max(g.logical_block_size).max(512);
    let shift = u8::try_from(pb.trailing_zeros()).unwrap_or(12);
    shift.clamp(MIN_ASHIFT, MAX_ASHIFT)
}

/// Builds the metadata objects of a new device: its metaslab space maps and their array.
pub(crate) fn new_device_objects(st: &mut SyncState, vdev: &Vdev, txg: u64) -> Result<()> {
    let count = vdev.ms_count();
    let mut sms = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let mut rec = ObjectRecord::new(
            ObjectType::SpaceMap,
            SM_BLOCK_SIZE,
            INDIRECT_BLOCK_SIZE,
            txg,
        )?;
        rec.bonus = Bonus::SpaceMap(Box::default());
        sms.push(st.new_object(rec));
    }
    let arr = ObjectRecord::new(
        ObjectType::U64Array,
        META_BLOCK_SIZE,
        INDIRECT_BLOCK_SIZE,
        txg,
    )?;
    let arr_obj = st.new_object(arr);
    let bytes: Vec<u8> = sms.iter().flat_map(|o| o.to_le_bytes()).collect();
    st.set_object_bytes(arr_obj, &bytes)?;
    let di = vdev.index as usize;
    if st.dir.devices.len() <= di {
        st.dir.devices.resize(di + 1, DeviceObjects::default());
    }
    st.dir.devices[di] = DeviceObjects {
        ms_array: arr_obj,
        ms_count: count,
        checkpoint_sm: 0,
    };
    st.dir_dirty = true;
    if st.ms_objects.len() <= di {
        st.ms_objects.resize(di + 1, Vec::new());
    }
    st.ms_objects[di] = sms;
    Ok(())
}

/// Creates a new pool on `engines` (async part; runs on a ring).
pub(crate) async fn create(
    name: &str,
    engines: Vec<Arc<dyn BlockEngine>>,
    opts: &CreateOptions,
) -> Result<(Arc<Shared>, SyncState)> {
    ringpool_ondisk::label::validate_pool_name(name)?;
    if engines.is_empty() {
        return Err(PoolError::Invalid(
            "a pool needs at least one device".into(),
        ));
    }
    let mut vdevs = Vec::new();
    for (i, e) in engines.into_iter().enumerate() {
        let ashift = opts.ashift.unwrap_or_else(|| ashift_of(&*e));
        let g = e.geometry();
        if (1u64 << ashift) < u64::from(g.logical_block_size) {
            return Err(PoolError::Invalid(format!(
                "ashift {ashift} is below the device's logical block size {}",
                g.logical_block_size
            )));
        }
        let layout = DeviceLayout::new(g.size_bytes, ashift)?;
        let ms_shift = opts.ms_shift.unwrap_or_else(|| layout.default_ms_shift());
        ringpool_ondisk::layout::check_ms_shift(ms_shift)?;
        if layout.metaslab_count(ms_shift) == 0 {
            return Err(PoolError::Invalid(format!(
                "device {} is too small for one metaslab of 2^{ms_shift} bytes",
                e.name()
            )));
        }
        vdevs.push(Arc::new(Vdev {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            guid: random_guid(),
            engine: e,
            layout,
            ashift,
            ms_shift,
            added_txg: TXG_INITIAL,
            errors: Default::default(),
        }));
    }
    // Wipe every label so nothing of a previous pool can be selected.
    for v in &vdevs {
        for l in 0..4 {
            v.clear_label(l).await?;
        }
    }
    let class = class_for(&opts.pool);
    for v in &vdevs {
        class.add_device(spec_of(v))?;
    }
    let guid = random_guid();
    let txg_engine = TxgEngine::new(TXG_INITIAL - 1, opts.pool.txg.clone());
    txg_engine.cap_dirty(class.slop_space());
    let shared = Shared::new(
        name.to_string(),
        guid,
        false,
        vdevs.clone(),
        txg_engine,
        class,
        opts.pool.cache_bytes,
    );
    let now = now_secs();
    let dir = Directory {
        next_object: FIRST_FREE_OBJECT,
        created: now,
        ..Default::default()
    };
    let meta = ObjectRecord::new(
        ObjectType::ObjectSet,
        OBJSET_BLOCK_SIZE,
        INDIRECT_BLOCK_SIZE,
        TXG_INITIAL,
    )?;
    let ub0 = Uberblock {
        txg: 1,
        guid_sum: 0,
        timestamp: now,
        checkpoint_txg: 0,
        root: BlockPointer::EMPTY,
        pool_guid: guid,
    };
    let label = LabelInfo {
        pool_name: name.to_string(),
        state: PoolState::Active,
        host: my_host(&opts.pool),
        creation_time: now,
        config_txg: TXG_INITIAL,
    };
    let mut st = SyncState::new(
        BTreeMap::new(),
        meta,
        BlockPointer::EMPTY,
        dir,
        Vec::new(),
        ub0,
        label,
    );
    let dir_rec = ObjectRecord::new(
        ObjectType::Directory,
        META_BLOCK_SIZE,
        INDIRECT_BLOCK_SIZE,
        TXG_INITIAL,
    )?;
    st.objects.insert(DIRECTORY_OBJECT, dir_rec);
    st.dirty_records.insert(DIRECTORY_OBJECT);
    for v in &vdevs {
        new_device_objects(&mut st, v, TXG_INITIAL)?;
    }
    st.dir.log(now, TXG_INITIAL, format!("create pool {name}"));
    st.dir_dirty = true;
    st.labels_dirty = true;
    let (t, _) = shared
        .txg
        .next_to_sync_now()
        .ok_or_else(|| PoolError::Internal("txg engine closed".into()))?;
    sync_txg(&shared, &mut st, t).await?;
    shared.txg.sync_done(t);
    Ok((shared, st))
}
