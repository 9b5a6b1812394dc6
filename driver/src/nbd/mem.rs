//! [`MemBackend`]: an in-memory, sparse export for tests and `ringpool serve --memory`.
//!
//! Memory is allocated in 1 MiB chunks on first write, each behind its own mutex (so
//! connections on different reactors rarely contend), and allocation is tracked per block
//! (the backend's block size): blocks never written, trimmed or zeroed with holes allowed are
//! holes and read as zeroes. Invariant: the bytes of an unallocated block are zero, so reads
//! copy without looking at the bitmap; a chunk whose blocks are all holes is freed.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::backend::{
    BackendError, BackendFuture, ExportBackend, ReadLayout, ReadResult, WriteResult,
};
use super::proto::{state, Errno};
use super::reply::Extent;
use crate::io::IoBuf;

const CHUNK: u64 = 1 << 20;
/// Most extents one block-status answer describes (the client asks again for the rest).
const MAX_EXTENTS: usize = 64 * 1024;

#[derive(Debug)]
struct Chunk {
    data: Box<[u8]>,
    /// One bit per block: allocated.
    alloc: Vec<u64>,
}

impl Chunk {
    fn new(blocks: usize) -> Box<Chunk> {
        let len = usize::try_from(CHUNK).unwrap_or(1 << 20);
        Box::new(Chunk {
            data: vec![0u8; len].into_boxed_slice(),
            alloc: vec![0u64; blocks.div_ceil(64)],
        })
    }
    fn is_set(&self, b: usize) -> bool {
        self.alloc[b / 64] & (1 << (b % 64)) != 0
    }
    fn set(&mut self, b: usize, on: bool) {
        if on {
            self.alloc[b / 64] |= 1 << (b % 64);
        } else {
            self.alloc[b / 64] &= !(1 << (b % 64));
        }
    }
    fn empty(&self) -> bool {
        self.alloc.iter().all(|w| *w == 0)
    }
}

/// Counters for tests and diagnostics.
#[derive(Debug, Default)]
pub struct MemStats {
    /// FLUSH calls.
    pub flushes: AtomicU64,
    /// Writes with FUA.
    pub fua_writes: AtomicU64,
    /// Writes.
    pub writes: AtomicU64,
    /// Reads.
    pub reads: AtomicU64,
    /// Trims and hole-punching zeroes.
    pub trims: AtomicU64,
    /// Batches of more than one write handed over at once ([`ExportBackend::write_batch`]).
    pub write_batches: AtomicU64,
    /// Writes in the largest batch handed over.
    pub largest_batch: AtomicU64,
}

/// See the module docs.
#[derive(Debug)]
pub struct MemBackend {
    size: u64,
    block: u32,
    chunks: Vec<Mutex<Option<Box<Chunk>>>>,
    read_only: bool,
    fast_zero: bool,
    min_block: u32,
    description: String,
    fail_reads: Mutex<Option<Errno>>,
    fail_writes: Mutex<Option<Errno>>,
    stats: MemStats,
}

impl MemBackend {
    /// A zero-filled (all holes) export of `size` bytes tracked in `block_size` blocks (a power
    /// of two between 512 B and 1 MiB; other values are rounded into that range).
    pub fn new(size: u64, block_size: u32) -> MemBackend {
        let block = block_size.clamp(512, 1 << 20);
        let block = if block.is_power_of_two() {
            block
        } else {
            block.next_power_of_two()
        };
        let n = usize::try_from(size.div_ceil(CHUNK)).unwrap_or(0);
        MemBackend {
            size,
            block,
            chunks: (0..n).map(|_| Mutex::new(None)).collect(),
            read_only: false,
            fast_zero: true,
            min_block: 1,
            description: format!("in-memory export of {size} bytes"),
            fail_reads: Mutex::new(None),
            fail_writes: Mutex::new(None),
            stats: MemStats::default(),
        }
    }

    /// Marks the backend read-only.
    pub fn with_read_only(mut self, on: bool) -> MemBackend {
        self.read_only = on;
        self
    }

    /// Whether FAST_ZERO requests succeed (default) or fail with ENOTSUP (to test clients).
    pub fn with_fast_zero(mut self, on: bool) -> MemBackend {
        self.fast_zero = on;
        self
    }

    /// Requires requests aligned to `min` bytes (a power of two up to the block size), like an
    /// O_DIRECT backend that does no read-modify-write.
    pub fn with_min_block(mut self, min: u32) -> MemBackend {
        self.min_block = min.clamp(1, self.block).next_power_of_two();
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, d: impl Into<String>) -> MemBackend {
        self.description = d.into();
        self
    }

    /// Makes every read fail with `errno` (None: stop failing).
    pub fn fail_reads(&self, errno: Option<Errno>) {
        *self.fail_reads.lock() = errno;
    }

