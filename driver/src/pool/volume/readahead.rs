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

/// Bytes per read-ahead chunk (a multiple of every volume block size, at most 128 KiB).
pub(super) const CHUNK: u64 = 1 << 20;
/// Chunks kept ahead of a sequential reader (read in parallel).
const AHEAD: u64 = 4;
/// Chunks cached per reactor (the least recently used go first).
const MAX_CHUNKS: usize = 12;
/// Back-to-back reads seen on a stream before read-ahead starts (a random reader hits the
/// previous end by chance only rarely, and never this many times in a row).
const MIN_RUN: u32 = 3;
/// Streams remembered per reactor.
const MAX_STREAMS: usize = 16;

/// The fill state of a chunk.
pub(super) enum Fill {
    /// Device reads in flight.
    Pending,
    /// `data` holds the chunk's bytes (block `first + i` at `i * block size`); `bps[i]` is the
    /// pointer block `first + i` was read and verified under, `None` when it is not usable
    /// (a hole, or it failed verification).
    Ready {
        data: IoBuf,
        bps: Vec<Option<BlockPointer>>,
    },
    /// The fill failed (device error, volume gone): nothing is served from it.
    Failed,
}

/// One chunk of one volume.
pub(super) struct Chunk {
    vol: Weak<VolumeInner>,
    /// Chunk number (volume offset / CHUNK).
    pub(super) index: u64,
    pub(super) fill: RefCell<Fill>,
    waiters: RefCell<Vec<Waker>>,
    last_use: Cell<u64>,
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
    last_use: u64,
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

/// Notes a read of `[offset, offset + len)` on `vol` and returns the chunks that cover it and
/// the chunks to start filling. Chunks are only created for sequential streams; existing ones
/// cover any read (a second reader of the same region profits too).
pub(super) fn plan(vol: &Volume, offset: u64, len: u64) -> Plan {
    let end = offset.saturating_add(len);
    let size = vol.size();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.tick += 1;
        let tick = s.tick;
        let inner = &vol.inner;
        // Which stream this read continues, if any.
        let run = match s
            .streams
            .iter_mut()
            .find(|st| same(&st.vol, inner) && st.next == offset)
        {
            Some(st) => {
                st.run = st.run.saturating_add(1);
                st.next = end;
                st.last_use = tick;
                st.run
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
                    last_use: tick,
                });
                1
            }
        };
        // Dead volumes' chunks and streams go.
        s.chunks.retain(|c| c.vol.strong_count() > 0);
        s.streams.retain(|st| st.vol.strong_count() > 0);
        let first = offset / CHUNK;
        let last = end.saturating_sub(1) / CHUNK;
        let want_last = if run >= MIN_RUN {
            (end.saturating_sub(1) + AHEAD * CHUNK).min(size.saturating_sub(1)) / CHUNK
        } else {
            last
        };
        let mut cover = Vec::new();
        let mut start = Vec::new();
        for index in first..=want_last.max(last) {
            let found = s
                .chunks
                .iter()
                .find(|c| c.index == index && same(&c.vol, inner))
                .cloned();
            let chunk = match found {
                Some(c) => c,
                None if run >= MIN_RUN && index <= want_last => {
                    let c = Rc::new(Chunk {
                        vol: Arc::downgrade(inner),
                        index,
                        fill: RefCell::new(Fill::Pending),
                        waiters: RefCell::new(Vec::new()),
                        last_use: Cell::new(tick),
                    });
                    s.chunks.push(Rc::clone(&c));
                    start.push(Rc::clone(&c));
                    c
                }
                None => continue,
            };
            if index <= last {
                chunk.last_use.set(tick);
                cover.push(chunk);
            }
        }
        // Bound the cache: drop the least recently used chunks that nobody fills.
        while s.chunks.len() > MAX_CHUNKS {
            let victim = (0..s.chunks.len())
                .filter(|&i| !s.chunks[i].pending())
                .min_by_key(|&i| s.chunks[i].last_use.get());
            let Some(i) = victim else { break };
            let c = s.chunks.swap_remove(i);
            if let Ok(c) = Rc::try_unwrap(c) {
                if let Fill::Ready { data, .. } = c.fill.into_inner() {
                    if s.spare.len() < MAX_CHUNKS {
                        s.spare.push(data);
                    }
                }
            }
        }
        Plan { cover, start }
    })
}

/// A chunk buffer (`CHUNK` bytes, aligned for O_DIRECT), reused when one is spare.
pub(super) fn buffer() -> IoBuf {
    let mut b = STATE
        .with(|s| s.borrow_mut().spare.pop())
        .unwrap_or_else(|| IoBuf::with_capacity(usize::try_from(CHUNK).unwrap_or(1 << 20)));
    b.set_len(b.capacity());
    b
}
