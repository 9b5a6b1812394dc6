//! Finding and opening a pool: the label scan of each device, the choice of the best
//! uberblock, and loading the pool's state from it (also used by checkpoint rewind).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ringpool_ondisk::label::{LabelHeader, PoolState};
use ringpool_ondisk::layout::{DeviceLayout, MIN_ASHIFT};
use ringpool_ondisk::uberblock::Uberblock;

use crate::io::buf::IoBuf;
use crate::io::engine::BlockEngine;

use super::super::directory::Directory;
use super::super::error::{PoolError, Result};
use super::super::objtree::TreeGeom;
use super::super::shared::Shared;
use super::super::syncer::{
    decode_root_block, now_secs, object_of, read_ms_array, read_object_bytes, read_objects,
    read_space_map, LabelInfo, SyncState, DIRECTORY_OBJECT,
};
use super::super::txg::TxgEngine;
use super::super::vdev::Vdev;
use super::super::volume::{VolMap, VolumeInner};
use super::{class_for, imported_here, my_host, spec_of, ImportOptions};

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
            super::super::checkpoint::rewind_load(&config, &vdevs, *ub, opts, newest_seen).await
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
        let sms = read_ms_array(&shared, &st.objects, di, dobj.ms_array).await?;
        if u64::try_from(sms.len()).unwrap_or(0) != v.ms_count() {
            return Err(PoolError::Corrupt {
                object: format!("device {di} metaslab array"),
                offset: 0,
                reason: format!("{} space maps for {} metaslabs", sms.len(), v.ms_count()),
            });
        }
        for (ms, obj) in sms.iter().enumerate() {
            let rec = object_of(&st.objects, *obj, || format!("space map dev{di}/ms{ms}"))?.clone();
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
    st.defer_prev = super::super::deferred::load(&shared, &st).await?;
    shared.txg.cap_dirty(class.slop_space());
    if let Some(cub) = &st.dir.checkpoint_ub {
        if let Ok(c) = Uberblock::decode(cub) {
            class.set_checkpoint_txg(c.checkpoint_txg);
        }
    }
    // Volumes.
    for (name, e) in &st.dir.volumes {
        let rec = object_of(&st.objects, e.object, || format!("volume '{name}'"))?;
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
        super::super::syncer::write_labels(&shared, &st).await?;
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
