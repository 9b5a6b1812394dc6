//! Space-map objects in syncing context: appending a metaslab's records (or rewriting the map
//! condensed), the per-device checkpoint space map, and reading a map back.

use std::sync::Arc;

use ringpool_alloc::{SmAction as AAction, SmRecord as ARecord};
use ringpool_ondisk::blkptr::BlockPointer;
use ringpool_ondisk::object::{Bonus, ObjectRecord, ObjectType};
use ringpool_ondisk::space_map::{
    SmAction, SmDebug, SpaceMapEncoder, SpaceMapEntry, SpaceMapHeader, SpaceMapIter,
};

use super::super::error::{PoolError, Result};
use super::super::objtree::Change;
use super::super::shared::Shared;
use super::super::vdev::Vdev;
use super::read_object_bytes;
use super::{SyncState, CKPT_SM_BLOCK_SIZE, INDIRECT_BLOCK_SIZE};

/// Writer state of one space-map object.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmTail {
    /// Bytes of the last, partial block (what precedes the next append in that block).
    pub tail: Vec<u8>,
}

/// The device's checkpoint space map object, created on first use.
pub(super) fn checkpoint_sm(st: &mut SyncState, dev: u32, txg: u64) -> Result<u64> {
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
