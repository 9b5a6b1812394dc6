//! Write aggregation: writes made in one reactor turn to adjacent offsets of the same file go
//! to the ring as one vectored write (OpenZFS's vdev_queue aggregation, done where a turn's
//! SQEs are pushed).
//!
//! Why: copy-on-write allocation hands consecutive writes consecutive device offsets, so a
//! burst of small random volume writes becomes a burst of device writes to adjacent places.
//! Submitted one by one, each costs an SQE, a pass through the kernel's O_DIRECT path (iomap,
//! bio, completion) and a CQE; on a machine whose cores the client shares, that CPU is what
//! bounds the IOPS (4k randwrite QD32 over NBD: the reactor spent 7.3 s of a 10 s run).
//!
//! How:
//! * A write ([`Driver::submit_write`]) gets its slot at once but is only *staged*: held in a
//!   list instead of the SQ, until the end of the loop turn ([`Driver::flush_staged`], called
//!   by `turn` before it enters the kernel), or earlier when the staged bytes reach the
//!   aggregation limit. A lone write is thus delayed by nothing more than the rest of its turn,
//!   which it waited for anyway unless [`super::super::ReactorConfig::submit_batch`] SQEs
//!   were queued before it.
//! * While the window's worth of writes to a file is in flight
//!   ([`super::super::ReactorConfig::write_aggregate_window`]), its staged writes stay staged
//!   past the turn, until one of those completes: the device is busy anyway, and what arrives
//!   meanwhile (a sequential stream, whose writes come one per turn) goes out merged. A file
//!   with fewer writes in flight (every write at queue depth 1) is never held past the turn.
//! * At the flush the staged writes are sorted by (file, offset); every run of back-to-back
//!   writes to one file of at most the limit (and [`MAX_IOVECS`] members) becomes one
//!   IORING_OP_WRITEV (WRITEV_FIXED when every member is in the same registered buffer and the
//!   kernel has it) over the members' own buffers: no copy, and each iovec keeps the O_DIRECT
//!   alignment its member was checked for. Anything else goes as it was made.
//! * Each member keeps its slot, its future and its result: a vectored write that wrote
//!   everything completes every member with its own length; one that failed or came back
//!   short re-issues each member alone (counted in [`RingStats::vectored_fallbacks`]), so
//!   every error reaches the write it belongs to with that write's offset, and the layers
//!   above (the pool's per-write error policy) see exactly what they saw without merging.
//! * Writes made inside [`crate::io::deferred_writes`] (the device writes of write-back
//!   tasks, whose client was answered already) stay staged past the turn even when nothing is
//!   in flight, until their file's staged bytes reach
//!   [`super::super::ReactorConfig::write_defer`] or the oldest has waited
//!   [`super::super::ReactorConfig::write_defer_for`] (a timer on the ring wakes the
//!   reactor for that), or another write or a barrier to the file flushes them. Why: a
//!   sequential stream served by one reactor arrives one 128 KiB write per ~60 us, slower
//!   than the device completes them, so the window above never fills and nothing merged (0.87
//!   device writes per NBD write); every device write costs the reactor a plug flush with a
//!   virtio doorbell (a VM exit), a pass through ext4/iomap and a completion.
//! * Nothing is merged across files, with reads, or across a barrier: an fsync, fallocate or
//!   discard flushes the staged writes into the SQ before it is submitted itself
//!   ([`super::super::flush_staged_writes`]), so it is never submitted before a write made
//!   earlier (as before, io_uring does not order ops in flight: a flush covers the writes
//!   that *completed* before it was issued, which is what every caller waits for).
//!
//! [`RingStats::vectored_fallbacks`]: super::RingStats::vectored_fallbacks

use std::cell::Cell;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};

use super::perfile::PerFile;
use super::{Driver, Lifecycle, OpData, Slot};
use crate::io::ops::FileRef;

/// Default aggregation limit in bytes: OpenZFS's `zfs_vdev_aggregation_limit` (1 MiB). Large
/// enough that a QD32 burst of 4 KiB writes or a QD8 window of 128 KiB writes is one device
/// write; no larger, because a merged write is as slow as its whole length and every write
/// of its members waits for all of it. `RINGPOOL_WRITE_AGGREGATE_KIB` overrides it (0: off),
/// for A/B comparisons.
pub const DEFAULT_WRITE_AGGREGATE: usize = 1 << 20;

