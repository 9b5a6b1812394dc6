//! The checkpoint discard reactor (OpenZFS `spa_checkpoint_discard_thread`, C.5).
//!
//! A dedicated thread with its own ring runs while the pool is DISCARDING. Per map:
//! 1. a sync task snapshots the first device that still has a checkpoint space map (its object
//!    record as committed, and the memory limit property); when none is left it clears the
//!    checkpoint feature instead (state NONE, history "finished") and the thread wakes waiters
//!    once that txg is committed;
//!
//! then rounds of
//! 2. open context: read ahead the blocks holding the last `min(length, limit)` bytes of the
//!    map (through the snapshot's pointers: the rounds only shorten the map, so every block
//!    below the tail block the previous round rewrote is untouched; that one comes from memory);
//! 3. a sync task destroys entries from the end of the map, at most `limit / 16 / 2` of them
//!    (each entry is at most two words, and up to one debug word accompanies each entry, so
//!    they fit in the read-ahead) and for at most the sync time property (at least one entry
//!    per round, so the discard always progresses), moving each extent into its metaslab's `freeing` (written
//!    FREE to the metaslab's map in that txg, allocatable after the defer period) and
//!    truncating the map; an emptied map is destroyed and its directory slot cleared. The task
//!    never reads what was not read ahead: it stops at the first block it does not hold. A
//!    map that is not the length the round expects sends the loop back to step 1.
//!
//! The read-ahead is kept across rounds and only refilled once the round reaches a block it
//! does not hold: a round only shortens the map, so what it leaves of a block is a prefix of
//! the bytes read (the rewritten tail block holds exactly that prefix). Time-bounded rounds
//! therefore do not multiply the reads.
//!
//! Each task is queued in the open txg without asking for its sync: it rides whichever txg the
//! pool syncs anyway (the foreground's dirty-data trigger, a FLUSH, the txg timeout), so a
//! discard under load adds its rounds to txgs the sync thread commits regardless instead of
//! making it commit small txgs back to back (which kept a core busy for the whole discard and
//! put the foreground's p99 at 1.4-2.8x, issue 5). The sync is asked for only when nothing is
//! written to the open txg for two polls (a quiet pool: nobody else would sync it before the
//! txg timeout), after the property
//! [`DISCARD_TXG_WAIT_PROP`] (default 1 s; 0 = always), or when the pool is closing.
//!
//! Everything is persisted through ordinary txgs, so an export or crash mid-way resumes from
//! disk at the next import ([`super::checkpoint::on_start`]). The space still held is the
//! allocator's per-device checkpoint space, decremented as extents are moved (I5 per txg).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringpool_ondisk::blkptr::{BlockPointer, DataPtr};
use ringpool_ondisk::object::{Bonus, ObjectRecord};
use ringpool_ondisk::space_map::{pop_tail, SmAction, SpaceMapHeader};

use super::checkpoint::{
    held_space, queue_task, queue_task_unrequested, state_of, take, CheckpointState,
    CHECKPOINT_FEATURE, DEFAULT_DISCARD_MEMORY_LIMIT, DEFAULT_DISCARD_SYNC_TIME_US,
    DEFAULT_DISCARD_TXG_WAIT_MS, DISCARD_MEMORY_LIMIT_PROP, DISCARD_SYNC_TIME_PROP,
    DISCARD_TXG_WAIT_PROP,
};
use super::error::{PoolError, Result};
use super::objtree::{Change, TreeGeom};
use super::shared::Shared;
use super::syncer::{destroy_object, leaf_positions, SmTail, SyncCtx, SyncTask};

/// Starts the discard reactor of `shared` unless the pool is closing (joins a previous one
/// that is finishing).
pub(crate) fn start(shared: &Arc<Shared>) {
    if shared.ckpt.cancel.load(Ordering::SeqCst) {
        return;
    }
    let mut slot = shared.ckpt.thread.lock();
    if let Some(h) = slot.take() {
        // A previous reactor only exits after setting the state to NONE: it is finishing.
        let _ = h.join();
    }
    *shared.ckpt.error.lock() = None;
    let sh = Arc::clone(shared);
    *slot = std::thread::Builder::new()
        .name(format!("discard-{}", shared.name))
        .spawn(move || run(sh))
        .ok();
}

