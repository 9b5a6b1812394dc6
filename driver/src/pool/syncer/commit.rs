//! The end of a txg's sync: the root object set and its root block, then the commit itself
//! (flush, labels when the configuration changed, uberblocks front then back, flushes).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ringpool_ondisk::blkptr::{BlockPointer, DataPtr};
use ringpool_ondisk::checksum::{Checksum, ChecksumAlgo};
use ringpool_ondisk::label::LabelHeader;
use ringpool_ondisk::object::{
    decode_object_block, encode_object_block, ObjectRecord, ObjectType, OBJECT_RECORD_SIZE,
};
use ringpool_ondisk::uberblock::Uberblock;

use super::super::deferred::free_in_sync;
use super::super::error::{PoolError, Result};
use super::super::join::try_join_chunks;
use super::super::objtree::Change;
use super::super::shared::Shared;
use super::super::vdev::Vdev;
use super::tree::{geom_of, leaf_positions, obj_name};
use super::{now_secs, update_tree, SyncState, OBJSET_BLOCK_SIZE, ROOT_BLOCK_SIZE};

/// Records per block of the root object set.
fn records_per_block() -> u64 {
    u64::from(OBJSET_BLOCK_SIZE) / u64::try_from(OBJECT_RECORD_SIZE).unwrap_or(512)
}

/// Writes the dirty records into the root object set, then the root block.
pub(super) async fn sync_root(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
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
pub(super) async fn commit(shared: &Arc<Shared>, st: &mut SyncState, txg: u64) -> Result<()> {
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