/// Default of `ReactorConfig::write_aggregate_window`: while 2 writes to a file are in flight,
/// later ones wait for one of them to complete. A 128 KiB write arrives alone in its turn (its
/// payload is a receive of its own), so only this merges a sequential stream: over NBD, 128 KiB
/// writes at QD8 ran at 1.19x the IOPS (1.10-1.26x in each of 6 alternated rounds) and 0.84x
/// the server CPU per write of holding writes to the end of their turn only (0), while 4 KiB
/// random writes at QD32 (gathered into batches by the NBD server already) stayed at 0.99x.
/// A window of 1 (wait for every write in flight) cost 0.82x / 0.90x: the device idles
/// between batches.
pub const DEFAULT_WRITE_AGGREGATE_WINDOW: usize = 2;

/// Default of `ReactorConfig::write_defer`: deferred writes of a file go once this many
/// bytes of them are staged (8 writes of 128 KiB, the aggregation limit), or earlier (see
/// the module docs). 1 MiB against 512 KiB, 128 KiB writes at QD8 over NBD on 128 KiB
/// blocks: 1.11x the IOPS at 0.94x the reactor's CPU per write (6 alternated rounds).
pub const DEFAULT_WRITE_DEFER: usize = 1 << 20;

/// Default of `ReactorConfig::write_defer_for`: the longest a deferred write waits. Long
/// enough for a stream at 5k writes/s to fill [`DEFAULT_WRITE_DEFER`]; a FLUSH or FUA write
/// does not wait for it (`Shared::wait_synced` sends its reactor's deferred writes), the
/// client of a deferred write has its answer already, and a read of its blocks waits at most
/// this long (their locks are held until the write is published).
pub const DEFAULT_WRITE_DEFER_FOR: Duration = Duration::from_millis(2);

/// user_data of the timer that wakes the ring when deferred writes are due (its CQE only
/// clears `Aggregator::timer_armed`; the next turn's flush pushes what is due).
pub(super) const TOKEN_DEFER: u64 = u64::MAX - 2;

thread_local! {
    /// Writes made now may be deferred (see [`crate::io::deferred_writes`]).
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
}

/// Sets whether positioned writes made on this thread from now on may be deferred; returns
/// the old value.
pub(crate) fn set_deferring(on: bool) -> bool {
    DEFERRING.with(|c| c.replace(on))
}

/// Most members of one vectored write (Linux IOV_MAX: more is EINVAL).
const MAX_IOVECS: usize = 1024;

/// Tag of a vectored write's user_data (its group key below it). Op keys (`key + 1`) stay far
/// below it, and it is below the reserved internal tokens.
const GROUP_TAG: u64 = 1 << 62;

/// A positioned write as [`Driver::submit_write`] takes it.
pub(crate) struct WriteReq {
    pub(crate) fd: FileRef,
    pub(crate) offset: u64,
    /// First byte written; memory owned by the op's data.
    pub(crate) ptr: *const u8,
    pub(crate) len: u32,
    /// Registered buffer index of `ptr`'s memory, if any.
    pub(crate) fixed: Option<u16>,
    /// The SQE that does this write alone (WRITE or WRITE_FIXED), without user_data.
    pub(crate) single: squeue::Entry,
}

/// A staged write (or a member of a vectored write in flight).
struct Staged {
    key: usize,
    fd: FileRef,
    offset: u64,
    ptr: *const u8,
    len: u32,
    fixed: Option<u16>,
    /// The write alone, with its user_data: submitted when not merged, or as the fallback.
    single: squeue::Entry,
    /// When a deferred write was made (None: an ordinary write, due at the end of its turn).
    deferred: Option<Instant>,
}

/// A vectored write in flight: its members and the iovecs the kernel reads.
struct Group {
    members: Vec<Staged>,
    // Read by the kernel only; boxed so the address stays put while the slab moves.
    #[allow(dead_code)]
    iov: Box<[libc::iovec]>,
    total: u64,
}

