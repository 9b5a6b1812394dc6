//! Write-back: an NBD WRITE without FUA is acknowledged as soon as it is ordered (its blocks
//! locked, checksummed, its txg held and its new places allocated); the device write and the
//! publication of the new block pointers finish in a task of their own.
//!
//! The NBD server does this when configured to (`NbdServerConfig::write_back`).
//!
//! Why: a client keeping N writes in flight otherwise gets N device writes in flight minus
//! everything the server does per request (receive, checksum, reply) serialized on one
//! reactor, so a 128 KiB sequential write at QD8 ran at 0.7-0.9x the raw file. Acknowledging
//! early lets the client send the next writes while the device is still busy with the last
//! ones, as a server writing through the page cache does, but with the data going straight
//! to the device (O_DIRECT) and a bound on what is in flight.
//!
//! What a client sees does not change:
//! * Durability: a non-FUA write is only promised durable after a FLUSH, and that was
//!   already so (its block pointer lives in the open txg until the txg commits). The write
//!   holds its txg until its blocks are published, a txg cannot commit while held, and the
//!   write marks the pool dirty before it is acknowledged, so a FLUSH that follows the
//!   acknowledgement waits for it (`Shared::flush`).
//! * Ordering: the write holds its blocks' locks until they are published. A later write
//!   takes the same locks; a later read or block-status query of a volume with write-backs
//!   in flight waits on the locks of its range first ([`Volume::wait_write_back`]), so it
//!   sees the acknowledged data.
//! * Errors before the device write (range, read-only, suspended pool, no space) fail the
//!   request itself, as without write-back.
//!
//! # A device error after the acknowledgement
//!
//! The policy: the pool is suspended, exactly as by a failed txg sync, before the write's txg
//! hold is released, so that txg (and every later one) never commits:
//! * every later FLUSH, FUA write and ordinary write fails with EIO, on every connection
//!   (the one that wrote, the others and new ones: with CAN_MULTI_CONN a FLUSH anywhere
//!   covers every connection's writes, so anywhere it must report the loss), until
//!   `ringpool clear` reopens the pool at its last committed txg;
//! * reads keep working: the lost write's blocks read as what they held before it (its
//!   block pointers were never published; never the half-written places), every other
//!   acknowledged write of the uncommitted txgs reads as written;
//! * `ringpool status` shows SUSPENDED with the txg and the failed write, and the export
//!   fails with the suspension (the labels keep the last committed state).
//!
//! This is what the client was promised: a WRITE without FUA is durable only once a FLUSH
//! after it succeeded, and that FLUSH never succeeds. It is Linux's write-back error
//! reporting (a failed page write-back makes the next fsync of every open file fail, and
//! the page keeps no error of its own) and OpenZFS's `failmode=wait`/`continue` (an I/O
//! failure suspends the pool; reads of what is cached go on; `zpool clear` resumes) rather
//! than failing the one WRITE, which the client was already told succeeded. Without
//! write-back (`RINGPOOL_NBD_WRITE_BACK=0`) the WRITE itself fails and the pool stays
//! online.
//!
//! # Shutdown
//!
//! A clean stop (`ringpool serve` on SIGINT or SIGTERM, `ringpool export`, `Pool::export`)
//! commits every acknowledged write-back: the final sync waits for the txg holds of the
//! write-backs still in flight like any quiesce does, and once it is done no hold is given
//! (a write then fails with ESHUTDOWN instead of being acknowledged and lost). Their tasks
//! must still run for that: `serve` stops the NBD server, exports the pools, and only then
//! stops the reactors. A write-back task dropped before it published (its reactor stopped
//! first) suspends the pool ([`Pending`]): the export fails and says why, and the devices
//! keep the last committed state. A crash (SIGKILL, power loss) loses what no FLUSH
//! covered, as without write-back.

use std::sync::atomic::Ordering;

use super::super::blocklock::RangeGuard;
use super::super::error::{PoolError, Result};
use super::super::txg::TxgHold;
use super::write::Prepared;
use super::Volume;
use crate::io::IoBuf;

