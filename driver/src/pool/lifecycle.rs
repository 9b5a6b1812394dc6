//! Pool lifecycle: create, import (label scan, best uberblock, load), export, add a device.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ringpool_alloc::{ClassConfig, DeviceSpec, MetaslabClass, MetaslabConfig};
use ringpool_ondisk::blkptr::BlockPointer;
use ringpool_ondisk::label::{HostInfo, LabelHeader, PoolState};
use ringpool_ondisk::layout::{DeviceLayout, ALLOC_START, MAX_ASHIFT, MIN_ASHIFT};
use ringpool_ondisk::object::{Bonus, ObjectRecord, ObjectType};
use ringpool_ondisk::uberblock::Uberblock;

use crate::io::buf::IoBuf;
use crate::io::engine::BlockEngine;

use super::directory::{DeviceObjects, Directory};
use super::error::{PoolError, Result};
use super::objtree::TreeGeom;
use super::shared::Shared;
use super::syncer::{
    decode_root_block, now_secs, read_object_bytes, read_objects, read_space_map, sync_txg,
    LabelInfo, SyncState, DIRECTORY_OBJECT, FIRST_FREE_OBJECT, INDIRECT_BLOCK_SIZE,
    META_BLOCK_SIZE, OBJSET_BLOCK_SIZE, SM_BLOCK_SIZE,
};
use super::txg::{TxgConfig, TxgEngine};
use super::vdev::Vdev;
use super::volume::{VolMap, VolumeInner};

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

/// One label as read during a scan.
#[derive(Debug)]
struct ScannedLabel {
    header: LabelHeader,
    uberblocks: Vec<Uberblock>,
}

/// What a device holds.
#[derive(Debug)]
struct ScannedDevice {
    engine: Arc<dyn BlockEngine>,
    labels: Vec<ScannedLabel>,
}

async fn scan_device(engine: Arc<dyn BlockEngine>) -> Result<ScannedDevice> {
    let g = engine.geometry();
    let layout = DeviceLayout::new(g.size_bytes, MIN_ASHIFT)?;
    let mut raw = Vec::new();
    for l in 0..4 {
        let off = layout.label_offset(l)?;
        let mut buf = crate::io::buf::alloc(
            usize::try_from(ringpool_ondisk::layout::LABEL_SIZE).unwrap_or(0),
        );
        buf.fill(0);
        let (r, buf): (_, IoBuf) = engine.read_at(buf, off).await;
        if r.is_ok() {
            raw.push(buf);
        }
    }
    let hs = usize::try_from(ringpool_ondisk::layout::LABEL_HEADER_OFFSET).unwrap_or(0);
    let he = hs + ringpool_ondisk::layout::LABEL_HEADER_AREA_SIZE;
    let rs = usize::try_from(ringpool_ondisk::layout::LABEL_RING_OFFSET).unwrap_or(0);
    let mut labels = Vec::new();
    let headers: Vec<Option<LabelHeader>> = raw
        .iter()
        .map(|b| LabelHeader::decode(&b[hs..he]).ok())
        .collect();
    let ashift = headers.iter().flatten().map(|h| h.ashift).next();
    for (i, b) in raw.iter().enumerate() {
        let Some(h) = headers[i].clone() else {
            continue;
        };
        let layout = DeviceLayout::new(g.size_bytes, ashift.unwrap_or(h.ashift))?;
        let slot = layout.slot_size();
        let ubs = b[rs..]
            .chunks_exact(slot)
            .filter_map(|s| Uberblock::decode(s).ok())
            .filter(|u| u.pool_guid == h.pool_guid)
            .collect();
        labels.push(ScannedLabel {
            header: h,
            uberblocks: ubs,
        });
    }
    Ok(ScannedDevice { engine, labels })
}

/// Pools found on a set of devices: (name, guid, state, devices found / needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPool {
    /// Pool name.
    pub name: String,
    /// Pool GUID.
    pub guid: u64,
    /// State recorded in the newest label.
    pub state: PoolState,
    /// Host that last had it.
    pub host: String,
    /// Devices of the pool seen.
    pub found: usize,
    /// Devices the configuration lists.
    pub needed: usize,
}

/// Lists the pools on `engines` without importing.
pub(crate) async fn discover(engines: Vec<Arc<dyn BlockEngine>>) -> Result<Vec<FoundPool>> {
    let mut by_guid: BTreeMap<u64, (LabelHeader, usize)> = BTreeMap::new();
    for e in engines {
        let Ok(d) = scan_device(e).await else {
            continue;
        };
        let Some(best) = d.labels.iter().max_by_key(|l| l.header.config_txg) else {
            continue;
        };
        let h = best.header.clone();
        let entry = by_guid.entry(h.pool_guid).or_insert((h.clone(), 0));
        entry.1 += 1;
        if h.config_txg > entry.0.config_txg {
            entry.0 = h;
        }
    }
    Ok(by_guid
        .into_values()
        .map(|(h, n)| FoundPool {
            name: h.pool_name.clone(),
            guid: h.pool_guid,
            state: h.state,
            host: h.host.hostname.clone(),
            found: n,
            needed: h.devices.len(),
        })
        .collect())
}