/// The aggregation state of one ring.
pub(super) struct Aggregator {
    /// Aggregation limit in bytes (0: writes are submitted as they are made).
    limit: usize,
    /// Hold a file's writes past the turn while this many of its writes are in flight (0: no).
    window: usize,
    /// Write SQEs in flight per file (a vectored write counts once).
    inflight: PerFile,
    /// The kernel has IORING_OP_WRITEV_FIXED (Linux 6.15+).
    writev_fixed: bool,
    /// Deferred writes of a file go once this many bytes of its writes are staged (0: writes
    /// are never deferred).
    defer: usize,
    /// ... or once the oldest has waited this long.
    defer_for: Duration,
    /// Live `WritesWanted` guards of this reactor: while any, nothing is deferred.
    wanted: usize,
    /// The wake-up for `defer_for` is on the ring; boxed so its address stays put until the
    /// kernel has read it (at submission), which may be after the driver moved.
    timer_armed: bool,
    timer_ts: Box<types::Timespec>,
    staged: Vec<Staged>,
    staged_bytes: usize,
    groups: slab::Slab<Group>,
}

impl Aggregator {
    pub(super) fn new() -> Aggregator {
        Aggregator {
            limit: 0,
            window: 0,
            inflight: PerFile::default(),
            writev_fixed: false,
            defer: 0,
            defer_for: DEFAULT_WRITE_DEFER_FOR,
            wanted: 0,
            timer_armed: false,
            timer_ts: Box::new(types::Timespec::from(DEFAULT_WRITE_DEFER_FOR)),
            staged: Vec::new(),
            staged_bytes: 0,
            groups: slab::Slab::new(),
        }
    }

    /// Writes are waiting for the end of the turn.
    pub(super) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Forget everything that is not in flight (shutdown: their futures are gone).
    pub(super) fn clear_staged(&mut self) {
        self.staged.clear();
        self.staged_bytes = 0;
    }

    fn inflight(&self, fd: FileRef) -> usize {
        self.inflight.get(fd)
    }

    fn write_pushed(&mut self, fd: FileRef) {
        self.inflight.add(fd);
    }

    /// A write SQE to `fd` completed.
    pub(super) fn write_done(&mut self, fd: FileRef) {
        self.inflight.done(fd);
    }

    /// The deferral timer's CQE arrived.
    pub(super) fn timer_fired(&mut self) {
        self.timer_armed = false;
    }

    /// Leak the groups' iovecs and the timer's timespec (the kernel may still read them: see
    /// Drop for Driver).
    pub(super) fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.groups));
        let ts = std::mem::replace(&mut self.timer_ts, Box::new(types::Timespec::new()));
        std::mem::forget(ts);
    }
}

/// The user_data of group `gkey`, or the group of a user_data.
pub(super) fn group_of(ud: u64) -> Option<usize> {
    (ud & GROUP_TAG != 0)
        .then(|| usize::try_from(ud & !GROUP_TAG).ok())
        .flatten()
}

fn fd_key(fd: FileRef) -> (u8, i64) {
    match fd {
        FileRef::Raw(r) => (0, i64::from(r)),
        FileRef::Fixed(i) => (1, i64::from(i)),
    }
}

impl Driver {
    /// Sets the aggregation limit (0: off) and window, and probes for WRITEV_FIXED.
    pub(crate) fn set_write_aggregate(&mut self, bytes: usize, window: usize) {
        self.wagg.limit = bytes;
        self.wagg.window = window;
        if bytes > 0 && !self.wagg.writev_fixed {
            let mut probe = io_uring::Probe::new();
            self.wagg.writev_fixed = self.ring.submitter().register_probe(&mut probe).is_ok()
                && probe.is_supported(opcode::WritevFixed::CODE);
        }
        self.info.vectored_fixed = self.wagg.writev_fixed;
    }

    /// Somebody starts (`on`) or stops waiting for this ring's writes: while anybody does,
    /// no write is deferred, and starting sends the deferred ones.
    pub(crate) fn want_writes(&mut self, on: bool) {
        if on {
            self.wagg.wanted += 1;
            if self.wagg.staged.iter().any(|s| s.deferred.is_some()) {
                self.flush_staged(true);
            }
        } else {
            self.wagg.wanted = self.wagg.wanted.saturating_sub(1);
        }
    }