fn run(shared: Arc<Shared>) {
    let cfg = crate::io::ReactorConfig {
        thread_name: "ringpool-discard".into(),
        ..super::PoolOptions::default().reactor
    };
    let sh = Arc::clone(&shared);
    let r = crate::io::block_on(&cfg, async move { discard_loop(&sh).await });
    let err = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(format!("discard reactor ring: {e}")),
    };
    if let Some(e) = err {
        if !shared.ckpt.cancel.load(Ordering::SeqCst) {
            tracing::warn!(pool = %shared.name, "checkpoint discard stopped: {e}");
            shared.ckpt.set_error(e);
        }
    }
}

/// A device's checkpoint map as committed.
#[derive(Debug, Clone)]
struct MapSnap {
    dev: u32,
    obj: u64,
    rec: ObjectRecord,
    limit: u64,
}

#[derive(Debug)]
enum Snapshot {
    /// The discard is complete (or there was none).
    Done,
    /// Work on this map.
    Map(Box<MapSnap>),
}

fn header_of(rec: &ObjectRecord) -> SpaceMapHeader {
    match &rec.bonus {
        Bonus::SpaceMap(h) => **h,
        _ => SpaceMapHeader::default(),
    }
}

fn corrupt(obj: u64, reason: impl Into<String>) -> PoolError {
    PoolError::Corrupt {
        object: format!("checkpoint space map (object {obj})"),
        offset: 0,
        reason: reason.into(),
    }
}

/// Runs `task` in a txg that is synced anyway when there is one, and waits for its commit.
async fn run_task(shared: &Arc<Shared>, task: SyncTask) -> Result<()> {
    let wait = txg_wait(shared);
    let (txg, slot) = if wait.is_zero() {
        queue_task(shared, false, task)?
    } else {
        queue_task_unrequested(shared, false, task)?
    };
    ride(shared, txg, wait).await?;
    take(&slot)
}

/// How often a round waiting for its txg looks at the txg engine.
const RIDE_POLL: Duration = Duration::from_millis(5);

/// [`DISCARD_TXG_WAIT_PROP`] as the last discard task saw it.
fn txg_wait(shared: &Shared) -> Duration {
    Duration::from_millis(shared.ckpt.txg_wait_ms.0.load(Ordering::Relaxed))
}

/// Sync context: reads [`DISCARD_TXG_WAIT_PROP`] for the next task (so a change applies at
/// the next round).
fn note_txg_wait(ctx: &SyncCtx<'_>) {
    let ms = ctx
        .st
        .dir
        .props
        .get(DISCARD_TXG_WAIT_PROP)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_DISCARD_TXG_WAIT_MS);
    ctx.shared.ckpt.txg_wait_ms.0.store(ms, Ordering::Relaxed);
}

/// Waits until `txg` is committed, letting whoever dirties the pool get it synced: the sync
/// is requested only when nothing was written to the open txg for two polls (a quiet pool:
/// nobody else would sync it before the txg timeout, whether it is clean or holds the last
/// writes of a burst), once `wait` has passed, or when the pool is closing.
async fn ride(shared: &Arc<Shared>, txg: u64, wait: Duration) -> Result<()> {
    let eng = &shared.txg;
    let start = Instant::now();
    let mut quiet_polls = 0u32;
    let mut last = None;
    loop {
        if eng.synced_txg() >= txg {
            return Ok(());
        }
        if let Some(e) = eng.failure() {
            return Err(PoolError::Suspended(e));
        }
        // The open txg and its dirty bytes: unchanged from one poll to the next = no writes.
        let now = (eng.open_txg(), eng.open_dirty());
        quiet_polls = if now.0 == txg && last == Some(now) {
            quiet_polls + 1
        } else {
            0
        };
        last = Some(now);
        if quiet_polls >= 2
            || start.elapsed() >= wait
            || shared.ckpt.cancel.load(Ordering::SeqCst)
            || eng.is_shutdown()
        {
            return shared.wait_synced(txg).await;
        }
        crate::io::sleep(RIDE_POLL).await;
    }
}

