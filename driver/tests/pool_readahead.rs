//! Sequential read-ahead: a stream of back-to-back reads is served from chunks read ahead in
//! large device reads, and never returns data older than a write that completed before the
//! read was issued (the chunks are checked block by block against the current pointers), nor
//! hides a damaged block, nor hangs when a fill was cancelled with its reactor.

// Test arithmetic on small sizes: the casts cannot truncate here.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod pool_common;

use pool_common::{create_one_shard, pattern, rcfg, volume_data_blocks};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{self, FaultyEngine, IoBuf};
use ringpool_driver::pool::Volume;

/// Reads `[off, off + len)` through `read_into` at the NBD reply offset.
async fn read_at(vol: &Volume, off: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let buf = IoBuf::zeroed(4096 + len);
    let (r, buf) = vol.read_into(off, buf, 4096..4096 + len, None).await;
    r?;
    Ok(buf[4096..].to_vec())
}

/// Runs `f`, failing instead of hanging when it takes longer than `limit`.
async fn within<F: Future>(limit: Duration, f: F) -> anyhow::Result<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut sleep = std::pin::pin!(io::sleep(limit));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(v));
        }
        sleep
            .as_mut()
            .poll(cx)
            .map(|()| Err(anyhow::anyhow!("timed out after {limit:?}")))
    })
    .await
}

#[test]
fn sequential_stream_reads_ahead_and_sees_later_writes() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(128 << 20, 4096);
    let pool = create_one_shard("ra", vec![Arc::new(dev.clone())], Duration::from_secs(10))?;
    let size = 16usize << 20;
    let vol = pool.create_volume("v", size as u64, 4096)?;
    let step = 128 * 1024;
    io::block_on(&rcfg(), async {
        let mut model = pattern(1, size);
        vol.write(0, &model, false).await?;
        vol.flush().await?;
        // First half: a sequential stream of 128 KiB and 64 KiB requests (unequal lengths:
        // 1 MiB chunks, not request-sized windows). Read-ahead must cut the device reads well
        // below one per request (each request alone is one merged device read).
        let before = dev.read_count();
        let mut off = 0;
        let mut requests = 0u64;
        while off < size / 2 {
            let len = if requests.is_multiple_of(2) {
                step
            } else {
                step / 2
            };
            let got = read_at(&vol, off as u64, len).await?;
            anyhow::ensure!(got == model[off..off + len], "stream read at {off} differs");
            off += len;
            requests += 1;
        }
        let device_reads = dev.read_count() - before;
        anyhow::ensure!(
            device_reads * 3 < requests,
            "{device_reads} device reads for {requests} sequential requests: no read-ahead"
        );
        // The chunks ahead of the reader now hold the next megabytes. Change them behind the
        // read-ahead's back: overwrite whole and partial blocks, punch a hole, and rewrite a
        // block with the bytes it already had (a new pointer, same content).
        let writes: &[(usize, usize)] = &[
            (size / 2 + 4096, 4096),
            (size / 2 + 3 * step + 100, 5000),
            (size / 2 + 1_000_000, 3 * 4096),
        ];
        for (k, &(o, l)) in writes.iter().enumerate() {
            let d = pattern(50 + k as u64, l);
            vol.write(o as u64, &d, false).await?;
            model[o..o + l].copy_from_slice(&d);
        }
        let hole = size / 2 + 2 * step;
        vol.punch(hole as u64, 8192, false).await?;
        model[hole..hole + 8192].fill(0);
        let same = size / 2 + 5 * step;
        vol.write(same as u64, &model[same..same + 4096], false)
            .await?;
        // The rest of the stream, unaligned to the chunk boundaries half of the time.
        while off < size {
            let len = step.min(size - off);
            let got = read_at(&vol, off as u64, len).await?;
            if got != model[off..off + len] {
                let first = (0..len).find(|&i| got[i] != model[off + i]).unwrap_or(0);
                anyhow::bail!(
                    "stream read at {off}: first difference at byte {}",
                    off + first
                );
            }
            off += if off % (2 * step) == 0 {
                len - 512
            } else {
                len
            };
        }
        anyhow::Ok(())
    })??;
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