    /// Sets how many staged bytes of deferred writes of a file send them (0: never defer),
    /// and the longest a deferred write waits.
    pub(crate) fn set_write_defer(&mut self, bytes: usize, wait: Duration) {
        self.wagg.defer = bytes;
        self.wagg.defer_for = wait;
        *self.wagg.timer_ts = types::Timespec::from(wait);
    }

    /// Registers a positioned write: the slot takes `data` (which owns the memory `req`
    /// points at); the write is staged for aggregation or pushed at once. Returns the slot key.
    pub(crate) fn submit_write(&mut self, req: WriteReq, data: OpData) -> usize {
        let key = self.ops.insert(Slot {
            life: Lifecycle::Waiting(None),
            data,
            grouped: false,
            write_fd: Some(req.fd),
            read_fd: None,
            read: false,
        });
        let ud = u64::try_from(key).unwrap_or(u64::MAX) + 1;
        self.stats.writes += 1;
        let len = usize::try_from(req.len).unwrap_or(usize::MAX);
        let single = req.single.user_data(ud);
        // A write at "the current position" (-1) has no neighbour; one as large as the limit
        // has nothing to gain.
        if self.wagg.limit == 0 || req.offset == u64::MAX || len >= self.wagg.limit {
            self.push_single(req.fd, single);
            return key;
        }
        let deferred = (self.wagg.defer > 0 && self.wagg.wanted == 0 && DEFERRING.with(Cell::get))
            .then(Instant::now);
        self.wagg.staged.push(Staged {
            key,
            fd: req.fd,
            offset: req.offset,
            ptr: req.ptr,
            len: req.len,
            fixed: req.fixed,
            single,
            deferred,
        });
        self.wagg.staged_bytes += len;
        if self.wagg.staged_bytes >= self.wagg.limit || self.wagg.staged.len() >= MAX_IOVECS {
            self.flush_staged(true);
        }
        key
    }

    /// Pushes the staged writes to the SQ, adjacent runs merged (see the module docs). Unless
    /// `force`, the writes of a file with the window's worth of writes in flight stay staged.
    pub(crate) fn flush_staged(&mut self, force: bool) {
        if self.wagg.staged.is_empty() {
            return;
        }
        let mut staged = std::mem::take(&mut self.wagg.staged);
        self.wagg.staged_bytes = 0;
        let window = if force { 0 } else { self.wagg.window };
        // Decided per file before anything is pushed: once a file's writes go, they all go.
        let mut busy: Vec<FileRef> = Vec::new();
        if window > 0 {
            for s in &staged {
                if !busy.contains(&s.fd) && self.wagg.inflight(s.fd) >= window {
                    busy.push(s.fd);
                }
            }
        }
        let mut deferring = false;
        if !force && self.wagg.wanted == 0 && staged.iter().any(|s| s.deferred.is_some()) {
            for fd in self.deferred_files(&staged) {
                if !busy.contains(&fd) {
                    busy.push(fd);
                }
                deferring = true;
            }
        }
        if deferring && !self.wagg.timer_armed {
            self.wagg.timer_armed = true;
            let ts = std::ptr::from_ref(&*self.wagg.timer_ts);
            self.push(opcode::Timeout::new(ts).build().user_data(TOKEN_DEFER));
        }
        if !busy.is_empty() {
            let (held, go): (Vec<Staged>, Vec<Staged>) =
                staged.into_iter().partition(|s| busy.contains(&s.fd));
            self.wagg.staged_bytes = held
                .iter()
                .map(|s| usize::try_from(s.len).unwrap_or(0))
                .sum();
            self.wagg.staged = held;
            staged = go;
        }
        // Stable: writes to the same place (never made concurrently by the pool; the ring
        // would not order them anyway) stay in the order they were made.
        staged.sort_by_key(|s| (fd_key(s.fd), s.offset));
        let limit = u64::try_from(self.wagg.limit).unwrap_or(u64::MAX);
        let mut it = staged.into_iter().peekable();
        while let Some(first) = it.next() {
            let mut bytes = u64::from(first.len);
            let mut end = first.offset.saturating_add(u64::from(first.len));
            let mut run: Vec<Staged> = Vec::new();
            while let Some(next) = it.next_if(|n| {
                n.fd == first.fd
                    && n.offset == end
                    && bytes + u64::from(n.len) <= limit
                    && run.len() + 2 <= MAX_IOVECS
            }) {
                bytes += u64::from(next.len);
                end += u64::from(next.len);
                run.push(next);
            }
            if run.is_empty() {
                self.push_single(first.fd, first.single);
            } else {
                run.insert(0, first);
                self.push_group(run, bytes);
            }
        }
    }

