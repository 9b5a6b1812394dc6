//! `verify`: the pool's `zdb -bcc`.
//!
//! From the last committed uberblock: walk every block pointer of every object (the root
//! block, the root object set, the directory, every space map, every volume), read every block
//! and check its checksum, and collect the referenced extents. Replay every space map from
//! disk to rebuild the allocated extents, take the checkpoint maps' extents (held by the
//! checkpoint), and require: referenced ∪ checkpoint-held = allocated, with no extent
//! referenced twice (double allocation) and nothing allocated but unreferenced (leak).
//! Also runs the allocator's own invariant checks. Run it on a quiescent pool (it syncs first).

use std::collections::BTreeMap;

use ringpool_ondisk::blkptr::DataPtr;
use ringpool_ondisk::object::ObjectRecord;
use ringpool_ondisk::uberblock::Uberblock;

use super::directory::Directory;
use super::error::{PoolError, Result};
use super::join::join_all;
use super::objtree::TreeGeom;
use super::shared::Shared;
use super::syncer::{
    decode_root_block, read_object_bytes, read_objects, read_space_map, walk_tree, DIRECTORY_OBJECT,
};
use super::Pool;

/// What verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Txg of the uberblock verified.
    pub txg: u64,
    /// Blocks read and checksummed.
    pub blocks: u64,
    /// Bytes referenced by block pointers.
    pub referenced_bytes: u64,
    /// Bytes allocated according to the space maps.
    pub allocated_bytes: u64,
    /// Bytes held by the checkpoint maps.
    pub checkpoint_bytes: u64,
    /// Objects walked.
    pub objects: u64,
    /// Problems found (empty = clean).
    pub errors: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// How far a verify has come, for a progress bar: every block read and checksummed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Blocks read and checksummed.
    pub blocks: u64,
    /// Their allocated bytes.
    pub bytes: u64,
    /// The bytes verify expects to read: allocated minus checkpoint-held space when it started
    /// (an estimate: `bytes` can end a little above or below it).
    pub total_bytes: u64,
}

/// Reports progress to the caller's callback as blocks are checked.
struct Tracker<'a> {
    progress: VerifyProgress,
    report: &'a dyn Fn(VerifyProgress),
}

impl Tracker<'_> {
    fn checked(&mut self, d: &DataPtr) {
        self.progress.blocks += 1;
        self.progress.bytes += u64::from(d.dva.asize);
        (self.report)(self.progress);
    }
}

type Ranges = BTreeMap<u32, Vec<(u64, u64)>>;

fn merge(v: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for &(s, e) in v.iter() {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Overlaps between sorted, possibly overlapping ranges.
fn overlaps(v: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out = Vec::new();
    let mut end = 0u64;
    let mut started = false;
    for &(s, e) in v.iter() {
        if started && s < end {
            out.push((s, end.min(e)));
        }
        if !started || e > end {
            end = e;
        }
        started = true;
    }
    out
}

/// `a - b` over merged range lists.
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s0, e) in a {
        let mut s = s0;
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while s < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > s {
                        out.push((s, bs));
                    }
                    s = s.max(be);
                    k += 1;
                }
                _ => {
                    out.push((s, e));
                    break;
                }
            }
        }
    }
    out
}

fn geom_of(rec: &ObjectRecord) -> TreeGeom {
    TreeGeom {
        levels: rec.levels.max(1),
        ibs: rec.indirect_block_size,
        bs: rec.data_block_size,
    }
}

pub(crate) fn verify(pool: &Pool, progress: &dyn Fn(VerifyProgress)) -> Result<VerifyReport> {
    pool.sync_blocking()?;
    let shared = pool.shared();
    let ub = shared
        .last_ub
        .lock()
        .ok_or_else(|| PoolError::Internal("no committed uberblock".into()))?;
    let space = shared.class.stats().total;
    let mut tracker = Tracker {
        progress: VerifyProgress {
            total_bytes: space.allocated.saturating_sub(space.checkpointed),
            ..Default::default()
        },
        report: progress,
    };
    let mut report = crate::io::block_on(&super::PoolOptions::default().reactor, async {
        let mut r = verify_state(shared, ub, &mut tracker).await?;
        super::checkpoint::verify_checkpoint(shared, ub, &mut r).await?;
        Ok::<_, PoolError>(r)
    })??;
    if let Err(e) = shared.class.verify() {
        report.errors.push(format!("allocator invariants: {e}"));
    }
    Ok(report)
}

async fn check_blocks(
    shared: &Shared,
    name: &str,
    blocks: &[DataPtr],
    report: &mut VerifyReport,
    tracker: &mut Tracker<'_>,
) {
    for chunk in blocks.chunks(64) {
        let futs = chunk.iter().map(|d| shared.read_verified(d, name, 0));
        for (d, r) in chunk.iter().zip(join_all(futs).await) {
            report.blocks += 1;
            tracker.checked(d);
            if let Err(e) = r {
                report.errors.push(e.to_string());
            }
        }
    }
}