    /// Makes every write, trim and zeroing fail with `errno` (None: stop failing).
    pub fn fail_writes(&self, errno: Option<Errno>) {
        *self.fail_writes.lock() = errno;
    }

    /// Counters.
    pub fn stats(&self) -> &MemStats {
        &self.stats
    }

    /// Copies `len` bytes at `offset` out (test helper).
    pub fn contents(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.copy_out(offset, &mut v);
        v
    }

    /// Bytes of allocated blocks.
    pub fn allocated_bytes(&self) -> u64 {
        let per = u64::from(self.block);
        self.chunks
            .iter()
            .map(|c| {
                c.lock().as_ref().map_or(0, |c| {
                    c.alloc
                        .iter()
                        .map(|w| u64::from(w.count_ones()))
                        .sum::<u64>()
                        * per
                })
            })
            .sum()
    }

    fn blocks_per_chunk(&self) -> usize {
        usize::try_from(CHUNK / u64::from(self.block)).unwrap_or(1)
    }

    /// Splits `[offset, offset+len)` into (chunk index, range within chunk, position in request).
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (usize, Range<usize>, usize)> {
        let end = offset.saturating_add(len).min(self.size);
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let ci = pos / CHUNK;
            let s = pos % CHUNK;
            let e = (end - ci * CHUNK).min(CHUNK);
            let rel = usize::try_from(pos - offset).ok()?;
            pos = ci * CHUNK + e;
            Some((
                usize::try_from(ci).ok()?,
                usize::try_from(s).ok()?..usize::try_from(e).ok()?,
                rel,
            ))
        })
    }

    fn copy_out(&self, offset: u64, dst: &mut [u8]) -> Vec<Range<u32>> {
        let bs = usize::try_from(self.block).unwrap_or(4096);
        let mut holes: Vec<Range<u32>> = Vec::new();
        let len = u64::try_from(dst.len()).unwrap_or(0);
        for (ci, r, rel) in self.pieces(offset, len) {
            let d = &mut dst[rel..rel + r.len()];
            let g = self.chunks[ci].lock();
            let mut push_hole = |a: usize, b: usize| {
                let (a, b) = (
                    u32::try_from(a).unwrap_or(u32::MAX),
                    u32::try_from(b).unwrap_or(u32::MAX),
                );
                match holes.last_mut() {
                    Some(last) if last.end == a => last.end = b,
                    _ => holes.push(a..b),
                }
            };
            match g.as_ref() {
                None => {
                    d.fill(0);
                    push_hole(rel, rel + r.len());
                }
                Some(c) => {
                    d.copy_from_slice(&c.data[r.clone()]);
                    let mut p = r.start;
                    while p < r.end {
                        let b = p / bs;
                        let bend = ((b + 1) * bs).min(r.end);
                        if !c.is_set(b) {
                            push_hole(rel + p - r.start, rel + bend - r.start);
                        }
                        p = bend;
                    }
                }
            }
        }
        holes
    }

    fn store(&self, offset: u64, src: Option<&[u8]>, len: u64) {
        let bs = usize::try_from(self.block).unwrap_or(4096);
        let bpc = self.blocks_per_chunk();
        for (ci, r, rel) in self.pieces(offset, len) {
            let mut g = self.chunks[ci].lock();
            let c = g.get_or_insert_with(|| Chunk::new(bpc));
            match src {
                Some(s) => c.data[r.clone()].copy_from_slice(&s[rel..rel + r.len()]),
                None => c.data[r.clone()].fill(0),
            }
            for b in r.start / bs..r.end.div_ceil(bs) {
                c.set(b, true);
            }
        }
    }

    /// Zeroes a range and turns the blocks it fully covers into holes.
    fn punch(&self, offset: u64, len: u64) {
        let bs = usize::try_from(self.block).unwrap_or(4096);
        for (ci, r, _) in self.pieces(offset, len) {
            let mut g = self.chunks[ci].lock();
            let Some(c) = g.as_mut() else { continue };
            c.data[r.clone()].fill(0);
            // The last block of an export whose size is not block aligned is fully covered
            // when the range reaches the end of the export.
            let at_end = u64::try_from(ci).unwrap_or(u64::MAX) * CHUNK
                + u64::try_from(r.end).unwrap_or(0)
                == self.size;
            let last = if at_end {
                r.end.div_ceil(bs)
            } else {
                r.end / bs
            };
            for b in r.start.div_ceil(bs)..last {
                c.set(b, false);
            }
            if c.empty() {
                *g = None;
            }
        }
    }

    fn check_write(&self) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::read_only("read-only memory export"));
        }
        if let Some(e) = *self.fail_writes.lock() {
            return Err(BackendError::new(e, "injected write failure"));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(BackendError::invalid("range beyond the end of the export"));
        }
        Ok(())
    }
}