    /// The files of `staged` whose writes all wait for more to merge with: every one
    /// deferred, fewer bytes than the deferral threshold, none older than the deferral time.
    fn deferred_files(&self, staged: &[Staged]) -> Vec<FileRef> {
        let now = Instant::now();
        // (file, bytes staged, every write deferred and not due)
        let mut files: Vec<(FileRef, usize, bool)> = Vec::new();
        for s in staged {
            let waits = s
                .deferred
                .is_some_and(|t| now.saturating_duration_since(t) < self.wagg.defer_for);
            let len = usize::try_from(s.len).unwrap_or(usize::MAX);
            match files.iter_mut().find(|f| f.0 == s.fd) {
                Some(f) => {
                    f.1 = f.1.saturating_add(len);
                    f.2 &= waits;
                }
                None => files.push((s.fd, len, waits)),
            }
        }
        files
            .into_iter()
            .filter(|&(_, bytes, waits)| waits && bytes < self.wagg.defer)
            .map(|f| f.0)
            .collect()
    }

    /// Submits one write alone.
    fn push_single(&mut self, fd: FileRef, entry: squeue::Entry) {
        self.stats.write_sqes += 1;
        self.wagg.write_pushed(fd);
        self.push(entry);
    }

    /// Submits `members` (adjacent, one file, `total` bytes) as one vectored write.
    fn push_group(&mut self, members: Vec<Staged>, total: u64) {
        let iov: Box<[libc::iovec]> = members
            .iter()
            .map(|m| libc::iovec {
                iov_base: m.ptr.cast_mut().cast::<libc::c_void>(),
                iov_len: usize::try_from(m.len).unwrap_or(0),
            })
            .collect();
        for m in &members {
            if let Some(slot) = self.ops.get_mut(m.key) {
                slot.grouped = true;
            }
        }
        let (fd, offset) = (members[0].fd, members[0].offset);
        let fixed = members[0]
            .fixed
            .filter(|&i| self.wagg.writev_fixed && members.iter().all(|m| m.fixed == Some(i)));
        let n = u32::try_from(iov.len()).unwrap_or(u32::MAX);
        let ptr = iov.as_ptr();
        self.stats.write_sqes += 1;
        self.wagg.write_pushed(fd);
        self.stats.vectored_writes += 1;
        self.stats.merged_writes += u64::from(n);
        let gkey = self.wagg.groups.insert(Group {
            members,
            iov,
            total,
        });
        let ud = GROUP_TAG | u64::try_from(gkey).unwrap_or(0);
        let entry = match (fd, fixed) {
            (FileRef::Raw(r), None) => opcode::Writev::new(types::Fd(r), ptr, n)
                .offset(offset)
                .build(),
            (FileRef::Fixed(i), None) => opcode::Writev::new(types::Fixed(i), ptr, n)
                .offset(offset)
                .build(),
            (FileRef::Raw(r), Some(b)) => opcode::WritevFixed::new(types::Fd(r), ptr, n, b)
                .offset(offset)
                .build(),
            (FileRef::Fixed(i), Some(b)) => opcode::WritevFixed::new(types::Fixed(i), ptr, n, b)
                .offset(offset)
                .build(),
        };
        self.push(entry.user_data(ud));
    }

