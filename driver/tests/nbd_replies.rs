//! How replies leave the server: a burst of completions is answered in several sends, the
//! first ones before the whole burst is processed (early flush), and however the sends are
//! made, replies never interleave on the socket, even when the client reads slowly.

#[path = "nbd/client.rs"]
mod client;
#[path = "nbd/common.rs"]
mod common;

use std::io::Write;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use client::*;
use common::*;
use parking_lot::Mutex;
use ringpool_driver::io::IoBuf;
use ringpool_driver::nbd::proto::{self, cmd};
use ringpool_driver::nbd::request::encode_request;
use ringpool_driver::nbd::{
    BackendError, BackendFuture, ExportBackend, MemBackend, NbdServerConfig, ReadLayout,
    ReadResult, WriteResult,
};

const SIZE: u64 = 64 << 20;

/// Every byte of the export is a function of its offset.
fn byte_at(off: u64) -> u8 {
    u8::try_from((off / 4096 * 31 + off % 251) % 256).unwrap()
}

#[derive(Default)]
struct Gate {
    open: bool,
    waiting: Vec<Waker>,
}

/// A read-only export whose reads wait at a gate until `burst` of them are waiting, so they
/// all complete in one burst, like a disk completing a whole queue. The burst's last read
/// opens the gate itself, on the reactor's thread, so every read is woken before the reactor
/// runs any of them (woken from the test's thread, the first could run, reply and be sent by
/// the writer before the rest were woken). When the last read of the burst completes, it
/// records how many reply bytes the client's socket already holds.
#[derive(Debug, Default)]
struct BurstBackend {
    gate: Mutex<GateDbg>,
    burst: u64,
    done: AtomicU64,
    client_fd: AtomicI32,
    /// Bytes readable by the client when the burst's last read completed (-1: not yet).
    readable_at_last: AtomicI32,
    /// Bytes readable by the client when the gate opened (-1: not yet).
    readable_at_open: AtomicI32,
}

#[derive(Default)]
struct GateDbg(Gate);

impl std::fmt::Debug for GateDbg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("open", &self.0.open)
            .field("waiting", &self.0.waiting.len())
            .finish()
    }
}

impl BurstBackend {
    fn new(burst: u64) -> BurstBackend {
        BurstBackend {
            burst,
            client_fd: AtomicI32::new(-1),
            readable_at_last: AtomicI32::new(-1),
            readable_at_open: AtomicI32::new(-1),
            ..BurstBackend::default()
        }
    }

    fn open(&self) {
        let wakers = {
            let mut g = self.gate.lock();
            g.0.open = true;
            let fd = self.client_fd.load(Ordering::SeqCst);
            if fd >= 0 {
                self.readable_at_open.store(readable(fd), Ordering::SeqCst);
            }
            std::mem::take(&mut g.0.waiting)
        };
        for w in wakers {
            w.wake();
        }
    }
}

fn readable(fd: RawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into our local.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(r, 0, "FIONREAD");
    n
}

impl ExportBackend for BurstBackend {
    fn size(&self) -> u64 {
        SIZE
    }
    fn block_size(&self) -> u32 {
        4096
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read(
        &self,
        offset: u64,
        mut buf: IoBuf,
        range: Range<usize>,
    ) -> BackendFuture<'_, ReadResult> {
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                let mut g = self.gate.lock();
                if g.0.open {
                    Poll::Ready(())
                } else if u64::try_from(g.0.waiting.len()).unwrap() + 1 >= self.burst {
                    drop(g);
                    self.open();
                    Poll::Ready(())
                } else {
                    g.0.waiting.push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let base = offset - u64::try_from(range.start).unwrap();
            for (i, b) in buf[range.clone()].iter_mut().enumerate() {
                *b = byte_at(base + u64::try_from(range.start + i).unwrap());
            }
            if self.done.fetch_add(1, Ordering::SeqCst) + 1 == self.burst {
                let fd = self.client_fd.load(Ordering::SeqCst);
                self.readable_at_last.store(readable(fd), Ordering::SeqCst);
            }
            (Ok(ReadLayout::Data), buf)
        })
    }
    fn write(&self, _offset: u64, data: IoBuf, _fua: bool) -> BackendFuture<'_, WriteResult> {
        Box::pin(std::future::ready((
            Err(BackendError::read_only("read-only")),
            data,
        )))
    }
    fn flush(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn trim(&self, _offset: u64, _len: u64) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(std::future::ready(Err(BackendError::read_only(
            "read-only",
        ))))
    }
    fn write_zeroes(
        &self,
        _offset: u64,
        _len: u64,
        _may_trim: bool,
        _fast_only: bool,
    ) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(std::future::ready(Err(BackendError::read_only(
            "read-only",
        ))))
    }
}

/// A server (one reactor, unix socket only) exporting `backend` as [`EXPORT`].
fn serve(backend: Arc<dyn ExportBackend>, tweak: impl FnOnce(&mut NbdServerConfig)) -> TestServer {
    let unused = Arc::new(MemBackend::new(4096, 4096));
    TestServer::start_backend(1, backend, true, unused, |cfg| {
        cfg.tcp = None;
        tweak(cfg);
    })
}

/// Reads one structured read reply: (cookie, offset, data).
fn recv_read(c: &mut Client) -> (u64, u64, Vec<u8>) {
    match c.recv(0, &mut Vec::new()) {
        Reply::Chunk {
            cookie,
            flags,
            kind,
            payload,
        } => {
            assert_eq!(kind, proto::chunk::OFFSET_DATA, "cookie {cookie}");
            assert_eq!(flags & 1, 1, "one chunk per read");
            (cookie, be64(&payload), payload[8..].to_vec())
        }
        r => panic!("{r:?}"),
    }
}

