//! Sequential read-ahead, per reactor thread.
//!
//! A client that reads a volume front to back (a copy, a backup, `dd`, fio's sequential jobs)
//! sends requests of 64–256 KiB at a small queue depth; each one costs a device round trip of
//! its own. Once a stream of back-to-back reads is seen on a reactor, the volume's next chunks
//! ([`CHUNK`] bytes each, a few of them ahead of the reader) are read with one device read per
//! device-contiguous run and kept in memory, with the block pointers they were read under.
//!
//! **Coherence without invalidation.** A request is always looked up afresh; a block is served
//! from a chunk only when its current pointer equals the pointer the chunk read it under.
//! Block pointers carry the device address, the birth txg and the checksum of the content, so
//! an equal pointer means the same bytes, and those bytes were verified against that checksum
//! when the chunk was filled. A write (on any connection, any reactor) that completed before
//! the request changed the pointer, so the block is read from the device as usual. Blocks that
//! failed verification while filling are simply not cached: the request reads them itself and
//! reports or repairs them on its normal path.
//!
//! **Windows the size of the request, handed over whole.** A stream whose requests all have
//! the same block-aligned length L (fio, dd, qemu-img and nbdcopy all read that way) is read
//! ahead in windows of exactly L bytes at the request offsets, each in a buffer laid out like
//! the caller's (the same room before the data, e.g. the NBD reply header page). A request
//! that matches a ready window whose pointers are all current gets the window's buffer in
//! place of its own ([`take_window`]): no copy. Other streams use chunks of [`CHUNK`] bytes,
//! copied block by block.
//!
//! Everything lives in a thread-local, so no lock is taken; a volume's requests from several
//! reactors each get their own streams and chunks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use ringpool_ondisk::blkptr::BlockPointer;

use super::{Volume, VolumeInner};
use crate::io::IoBuf;

/// Bytes per read-ahead chunk (a multiple of every volume block size, at most 128 KiB), and
/// the largest request length read ahead in windows of its own size.
pub(super) const CHUNK: u64 = 1 << 20;
/// Bytes a new stream keeps read ahead of its reader (read in parallel).
const AHEAD_BYTES: u64 = 4 * CHUNK;
/// Most bytes a stream keeps read ahead. A stream whose reader catches up with fills that were
/// started well ahead of it (half its depth or more) doubles its depth up to this. Not more:
/// the windows of a stream this deep still fit in [`ARENA_BUDGET`] (16 MiB made a quarter of
/// the windows zeroed heap buffers of scattered pages, see [`MAX_INFLIGHT`]).
const MAX_AHEAD: u64 = 8 * CHUNK;
/// Bytes of chunks and windows cached per reactor (spent windows first, then the least
/// recently used).
const MAX_BYTES: u64 = MAX_AHEAD + 8 * CHUNK;
/// Equal requests at least this long are read ahead in windows of their own size (smaller
/// ones would make too many windows; their copy out of a chunk is cheap).
const WINDOW_MIN: u64 = 64 * 1024;
/// Spare buffers kept for reuse.
const MAX_SPARE: usize = 16;
/// Most bytes of a reactor's registered buffer arena (16 MiB by default) held by read-ahead:
/// a stream that doubled its depth once (8 MiB of 128 KiB windows with their header room, 8.4
/// MiB) plus the spare buffers (2.1 MiB) fit, so only the deepest streams fill windows from
/// zeroed heap buffers; 4 MiB stay for reply and receive buffers (8 MiB made a once-doubled
/// stream pay a 128 KiB memset per window: 6 % of the reactor on 128 KiB blocks).
const ARENA_BUDGET: usize = 12 << 20;
/// Back-to-back reads seen on a stream before read-ahead starts (a random reader hits the
/// previous end by chance only rarely, and never this many times in a row).
const MIN_RUN: u32 = 3;
/// Streams remembered per reactor.
const MAX_STREAMS: usize = 16;
/// Most bytes of read-ahead fills of one volume at the device at once, per reactor (the rest
/// of a stream's depth is started as fills complete).
///
/// Why a bound at all: the device serves the reads it has all at once, each at a share of its
/// bandwidth, so with a whole 8–16 MiB depth at the device the very window the reader needs
/// next completed only after ~8 MiB were read (7 ms at 1.1 GB/s: the p99 of 128 KiB QD8
/// sequential reads on 128 KiB blocks), and the block scheduler merged the queued windows into
/// 1–4 MiB requests that a virtio ring without indirect descriptors (the disk of
/// perf/README.md) held one at a time when their pages were scattered (heap windows). 2 MiB
/// at the device, topped up as each fill completes ([`refill`]): p99 0.3–0.5x and IOPS
/// 1.1–1.2x of the whole depth at once; 1 MiB left the disk idle between fills, 4 MiB had
/// twice the p99 of 2 MiB.
///
/// Only chunks read with one device read count: a window whose blocks random writes scattered
/// is many small reads at random places, which the device serves faster the more of them it
/// has (0.93x IOPS for a 128 KiB QD8 stream on 4 KiB blocks with those bounded too), so those
/// are bounded by the stream's depth alone, as before.
const MAX_INFLIGHT: u64 = 2 << 20;

