//! The volume read path: look every block of a request up first, merge the blocks that lie
//! back to back on a device into one device read, issue those reads concurrently, and read
//! straight into the caller's (page-aligned) buffer where the layout allows, verifying each
//! block's checksum in place.
//!
//! A 128 KiB request on a volume of 4 KiB blocks written sequentially is then one 128 KiB device
//! read instead of 32 serial 4 KiB round trips. The reader-epoch guard is held from before the
//! lookup until every device read has completed, so an overwrite in the open txg cannot hand
//! the old place to another writer while we read it; a block whose checksum fails is looked
//! up again and re-read if its pointer changed meanwhile (replaced by a concurrent write and
//! its old place reused), otherwise the mismatch is real damage and reported at that block's
//! offset.

use std::ops::Range;
use std::rc::Rc;

use ringpool_ondisk::blkptr::{BlockPointer, DataPtr};

use super::super::error::{PoolError, Result};
use super::super::shared::Shared;
use super::{readahead, Volume};
use crate::io::IoBuf;

/// Device reads issued at once per request (bounds the futures polled per wake-up).
const READ_WIDTH: usize = 64;

/// One block's share of a request.
#[derive(Debug, Clone, Copy)]
struct Piece {
    blkid: u64,
    bp: BlockPointer,
    /// Start of this piece in the request (bytes from the request's offset).
    dst: usize,
    /// Bytes of the request this block covers.
    len: usize,
    /// Where in the block those bytes start.
    in_blk: usize,
}

/// Consecutive pieces whose blocks lie back to back on one device: one device read.
#[derive(Debug, Clone)]
struct Run {
    dev: u32,
    dev_off: u64,
    /// Bytes read from the device (sum of the blocks' allocated sizes).
    bytes: usize,
    /// Indexes into the piece list.
    pieces: Range<usize>,
    /// The run can be read straight into the caller's buffer: whole blocks whose allocated
    /// size is their logical size, at an aligned place of the buffer.
    direct: bool,
}

/// Where a run's bytes ended up.
enum Landing {
    /// In the caller's buffer, at the pieces' places.
    InPlace,
    /// In a buffer of its own (copied out after verification).
    Own(IoBuf),
}

fn data_of(bp: &BlockPointer) -> Option<&DataPtr> {
    match bp {
        BlockPointer::Data(d) => Some(d),
        _ => None,
    }
}

fn push_hole(holes: &mut Option<&mut Vec<Range<usize>>>, r: Range<usize>) {
    if let Some(h) = holes.as_deref_mut() {
        match h.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => h.push(r),
        }
    }
}

impl Volume {
    /// Reads `range.len()` bytes at `offset` into `buf[range]`, collecting the byte ranges
    /// (relative to `range.start`) that were holes; the rest of `buf` is left alone. The NBD
    /// export reads through this straight into its reply buffer.
    ///
    /// The buffer handed back may be another one of the same length with the data at `range`
    /// (a read-ahead window of exactly this request, see `readahead`); the bytes outside
    /// `range` are then unspecified.
    pub async fn read_into(
        &self,
        offset: u64,
        buf: IoBuf,
        range: Range<usize>,
        holes: Option<&mut Vec<Range<usize>>>,
    ) -> (Result<()>, IoBuf) {
        if range.start > range.end || range.end > buf.capacity() {
            let e = PoolError::Invalid(format!(
                "read range {range:?} outside a buffer of {} bytes",
                buf.capacity()
            ));
            return (Err(e), buf);
        }
        let len = u64::try_from(range.len()).unwrap_or(u64::MAX);
        if let Err(e) = self.check_range(offset, len) {
            return (Err(e), buf);
        }
        if range.is_empty() {
            return (Ok(()), buf);
        }
        let bs = self.bs();
        self.wait_write_back(offset / bs, (offset + len - 1) / bs)
            .await;
        let plan = if crate::io::in_reactor() {
            readahead::plan(self, offset, len, range.start)
        } else {
            readahead::Plan {
                cover: Vec::new(),
                start: Vec::new(),
            }
        };
        for chunk in plan.start {
            crate::io::spawn_local(self.clone().fill_chunk(chunk));
        }
        if plan.cover.is_empty() && offset / bs == (offset + len - 1) / bs {
            return self.read_one(offset, buf, range, holes).await;
        }
        // Chunks being filled are waited for: their device reads are already under way.
        for c in &plan.cover {
            readahead::Filled(Rc::clone(c)).await;
        }
        let guard = self.shared.readers.enter();
        let mut pieces = match self.pieces(offset, range.len()).await {
            Ok(p) => p,
            Err(e) => return (Err(e), buf),
        };
        let mut buf = buf;
        if !plan.cover.is_empty() {
            // A read-ahead window of exactly this request, still current: its buffer is the
            // answer (the caller's goes back to the read-ahead).
            let bps: Vec<BlockPointer> = pieces.iter().map(|p| p.bp).collect();
            let want = buf.len().max(range.end);
            if let Some(w) =
                readahead::take_window(&plan.cover, offset, len, range.start, want, &bps)
            {
                drop(guard);
                readahead::recycle(std::mem::replace(&mut buf, w));
                return (Ok(()), buf);
            }
            pieces = self.serve_cached(pieces, &plan.cover, &mut buf, range.start);
        }
        let (r, buf) = self.read_pieces(&pieces, buf, range, holes).await;
        drop(guard);
        (r, buf)
    }