fn check_data(off: u64, data: &[u8]) {
    for (i, b) in data.iter().enumerate() {
        let at = off + u64::try_from(i).unwrap();
        assert_eq!(*b, byte_at(at), "byte at {at}");
    }
}

#[test]
fn a_burst_of_completions_is_answered_before_it_is_all_processed() {
    let burst = 32u64;
    let backend = Arc::new(BurstBackend::new(burst));
    let s = serve(backend.clone(), |c| c.reply_flush = 8);
    let mut c = Client::connect(&s, EXPORT, true, false);
    backend.client_fd.store(c.s.as_raw_fd(), Ordering::SeqCst);
    let mut reqs = Vec::new();
    for i in 0..burst {
        reqs.extend(encode_request(false, 0, cmd::READ, i, i * 3 * 4096, 4096));
    }
    c.s.write_all(&reqs).unwrap();
    let t = Instant::now();
    // Read nothing until the burst is processed: what the socket holds then was sent early.
    while backend.readable_at_last.load(Ordering::SeqCst) < 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the burst never completed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..burst {
        let (cookie, off, data) = recv_read(&mut c);
        assert_eq!(off, cookie * 3 * 4096);
        check_data(off, &data);
        assert!(seen.insert(cookie), "one reply per read");
    }
    // Nothing could be answered before the gate opened.
    assert_eq!(backend.readable_at_open.load(Ordering::SeqCst), 0);
    let early = backend.readable_at_last.load(Ordering::SeqCst);
    assert!(
        early > 0,
        "the first replies of the burst were sent while it was still being processed \
         (client had {early} bytes when the last read completed)"
    );
    assert!(s.server.as_ref().unwrap().stats().early_reply_flushes >= 1);
}

#[test]
fn replies_never_interleave_with_a_slow_client() {
    // Small and large reads mixed (batched small replies and zero-copy large ones), more than
    // the socket buffer holds, while the client reads in small bits with pauses: sends go
    // out short and wait for room, whoever makes them.
    let backend = Arc::new(BurstBackend::new(u64::MAX));
    backend.open();
    let s = serve(backend.clone(), |c| c.reply_flush = 2);
    let mut c = Client::connect(&s, EXPORT, true, false);
    let n = 1500u64;
    let len = |i: u64| {
        if i.is_multiple_of(5) {
            128 * 1024
        } else {
            4096 + (i % 3) * 4096
        }
    };
    let off = |i: u64| (i * 7919 % 2000) * 16384;
    let mut reqs = Vec::new();
    for i in 0..n {
        reqs.extend(encode_request(false, 0, cmd::READ, i, off(i), len(i)));
    }
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&reqs).unwrap());
    // Let the server fill the socket buffer first, so its sends wait for room.
    std::thread::sleep(Duration::from_millis(100));
    let mut seen = std::collections::HashSet::new();
    for k in 0..n {
        if k.is_multiple_of(8) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (cookie, o, data) = recv_read(&mut c);
        assert!(cookie < n, "cookie {cookie}");
        assert_eq!(o, off(cookie), "offset of {cookie}");
        assert_eq!(
            u64::try_from(data.len()).unwrap(),
            len(cookie),
            "length of {cookie}"
        );
        check_data(o, &data);
        assert!(seen.insert(cookie), "one reply per read");
    }
    writer.join().unwrap();
    assert!(s.server.as_ref().unwrap().stats().early_reply_flushes >= 1);
}

#[test]
fn page_sized_and_small_reads_mixed_are_answered_right_in_every_mode() {
    // Reads of a page or more are sent from their read buffers (header in the page before the
    // data), smaller ones are copied into the send batch; one pipelined burst of both, in
    // every reply mode, with and without early flushes, must come back whole and in one
    // piece each. Simple replies carry no length, so the simple-mode burst is all one size.
    for flush in [0usize, 3] {
        let backend = Arc::new(BurstBackend::new(u64::MAX));
        backend.open();
        let s = serve(backend.clone(), |c| c.reply_flush = flush);
        for (structured, extended) in [(false, false), (true, false), (false, true)] {
            let mut c = Client::connect(&s, EXPORT, structured, extended);
            let n = 96u64;
            let sizes = [4096u64, 512, 8192, 4095, 16384, 65536, 4097, 12288];
            let len = |i: u64| {
                if structured || extended {
                    sizes[usize::try_from(i).unwrap() % sizes.len()]
                } else {
                    4096
                }
            };
            let off = |i: u64| (i * 7919 % 4000) * 4096 + (i % 3) * 512;
            let mut reqs = Vec::new();
            for i in 0..n {
                reqs.extend(encode_request(extended, 0, cmd::READ, i, off(i), len(i)));
            }
            c.s.write_all(&reqs).unwrap();
            let mut seen = std::collections::HashSet::new();
            for _ in 0..n {
                let (cookie, o, data) = if structured || extended {
                    recv_read(&mut c)
                } else {
                    let mut data = Vec::new();
                    match c.recv(4096, &mut data) {
                        Reply::Simple { cookie, errno: 0 } => (cookie, off(cookie), data),
                        r => panic!("{r:?}"),
                    }
                };
                assert!(cookie < n, "cookie {cookie}");
                assert_eq!(o, off(cookie), "offset of {cookie}");
                assert_eq!(
                    u64::try_from(data.len()).unwrap(),
                    len(cookie),
                    "length of {cookie} (flush {flush}, mode {structured}/{extended})"
                );
                check_data(o, &data);
                assert!(seen.insert(cookie), "one reply per read");
            }
        }
    }
}