/// [`MAX_INFLIGHT`], or `RINGPOOL_READAHEAD_INFLIGHT_KIB` from the environment (experiments).
fn max_inflight() -> u64 {
    static V: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        crate::knob::env::<u64>("RINGPOOL_READAHEAD_INFLIGHT_KIB").map_or(MAX_INFLIGHT, |k| k << 10)
    })
}

/// Whether a fill starts the next ones as soon as its device reads complete, before verifying
/// (`RINGPOOL_READAHEAD_EARLY=0` turns it off, for comparisons).
pub(super) fn early_refill() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| crate::knob::enabled("RINGPOOL_READAHEAD_EARLY"))
}

/// The fill state of a chunk.
pub(super) enum Fill {
    /// Device reads in flight.
    Pending,
    /// `data` holds the chunk's bytes (block `first + i` at `pad + i * block size`); `bps[i]` is the
    /// pointer block `first + i` was read and verified under, `None` when it is not usable
    /// (a hole, or it failed verification).
    Ready {
        data: IoBuf,
        bps: Vec<Option<BlockPointer>>,
    },
    /// The fill failed (device error, volume gone): nothing is served from it.
    Failed,
}

/// One chunk (or window) of one volume.
pub(super) struct Chunk {
    vol: Weak<VolumeInner>,
    /// Volume offset of the first byte (block aligned).
    pub(super) start: u64,
    /// Bytes covered (whole blocks, except at the end of the volume).
    pub(super) len: u64,
    /// Where the bytes start in the buffer (the room a window leaves before its data).
    pub(super) pad: usize,
    pub(super) fill: RefCell<Fill>,
    waiters: RefCell<Vec<Waker>>,
    last_use: Cell<u64>,
    /// Where the reader of the stream that started the fill was then (end of its request).
    issued_at: u64,
    /// The buffer being filled is from the reactor's arena (while pending).
    arena: Cell<bool>,
    /// The fill found the chunk's blocks in more than one place on the devices (set once
    /// its blocks are looked up): it does not count against [`MAX_INFLIGHT`].
    pub(super) scattered: Cell<bool>,
    /// The fill's device reads completed (its blocks are being verified): it no longer counts
    /// against [`MAX_INFLIGHT`], so the next fills go to the device before the checksums of
    /// this one are computed.
    pub(super) read_done: Cell<bool>,
}

impl Chunk {
    /// Sets the fill result and wakes every request waiting for it.
    pub(super) fn finish(&self, fill: Fill) {
        *self.fill.borrow_mut() = fill;
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    fn pending(&self) -> bool {
        matches!(*self.fill.borrow(), Fill::Pending)
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.start + self.len
    }

    /// Index in this chunk of the block holding volume offset `pos`, if the chunk covers it.
    pub(super) fn slot(&self, pos: u64, bs: u64) -> Option<usize> {
        if pos < self.start || pos >= self.start + self.len {
            return None;
        }
        usize::try_from((pos - self.start) / bs).ok()
    }
}

/// Marks its chunk failed when dropped while the chunk is still pending.
pub(super) struct FailOnDrop(pub(super) Rc<Chunk>);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        if self.0.pending() {
            self.0.finish(Fill::Failed);
        }
    }
}

/// Resolves once a chunk is no longer pending.
pub(super) struct Filled(pub(super) Rc<Chunk>);