    /// The vectored write `gkey` completed with `res`: complete every member, or re-issue each
    /// alone if it did not write everything.
    pub(super) fn complete_group(&mut self, gkey: usize, res: i32) {
        let Some(g) = self.wagg.groups.try_remove(gkey) else {
            return;
        };
        if let Some(m) = g.members.first() {
            self.wagg.write_done(m.fd);
        }
        let full = u64::try_from(res).is_ok_and(|n| n == g.total);
        if !full {
            self.stats.vectored_fallbacks += 1;
        }
        for m in g.members {
            if full {
                let res = i32::try_from(m.len).unwrap_or(i32::MAX);
                super::complete_slot(&mut self.ops, m.key, res, 0);
                continue;
            }
            let orphaned = match self.ops.get_mut(m.key) {
                Some(slot) => {
                    slot.grouped = false;
                    matches!(slot.life, Lifecycle::Orphaned)
                }
                None => continue,
            };
            if orphaned {
                // Nobody waits for it: the kernel is done with its memory.
                drop(self.ops.remove(m.key));
            } else {
                self.push_single(m.fd, m.single);
            }
        }
    }

    /// Drops the staged write of slot `key`, if it is one. True if it was.
    pub(super) fn unstage(&mut self, key: usize) -> bool {
        let Some(pos) = self.wagg.staged.iter().position(|s| s.key == key) else {
            return false;
        };
        let s = self.wagg.staged.remove(pos);
        self.wagg.staged_bytes = self
            .wagg
            .staged_bytes
            .saturating_sub(usize::try_from(s.len).unwrap_or(0));
        true
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub(super) fn write(fd: i32, offset: u64, data: &[u8]) -> (WriteReq, OpData) {
        let buf = crate::io::buf::IoBuf::from_slice(data);
        let ptr = buf.as_ptr();
        let len = u32::try_from(buf.len()).unwrap();
        let req = WriteReq {
            fd: FileRef::Raw(fd),
            offset,
            ptr,
            len,
            fixed: None,
            single: opcode::Write::new(types::Fd(fd), ptr, len)
                .offset(offset)
                .build(),
        };
        (req, OpData::Buf(buf))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;

    use super::*;

    use super::tests_support::write;

    /// Writes made while the window's worth of writes is in flight wait for one of them, and
    /// then go merged; the ring is entered only by hand here, so nothing completes early.
    #[test]
    fn writes_made_while_the_window_is_in_flight_wait_and_merge() {
        let mut file = tempfile::tempfile_in("/tmp").unwrap();
        file.write_all(&[0u8; 64 << 10]).unwrap();
        let fd = file.as_raw_fd();
        let shared = super::super::super::Shared::new().unwrap();
        let mut d = Driver::new(8, None, None, false, shared).unwrap();
        d.set_write_aggregate(1 << 20, 1);
        // Nothing in flight: the first write goes at the end of its turn.
        let (r, data) = write(fd, 0, &[1u8; 4096]);
        let first = d.submit_write(r, data);
        d.flush_staged(false);
        assert_eq!(d.stats.write_sqes, 1);
        // One in flight (pushed, not even submitted): the next two are held past the turn.
        let mut keys = Vec::new();
        for i in 1..3u8 {
            let (r, data) = write(fd, u64::from(i) * 4096, &[i + 1; 4096]);
            keys.push(d.submit_write(r, data));
        }
        d.flush_staged(false);
        assert_eq!(d.stats.write_sqes, 1, "held while the first is in flight");
        // The first completes: the held ones go as one vectored write.
        while !matches!(d.ops[first].life, Lifecycle::Done { .. }) {
            d.turn(true).unwrap();
        }
        while keys
            .iter()
            .any(|&k| !matches!(d.ops[k].life, Lifecycle::Done { .. }))
        {
            d.turn(true).unwrap();
        }
        assert_eq!((d.stats.write_sqes, d.stats.vectored_writes), (2, 1));
        for k in keys {
            assert!(matches!(d.ops[k].life, Lifecycle::Done { res: 4096, .. }));
        }
        let mut got = vec![0u8; 3 * 4096];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut got, 0).unwrap();
        for (i, b) in got.chunks(4096).enumerate() {
            assert!(b.iter().all(|&x| usize::from(x) == i + 1), "block {i}");
        }
    }
}

#[cfg(test)]
mod defer_tests {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use super::tests_support::write;
    use super::*;