#[test]
fn equal_requests_are_answered_with_read_ahead_windows_that_are_current() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(128 << 20, 4096);
    let pool = create_one_shard("raw", vec![Arc::new(dev.clone())], Duration::from_secs(10))?;
    let size = 16usize << 20;
    let vol = pool.create_volume("v", size as u64, 4096)?;
    let step = 128 * 1024;
    io::block_on(&rcfg(), async {
        let mut model = pattern(3, size);
        vol.write(0, &model, false).await?;
        vol.flush().await?;
        // Equal 128 KiB requests: after the first few, each gets a window's buffer in place of
        // its own (another allocation) with the right bytes in the reply layout.
        let (mut off, mut requests, mut handed) = (0usize, 0u64, 0u64);
        let check = |buf: &IoBuf, off: usize, model: &[u8]| {
            buf.len() == 4096 + step && buf[4096..] == model[off..off + step]
        };
        while off < size / 2 {
            let buf = IoBuf::zeroed(4096 + step);
            let given = buf.addr();
            let (r, buf) = vol
                .read_into(off as u64, buf, 4096..4096 + step, None)
                .await;
            r?;
            anyhow::ensure!(check(&buf, off, &model), "stream read at {off} differs");
            handed += u64::from(buf.addr() != given);
            off += step;
            requests += 1;
        }
        anyhow::ensure!(
            handed + 4 >= requests,
            "{handed} of {requests} equal sequential requests answered with a window"
        );
        // Change the windows ahead behind the read-ahead's back: a whole block, a partial
        // block, a hole, and a block rewritten with the bytes it had (a new pointer).
        let writes: &[(usize, usize)] = &[(off + 4096, 4096), (off + 3 * step + 100, 5000)];
        for (k, &(o, l)) in writes.iter().enumerate() {
            let d = pattern(70 + k as u64, l);
            vol.write(o as u64, &d, false).await?;
            model[o..o + l].copy_from_slice(&d);
        }
        let hole = off + 2 * step + 8192;
        vol.punch(hole as u64, 8192, false).await?;
        model[hole..hole + 8192].fill(0);
        let same = off + 5 * step;
        vol.write(same as u64, &model[same..same + 4096], false)
            .await?;
        while off < size {
            let buf = IoBuf::zeroed(4096 + step);
            let (r, buf) = vol
                .read_into(off as u64, buf, 4096..4096 + step, None)
                .await;
            r?;
            if !check(&buf, off, &model) {
                let got = &buf[4096..];
                let first = (0..step).find(|&i| got[i] != model[off + i]).unwrap_or(0);
                anyhow::bail!(
                    "stream read at {off}: first difference at byte {}",
                    off + first
                );
            }
            off += step;
        }
        anyhow::Ok(())
    })??;
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

/// Block `b` at version `v`: every 8-byte word is `b << 32 | v`.
fn stamp(b: u64, v: u64, bs: usize) -> Vec<u8> {
    let w = (b << 32 | v).to_le_bytes();
    w.iter().copied().cycle().take(bs).collect()
}