/// Imports a pool from `engines` (async part).
pub(crate) async fn import(
    engines: Vec<Arc<dyn BlockEngine>>,
    opts: &ImportOptions,
) -> Result<(Arc<Shared>, SyncState)> {
    let mut scanned = Vec::new();
    for e in engines {
        match scan_device(e).await {
            Ok(d) if !d.labels.is_empty() => scanned.push(d),
            _ => {}
        }
    }
    // Pick the pool.
    let mut pools: BTreeMap<u64, LabelHeader> = BTreeMap::new();
    for d in &scanned {
        for l in &d.labels {
            let e = pools
                .entry(l.header.pool_guid)
                .or_insert_with(|| l.header.clone());
            if l.header.config_txg > e.config_txg {
                *e = l.header.clone();
            }
        }
    }
    // A crash in the middle of a reguid leaves labels of the old and the new GUID on the same
    // devices: one pool, whose newer configuration wins (reguid.rs makes it loadable).
    let superseded: Vec<u64> = pools
        .values()
        .filter(|h| {
            pools.values().any(|o| {
                o.pool_guid != h.pool_guid
                    && o.pool_name == h.pool_name
                    && o.config_txg > h.config_txg
                    && o.devices
                        .iter()
                        .any(|d| h.devices.iter().any(|e| e.guid == d.guid))
            })
        })
        .map(|h| h.pool_guid)
        .collect();
    for g in superseded {
        pools.remove(&g);
    }
    let chosen: Vec<&LabelHeader> = pools
        .values()
        .filter(|h| match &opts.name {
            Some(n) => &h.pool_name == n || h.pool_guid.to_string() == *n,
            None => true,
        })
        .collect();
    let config = match chosen.as_slice() {
        [] => {
            return Err(PoolError::NotFound(
                opts.name
                    .clone()
                    .unwrap_or_else(|| "no pool labels on the devices".into()),
            ))
        }
        [one] => (*one).clone(),
        _ => {
            return Err(PoolError::Invalid(format!(
                "several pools found ({}); name one",
                chosen
                    .iter()
                    .map(|h| h.pool_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    if config.state == PoolState::Destroyed {
        return Err(PoolError::NotFound(format!(
            "pool '{}' was destroyed",
            config.pool_name
        )));
    }
    if config.state == PoolState::Active && !opts.force && !opts.read_only {
        let h = &config.host;
        let me = my_host(&opts.pool);
        let other_host = h.hostname != me.hostname || h.host_id != me.host_id;
        // This host: the pool is in use while the process that imported it lives — for this
        // very process, while it still holds the pool (one that was abandoned or closed after a
        // suspension left its labels "active" but is no longer open).
        let alive = !other_host
            && if h.pid == me.pid {
                imported_here(config.pool_guid)
            } else {
                std::path::Path::new(&format!("/proc/{}", h.pid)).exists()
            };
        if other_host || alive {
            return Err(PoolError::InUse {
                pool: config.pool_name.clone(),
                host: h.hostname.clone(),
                pid: u64::from(h.pid),
            });
        }
    }
    // Map devices by guid.
    let mut by_dev: HashMap<u64, &ScannedDevice> = HashMap::new();
    for d in &scanned {
        // (Or, mid-reguid, a device whose labels all still carry the old GUID.)
        let same_dev = |h: &LabelHeader| {
            h.pool_name == config.pool_name
                && config.devices.iter().any(|e| e.guid == h.device_guid)
        };
        if let Some(l) = d
            .labels
            .iter()
            .find(|l| l.header.pool_guid == config.pool_guid)
            .or_else(|| d.labels.iter().find(|l| same_dev(&l.header)))
        {
            by_dev.entry(l.header.device_guid).or_insert(d);
        }
    }
    let mut vdevs = Vec::new();
    for (i, ent) in config.devices.iter().enumerate() {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let d = by_dev
            .get(&ent.guid)
            .ok_or_else(|| PoolError::MissingDevice {
                pool: config.pool_name.clone(),
                index: idx,
                guid: ent.guid,
            })?;
        let layout = DeviceLayout::new(ent.size, ent.ashift)?;
        vdevs.push(Arc::new(Vdev {
            index: idx,
            guid: ent.guid,
            engine: Arc::clone(&d.engine),
            layout,
            ashift: ent.ashift,
            ms_shift: ent.ms_shift,
            added_txg: ent.added_txg,
            errors: Default::default(),
        }));
    }
    // Every uberblock of every label of the pool, newest first.
    let seen: Vec<Uberblock> = scanned
        .iter()
        .flat_map(|d| d.labels.iter())
        .filter(|l| l.header.pool_guid == config.pool_guid)
        .flat_map(|l| l.uberblocks.iter().copied())
        .collect();
    // A rewind (-T, -F, checkpoint) leaves these newer uberblocks in the rings: every txg
    // committed from now on must be above all of them, or a crash brings them back.
    let newest_seen = seen.iter().map(|u| u.txg).max().unwrap_or(0);
    let mut ubs: Vec<Uberblock> = seen
        .into_iter()
        .filter(|u| u.txg <= opts.max_txg.unwrap_or(u64::MAX))
        .collect();
    ubs.sort_by(|a, b| b.txg.cmp(&a.txg).then(b.timestamp.cmp(&a.timestamp)));
    ubs.dedup_by_key(|u| u.txg);
    if ubs.is_empty() {
        return Err(PoolError::NoUberblock(config.pool_name.clone()));
    }
    let mut last_err = None;
    for ub in ubs.iter() {
        let r = if opts.rewind_to_checkpoint {
            super::checkpoint::rewind_load(&config, &vdevs, *ub, opts, newest_seen).await
        } else {
            load(&config, &vdevs, *ub, opts, newest_seen).await
        };
        match r {
            Ok(r) => return Ok(r),
            Err(e) => {
                tracing::warn!(
                    txg = ub.txg,
                    "loading pool '{}' failed: {e}",
                    config.pool_name
                );
                let fatal = matches!(e, PoolError::NoCheckpoint);
                last_err = Some(e);
                if !opts.rewind || fatal {
                    break;
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| PoolError::NoUberblock(config.pool_name.clone())))
}

/// Loads the pool state from `ub`. `newest_seen` is the highest txg of any uberblock in the
/// labels: when it is above `ub.txg` (a rewind) and the pool opens writable, `ub` is first
/// rewritten as txg `newest_seen + 1` (see [`commit_rewind`]).
pub(crate) async fn load(
    config: &LabelHeader,
    vdevs: &[Arc<Vdev>],
    ub: Uberblock,
    opts: &ImportOptions,
    newest_seen: u64,
) -> Result<(Arc<Shared>, SyncState)> {
    let class = class_for(&opts.pool);
    let rewound = !opts.read_only && newest_seen > ub.txg;
    let ub = if rewound {
        Uberblock {
            txg: newest_seen + 1,
            timestamp: now_secs().max(ub.timestamp),
            ..ub
        }
    } else {
        ub
    };
    let txg_engine = TxgEngine::new(ub.txg, opts.pool.txg.clone());
    let shared = Shared::new(
        config.pool_name.clone(),
        config.pool_guid,
        opts.read_only,
        vdevs.to_vec(),
        txg_engine,
        Arc::clone(&class),
        opts.pool.cache_bytes,
    );
    let root = ub.root.data().copied().ok_or_else(|| PoolError::Corrupt {
        object: "uberblock".into(),
        offset: 0,
        reason: "the root pointer is a hole".into(),
    })?;
    let root_bytes = shared.read_verified(&root, "root block", 0).await?;
    let meta = decode_root_block(&root_bytes)?;
    let objects = read_objects(&shared, &meta).await?;
    let dir_rec = objects
        .get(&DIRECTORY_OBJECT)
        .ok_or_else(|| PoolError::Corrupt {
            object: "root object set".into(),
            offset: 0,
            reason: "no pool directory".into(),
        })?;
    let dir_bytes = read_object_bytes(&shared, "pool directory", dir_rec, dir_rec.length).await?;
    let dir = Directory::decode(&dir_bytes)?;
    // Devices beyond the directory's list were added by a txg that never committed.
    let ndev = dir.devices.len().min(vdevs.len());
    let vdevs: Vec<Arc<Vdev>> = vdevs[..ndev].to_vec();
    *shared.vdevs.write() = vdevs.clone();
    shared.max_ashift.store(
        u64::from(vdevs.iter().map(|v| v.ashift).max().unwrap_or(12)),
        std::sync::atomic::Ordering::Relaxed,
    );
    let label = LabelInfo {
        pool_name: config.pool_name.clone(),
        state: PoolState::Active,
        host: my_host(&opts.pool),
        creation_time: config.creation_time,
        config_txg: config.config_txg,
    };
    let mut st = SyncState::new(objects, meta, ub.root, dir, Vec::new(), ub, label);
    for v in &vdevs {
        class.add_device(spec_of(v))?;
        let di = v.index as usize;
        let dobj = st.dir.devices[di].clone();
        let arr = st
            .objects
            .get(&dobj.ms_array)
            .cloned()
            .ok_or_else(|| PoolError::Corrupt {
                object: format!("device {di} metaslab array"),
                offset: 0,
                reason: format!("object {} missing", dobj.ms_array),
            })?;
        let bytes = read_object_bytes(&shared, "metaslab array", &arr, arr.length).await?;
        let sms: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if u64::try_from(sms.len()).unwrap_or(0) != v.ms_count() {
            return Err(PoolError::Corrupt {
                object: format!("device {di} metaslab array"),
                offset: 0,
                reason: format!("{} space maps for {} metaslabs", sms.len(), v.ms_count()),
            });
        }
        for (ms, obj) in sms.iter().enumerate() {
            let rec = st
                .objects
                .get(obj)
                .cloned()
                .ok_or_else(|| PoolError::Corrupt {
                    object: format!("space map dev{di}/ms{ms}"),
                    offset: 0,
                    reason: format!("object {obj} missing"),
                })?;
            let (start, end) = v
                .layout
                .metaslab_range(v.ms_shift, u64::try_from(ms).unwrap_or(0))?;
            let name = format!("space map dev{di}/ms{ms} (object {obj})");
            let (recs, tail) =
                read_space_map(&shared, &rec, &name, start, v.ashift, end - start).await?;
            class.load_metaslab(v.index, ms, recs)?;
            st.sm_tails.insert(*obj, tail);
        }
        st.ms_objects.push(sms);
        if dobj.checkpoint_sm != 0 {
            let rec = st
                .objects
                .get(&dobj.checkpoint_sm)
                .cloned()
                .ok_or_else(|| PoolError::Corrupt {
                    object: format!("checkpoint space map of device {di}"),
                    offset: 0,
                    reason: "object missing".into(),
                })?;
            let name = format!("checkpoint space map dev{di}");
            let (recs, tail) =
                read_space_map(&shared, &rec, &name, 0, v.ashift, v.layout.device_size()).await?;
            class.load_checkpoint_map(v.index, recs)?;
            st.sm_tails.insert(dobj.checkpoint_sm, tail);
        }
    }
    st.defer_prev = super::deferred::load(&shared, &st).await?;
    shared.txg.cap_dirty(class.slop_space());
    if let Some(cub) = &st.dir.checkpoint_ub {
        if let Ok(c) = Uberblock::decode(cub) {
            class.set_checkpoint_txg(c.checkpoint_txg);
        }
    }
    // Volumes.
    for (name, e) in &st.dir.volumes {
        let rec = st
            .objects
            .get(&e.object)
            .ok_or_else(|| PoolError::Corrupt {
                object: format!("volume '{name}'"),
                offset: 0,
                reason: format!("object {} missing", e.object),
            })?;
        let geom = TreeGeom {
            levels: rec.levels.max(1),
            ibs: rec.indirect_block_size,
            bs: rec.data_block_size,
        };
        let inner = VolumeInner::new(
            name.clone(),
            e.object,
            e.block_size,
            e.size,
            VolMap {
                root: rec.roots[0],
                geom,
            },
        );
        shared.volumes.write().insert(name.clone(), Arc::new(inner));
    }
    *shared.last_ub.lock() = Some(ub);
    if !opts.read_only {
        if rewound {
            commit_rewind(&vdevs, &ub).await?;
        }
        st.label.config_txg = ub.txg;
        super::syncer::write_labels(&shared, &st).await?;
    }
    Ok((shared, st))
}

/// The point of no return of a rewind (OpenZFS writes the rewound uberblock back before any
/// other write, `spa_load_checkpoint_rewind`; a `-F` recovery syncs at once with txgs above the
/// failed candidate's): the loaded uberblock, renumbered above every uberblock in the labels,
/// goes to every label of every device of the loaded state, front pair, flush, back pair,
/// flush. Only the rings are written — no block is allocated yet, so the newer uberblocks stay
/// intact until this is durable; after it they can never be selected again, and their blocks,
/// free in the rewound state, may be reused. A crash before it leaves the pre-rewind state.
/// Runs before the label headers so a header never names a txg no ring has.
pub(crate) async fn commit_rewind(vdevs: &[Arc<Vdev>], ub: &Uberblock) -> Result<()> {
    for pair in [[0usize, 1], [2, 3]] {
        for v in vdevs {
            for l in pair {
                v.write_uberblock(l, ub).await?;
            }
        }
        for v in vdevs {
            v.flush().await?;
        }
    }
    Ok(())
}