async fn discard_loop(shared: &Arc<Shared>) -> Result<()> {
    loop {
        if shared.ckpt.cancel.load(Ordering::SeqCst) {
            return Ok(());
        }
        let out = Arc::new(Mutex::new(None));
        let o = Arc::clone(&out);
        run_task(
            shared,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                note_txg_wait(ctx);
                *o.lock() = Some(snapshot(ctx)?);
                Ok(())
            }),
        )
        .await?;
        let snap = out
            .lock()
            .take()
            .ok_or_else(|| PoolError::Internal("discard snapshot task produced nothing".into()))?;
        let m = match snap {
            Snapshot::Done => {
                // The final txg is committed: the state is NONE on disk.
                shared.ckpt.set_none();
                return Ok(());
            }
            Snapshot::Map(m) => Arc::new(*m),
        };
        // One snapshot serves every round on this map: a round only shortens the map, so the
        // blocks below its new tail block are untouched (same pointers, still allocated), and
        // the tail block's new contents are handed back by the round itself. Each round then
        // costs one txg, not two.
        let name = format!("checkpoint space map dev{} (object {})", m.dev, m.obj);
        let geom = TreeGeom {
            levels: m.rec.levels.max(1),
            ibs: m.rec.indirect_block_size,
            bs: m.rec.data_block_size,
        };
        let pos: BTreeMap<u64, DataPtr> = leaf_positions(shared, &name, &geom, &m.rec.roots[0])
            .await?
            .into_iter()
            .collect();
        let mut cur = Round {
            len: header_of(&m.rec).length,
            tail: None,
        };
        let bs = u64::from(m.rec.data_block_size.max(1));
        let mut blocks: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        loop {
            if cur.len > 0 && !blocks.contains_key(&((cur.len - 1) / bs)) {
                // Every held block was consumed (rounds eat the window from its end).
                blocks.clear();
                blocks = prefetch(shared, &m, &name, &pos, &cur).await?;
            }
            if shared.ckpt.cancel.load(Ordering::SeqCst) {
                return Ok(());
            }
            let out = Arc::new(Mutex::new(None));
            let (o, mm, expect) = (Arc::clone(&out), Arc::clone(&m), cur.len);
            let held = std::mem::take(&mut blocks);
            run_task(
                shared,
                Box::new(move |ctx: &mut SyncCtx<'_>| {
                    note_txg_wait(ctx);
                    let r = destroy_round(ctx, &mm, expect, &held)?;
                    *o.lock() = Some((r, held));
                    Ok(())
                }),
            )
            .await?;
            // None: the task did not run, or the map is gone or not as expected; a new
            // snapshot decides.
            let Some((Some(next), back)) = out.lock().take() else {
                break;
            };
            if next.len == 0 || next.len >= cur.len {
                break;
            }
            // Blocks past the new end are gone from the map; the new tail block keeps its
            // prefix, which is all a round reads of it.
            blocks = back;
            let keep = next.len.div_ceil(bs);
            blocks.retain(|&b, _| b < keep);
            cur = next;
        }
    }
}

/// Where a map stands between two rounds on one snapshot.
#[derive(Debug)]
struct Round {
    /// Length of the map as the last round left it.
    len: u64,
    /// The block holding the map's last bytes, when that round rewrote it: (index, contents).
    tail: Option<(u64, Arc<Vec<u8>>)>,
}