#[test]
fn sequential_readers_racing_writers_never_read_stale_blocks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in("/tmp")?;
    let path = dir.path().join("dev.img");
    std::fs::File::create(&path)?.set_len(64 << 20)?;
    let dev = io::Device::open(
        &path,
        &io::DeviceOptions {
            direct: io::DirectIo::Required,
            ..Default::default()
        },
    )?;
    // Short txgs: syncs fold overlays into the tree and free old blocks while reads run.
    let pool = create_one_shard(
        "ra",
        vec![Arc::new(io::UringEngine::new(Arc::new(dev)))],
        Duration::from_millis(20),
    )?;
    let bs = 4096usize;
    let nblk = 2048u64;
    let vol = pool.create_volume("v", nblk * bs as u64, bs as u32)?;
    let checked = io::block_on(&rcfg(), async {
        let mut all = Vec::new();
        for b in 0..nblk {
            all.extend(stamp(b, 0, bs));
        }
        vol.write(0, &all, false).await?;
        // Version of each block's last completed write, and the next version number.
        let done = Rc::new(RefCell::new(vec![0u64; nblk as usize]));
        let next = Rc::new(RefCell::new(0u64));
        let mut writers = Vec::new();
        for w in 0..2u64 {
            let (vol, done, next) = (vol.clone(), Rc::clone(&done), Rc::clone(&next));
            writers.push(io::spawn_local(async move {
                let mut x = 0x1234_5678u64 + w;
                for _ in 0..400 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let first = (x >> 20) % nblk;
                    let count = ((x >> 40) % 4 + 1).min(nblk - first);
                    let v = {
                        let mut n = next.borrow_mut();
                        *n += 1;
                        *n
                    };
                    let mut d = Vec::new();
                    for b in first..first + count {
                        d.extend(stamp(b, v, bs));
                    }
                    vol.write(first * bs as u64, &d, false).await?;
                    {
                        let mut done = done.borrow_mut();
                        for b in first..first + count {
                            done[b as usize] = done[b as usize].max(v);
                        }
                    }
                    io::yield_now().await;
                }
                anyhow::Ok(())
            }));
        }
        let mut readers = Vec::new();
        for r in 0..2u64 {
            let (vol, done) = (vol.clone(), Rc::clone(&done));
            readers.push(io::spawn_local(async move {
                let step = 16 * bs as u64;
                let mut blocks = 0u64;
                for pass in 0..3u64 {
                    // Two streams at different places, both sequential.
                    let mut off = (r * nblk / 2 + pass * 7) % nblk * bs as u64;
                    let end = nblk * bs as u64;
                    while off < end {
                        let len = step.min(end - off) as usize;
                        let first = off / bs as u64;
                        // Every write completed before the read is issued must show.
                        let floor: Vec<u64> =
                            done.borrow()[first as usize..first as usize + len / bs].to_vec();
                        let got = read_at(&vol, off, len).await?;
                        for (i, blk) in got.chunks_exact(bs).enumerate() {
                            let b = first + i as u64;
                            let w = u64::from_le_bytes(blk[..8].try_into()?);
                            anyhow::ensure!(
                                w >> 32 == b && blk == stamp(b, w & 0xFFFF_FFFF, bs),
                                "block {b}: word {w:#x} (torn or foreign)"
                            );
                            anyhow::ensure!(
                                w & 0xFFFF_FFFF >= floor[i],
                                "block {b}: version {} read after version {} was written",
                                w & 0xFFFF_FFFF,
                                floor[i]
                            );
                            blocks += 1;
                        }
                        off += len as u64;
                    }
                }
                anyhow::Ok(blocks)
            }));
        }
        for t in writers {
            t.await??;
        }
        let mut checked = 0;
        for t in readers {
            checked += t.await??;
        }
        vol.flush().await?;
        anyhow::Ok(checked)
    })??;
    assert!(checked > 8_000, "{checked} blocks checked");
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