/// Bytes of acknowledged writes one volume may have on their way to the device, by default.
/// Past it a write is done the ordinary way (acknowledged after its device write):
/// back-pressure on a client that writes faster than the device. Small on purpose: whatever
/// is in flight is queued at the device ahead of the next write, so the bound is also what a
/// write can wait behind (8 MiB gave a p99 of 8 ms for 128 KiB writes at QD8, against 2.6 ms
/// acknowledging after the device write).
pub const WRITE_BACK_MAX_BYTES: u64 = 2 << 20;

/// The bound in force: [`WRITE_BACK_MAX_BYTES`], or `RINGPOOL_WRITE_BACK_MAX_KIB` from the
/// environment (read once; for comparisons).
fn write_back_max() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        crate::knob::env::<u64>("RINGPOOL_WRITE_BACK_MAX_KIB")
            .map_or(WRITE_BACK_MAX_BYTES, |k| k << 10)
    })
}

/// `RINGPOOL_WRITE_BACK_DELAY_MS`: how long a write-back task waits before its device write
/// (read once; unset: not at all). For tests that need acknowledged writes still in flight
/// when something else happens (a shutdown, an export).
fn test_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        crate::knob::env::<u64>("RINGPOOL_WRITE_BACK_DELAY_MS")
            .map(std::time::Duration::from_millis)
    })
}

impl Volume {
    /// Writes `data` at `offset` without FUA, returning as soon as the write is ordered (see
    /// the module docs) when it can: a block-aligned write of at most 1 MiB from a
    /// page-aligned buffer, on a reactor thread, that keeps the volume's acknowledged writes in
    /// flight within [`WRITE_BACK_MAX_BYTES`]. Anything else is written the ordinary
    /// way ([`write_buf`](Self::write_buf)) and its buffer comes back; a write-back keeps the
    /// buffer (`None`).
    pub async fn write_back(&self, offset: u64, data: IoBuf) -> (Result<()>, Option<IoBuf>) {
        let bs = self.bs();
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let eligible = !data.is_empty()
            && offset.is_multiple_of(bs)
            && len.is_multiple_of(bs)
            && len <= super::write::BATCH_BYTES
            && data.addr().is_multiple_of(crate::io::buf::DEFAULT_ALIGN);
        if !(eligible && self.reserve_write_back(len)) {
            let (r, data) = self.write_buf(offset, data, false).await;
            return (r, Some(data));
        }
        let release = || self.inner.write_back_bytes.fetch_sub(len, Ordering::AcqRel);
        if let Err(e) = self
            .check_writable()
            .and_then(|()| self.check_range(offset, len))
        {
            release();
            return (Err(e), Some(data));
        }
        let first = offset / bs;
        let last = (offset + len - 1) / bs;
        let guards = self.lock_blocks(first, last).await;
        let nblk = usize::try_from(last - first + 1).unwrap_or(0);
        let prepared = match self.prepare_commit(nblk, &data).await {
            Ok(p) => p,
            Err(e) => {
                drop(guards);
                release();
                return (Err(e), Some(data));
            }
        };
        self.finish_in_background(vec![(first, nblk)], data, prepared, guards, len);
        (Ok(()), None)
    }

    /// The write-back of a gathered batch ([`write_gather_back`](Self::write_gather_back)):
    /// `content` holds the blocks of `runs` back to back, `guards` their locks, `len` its
    /// bytes. Acknowledged once ordered as [`write_back`](Self::write_back) is; without room
    /// in the bound (or off a reactor thread) committed the ordinary way before returning.
    /// An error means nothing was written and every lock is released.
    pub(super) async fn commit_runs_back(
        &self,
        runs: Vec<(u64, usize)>,
        content: IoBuf,
        guards: Vec<RangeGuard>,
        len: u64,
    ) -> Result<()> {
        let eligible = content.addr().is_multiple_of(crate::io::buf::DEFAULT_ALIGN);
        if !(eligible && self.reserve_write_back(len)) {
            let (r, _content) = self.commit_runs(&runs, content).await;
            drop(guards);
            return r.map(drop);
        }
        let nblk: usize = runs.iter().map(|r| r.1).sum();
        let prepared = match self.prepare_commit(nblk, &content).await {
            Ok(p) => p,
            Err(e) => {
                drop(guards);
                self.inner.write_back_bytes.fetch_sub(len, Ordering::AcqRel);
                return Err(e);
            }
        };
        self.finish_in_background(runs, content, prepared, guards, len);
        Ok(())
    }