impl Future for Filled {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.0.pending() {
            return Poll::Ready(());
        }
        let mut w = self.0.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

struct Stream {
    vol: Weak<VolumeInner>,
    next: u64,
    run: u32,
    /// Length of the stream's requests while they are all the same (0 once they differ).
    len: u64,
    /// End of the read-ahead already started for this stream.
    ahead: u64,
    /// Bytes kept read ahead (AHEAD_BYTES, doubled up to MAX_AHEAD while the reader catches
    /// up with fills started long enough ago).
    depth: u64,
    last_use: u64,
    /// Size of the stream's chunks and the room before their data, set once it is read ahead
    /// (0 before).
    unit: u64,
    unit_pad: usize,
}

#[derive(Default)]
struct State {
    streams: Vec<Stream>,
    chunks: Vec<Rc<Chunk>>,
    /// Chunk buffers of finished-with chunks, reused (a fresh 1 MiB buffer is an mmap and 256
    /// page faults).
    spare: Vec<IoBuf>,
    tick: u64,
}

impl State {
    /// Bytes of the reactor's registered arena that read-ahead holds, in its chunks and
    /// spare buffers.
    fn arena_bytes(&self) -> usize {
        let chunks: usize = self
            .chunks
            .iter()
            .map(|c| match &*c.fill.borrow() {
                Fill::Ready { data, .. } if data.is_arena() => data.capacity(),
                Fill::Pending if c.arena.get() => {
                    c.pad + usize::try_from(c.len).unwrap_or(usize::MAX)
                }
                _ => 0,
            })
            .fold(0, usize::saturating_add);
        let spare: usize = self
            .spare
            .iter()
            .filter(|b| b.is_arena())
            .map(IoBuf::capacity)
            .sum();
        chunks.saturating_add(spare)
    }

    /// Whether `buf` goes to the spare list. An arena buffer is kept only while read-ahead
    /// holds less than [`ARENA_BUDGET`] of the arena: a deep stream would otherwise hold all of
    /// it, and every NBD reply and receive buffer then fell back to a zeroed heap allocation
    /// after a scan of the whole arena map (8 % of the reactor's time in a 128 KiB-block
    /// sequential read). Arena buffers are still worth keeping below that: reads into them
    /// need no page pinning, and a heap buffer for a window is zeroed first.
    fn keeps(&self, buf: &IoBuf) -> bool {
        self.spare.len() < MAX_SPARE
            && (!buf.is_arena()
                || self.arena_bytes().saturating_add(buf.capacity()) <= ARENA_BUDGET)
    }
}

impl State {
    /// Bytes of `inner`'s chunks being filled with one device read each (or not looked up
    /// yet).
    fn pending(&self, inner: &Arc<VolumeInner>) -> u64 {
        self.chunks
            .iter()
            .filter(|c| {
                same(&c.vol, inner) && c.pending() && !c.scattered.get() && !c.read_done.get()
            })
            .map(|c| c.len)
            .fold(0, u64::saturating_add)
    }

    /// Creates the chunks of stream `si` in `[from, ahead_end)` that nobody has started (in
    /// units of the stream's `unit`), stopping where the volume's fills at the device would
    /// pass [`MAX_INFLIGHT`] bytes, except for the chunks before `need_end` (the reader's
    /// request needs them now). Records how far the stream got and returns the chunks to fill.
    #[allow(clippy::too_many_arguments)]
    fn extend(
        &mut self,
        si: usize,
        inner: &Arc<VolumeInner>,
        size: u64,
        from: u64,
        ahead_end: u64,
        need_end: u64,
        issued_at: u64,
    ) -> Vec<Rc<Chunk>> {
        let Some(st) = self.streams.get(si) else {
            return Vec::new();
        };
        let (unit, unit_pad) = (st.unit, st.unit_pad);
        if unit == 0 {
            return Vec::new();
        }
        let mut pending = self.pending(inner);
        let tick = self.tick;
        let mut start = Vec::new();
        let mut at = from;
        while at < ahead_end {
            let w_end = (at + unit).min(size);
            let taken = self
                .chunks
                .iter()
                .any(|c| same(&c.vol, inner) && c.overlaps(at, w_end));
            if !taken {
                let bytes = w_end - at;
                if pending.saturating_add(bytes) > max_inflight() && at >= need_end {
                    break;
                }
                let c = Rc::new(Chunk {
                    vol: Arc::downgrade(inner),
                    start: at,
                    len: w_end - at,
                    pad: unit_pad,
                    fill: RefCell::new(Fill::Pending),
                    waiters: RefCell::new(Vec::new()),
                    last_use: Cell::new(tick),
                    issued_at,
                    arena: Cell::new(false),
                    scattered: Cell::new(false),
                    read_done: Cell::new(false),
                });
                pending = pending.saturating_add(bytes);
                self.chunks.push(Rc::clone(&c));
                start.push(c);
            }
            at += unit;
        }
        if let Some(st) = self.streams.get_mut(si) {
            st.ahead = st.ahead.max(at);
        }
        start
    }
}

/// After a fill of `vol` completed: the chunks its streams can start now that the device has
/// room again (see [`State::extend`]), so read-ahead keeps pace with the device rather than
/// only with the reader's requests.
pub(super) fn refill(vol: &Volume) -> Vec<Rc<Chunk>> {
    let size = vol.size();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let inner = &vol.inner;
        let mut start = Vec::new();
        for si in 0..s.streams.len() {
            let st = &s.streams[si];
            if !same(&st.vol, inner) || st.run < MIN_RUN || st.unit == 0 {
                continue;
            }
            let (next, unit) = (st.next, st.unit);
            let from = st.ahead.div_ceil(unit) * unit;
            let ahead_end = next.saturating_add(st.depth).min(size);
            start.extend(s.extend(si, inner, size, from, ahead_end, 0, next));
        }
        start
    })
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// What a read should do about read-ahead.
pub(super) struct Plan {
    /// Chunks overlapping the request (pending or ready), in order.
    pub(super) cover: Vec<Rc<Chunk>>,
    /// Chunks to fill now (created by this call, pending).
    pub(super) start: Vec<Rc<Chunk>>,
}