#[test]
fn damaged_block_inside_a_read_ahead_chunk_is_still_reported() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("ra", vec![Arc::new(dev.clone())], Duration::from_secs(10))?;
    let vol = pool.create_volume("v", 8 << 20, 4096)?;
    let data = pattern(3, 8 << 20);
    io::block_on(&rcfg(), async {
        vol.write(0, &data, false).await?;
        vol.flush().await
    })??;
    let blocks = volume_data_blocks(&pool, &vol)?;
    // A block well inside the chunks read ahead of a stream starting at 0.
    let victim = &blocks[600];
    dev.flip_bit(victim.offset + 77, 2);
    let results = io::block_on(&rcfg(), async {
        let mut out = Vec::new();
        let step = 64 * 1024usize;
        for off in (0..(8 << 20)).step_by(step) {
            out.push((off, read_at(&vol, off as u64, step).await));
        }
        out
    })?;
    let bad: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(bad.len(), 1, "exactly one request fails: {bad:?}");
    let (_, err) = results
        .iter()
        .find(|(o, _)| *o == bad[0])
        .map(|(o, r)| (o, r.as_ref().err()))
        .ok_or_else(|| anyhow::anyhow!("no failed request"))?;
    let msg = err.map(ToString::to_string).unwrap_or_default();
    assert!(msg.contains("checksum"), "{msg}");
    for (off, r) in &results {
        if let Ok(got) = r {
            assert!(
                got[..] == data[*off..*off + got.len()],
                "request at {off} differs"
            );
        }
    }
    // The failure is counted once, against the device (not once more by the read-ahead).
    let st = pool.status();
    assert_eq!(st.devices[0].errors.checksum, 1, "{:?}", st.devices[0]);
    pool.abandon();
    Ok(())
}

#[test]
fn a_fill_cancelled_with_its_reactor_does_not_block_later_reads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in("/tmp")?;
    let path = dir.path().join("dev.img");
    std::fs::File::create(&path)?.set_len(64 << 20)?;
    let dev = io::Device::open(
        &path,
        &io::DeviceOptions {
            direct: io::DirectIo::Required,
            ..Default::default()
        },
    )?;
    let pool = create_one_shard(
        "ra",
        vec![Arc::new(io::UringEngine::new(Arc::new(dev)))],
        Duration::from_secs(10),
    )?;
    let vol = pool.create_volume("v", 16 << 20, 4096)?;
    let data = pattern(9, 16 << 20);
    io::block_on(&rcfg(), async {
        vol.write(0, &data, false).await?;
        vol.flush().await
    })??;
    let step = 128 * 1024usize;
    // Start a stream; the reactor ends right after the third read, while chunks ahead of it
    // are still being filled (real device reads through the ring).
    io::block_on(&rcfg(), async {
        for k in 0..3 {
            read_at(&vol, (k * step) as u64, step).await?;
        }
        anyhow::Ok(())
    })??;
    // The same thread continues the stream on a new reactor.
    io::block_on(&rcfg(), async {
        for k in 3..64 {
            let off = k * step;
            let got = within(Duration::from_secs(20), read_at(&vol, off as u64, step)).await??;
            anyhow::ensure!(got == data[off..off + step], "read at {off} differs");
        }
        anyhow::Ok(())
    })??;
    pool.export()?;
    Ok(())
}

