//! `reguid`: give the pool a new GUID online (OpenZFS `spa_change_guid`, `zpool reguid`).
//!
//! The GUID names the pool in every label header and in every uberblock; import only trusts
//! the uberblocks of a label whose header carries the same GUID. A rewind to a checkpoint
//! taken under the old GUID could not be undone consistently, so, like OpenZFS, reguid is
//! refused while a checkpoint exists or is being discarded (reference D.3).
//!
//! Crash safety. The change is one early sync task of txg T that rewrites the labels itself,
//! in an order where every crash point leaves an importable pool:
//! 1. into every label's ring slot of T: an uberblock of the state committed at T-1 (same
//!    root, as a no-op txg would write) stamped txg T and the new GUID. Invisible while the
//!    label header still carries the old GUID; flush;
//! 2. the front headers (labels 0 and 1) of every device with the new GUID and config txg T;
//!    flush; then the back headers (2 and 3); flush;
//! 3. the ordinary commit of T writes the real uberblock T with the new GUID.
//!
//! Each label is thus old (old header, old uberblocks) or new (new header, an uberblock of
//! txg >= T) at any instant. A crash between 2's writes leaves labels of both GUIDs on the
//! same devices: import treats them as one pool and takes the newer configuration, which
//! already has a usable uberblock (step 1); the first import rewrites every label.

use std::sync::Arc;

use parking_lot::Mutex;
use ringpool_ondisk::label::LabelHeader;
use ringpool_ondisk::uberblock::Uberblock;

use super::checkpoint::check_config_change;
use super::error::{PoolError, Result};
use super::lifecycle::{note_imported, random_guid, release_imported};
use super::syncer::{guid_sum, label_header, now_secs, SyncCtx};
use super::vdev::Vdev;
use super::Pool;

impl Pool {
    /// Gives the pool a new random GUID (`zpool reguid`) and returns it. The new GUID is in
    /// every label and in the uberblock of the txg that made the change when this returns.
    ///
    /// Refused with [`PoolError::CheckpointExists`] ("checkpoint exists") while a checkpoint
    /// exists and [`PoolError::DiscardingCheckpoint`] ("currently discarding checkpoint")
    /// while one is being discarded, as OpenZFS does; [`PoolError::ReadOnly`] on a read-only
    /// pool.
    pub fn reguid(&self) -> Result<u64> {
        if self.read_only() {
            return Err(PoolError::ReadOnly);
        }
        let out = Arc::new(Mutex::new(0u64));
        let o = Arc::clone(&out);
        self.sync_task_blocking(
            true,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                *o.lock() = reguid_task(ctx)?;
                Ok(())
            }),
        )?;
        let g = *out.lock();
        Ok(g)
    }
}

/// Early sync task: checks, switches the GUID, rewrites the labels (see the module doc).
fn reguid_task(ctx: &mut SyncCtx<'_>) -> Result<u64> {
    check_config_change(ctx.st)?;
    let old = ctx.shared.guid();
    let new = loop {
        let g = random_guid();
        if g != old {
            break g;
        }
    };
    let vdevs: Vec<Arc<Vdev>> = ctx.shared.vdevs.read().clone();
    let last = *ctx.st.last_uberblock();
    if last.txg >= ctx.txg {
        return Err(PoolError::Internal(format!(
            "reguid: last committed uberblock is txg {} while syncing {}",
            last.txg, ctx.txg
        )));
    }
    // Early task: nothing of this txg is written yet, so the committed state is `last`'s.
    let bridge = Uberblock {
        txg: ctx.txg,
        guid_sum: guid_sum(&vdevs),
        timestamp: now_secs().max(last.timestamp),
        checkpoint_txg: 0,
        root: last.root,
        pool_guid: new,
    };
    ctx.shared.set_guid(new);
    // This process now holds the pool under its new GUID (double-import guard).
    note_imported(new);
    release_imported(old);
    ctx.st.label.config_txg = ctx.txg;
    let headers: Vec<LabelHeader> = vdevs
        .iter()
        .map(|v| label_header(ctx.shared, ctx.st, v))
        .collect();
    // The sync thread's closure cannot await: the label I/O runs on a short-lived thread with
    // its own ring while the sync thread waits (a few label writes and flushes).
    let cfg = crate::io::ReactorConfig {
        thread_name: "ringpool-reguid".into(),
        ..super::PoolOptions::default().reactor
    };
    let r = std::thread::scope(|s| {
        s.spawn(|| crate::io::block_on(&cfg, relabel(&vdevs, &headers, &bridge)))
            .join()
    });
    let r = match r {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(PoolError::Internal(format!("reguid ring: {e}"))),
        Err(_) => Err(PoolError::Internal("reguid label writer panicked".into())),
    };
    if let Err(e) = r {
        // Some labels may carry the new GUID already: the commit of this txg rewrites them
        // all (and suspends the pool if it cannot), so the change completes or the pool stops.
        tracing::warn!(pool = %ctx.shared.name, "reguid label rewrite failed, the commit retries: {e}");
        ctx.st.labels_dirty = true;
    }
    ctx.log(format!("reguid: pool guid {old:#x} -> {new:#x}"));
    Ok(new)
}

/// Steps 1 and 2 of the module doc.
async fn relabel(vdevs: &[Arc<Vdev>], headers: &[LabelHeader], bridge: &Uberblock) -> Result<()> {
    for v in vdevs {
        for l in super::vdev::LABELS {
            v.write_uberblock(l, bridge).await?;
        }
    }
    flush(vdevs).await?;
    for pair in [[0usize, 1], [2, 3]] {
        for (v, h) in vdevs.iter().zip(headers) {
            for l in pair {
                v.write_label_header(l, h).await?;
            }
        }
        flush(vdevs).await?;
    }
    Ok(())
}

async fn flush(vdevs: &[Arc<Vdev>]) -> Result<()> {
    for v in vdevs {
        v.flush().await?;
    }
    Ok(())
}