fn same(w: &Weak<VolumeInner>, v: &Arc<VolumeInner>) -> bool {
    std::ptr::eq(w.as_ptr(), Arc::as_ptr(v))
}

/// Notes a read of `[offset, offset + len)` on `vol` into a buffer where the data starts at
/// `pad`, and returns the chunks that cover it and the chunks to start filling. Chunks are only
/// created for sequential streams; existing ones cover any read (a second reader of the same
/// region profits too).
pub(super) fn plan(vol: &Volume, offset: u64, len: u64, pad: usize) -> Plan {
    let end = offset.saturating_add(len);
    let size = vol.size();
    let bs = vol.bs();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.tick += 1;
        let tick = s.tick;
        let inner = &vol.inner;
        // Dead volumes' chunks and streams go.
        s.chunks.retain(|c| c.vol.strong_count() > 0);
        s.streams.retain(|st| st.vol.strong_count() > 0);
        // Which stream this read continues, if any.
        let found = s
            .streams
            .iter()
            .position(|st| same(&st.vol, inner) && st.next == offset);
        let si = match found {
            Some(i) => {
                let st = &mut s.streams[i];
                st.run = st.run.saturating_add(1);
                st.next = end;
                st.last_use = tick;
                if st.len != len {
                    st.len = 0;
                }
                i
            }
            None => {
                if s.streams.len() >= MAX_STREAMS {
                    if let Some(i) = (0..s.streams.len()).min_by_key(|&i| s.streams[i].last_use) {
                        s.streams.swap_remove(i);
                    }
                }
                s.streams.push(Stream {
                    vol: Arc::downgrade(inner),
                    next: end,
                    run: 1,
                    len,
                    ahead: 0,
                    depth: AHEAD_BYTES,
                    last_use: tick,
                    unit: 0,
                    unit_pad: 0,
                });
                s.streams.len() - 1
            }
        };
        let (run, same_len, ahead, depth) = {
            let st = &s.streams[si];
            (st.run, st.len == len, st.ahead, st.depth)
        };
        // Windows of the request's own size for a stream of equal, block-aligned requests at
        // offsets that are multiples of it; chunks otherwise.
        let windowed = same_len
            && (WINDOW_MIN..=CHUNK).contains(&len)
            && len.is_multiple_of(bs)
            && offset.is_multiple_of(len);
        let (unit, unit_pad) = if windowed { (len, pad) } else { (CHUNK, 0) };
        let mut cover: Vec<Rc<Chunk>> = s
            .chunks
            .iter()
            .filter(|c| same(&c.vol, inner) && c.overlaps(offset, end))
            .cloned()
            .collect();
        cover.sort_by_key(|c| c.start);
        for c in &cover {
            c.last_use.set(tick);
        }
        // The reader is about to wait for a fill it started when it was half the depth or
        // more behind: the device takes longer than the read-ahead covers.
        let late = cover
            .iter()
            .any(|c| c.pending() && offset >= c.issued_at.saturating_add(depth / 2));
        let depth = if late && run >= MIN_RUN {
            let d = depth.saturating_mul(2).min(MAX_AHEAD);
            if let Some(st) = s.streams.get_mut(si) {
                st.depth = d;
            }
            d
        } else {
            depth
        };
        let mut start = Vec::new();
        if run >= MIN_RUN {
            if let Some(st) = s.streams.get_mut(si) {
                st.unit = unit;
                st.unit_pad = unit_pad;
            }
            // Only what this stream has not started yet (the rest exists or was evicted).
            let from = (offset / unit * unit).max(ahead.div_ceil(unit) * unit);
            let ahead_end = end.saturating_add(depth).min(size);
            start = s.extend(si, inner, size, from, ahead_end, end, end);
            for c in &start {
                if c.overlaps(offset, end) {
                    cover.push(Rc::clone(c));
                }
            }
            cover.sort_by_key(|c| c.start);
        }
        // Bound the cache: drop chunks that nobody fills, those that hold nothing first (a
        // window handed over, a failed fill), then the least recently used. Not the other way
        // round: a deep stream's windows ahead were last touched when they were started, long
        // before the spent windows just behind its reader.
        let mut bytes: u64 = s.chunks.iter().map(|c| c.len).sum();
        while bytes > MAX_BYTES {
            let victim = (0..s.chunks.len())
                .filter(|&i| !s.chunks[i].pending())
                .min_by_key(|&i| {
                    let c = &s.chunks[i];
                    let holds = matches!(*c.fill.borrow(), Fill::Ready { .. });
                    (holds, c.last_use.get())
                });
            let Some(i) = victim else { break };
            let c = s.chunks.swap_remove(i);
            bytes -= c.len;
            if let Ok(c) = Rc::try_unwrap(c) {
                if let Fill::Ready { data, .. } = c.fill.into_inner() {
                    if s.keeps(&data) {
                        s.spare.push(data);
                    }
                }
            }
        }
        Plan { cover, start }
    })
}