/// Sync task: which map to work on next, or the final step.
fn snapshot(ctx: &mut SyncCtx<'_>) -> Result<Snapshot> {
    let dir = ctx.st.directory();
    if state_of(dir)?.0 != CheckpointState::Discarding {
        return Ok(Snapshot::Done);
    }
    let limit = dir
        .props
        .get(DISCARD_MEMORY_LIMIT_PROP)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(DEFAULT_DISCARD_MEMORY_LIMIT);
    let found = dir
        .devices
        .iter()
        .enumerate()
        .find(|(_, d)| d.checkpoint_sm != 0)
        .map(|(i, d)| (i, d.checkpoint_sm));
    if let Some((di, obj)) = found {
        let rec = ctx
            .st
            .objects
            .get(&obj)
            .cloned()
            .ok_or_else(|| corrupt(obj, "object missing"))?;
        return Ok(Snapshot::Map(Box::new(MapSnap {
            dev: u32::try_from(di).unwrap_or(u32::MAX),
            obj,
            rec,
            limit,
        })));
    }
    let held = held_space(ctx.shared);
    if held != 0 {
        return Err(PoolError::Internal(format!(
            "checkpoint discard: no checkpoint map left but {held} bytes still held (I5)"
        )));
    }
    ctx.st.directory_mut().features.remove(CHECKPOINT_FEATURE);
    ctx.log("checkpoint discard finished");
    Ok(Snapshot::Done)
}

/// The blocks holding the last `min(length, limit)` bytes of the map: the rewritten tail block
/// from memory, the others read through the snapshot's pointers.
async fn prefetch(
    shared: &Arc<Shared>,
    m: &MapSnap,
    name: &str,
    pos: &BTreeMap<u64, DataPtr>,
    cur: &Round,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let len = cur.len;
    let mut out = BTreeMap::new();
    if len == 0 {
        return Ok(out);
    }
    let bs = u64::from(m.rec.data_block_size.max(1));
    let window = len.min(m.limit);
    let first = (len - window) / bs;
    let last = (len - 1) / bs;
    for blk in first..=last {
        if let Some((t, data)) = &cur.tail {
            if *t == blk {
                out.insert(blk, data.to_vec());
                continue;
            }
        }
        let Some(d) = pos.get(&blk) else {
            return Err(corrupt(
                m.obj,
                format!("block {blk} below its length is a hole"),
            ));
        };
        let data = shared.read_verified(d, name, blk * bs).await?;
        out.insert(blk, data);
    }
    Ok(out)
}

/// How often (in entries) a round looks at the clock.
const TIME_CHECK_EVERY: usize = 16;

/// The sync time one round may spend moving extents ([`DISCARD_SYNC_TIME_PROP`], read each
/// round so a change applies at once).
fn sync_time_budget(ctx: &SyncCtx<'_>) -> Duration {
    let us = ctx
        .st
        .dir
        .props
        .get(DISCARD_SYNC_TIME_PROP)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(DEFAULT_DISCARD_SYNC_TIME_US);
    Duration::from_micros(us)
}