    /// Counts `len` bytes of a write-back against the volume's bound, if it is taken on a
    /// reactor thread (the background task needs one) and the bound has room; the caller
    /// gives them back once the write is published (or on failure). False: write the ordinary
    /// way.
    fn reserve_write_back(&self, len: u64) -> bool {
        if !crate::io::in_reactor() {
            return false;
        }
        let inflight = &self.inner.write_back_bytes;
        if inflight.fetch_add(len, Ordering::AcqRel) + len > write_back_max() {
            inflight.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Acknowledges a prepared commit: marks its txg dirty and finishes it (device write,
    /// publication) in a task of its own, which releases `guards` (the blocks' locks) and the
    /// `len` bytes the caller counted in the write-back bound once the blocks are published.
    fn finish_in_background<G: 'static>(
        &self,
        runs: Vec<(u64, usize)>,
        data: IoBuf,
        prepared: Prepared,
        guards: G,
        len: u64,
    ) {
        // From here a FLUSH waits for this txg, which cannot commit before the task below
        // published the blocks (it holds the txg).
        self.shared.mark_dirty(prepared.txg());
        let pending = Pending {
            vol: self.clone(),
            hold: Some(prepared.hold_another()),
            len,
            done: false,
        };
        crate::io::spawn_local(async move {
            let mut pending = pending;
            if let Some(d) = test_delay() {
                crate::io::sleep(d).await;
            }
            // Nobody waits on this device write (the client has its answer): the ring may
            // hold it a little to merge it with the next ones. Whoever comes to wait on it (a
            // FLUSH, a read or a rewrite of its blocks) sends it (`crate::io::writes_wanted`).
            let (r, data) =
                crate::io::deferred_writes(pending.vol.finish_commit(&runs, data, prepared, true))
                    .await;
            drop(guards);
            drop(data);
            // A failure has suspended the pool (`finish_commit`); nobody waits for this task.
            drop(r);
            pending.done = true;
        });
    }

    /// Waits until no write-back write is in flight on blocks `first..=last` (by taking and
    /// releasing their locks, which a write-back holds until its blocks are published). Free
    /// when the volume has none in flight.
    pub(super) async fn wait_write_back(&self, first: u64, last: u64) {
        if self.inner.write_back_bytes.load(Ordering::Acquire) > 0 {
            drop(self.lock_blocks(first, last).await);
        }
    }
}

/// One write-back write between its acknowledgement and the end of its task. If the task is
/// dropped before it ran to the end (its reactor shut down, or the `block_on` that spawned it
/// returned), the acknowledged write never reached the device or the volume's map: the pool
/// is suspended, as for a failed device write, before this guard's own hold on the write's
/// txg goes, so that txg never commits without the write and the loss is reported (every
/// later FLUSH, FUA write and the export fail) instead of silent.
struct Pending {
    vol: Volume,
    /// A hold of the write's txg of the guard's own: whatever order the task's state is
    /// dropped in, the txg cannot commit before the guard decided.
    hold: Option<TxgHold>,
    len: u64,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            if let Some(h) = &self.hold {
                self.vol.shared.suspend_write_back(
                    h.txg(),
                    &PoolError::Internal(
                        "the write-back task was cancelled before its write was published \
                         (its reactor stopped)"
                            .into(),
                    ),
                );
            }
        }
        self.vol
            .inner
            .write_back_bytes
            .fetch_sub(self.len, Ordering::AcqRel);
        drop(self.hold.take());
    }
}