/// A buffer of `len` bytes for filling `chunk`, aligned for O_DIRECT: a spare one when one is
/// large enough, else one from the reactor's arena while read-ahead holds less than
/// [`ARENA_BUDGET`] of it (no zeroing, no page pinning for the device read), else a fresh
/// (zeroed) heap buffer.
pub(super) fn buffer(chunk: &Chunk, len: usize) -> IoBuf {
    let (spare, arena_ok) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        match s.spare.iter().position(|b| b.capacity() >= len) {
            Some(i) => (Some(s.spare.swap_remove(i)), false),
            None => (None, s.arena_bytes().saturating_add(len) <= ARENA_BUDGET),
        }
    });
    let mut b = match spare {
        Some(b) => b,
        None if arena_ok => crate::io::buf::alloc(len),
        None => IoBuf::with_capacity(len),
    };
    chunk.arena.set(b.is_arena());
    b.set_len(len);
    b
}

/// Keeps `buf` for a later chunk (a caller's buffer a window replaced).
pub(super) fn recycle(buf: IoBuf) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.keeps(&buf) {
            s.spare.push(buf);
        }
    });
}

/// The whole-request handover: if `cover` is one ready window of exactly `[offset, offset +
/// len)` laid out at `pad`, its buffer can hold `want_len` bytes, and every block's current
/// pointer (`bps`, in order) is the one the window was read under, the window's buffer is taken
/// (the window is then spent) and returned with length `want_len`.
pub(super) fn take_window(
    cover: &[Rc<Chunk>],
    offset: u64,
    len: u64,
    pad: usize,
    want_len: usize,
    bps: &[BlockPointer],
) -> Option<IoBuf> {
    let [c] = cover else {
        return None;
    };
    if c.start != offset || c.len != len || c.pad != pad {
        return None;
    }
    let mut fill = c.fill.borrow_mut();
    let Fill::Ready { data, bps: have } = &*fill else {
        return None;
    };
    if data.capacity() < want_len
        || have.len() != bps.len()
        || have.iter().zip(bps).any(|(h, b)| *h != Some(*b))
    {
        return None;
    }
    let Fill::Ready { mut data, .. } = std::mem::replace(&mut *fill, Fill::Failed) else {
        return None;
    };
    data.set_len(want_len);
    Some(data)
}