    /// Copies the pieces whose blocks a read-ahead chunk holds under their current pointer
    /// into `buf` (at `base + dst`) and returns the others.
    fn serve_cached(
        &self,
        pieces: Vec<Piece>,
        cover: &[Rc<readahead::Chunk>],
        buf: &mut IoBuf,
        base: usize,
    ) -> Vec<Piece> {
        let bs = self.bs();
        let bsu = usize::try_from(bs).unwrap_or(usize::MAX);
        let mut rest = Vec::with_capacity(pieces.len());
        for p in pieces {
            if data_of(&p.bp).is_none() {
                rest.push(p);
                continue;
            }
            let pos = p.blkid * bs;
            let served = cover
                .iter()
                .find_map(|c| c.slot(pos, bs).map(|i| (c, i)))
                .is_some_and(|(c, i)| {
                    let fill = c.fill.borrow();
                    let readahead::Fill::Ready { data, bps } = &*fill else {
                        return false;
                    };
                    if bps.get(i).copied().flatten() != Some(p.bp) {
                        return false;
                    }
                    let src = c
                        .pad
                        .saturating_add(i.saturating_mul(bsu))
                        .saturating_add(p.in_blk);
                    if src.saturating_add(p.len) > data.len() {
                        return false;
                    }
                    let dst = base + p.dst;
                    buf.spare_and_all_mut()[dst..dst + p.len]
                        .copy_from_slice(&data[src..src + p.len]);
                    true
                });
            if !served {
                rest.push(p);
            }
        }
        rest
    }

    /// Reads read-ahead chunk `chunk` of this volume and publishes it (or its failure).
    async fn fill_chunk(self, chunk: Rc<readahead::Chunk>) {
        // A fill cancelled with its reactor (a `block_on` that returned) must not leave the
        // chunk pending: a later reader on this thread would wait for it forever.
        let chunk = readahead::FailOnDrop(chunk);
        let chunk = &chunk.0;
        let start = chunk.start;
        let size = self.size();
        if start >= size {
            chunk.finish(readahead::Fill::Failed);
            return;
        }
        let len = usize::try_from((size - start).min(chunk.len)).unwrap_or(0);
        let pad = chunk.pad;
        let guard = self.shared.readers.enter();
        let pieces = match self.pieces(start, len).await {
            Ok(p) => p,
            Err(_) => {
                chunk.finish(readahead::Fill::Failed);
                return;
            }
        };
        // More than one device read: the chunk does not count against the read-ahead's bound
        // of bytes at the device (see readahead::MAX_INFLIGHT).
        chunk.scattered.set(self.runs(&pieces, 0).len() > 1);
        let buf = readahead::buffer(chunk, pad + len);
        // Once the device reads are done, the next fills go to the device before this one's
        // checksums are computed: a virtio disk completes the fills it has in one burst, and
        // verifying all of them first (~10 us per 128 KiB) left it idle meanwhile.
        let vol = self.clone();
        let start_next = move || {
            chunk.read_done.set(true);
            let next = readahead::refill(&vol);
            let any = !next.is_empty();
            for n in next {
                crate::io::spawn_local_first(vol.clone().fill_chunk(n));
            }
            any
        };
        let hook: Option<&dyn Fn() -> bool> = if readahead::early_refill() {
            Some(&start_next)
        } else {
            None
        };
        let (r, data) = self.read_runs(&pieces, buf, pad, hook).await;
        drop(guard);
        let fill = match r {
            Ok(bad) => {
                let first = start / self.bs();
                let mut bps: Vec<Option<BlockPointer>> = pieces
                    .iter()
                    .map(|p| data_of(&p.bp).map(|_| p.bp))
                    .collect();
                // Blocks that failed verification are left to the requests' own path (which
                // tells a concurrent overwrite from damage and reports the latter).
                for (p, _) in bad {
                    if let Some(slot) = usize::try_from(p.blkid - first)
                        .ok()
                        .and_then(|i| bps.get_mut(i))
                    {
                        *slot = None;
                    }
                }
                readahead::Fill::Ready { data, bps }
            }
            Err(_) => readahead::Fill::Failed,
        };
        let filled = matches!(fill, readahead::Fill::Ready { .. });
        chunk.finish(fill);
        // The device has room again: the stream's next chunks (not after a failure, which
        // the requests see and report on their own path).
        if !filled {
            return;
        }
        for next in readahead::refill(&self) {
            crate::io::spawn_local(self.clone().fill_chunk(next));
        }
    }