/// Verifies the state committed by `ub`.
async fn verify_state(
    shared: &Shared,
    ub: Uberblock,
    tracker: &mut Tracker<'_>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        txg: ub.txg,
        ..Default::default()
    };
    let mut referenced: Ranges = BTreeMap::new();
    let add_ref = |d: &DataPtr, referenced: &mut Ranges| {
        referenced
            .entry(d.dva.device)
            .or_default()
            .push((d.dva.offset, d.dva.offset + u64::from(d.dva.asize)));
    };
    let root = ub.root.data().copied().ok_or_else(|| PoolError::Corrupt {
        object: "uberblock".into(),
        offset: 0,
        reason: "root is a hole".into(),
    })?;
    add_ref(&root, &mut referenced);
    let bytes = shared.read_verified(&root, "root block", 0).await?;
    report.blocks += 1;
    tracker.checked(&root);
    let meta = decode_root_block(&bytes)?;
    let mut all = Vec::new();
    walk_tree(
        shared,
        "root object set",
        &geom_of(&meta),
        &meta.roots[0],
        &mut all,
    )
    .await?;
    check_blocks(shared, "root object set", &all, &mut report, tracker).await;
    for d in &all {
        add_ref(d, &mut referenced);
    }
    let objects = read_objects(shared, &meta).await?;
    for (id, rec) in &objects {
        report.objects += 1;
        let name = format!("object {id} ({:?})", rec.kind);
        let mut blocks = Vec::new();
        if let Err(e) = walk_tree(shared, &name, &geom_of(rec), &rec.roots[0], &mut blocks).await {
            report.errors.push(e.to_string());
            continue;
        }
        check_blocks(shared, &name, &blocks, &mut report, tracker).await;
        for d in &blocks {
            add_ref(d, &mut referenced);
        }
    }
    let dir_rec = objects
        .get(&DIRECTORY_OBJECT)
        .ok_or_else(|| PoolError::Internal("no directory".into()))?;
    let dir = Directory::decode(
        &read_object_bytes(shared, "pool directory", dir_rec, dir_rec.length).await?,
    )?;
    // Frees the committed txg deferred to the next one: allocated, referenced by the list
    // (and by nothing else: a listed block still in a tree shows as referenced twice).
    if dir.deferred_frees != 0 {
        match objects.get(&dir.deferred_frees) {
            Some(rec) => {
                let bytes =
                    read_object_bytes(shared, "deferred free list", rec, rec.length).await?;
                for (dva, _) in super::deferred::decode(&bytes)? {
                    referenced
                        .entry(dva.device)
                        .or_default()
                        .push((dva.offset, dva.offset + u64::from(dva.asize)));
                }
            }
            None => report.errors.push(format!(
                "deferred free list object {} missing",
                dir.deferred_frees
            )),
        }
    }
    // Allocated per the space maps, and held by the checkpoint.
    let mut allocated: Ranges = BTreeMap::new();
    let mut held: Ranges = BTreeMap::new();
    let vdevs = shared.vdevs.read().clone();
    for (di, dobj) in dir.devices.iter().enumerate() {
        let Some(v) = vdevs.get(di) else {
            report
                .errors
                .push(format!("device {di} of the directory is not open"));
            continue;
        };
        let arr = objects
            .get(&dobj.ms_array)
            .ok_or_else(|| PoolError::Internal(format!("metaslab array of device {di} missing")))?;
        let ab = read_object_bytes(shared, "metaslab array", arr, arr.length).await?;
        let dev = u32::try_from(di).unwrap_or(u32::MAX);
        for (ms, c) in ab.chunks_exact(8).enumerate() {
            let obj = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            let Some(rec) = objects.get(&obj) else {
                report
                    .errors
                    .push(format!("space map object {obj} of dev{di}/ms{ms} missing"));
                continue;
            };
            let (start, end) = v
                .layout
                .metaslab_range(v.ms_shift, u64::try_from(ms).unwrap_or(0))?;
            let name = format!("space map dev{di}/ms{ms}");
            let (recs, _) =
                read_space_map(shared, rec, &name, start, v.ashift, end - start).await?;
            // Replay the allocated set.
            let mut set: BTreeMap<u64, u64> = BTreeMap::new();
            for r in recs {
                match r.action {
                    ringpool_alloc::SmAction::Alloc => add_range(&mut set, r.start, r.end()),
                    ringpool_alloc::SmAction::Free => remove_range(&mut set, r.start, r.end()),
                }
            }
            allocated.entry(dev).or_default().extend(set);
        }
        if dobj.checkpoint_sm != 0 {
            if let Some(rec) = objects.get(&dobj.checkpoint_sm) {
                let (recs, _) = read_space_map(
                    shared,
                    rec,
                    "checkpoint space map",
                    0,
                    v.ashift,
                    v.layout.device_size(),
                )
                .await?;
                for r in recs {
                    held.entry(dev).or_default().push((r.start, r.end()));
                }
            }
        }
    }
    let devs: std::collections::BTreeSet<u32> = referenced
        .keys()
        .chain(allocated.keys())
        .chain(held.keys())
        .copied()
        .collect();
    for dev in devs {
        let mut r = referenced.remove(&dev).unwrap_or_default();
        for (s, e) in overlaps(&mut r) {
            report.errors.push(format!(
                "dev{dev}: [{s:#x},{e:#x}) referenced twice (double allocation)"
            ));
        }
        let r = merge(&mut r);
        let mut h = held.remove(&dev).unwrap_or_default();
        for (s, e) in overlaps(&mut h) {
            report.errors.push(format!(
                "dev{dev}: checkpoint map holds [{s:#x},{e:#x}) twice"
            ));
        }
        let h = merge(&mut h);
        let a = merge(&mut allocated.remove(&dev).unwrap_or_default());
        report.referenced_bytes += r.iter().map(|(s, e)| e - s).sum::<u64>();
        report.checkpoint_bytes += h.iter().map(|(s, e)| e - s).sum::<u64>();
        report.allocated_bytes += a.iter().map(|(s, e)| e - s).sum::<u64>();
        let mut both = r.clone();
        both.extend_from_slice(&h);
        let both = merge(&mut both);
        for (s, e) in subtract(&a, &both) {
            report.errors.push(format!(
                "dev{dev}: [{s:#x},{e:#x}) allocated in the space maps but not referenced (leak)"
            ));
        }
        for (s, e) in subtract(&r, &a) {
            report.errors.push(format!(
                "dev{dev}: [{s:#x},{e:#x}) referenced but free in the space maps"
            ));
        }
        for (s, e) in subtract(&h, &a) {
            report.errors.push(format!(
                "dev{dev}: checkpoint-held [{s:#x},{e:#x}) is free in the space maps (I2)"
            ));
        }
    }
    if report.errors.len() > 100 {
        let n = report.errors.len();
        report.errors.truncate(100);
        report.errors.push(format!("... {} more", n - 100));
    }
    Ok(report)
}