/// Sync task: destroys entries from the end of the map (bounded by count and sync time,
/// prefetched blocks only).
/// Returns where the map stands afterwards, or `None` when it is not the map `expect_len`
/// describes (the caller takes a new snapshot).
fn destroy_round(
    ctx: &mut SyncCtx<'_>,
    m: &MapSnap,
    expect_len: u64,
    blocks: &BTreeMap<u64, Vec<u8>>,
) -> Result<Option<Round>> {
    let obj = m.obj;
    let di = m.dev as usize;
    if ctx.st.dir.devices.get(di).map(|d| d.checkpoint_sm) != Some(obj) {
        return Ok(None); // stale snapshot: the next round looks again
    }
    let mut rec = ctx
        .st
        .objects
        .get(&obj)
        .cloned()
        .ok_or_else(|| corrupt(obj, "object missing"))?;
    let mut header = header_of(&rec);
    let old_len = header.length;
    if old_len != expect_len {
        return Ok(None);
    }
    let vdev = ctx.shared.vdev(m.dev)?;
    let unit = 1u64 << vdev.ashift;
    let bs = u64::from(rec.data_block_size.max(1));
    let budget = usize::try_from((m.limit / 16 / 2).max(1)).unwrap_or(usize::MAX);
    let deadline = Instant::now() + sync_time_budget(ctx);
    let mut left = budget;
    let mut len = old_len;
    let mut delta_units: i64 = 0;
    let mut out_of_time = false;
    while len > 0 && left > 0 && !out_of_time {
        let b = (len - 1) / bs;
        let Some(block) = blocks.get(&b) else {
            break; // not read ahead: next round
        };
        let valid = usize::try_from(len - b * bs).unwrap_or(usize::MAX);
        if valid > block.len() {
            return Err(corrupt(obj, "length beyond the block read"));
        }
        let mut pop = pop_tail(&block[..valid], left).map_err(|e| corrupt(obj, e.to_string()))?;
        let mut done = 0;
        for e in &pop.entries {
            // At least one entry per round; the clock is read every few entries (an entry
            // costs ~0.5 us of sync time, a clock read ~25 ns).
            if done > 0 && done % TIME_CHECK_EVERY == 0 && Instant::now() >= deadline {
                out_of_time = true;
                break;
            }
            done += 1;
            if e.action != SmAction::Free {
                return Err(corrupt(obj, format!("ALLOC entry at unit {}", e.offset)));
            }
            let start = e.offset.checked_mul(unit);
            let l = e.run.checked_mul(unit);
            let (Some(start), Some(l)) = (start, l) else {
                return Err(corrupt(obj, "entry beyond the device"));
            };
            ctx.shared
                .class
                .discard_checkpoint_extent(m.dev, start, l)?;
        }
        if !out_of_time && Instant::now() >= deadline {
            out_of_time = true;
        }
        if done < pop.entries.len() {
            // Stopped early: the bytes and net allocation of exactly the entries moved (the
            // same pop with a smaller count: the entries are taken from the end in order).
            pop = pop_tail(&block[..valid], done).map_err(|e| corrupt(obj, e.to_string()))?;
            if pop.entries.len() != done {
                return Err(PoolError::Internal("discard: partial pop differs".into()));
            }
        }
        left -= pop.entries.len().min(left);
        len -= pop.bytes_removed.min(len);
        delta_units = delta_units
            .checked_add(pop.alloc_delta_units)
            .ok_or_else(|| corrupt(obj, "net allocation overflows"))?;
        if !pop.block_emptied {
            break;
        }
    }
    if len == old_len {
        return Ok(None);
    }
    let unit_i = i64::try_from(unit).map_err(|_| corrupt(obj, "unit"))?;
    header.alloc = delta_units
        .checked_mul(unit_i)
        .and_then(|d| header.alloc.checked_add(d))
        .ok_or_else(|| corrupt(obj, "net allocation overflows"))?;
    header.length = len;
    if len == 0 {
        if header.alloc != 0 {
            return Err(corrupt(
                obj,
                format!("emptied map still accounts {} bytes", header.alloc),
            ));
        }
        destroy_object(ctx.st, obj);
        ctx.st.sm_tails.remove(&obj);
        if let Some(d) = ctx.st.directory_mut().devices.get_mut(di) {
            d.checkpoint_sm = 0;
        }
        return Ok(Some(Round { len: 0, tail: None }));
    }
    let keep = len.div_ceil(bs);
    let old_blocks = old_len.div_ceil(bs);
    let changes = ctx.st.dirty_data.entry(obj).or_default();
    for blk in keep..old_blocks {
        changes.insert(blk, Change::Ptr(BlockPointer::EMPTY));
    }
    let tail_len = usize::try_from(len % bs).unwrap_or(0);
    let mut tail = Vec::new();
    let mut rewritten = None;
    if tail_len != 0 {
        let b = len / bs;
        let block = blocks
            .get(&b)
            .ok_or_else(|| PoolError::Internal("discard: tail block not read ahead".into()))?;
        tail = block[..tail_len].to_vec();
        let mut data = tail.clone();
        data.resize(usize::try_from(bs).unwrap_or(0), 0);
        let data = Arc::new(data);
        changes.insert(b, Change::Data(Arc::clone(&data)));
        rewritten = Some((b, data));
    }
    ctx.st.sm_tails.insert(obj, SmTail { tail });
    rec.length = len;
    rec.bonus = Bonus::SpaceMap(Box::new(header));
    ctx.st.objects.insert(obj, rec);
    ctx.st.dirty_records.insert(obj);
    Ok(Some(Round {
        len,
        tail: rewritten,
    }))
}