    /// A read within one block (the common small random read): no batching machinery.
    async fn read_one(
        &self,
        offset: u64,
        mut buf: IoBuf,
        range: Range<usize>,
        mut holes: Option<&mut Vec<Range<usize>>>,
    ) -> (Result<()>, IoBuf) {
        let bs = self.bs();
        let blkid = offset / bs;
        let len = range.len();
        let in_blk = usize::try_from(offset % bs).unwrap_or(0);
        let guard = self.shared.readers.enter();
        let bp = match self.lookup(blkid).await {
            Ok(bp) => bp,
            Err(e) => return (Err(e), buf),
        };
        let piece = Piece {
            blkid,
            bp,
            dst: 0,
            len,
            in_blk,
        };
        let Some(d) = data_of(&bp) else {
            buf.spare_and_all_mut()[range].fill(0);
            push_hole(&mut holes, 0..len);
            return (Ok(()), buf);
        };
        let asize = usize::try_from(d.dva.asize).unwrap_or(usize::MAX);
        let lsize = usize::try_from(d.lsize).unwrap_or(usize::MAX);
        let direct = in_blk == 0
            && u64::try_from(len).is_ok_and(|l| l == bs)
            && lsize == len
            && asize == lsize
            && (buf.addr() + range.start).is_multiple_of(crate::io::buf::DEFAULT_ALIGN);
        let checked = if direct {
            let (r, b) = self
                .shared
                .read_raw_into(d.dva.device, d.dva.offset, buf, range.clone())
                .await;
            buf = b;
            if let Err(e) = r {
                return (Err(e), buf);
            }
            self.verify_piece(d, &piece, &buf[range.clone()])
        } else {
            let mut own = crate::io::buf::alloc(asize);
            own.set_len(asize);
            let (r, own) = self
                .shared
                .read_raw_into(d.dva.device, d.dva.offset, own, 0..asize)
                .await;
            if let Err(e) = r {
                return (Err(e), buf);
            }
            let v = self.verify_piece(d, &piece, &own[..lsize.min(asize)]);
            if v.is_ok() {
                buf.spare_and_all_mut()[range.clone()].copy_from_slice(&own[in_blk..in_blk + len]);
            }
            v
        };
        drop(guard);
        match checked {
            Ok(()) => (Ok(()), buf),
            Err(err) => match self.reread(piece, err).await {
                Ok(Some(data)) => {
                    buf.spare_and_all_mut()[range].copy_from_slice(&data[in_blk..in_blk + len]);
                    (Ok(()), buf)
                }
                Ok(None) => {
                    buf.spare_and_all_mut()[range].fill(0);
                    push_hole(&mut holes, 0..len);
                    (Ok(()), buf)
                }
                Err(e) => (Err(e), buf),
            },
        }
    }

    /// Splits `[offset, offset + len)` into per-block pieces with their current pointers.
    async fn pieces(&self, offset: u64, len: usize) -> Result<Vec<Piece>> {
        let bs = self.bs();
        let bsu = usize::try_from(bs).unwrap_or(usize::MAX);
        let end = offset + u64::try_from(len).unwrap_or(u64::MAX);
        let first = offset / bs;
        let last = (end - 1) / bs;
        let bps = self.lookup_range(first, last).await?;
        let mut out = Vec::with_capacity(bps.len());
        let mut done = 0usize;
        for (blkid, bp) in (first..=last).zip(bps) {
            let pos = offset + u64::try_from(done).unwrap_or(0);
            let in_blk = usize::try_from(pos % bs).unwrap_or(0);
            let n = (bsu - in_blk).min(len - done);
            out.push(Piece {
                blkid,
                bp,
                dst: done,
                len: n,
                in_blk,
            });
            done += n;
        }
        Ok(out)
    }