fn add_range(set: &mut BTreeMap<u64, u64>, s: u64, e: u64) {
    remove_range(set, s, e);
    set.insert(s, e);
}

fn remove_range(set: &mut BTreeMap<u64, u64>, s: u64, e: u64) {
    let keys: Vec<(u64, u64)> = set
        .range(..e)
        .rev()
        .take_while(|(_, &ee)| ee > s)
        .map(|(&a, &b)| (a, b))
        .collect();
    for (a, b) in keys {
        set.remove(&a);
        if a < s {
            set.insert(a, s);
        }
        if b > e {
            set.insert(e, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_math() {
        assert_eq!(
            subtract(&[(0, 10)], &[(2, 3), (5, 7)]),
            vec![(0, 2), (3, 5), (7, 10)]
        );
        assert_eq!(subtract(&[(0, 10)], &[(0, 10)]), vec![]);
        assert_eq!(overlaps(&mut [(0, 4), (2, 6), (8, 9)]), vec![(2, 4)]);
        let mut m = BTreeMap::new();
        add_range(&mut m, 0, 10);
        remove_range(&mut m, 3, 5);
        assert_eq!(m.into_iter().collect::<Vec<_>>(), vec![(0, 3), (5, 10)]);
    }
}

/// One block of the committed state, for `inspect` and fault-injection tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Object number (`None` for the root block).
    pub object: Option<u64>,
    /// Object type.
    pub kind: ringpool_ondisk::object::ObjectType,
    /// Tree level (0 = data).
    pub level: u8,
    /// Device index.
    pub device: u32,
    /// Device byte offset.
    pub offset: u64,
    /// Allocated bytes.
    pub asize: u32,
    /// Birth txg.
    pub birth_txg: u64,
}

fn info(object: Option<u64>, d: &DataPtr) -> BlockInfo {
    BlockInfo {
        object,
        kind: d.kind,
        level: d.level,
        device: d.dva.device,
        offset: d.dva.offset,
        asize: d.dva.asize,
        birth_txg: d.birth_txg,
    }
}

/// Every block of the state committed by the last uberblock (syncs first).
pub(crate) fn block_map(pool: &Pool) -> Result<Vec<BlockInfo>> {
    pool.sync_blocking()?;
    let shared = pool.shared();
    let ub = shared
        .last_ub
        .lock()
        .ok_or_else(|| PoolError::Internal("no committed uberblock".into()))?;
    crate::io::block_on(&super::PoolOptions::default().reactor, async {
        let mut out = Vec::new();
        let root = ub
            .root
            .data()
            .copied()
            .ok_or_else(|| PoolError::Internal("hole root".into()))?;
        out.push(info(None, &root));
        let meta = decode_root_block(&shared.read_verified(&root, "root block", 0).await?)?;
        let mut all = Vec::new();
        walk_tree(
            shared,
            "root object set",
            &geom_of(&meta),
            &meta.roots[0],
            &mut all,
        )
        .await?;
        out.extend(all.iter().map(|d| info(Some(0), d)));
        for (id, rec) in read_objects(shared, &meta).await? {
            let mut blocks = Vec::new();
            walk_tree(shared, "object", &geom_of(&rec), &rec.roots[0], &mut blocks).await?;
            out.extend(blocks.iter().map(|d| info(Some(id), d)));
        }
        Ok(out)
    })?
}