fn ready<'a, T: 'a>(v: T) -> BackendFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl ExportBackend for MemBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u32 {
        self.block
    }

    fn min_block_size(&self) -> u32 {
        self.min_block
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn read(
        &self,
        offset: u64,
        mut buf: IoBuf,
        range: Range<usize>,
    ) -> BackendFuture<'_, ReadResult> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let len = u64::try_from(range.len()).unwrap_or(u64::MAX);
        if let Err(e) = self.check_range(offset, len) {
            return ready((Err(e), buf));
        }
        if let Some(e) = *self.fail_reads.lock() {
            return ready((Err(BackendError::new(e, "injected read failure")), buf));
        }
        let Some(dst) = buf.get_mut(range.clone()) else {
            return ready((
                Err(BackendError::invalid("read range outside the buffer")),
                buf,
            ));
        };
        let holes = self.copy_out(offset, dst);
        let layout = match holes.as_slice() {
            [] => ReadLayout::Data,
            [h] if h.start == 0 && usize::try_from(h.end).ok() == Some(range.len()) => {
                ReadLayout::Hole
            }
            _ => ReadLayout::Holes(holes),
        };
        ready((Ok(layout), buf))
    }

    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> BackendFuture<'_, WriteResult> {
        let r = self
            .check_write()
            .and_then(|()| self.check_range(offset, u64::try_from(data.len()).unwrap_or(u64::MAX)));
        if r.is_ok() {
            self.store(offset, Some(&data), u64::try_from(data.len()).unwrap_or(0));
            self.stats.writes.fetch_add(1, Ordering::Relaxed);
            if fua {
                self.stats.fua_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        ready((r, data))
    }

    /// Takes batches (so the server's write gathering is exercised) and writes them one by one.
    fn gathers_writes(&self) -> bool {
        true
    }

    fn write_batch(&self, writes: Vec<(u64, IoBuf)>) -> BackendFuture<'_, Vec<WriteResult>> {
        if writes.len() > 1 {
            self.stats.write_batches.fetch_add(1, Ordering::Relaxed);
        }
        let n = u64::try_from(writes.len()).unwrap_or(u64::MAX);
        self.stats.largest_batch.fetch_max(n, Ordering::Relaxed);
        Box::pin(async move {
            let mut out = Vec::with_capacity(writes.len());
            for (offset, data) in writes {
                out.push(self.write(offset, data, false).await);
            }
            out
        })
    }

    fn flush(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        ready(Ok(()))
    }

    fn trim(&self, offset: u64, len: u64) -> BackendFuture<'_, Result<(), BackendError>> {
        let r = self
            .check_write()
            .and_then(|()| self.check_range(offset, len));
        if r.is_ok() {
            self.stats.trims.fetch_add(1, Ordering::Relaxed);
            self.punch(offset, len);
        }
        ready(r)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> BackendFuture<'_, Result<(), BackendError>> {
        let r = self
            .check_write()
            .and_then(|()| self.check_range(offset, len));
        if let Err(e) = r {
            return ready(Err(e));
        }
        if fast_only && !self.fast_zero {
            return ready(Err(BackendError::not_supported(
                "zeroing is not fast on this export",
            )));
        }
        if may_trim {
            self.stats.trims.fetch_add(1, Ordering::Relaxed);
            self.punch(offset, len);
        } else {
            self.store(offset, None, len);
        }
        ready(Ok(()))
    }

    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> BackendFuture<'_, Result<Vec<Extent>, BackendError>> {
        if let Err(e) = self.check_range(offset, len) {
            return ready(Err(e));
        }
        let bs = u64::from(self.block);
        let bs_us = usize::try_from(self.block).unwrap_or(4096);
        let mut out: Vec<Extent> = Vec::new();
        fn push(out: &mut Vec<Extent>, length: u64, hole: bool) {
            let flags = if hole { state::HOLE | state::ZERO } else { 0 };
            match out.last_mut() {
                Some(l) if l.flags == flags => l.length += length,
                _ => out.push(Extent { length, flags }),
            }
        }
        for (ci, r, _) in self.pieces(offset, len) {
            if out.len() >= MAX_EXTENTS {
                break;
            }
            let g = self.chunks[ci].lock();
            match g.as_ref() {
                None => push(&mut out, u64::try_from(r.len()).unwrap_or(0), true),
                Some(c) => {
                    let mut p = r.start;
                    while p < r.end {
                        let b = p / bs_us;
                        let bend = ((b + 1) * bs_us).min(r.end);
                        push(
                            &mut out,
                            u64::try_from(bend - p).unwrap_or(bs),
                            !c.is_set(b),
                        );
                        p = bend;
                    }
                }
            }
        }
        if out.len() > MAX_EXTENTS {
            out.truncate(MAX_EXTENTS);
        }
        if out.is_empty() {
            out.push(Extent {
                length: len,
                flags: 0,
            });
        }
        ready(Ok(out))
    }
}