    /// Groups the data pieces into device runs.
    fn runs(&self, pieces: &[Piece], buf_addr: usize) -> Vec<Run> {
        let bsu = usize::try_from(self.bs()).unwrap_or(usize::MAX);
        let mut runs: Vec<Run> = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let Some(d) = data_of(&p.bp) else {
                continue;
            };
            let asize = usize::try_from(d.dva.asize).unwrap_or(usize::MAX);
            let lsize = usize::try_from(d.lsize).unwrap_or(usize::MAX);
            let whole = p.in_blk == 0
                && p.len == bsu
                && lsize == bsu
                && asize == lsize
                && (buf_addr + p.dst).is_multiple_of(crate::io::buf::DEFAULT_ALIGN);
            if let Some(r) = runs.last_mut() {
                let prev = pieces[r.pieces.end - 1];
                // Adjacent in the list and in the request (the list may skip pieces served
                // from read-ahead), and back to back on the device.
                let joins = r.pieces.end == i
                    && prev.dst + prev.len == p.dst
                    && r.dev == d.dva.device
                    && r.dev_off + u64::try_from(r.bytes).unwrap_or(u64::MAX) == d.dva.offset
                    && data_of(&prev.bp).is_some_and(|pd| pd.dva.asize == d.dva.asize);
                if joins {
                    r.pieces.end = i + 1;
                    r.bytes += asize;
                    r.direct &= whole;
                    continue;
                }
            }
            runs.push(Run {
                dev: d.dva.device,
                dev_off: d.dva.offset,
                bytes: asize,
                pieces: i..i + 1,
                direct: whole,
            });
        }
        runs
    }

    async fn read_pieces(
        &self,
        pieces: &[Piece],
        mut buf: IoBuf,
        range: Range<usize>,
        mut holes: Option<&mut Vec<Range<usize>>>,
    ) -> (Result<()>, IoBuf) {
        let base = range.start;
        // Holes first: zeroes in place.
        for p in pieces {
            if data_of(&p.bp).is_none() {
                buf.spare_and_all_mut()[base + p.dst..base + p.dst + p.len].fill(0);
                push_hole(&mut holes, p.dst..p.dst + p.len);
            }
        }
        let (r, mut buf) = self.read_runs(pieces, buf, base, None).await;
        let bad = match r {
            Ok(bad) => bad,
            Err(e) => return (Err(e), buf),
        };
        // Blocks that failed their checksum: replaced meanwhile, or damaged.
        for (p, err) in bad {
            match self.reread(p, err).await {
                Ok(Some(data)) => {
                    let dst = base + p.dst;
                    buf.spare_and_all_mut()[dst..dst + p.len]
                        .copy_from_slice(&data[p.in_blk..p.in_blk + p.len]);
                }
                Ok(None) => {
                    buf.spare_and_all_mut()[base + p.dst..base + p.dst + p.len].fill(0);
                    if let Some(h) = holes.as_deref_mut() {
                        h.push(p.dst..p.dst + p.len);
                        h.sort_unstable_by_key(|r| r.start);
                        // Re-merge neighbours.
                        let mut merged: Vec<Range<usize>> = Vec::with_capacity(h.len());
                        for r in h.drain(..) {
                            match merged.last_mut() {
                                Some(l) if l.end == r.start => l.end = r.end,
                                _ => merged.push(r),
                            }
                        }
                        *h = merged;
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Reads the data pieces into `buf` (each at `base + dst`): one device read per run,
    /// the runs concurrently, every block verified. Returns the blocks that failed their
    /// checksum (for the caller to re-read or report); a device error fails the whole call.
    ///
    /// `after_read` is called once every device read has completed, before the last batch is
    /// verified; when it returns true (it started other tasks' device reads, with
    /// `spawn_local_first`), this task lets them run and submits their reads first.
    async fn read_runs(
        &self,
        pieces: &[Piece],
        mut buf: IoBuf,
        base: usize,
        after_read: Option<&dyn Fn() -> bool>,
    ) -> (Result<Vec<(Piece, PoolError)>>, IoBuf) {
        let runs = self.runs(pieces, buf.addr() + base);
        let mut first_err: Option<PoolError> = None;
        let mut bad: Vec<(Piece, PoolError)> = Vec::new();
        let batches = runs.len().div_ceil(READ_WIDTH);
        for (bi, batch) in runs.chunks(READ_WIDTH).enumerate() {
            // The largest direct run of the batch reads into the caller's buffer; the others
            // into buffers of their own (concurrent reads cannot share one owned buffer).
            let direct = batch
                .iter()
                .enumerate()
                .filter(|(_, r)| r.direct)
                .max_by_key(|(_, r)| r.bytes)
                .map(|(i, _)| i);
            let mut futs = Vec::with_capacity(batch.len());
            let mut own_buf = Some(buf);
            for (i, r) in batch.iter().enumerate() {
                if Some(i) == direct {
                    let b = own_buf.take().unwrap_or_else(|| IoBuf::with_capacity(0));
                    let dst = base + pieces[r.pieces.start].dst;
                    let f = self
                        .shared
                        .read_raw_into(r.dev, r.dev_off, b, dst..dst + r.bytes);
                    futs.push(f);
                } else {
                    let mut b = crate::io::buf::alloc(r.bytes);
                    b.set_len(r.bytes);
                    let f = self.shared.read_raw_into(r.dev, r.dev_off, b, 0..r.bytes);
                    futs.push(f);
                }
            }
            let outs = super::super::join::join_all(futs).await;
            if bi + 1 == batches && after_read.is_some_and(|f| f()) {
                // Every woken fill task starts its successors before any of them verifies:
                // the successors were spawned to run first, and each fill yields here once.
                crate::io::yield_now().await;
                crate::io::submit_now();
            }
            let mut landings = Vec::with_capacity(outs.len());
            for (i, (r, b)) in outs.into_iter().enumerate() {
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
                if Some(i) == direct {
                    own_buf = Some(b);
                    landings.push(Landing::InPlace);
                } else {
                    landings.push(Landing::Own(b));
                }
            }
            buf = match own_buf {
                Some(b) => b,
                None => IoBuf::with_capacity(0),
            };
            if first_err.is_some() {
                continue;
            }
            for (r, landing) in batch.iter().zip(landings) {
                let mut at = 0usize;
                for p in &pieces[r.pieces.clone()] {
                    let Some(d) = data_of(&p.bp) else {
                        continue;
                    };
                    let asize = usize::try_from(d.dva.asize).unwrap_or(0);
                    let lsize = usize::try_from(d.lsize).unwrap_or(0).min(asize);
                    let dst = base + p.dst;
                    let ok = match &landing {
                        Landing::InPlace => self.verify_piece(d, p, &buf[dst..dst + lsize]),
                        Landing::Own(own) => {
                            let v = self.verify_piece(d, p, &own[at..at + lsize]);
                            if v.is_ok() {
                                let src = at + p.in_blk;
                                buf.spare_and_all_mut()[dst..dst + p.len]
                                    .copy_from_slice(&own[src..src + p.len]);
                            }
                            v
                        }
                    };
                    if let Err(e) = ok {
                        bad.push((*p, e));
                    }
                    at += asize;
                }
            }
        }
        match first_err {
            Some(e) => (Err(e), buf),
            None => (Ok(bad), buf),
        }
    }

    fn verify_piece(&self, d: &DataPtr, p: &Piece, data: &[u8]) -> Result<()> {
        Shared::verify(d, data, &self.inner.obj_name, p.blkid * self.bs())
    }

    /// A block whose checksum did not match: if its pointer changed since we looked it up
    /// (a concurrent overwrite), read the new one (up to three times); if it did not, the
    /// mismatch stands.
    async fn reread(&self, p: Piece, err: PoolError) -> Result<Option<Vec<u8>>> {
        let mut seen = p.bp;
        let mut err = err;
        for round in 0..3 {
            let guard = self.shared.readers.enter();
            let now = self.lookup(p.blkid).await?;
            if now == seen {
                // The first mismatch came from verify_piece (uncounted); later ones from
                // read_verified, which counted them.
                return Err(if round == 0 {
                    self.shared.count_checksum(err)
                } else {
                    err
                });
            }
            let Some(d) = data_of(&now) else {
                return Ok(None);
            };
            let r = self
                .shared
                .read_verified(d, &self.inner.obj_name, p.blkid * self.bs())
                .await;
            drop(guard);
            match r {
                Ok(v) => return Ok(Some(v)),
                Err(e) if e.is_checksum() => {
                    seen = now;
                    err = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(err)
    }
}
