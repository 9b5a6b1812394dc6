//! Frees deferred from late sync passes to the next txg (OpenZFS's `spa_deferred_bpobj` and
//! `zfs_sync_pass_deferred_free`).
//!
//! Every free dirties the space map of the metaslab it lands in. In pass 1 that is wanted; from
//! pass 2 on the frees come from the sync itself (space-map and object-set blocks copied on
//! their first write of the txg), and each one can dirty a space map that was clean so far,
//! whose copy frees a block in yet another metaslab, and so on: the number of passes grows
//! with the number of metaslabs. So from pass [`TxgConfig::deferred_free_pass`] on a free that
//! would dirty such a clean space map is not routed to the allocator but appended to this
//! list (a free into a metaslab already synced in this txg only appends to a map that is
//! rewritten in place anyway, so it goes through at once: the common case costs no extra
//! pass). The list is written to an object of the pool (its own copies are rewritten in place
//! from the next pass on, so it settles) and freed in pass 1 of the next txg, before anything
//! else frees. Persisting the list is what keeps a crash right after the commit from leaking
//! those blocks: the committed state does not reference them, its space maps still count them
//! allocated, and the list says why.
//!
//! [`TxgConfig::deferred_free_pass`]: super::txg::TxgConfig::deferred_free_pass

use std::sync::Arc;

use ringpool_ondisk::blkptr::Dva;
use ringpool_ondisk::object::{ObjectRecord, ObjectType};

use super::error::{PoolError, Result};
use super::shared::Shared;
use super::syncer::{read_object_bytes, SyncState, INDIRECT_BLOCK_SIZE, META_BLOCK_SIZE};

/// Bytes of one entry: device, offset, allocated size, birth txg (little-endian u64 each).
pub const ENTRY_SIZE: usize = 32;

/// A block whose free waits for the next txg, with its birth txg (checkpoint routing).
pub(crate) type DeferredFree = (Dva, u64);

/// Encodes the list.
pub(crate) fn encode(entries: &[DeferredFree]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_SIZE);
    for (d, birth) in entries {
        out.extend_from_slice(&u64::from(d.device).to_le_bytes());
        out.extend_from_slice(&d.offset.to_le_bytes());
        out.extend_from_slice(&u64::from(d.asize).to_le_bytes());
        out.extend_from_slice(&birth.to_le_bytes());
    }
    out
}

/// Decodes the list (a malformed entry is a typed error, never a panic).
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<DeferredFree>> {
    let corrupt = |reason: String| PoolError::Corrupt {
        object: "deferred free list".into(),
        offset: 0,
        reason,
    };
    if !bytes.len().is_multiple_of(ENTRY_SIZE) {
        return Err(corrupt(format!(
            "{} bytes is not a whole number of entries",
            bytes.len()
        )));
    }
    let word = |e: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&e[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    bytes
        .chunks_exact(ENTRY_SIZE)
        .map(|e| {
            let device =
                u32::try_from(word(e, 0)).map_err(|_| corrupt(format!("device {}", word(e, 0))))?;
            let asize = u32::try_from(word(e, 2))
                .ok()
                .filter(|a| *a > 0)
                .ok_or_else(|| corrupt(format!("size {}", word(e, 2))))?;
            Ok((
                Dva {
                    device,
                    offset: word(e, 1),
                    asize,
                },
                word(e, 3),
            ))
        })
        .collect()
}

/// Frees `d` (born `birth`) as part of the txg being synced: at once in the early passes,
/// onto the deferred list from the configured pass on.
pub(crate) fn free_in_sync(
    shared: &Shared,
    st: &mut SyncState,
    d: &Dva,
    birth: u64,
    txg: u64,
) -> Result<()> {
    if st.pass >= shared.txg.config().deferred_free_pass
        && !st.ms_synced.contains(&ms_of(shared, d)?)
    {
        st.defer_next.push((*d, birth));
        st.defer_dirty = true;
        return Ok(());
    }
    shared.free(d, birth, txg)
}

/// (device, metaslab) holding `d`.
fn ms_of(shared: &Shared, d: &Dva) -> Result<(u32, u64)> {
    let v = shared.vdev(d.device)?;
    let ms = v
        .layout
        .metaslab_of(v.ms_shift, d.offset)
        .ok_or_else(|| PoolError::Internal(format!("free of {d:?} outside every metaslab")))?;
    Ok((d.device, ms))
}

/// Pass 1: frees what the previous txg deferred (its committed list is emptied in this txg).
pub(crate) fn free_previous(shared: &Shared, st: &mut SyncState, txg: u64) -> Result<()> {
    let prev = std::mem::take(&mut st.defer_prev);
    if prev.is_empty() {
        return Ok(());
    }
    for (d, birth) in &prev {
        shared.free(d, *birth, txg)?;
    }
    st.defer_dirty = true;
    Ok(())
}

/// Start of a pass: writes the list as it stands into its object (created on first use).
pub(crate) fn write_list(st: &mut SyncState, txg: u64) -> Result<()> {
    if !st.defer_dirty {
        return Ok(());
    }
    st.defer_dirty = false;
    let obj = match st.dir.deferred_frees {
        0 => {
            let rec = ObjectRecord::new(
                ObjectType::U64Array,
                META_BLOCK_SIZE,
                INDIRECT_BLOCK_SIZE,
                txg,
            )?;
            let obj = st.new_object(rec);
            st.directory_mut().deferred_frees = obj;
            obj
        }
        o => o,
    };
    let bytes = encode(&st.defer_next);
    st.set_object_bytes(obj, &bytes)
}

/// End of a committed txg: its deferred frees are the next txg's to issue.
pub(crate) fn rotate(st: &mut SyncState) {
    st.defer_prev = std::mem::take(&mut st.defer_next);
}

/// Import: the list the committed state carries (freed in the first txg synced).
pub(crate) async fn load(shared: &Arc<Shared>, st: &SyncState) -> Result<Vec<DeferredFree>> {
    let obj = st.dir.deferred_frees;
    if obj == 0 {
        return Ok(Vec::new());
    }
    let rec = st.objects.get(&obj).ok_or_else(|| PoolError::Corrupt {
        object: "pool directory".into(),
        offset: 0,
        reason: format!("deferred free list object {obj} missing"),
    })?;
    let bytes = read_object_bytes(shared, "deferred free list", rec, rec.length).await?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_bad_input() {
        let l = vec![
            (
                Dva {
                    device: 1,
                    offset: 1 << 30,
                    asize: 16384,
                },
                77,
            ),
            (
                Dva {
                    device: 0,
                    offset: 4096,
                    asize: 4096,
                },
                5,
            ),
        ];
        let b = encode(&l);
        assert_eq!(b.len(), 2 * ENTRY_SIZE);
        assert_eq!(decode(&b).unwrap(), l);
        assert!(decode(&b[..40]).is_err());
        let mut zero = b.clone();
        zero[16..24].fill(0);
        assert!(decode(&zero).is_err(), "zero-sized entry");
        let mut big = b;
        big[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&big).is_err(), "device out of range");
        assert!(decode(&[]).unwrap().is_empty());
    }
}