    fn driver(defer: usize, wait: Duration) -> Driver {
        let shared = super::super::super::Shared::new().unwrap();
        let mut d = Driver::new(8, None, None, false, shared).unwrap();
        d.set_write_aggregate(1 << 20, 2);
        d.set_write_defer(defer, wait);
        d
    }

    fn deferred(d: &mut Driver, fd: i32, offset: u64, fill: u8) -> usize {
        let (r, data) = write(fd, offset, &[fill; 4096]);
        let was = set_deferring(true);
        let key = d.submit_write(r, data);
        set_deferring(was);
        key
    }

    fn done(d: &Driver, key: usize) -> bool {
        matches!(d.ops[key].life, Lifecycle::Done { res: 4096, .. })
    }

    fn file() -> std::fs::File {
        let mut file = tempfile::tempfile_in("/tmp").unwrap();
        file.write_all(&[0u8; 64 << 10]).unwrap();
        file
    }

    fn assert_blocks(file: &std::fs::File, fills: &[u8]) {
        let mut got = vec![0u8; fills.len() * 4096];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut got, 0).unwrap();
        for (b, &f) in got.chunks(4096).zip(fills) {
            assert!(b.iter().all(|&x| x == f));
        }
    }

    /// Deferred writes stay staged past their turns with nothing in flight, and go as one
    /// vectored write once the threshold's worth is staged.
    #[test]
    fn deferred_writes_wait_for_the_threshold_then_go_merged() {
        let file = file();
        let fd = file.as_raw_fd();
        let mut d = driver(3 * 4096, Duration::from_secs(60));
        let mut keys = Vec::new();
        for i in 0..2u8 {
            keys.push(deferred(&mut d, fd, u64::from(i) * 4096, i + 1));
            d.turn(false).unwrap();
        }
        assert_eq!(
            d.stats.write_sqes, 0,
            "below the threshold: held past the turns"
        );
        keys.push(deferred(&mut d, fd, 2 * 4096, 3));
        while !keys.iter().all(|&k| done(&d, k)) {
            d.turn(true).unwrap();
        }
        assert_eq!((d.stats.write_sqes, d.stats.vectored_writes), (1, 1));
        assert_blocks(&file, &[1, 2, 3]);
    }

    /// A deferred write below the threshold goes once it has waited the deferral time: the
    /// ring's timer wakes a waiting turn for it.
    #[test]
    fn a_lone_deferred_write_goes_after_the_deferral_time() {
        let file = file();
        let fd = file.as_raw_fd();
        let wait = Duration::from_millis(20);
        let mut d = driver(1 << 20, wait);
        let t = Instant::now();
        let key = deferred(&mut d, fd, 0, 7);
        d.turn(false).unwrap();
        assert_eq!(d.stats.write_sqes, 0);
        while !done(&d, key) {
            d.turn(true).unwrap();
        }
        assert!(t.elapsed() >= wait, "went after {:?}", t.elapsed());
        assert_eq!(d.stats.write_sqes, 1);
        assert_blocks(&file, &[7]);
    }

    /// An ordinary write to the file, or a barrier, takes the deferred writes along at once.
    #[test]
    fn an_ordinary_write_or_a_barrier_sends_deferred_writes() {
        let file = file();
        let fd = file.as_raw_fd();
        let mut d = driver(1 << 20, Duration::from_secs(60));
        let a = deferred(&mut d, fd, 0, 1);
        d.turn(false).unwrap();
        assert_eq!(d.stats.write_sqes, 0);
        let (r, data) = write(fd, 4096, &[2; 4096]);
        let b = d.submit_write(r, data);
        while !(done(&d, a) && done(&d, b)) {
            d.turn(true).unwrap();
        }
        assert_eq!((d.stats.write_sqes, d.stats.vectored_writes), (1, 1));
        let c = deferred(&mut d, fd, 2 * 4096, 3);
        d.turn(false).unwrap();
        assert_eq!(d.stats.write_sqes, 1);
        d.flush_staged(true);
        while !done(&d, c) {
            d.turn(true).unwrap();
        }
        assert_eq!(d.stats.write_sqes, 2);
        assert_blocks(&file, &[1, 2, 3]);
    }
}