/// A device whose every read takes `delay` (reads overlap), counting reads and the most in
/// flight at once.
#[derive(Debug)]
struct SlowReads {
    inner: FaultyEngine,
    delay: Duration,
    now: Arc<std::sync::atomic::AtomicUsize>,
    max: Arc<std::sync::atomic::AtomicUsize>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
    /// Reads of exactly 128 KiB (read-ahead windows of 128 KiB blocks, not tree blocks).
    windows: Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowReads {
    /// A 256 MiB device whose reads each take `delay`, with every counter at zero.
    fn new(delay: Duration) -> SlowReads {
        SlowReads {
            inner: FaultyEngine::new(256 << 20, 4096),
            delay,
            now: Arc::default(),
            max: Arc::default(),
            reads: Arc::default(),
            windows: Arc::default(),
        }
    }
}

impl io::BlockEngine for SlowReads {
    fn geometry(&self) -> io::Geometry {
        self.inner.geometry()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read_at(&self, buf: IoBuf, offset: u64) -> io::IoFuture {
        let len = buf.len();
        self.read_into(buf, 0..len, offset)
    }
    fn read_into(&self, buf: IoBuf, range: std::ops::Range<usize>, offset: u64) -> io::IoFuture {
        use std::sync::atomic::Ordering::SeqCst;
        let (inner, delay) = (self.inner.clone(), self.delay);
        let (now, max, reads, windows) = (
            Arc::clone(&self.now),
            Arc::clone(&self.max),
            Arc::clone(&self.reads),
            Arc::clone(&self.windows),
        );
        Box::pin(async move {
            reads.fetch_add(1, SeqCst);
            if range.len() == 128 * 1024 {
                windows.fetch_add(1, SeqCst);
            }
            max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
            io::sleep(delay).await;
            let r = inner.read_into(buf, range, offset).await;
            now.fetch_sub(1, SeqCst);
            r
        })
    }
    fn write_at(&self, buf: IoBuf, offset: u64) -> io::IoFuture {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::UnitFuture {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::UnitFuture {
        self.inner.discard(offset, len)
    }
}

/// A slow device (every read 3 ms, any number at once): the read-ahead keeps at most 2 MiB of
/// fills at the device (16 windows of 128 KiB, plus the reader's own request), and still every
/// window is read once: the windows ahead of a stream are not evicted in favour of the spent
/// ones behind it. (With its whole depth at the device at once, a device that shares its
/// bandwidth between the reads it has makes the window the reader needs next wait for all of
/// them.)
#[test]
fn a_stream_keeps_at_most_2_mib_of_fills_at_the_device() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let dev = SlowReads::new(Duration::from_millis(3));
    let (max, reads) = (Arc::clone(&dev.max), Arc::clone(&dev.reads));
    let pool = create_one_shard("radeep", vec![Arc::new(dev)], Duration::from_secs(10))?;
    let size = 64usize << 20;
    let step = 128 * 1024;
    let vol = pool.create_volume("v", size as u64, step as u32)?;
    io::block_on(&rcfg(), async {
        let model = pattern(9, size);
        vol.write(0, &model, false).await?;
        vol.flush().await?;
        max.store(0, SeqCst);
        let before = reads.load(SeqCst);
        let mut off = 0usize;
        let mut requests = 0usize;
        while off < size {
            let got = within(Duration::from_secs(20), read_at(&vol, off as u64, step)).await??;
            anyhow::ensure!(
                got == model[off..off + step],
                "stream read at {off} differs"
            );
            off += step;
            requests += 1;
        }
        let (most, device_reads) = (max.load(SeqCst), reads.load(SeqCst) - before);
        // 16 windows, the request's own window, and a tree block or two.
        anyhow::ensure!(
            (12..=20).contains(&most),
            "{most} reads in flight at most, expected about 16"
        );
        // Tree blocks are read too (a few); a window evicted before its request came would
        // be read a second time by the request itself.
        anyhow::ensure!(
            device_reads <= requests + 16,
            "{device_reads} device reads for {requests} requests of one block each"
        );
        anyhow::Ok(())
    })??;
    pool.export()?;
    Ok(())
}

/// Read-ahead is paced by the device, not only by the reader: once a stream is seen, fills
/// that complete start the next windows up to the stream's depth (4 MiB: 32 windows of 128
/// KiB) with no further request, 2 MiB at a time.
#[test]
fn completed_fills_start_the_next_windows_without_new_requests() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let dev = SlowReads::new(Duration::from_millis(2));
    let (max, reads) = (Arc::clone(&dev.max), Arc::clone(&dev.reads));
    let pool = create_one_shard("rapace", vec![Arc::new(dev)], Duration::from_secs(10))?;
    let size = 16usize << 20;
    let step = 128 * 1024;
    let vol = pool.create_volume("v", size as u64, step as u32)?;
    io::block_on(&rcfg(), async {
        let model = pattern(4, size);
        vol.write(0, &model, false).await?;
        vol.flush().await?;
        // A stream of three requests (the third one starts the read-ahead), then nothing.
        // Counted from the third request on: on a loaded machine the fills it starts can
        // complete, and start the next ones, before it returns (counted from its return, this
        // test saw only the last 5 of them).
        let mut before = 0;
        for k in 0..3 {
            if k == 2 {
                max.store(0, SeqCst);
                before = reads.load(SeqCst);
            }
            let off = k * step;
            let got = read_at(&vol, off as u64, step).await?;
            anyhow::ensure!(got == model[off..off + step], "read at {off} differs");
        }
        // The third request started its own window and the next 15 (2 MiB); the other 17 of
        // the 4 MiB depth can only be started by the fills completing (2 ms each).
        let mut waited = 0;
        while reads.load(SeqCst) - before < 33 && waited < 2000 {
            io::sleep(Duration::from_millis(10)).await;
            waited += 10;
        }
        io::sleep(Duration::from_millis(50)).await;
        let (most, ahead) = (max.load(SeqCst), reads.load(SeqCst) - before);
        anyhow::ensure!(
            (30..=40).contains(&ahead),
            "{ahead} windows started from the third request on, expected its 16 and the 17 \
             left of its depth"
        );
        // 16 windows, and a tree block or two a loaded machine's cache may have to read.
        anyhow::ensure!(most <= 20, "{most} fills at the device at once");
        // The windows read ahead serve the stream's next requests without another read.
        let before = reads.load(SeqCst);
        for k in 3..20 {
            let off = k * step;
            let got = read_at(&vol, off as u64, step).await?;
            anyhow::ensure!(got == model[off..off + step], "read at {off} differs");
        }
        let extra = reads.load(SeqCst) - before;
        anyhow::ensure!(
            extra <= 24,
            "{extra} device reads for 17 requests served from read-ahead (refills included)"
        );
        anyhow::Ok(())
    })??;
    pool.export()?;
    Ok(())
}

/// A fill whose device read completed starts the stream's next windows before its own blocks
/// are verified (and before the request waiting for it is answered): a virtio disk completes
/// the fills it has in one burst, and verifying them all first left it idle meanwhile. So the
/// request that started the read-ahead (16 windows of 128 KiB, all at the device) returns only
/// after the successors of its window were handed to the device; before, it returned first.
#[test]
fn a_fill_starts_the_next_windows_before_it_is_verified() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let dev = SlowReads::new(Duration::from_millis(2));
    let windows = Arc::clone(&dev.windows);
    let pool = create_one_shard("raearly", vec![Arc::new(dev)], Duration::from_secs(10))?;
    let size = 16usize << 20;
    let step = 128 * 1024;
    let vol = pool.create_volume("v", size as u64, step as u32)?;
    io::block_on(&rcfg(), async {
        let model = pattern(6, size);
        vol.write(0, &model, false).await?;
        vol.flush().await?;
        for k in 0..2 {
            let off = k * step;
            let got = read_at(&vol, off as u64, step).await?;
            anyhow::ensure!(got == model[off..off + step], "read at {off} differs");
        }
        // The third request starts the read-ahead: its own window and the next 15. It runs as
        // a task of its own, so it is answered as soon as its window is ready (the test's
        // future would only be polled after every task already queued).
        let before = windows.load(SeqCst);
        let (v, w) = (vol.clone(), Arc::clone(&windows));
        let third = io::spawn_local(async move {
            let r = read_at(&v, 2 * step as u64, step).await;
            (r, w.load(SeqCst))
        });
        let (got, seen) = within(Duration::from_secs(20), third).await??;
        let got = got?;
        anyhow::ensure!(got == model[2 * step..3 * step], "third read differs");
        let started = seen - before;
        anyhow::ensure!(
            started > 16,
            "{started} windows at the device when the first one was answered: its successors \
             were not started before it was verified (16 would be the first batch alone)"
        );
        anyhow::ensure!(
            started <= 40,
            "{started} windows started, at most 32 expected"
        );
        // The windows read ahead still answer the stream.
        for k in 3..40 {
            let off = k * step;
            let got = read_at(&vol, off as u64, step).await?;
            anyhow::ensure!(got == model[off..off + step], "read at {off} differs");
        }
        anyhow::Ok(())
    })??;
    pool.export()?;
    Ok(())
}
