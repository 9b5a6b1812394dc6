//! Read window: at most [`super::super::ReactorConfig::read_window`] positioned reads per file
//! in flight on a ring; later ones wait in the ring's own queue and are handed to the kernel,
//! oldest first, in the same reap that completes earlier ones, before any task runs.
//!
//! Why: the virtio disk of the test box (perf/results/README-nbd.md) completes every read it
//! holds at once, when it has run out of queued work, and then idles until new reads arrive.
//! A client at queue depth 32 behind an NBD server gets its 32 replies, turns them around and
//! sends 32 new requests; from the completion of the batch until the first new read reaches
//! the disk (the replies' checksums and send, the client's wake-up and its turn-around, the
//! receive and the lookup) the disk had nothing: ~100 us of a ~480 us cycle. With a window
//! below the client's depth, the reads past it wait here while the disk works on the window
//! and go to the disk the moment the window completes, so the disk has work while that
//! turn-around happens; the reads the client sends meanwhile wait for the next completion.
//! A ring with fewer reads in flight (queue depth 1) never holds one; reads longer than
//! [`WINDOW_MAX_READ`] are never held or counted.
//!
//! Reads made inside [`crate::io::outside_read_window`] (an indirect block a lookup needs
//! before its data read can even be made) bypass the window: held behind a window of data
//! reads, a lookup that misses the cache would wait two disk batches instead of one.
//!
//! Held reads keep their slot (and buffer); a held read whose future is dropped is freed
//! without the kernel ever seeing it. Only reads made through `ops::read_window` count (the
//! pool's device reads); receives, writes and every other op are never held.

use std::cell::Cell;
use std::collections::VecDeque;

use io_uring::squeue;

use super::perfile::PerFile;
use super::{Driver, Lifecycle, OpData, Slot};
use crate::io::ops::FileRef;

/// Reads longer than this are neither held nor counted: large reads (a sequential stream, a
/// read-ahead's chunks) want the disk's depth for bandwidth, and the disk's per-batch
/// turn-around is what small random reads lose. With every read counted, 128 KiB sequential
/// reads at QD8 over NBD (volume of 4 KiB blocks, read-ahead on) ran at 0.96x the IOPS and
/// 1.4x the p99.
pub(crate) const WINDOW_MAX_READ: u32 = 32 * 1024;

thread_local! {
    /// Reads made now bypass the window (see [`crate::io::outside_read_window`]).
    static OUTSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Sets whether reads made on this thread from now on bypass the window; returns the old value.
pub(crate) fn set_outside(on: bool) -> bool {
    OUTSIDE.with(|c| c.replace(on))
}

/// The read window state of one ring.
pub(super) struct ReadWindow {
    /// Most reads per file in flight (0: no limit, nothing is counted).
    pub(super) window: usize,
    /// Reads in flight per file.
    inflight: PerFile,
    /// Reads waiting for room in their file's window, one FIFO per file with reads waiting:
    /// (file, [(slot key, SQE with user_data)]). A ring drives a handful of files, so a reap
    /// releases by looking at each file once, not at every held read (hundreds with many
    /// connections at depth).
    held: Vec<(FileRef, VecDeque<(usize, squeue::Entry)>)>,
}

impl ReadWindow {
    pub(super) fn new() -> ReadWindow {
        ReadWindow {
            window: 0,
            inflight: PerFile::default(),
            held: Vec::new(),
        }
    }

    /// A counted read of `fd` completed (its CQE was reaped).
    pub(super) fn done(&mut self, fd: FileRef) {
        self.inflight.done(fd);
    }

    /// Reads are waiting for room.
    pub(super) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether reads of `fd` are waiting.
    fn holds(&self, fd: FileRef) -> bool {
        self.held.iter().any(|(f, _)| *f == fd)
    }

    /// Queues a read of `fd` behind the file's other held reads.
    fn hold(&mut self, fd: FileRef, key: usize, entry: squeue::Entry) {
        match self.held.iter_mut().find(|(f, _)| *f == fd) {
            Some((_, q)) => q.push_back((key, entry)),
            None => self.held.push((fd, VecDeque::from([(key, entry)]))),
        }
    }

    /// Forget the held reads (shutdown: their futures are gone).
    pub(super) fn clear_held(&mut self) {
        self.held.clear();
    }
}

impl Driver {
    /// Sets the read window (0: reads are never held).
    pub(crate) fn set_read_window(&mut self, window: usize) {
        self.rwin.window = window;
    }

    /// Registers a positioned read of `fd`: the slot takes `data` (which owns the memory
    /// `entry` points at); the read is pushed at once, or held while the window's worth of
    /// reads of `fd` is in flight. Returns the slot key.
    pub(crate) fn submit_read(
        &mut self,
        entry: squeue::Entry,
        data: OpData,
        fd: FileRef,
        len: u32,
    ) -> usize {
        let counted = self.rwin.window > 0 && len <= WINDOW_MAX_READ && !OUTSIDE.with(Cell::get);
        let key = self.ops.insert(Slot {
            life: Lifecycle::Waiting(None),
            data,
            grouped: false,
            write_fd: None,
            read_fd: counted.then_some(fd),
            read: true,
        });
        self.reads_in_flight += 1;
        let ud = u64::try_from(key).unwrap_or(u64::MAX) + 1;
        let entry = entry.user_data(ud);
        if counted && (self.rwin.inflight.get(fd) >= self.rwin.window || self.rwin.holds(fd)) {
            // Behind earlier held reads of the file too, so they go to the kernel in order.
            self.rwin.hold(fd, key, entry);
            self.stats.held_reads += 1;
            return key;
        }
        if counted {
            self.rwin.inflight.add(fd);
        }
        self.push(entry);
        key
    }

    /// Pushes held reads, oldest first within each file, while their file has room in the
    /// window. Returns how many went to the SQ.
    pub(super) fn release_held_reads(&mut self) -> usize {
        let mut released = 0;
        let mut i = 0;
        while i < self.rwin.held.len() {
            let fd = self.rwin.held[i].0;
            while self.rwin.inflight.get(fd) < self.rwin.window {
                let Some((_, entry)) = self.rwin.held[i].1.pop_front() else {
                    break;
                };
                self.rwin.inflight.add(fd);
                self.push(entry);
                released += 1;
                if released == 1 && !self.info.sqpoll {
                    // The disk starts on the first read while the others are being prepared
                    // (its submission through the file system takes microseconds per read).
                    // An error (EBUSY, EAGAIN) leaves it queued for the turn's enter.
                    let _ = self.enter(false);
                }
            }
            if self.rwin.held[i].1.is_empty() {
                self.rwin.held.swap_remove(i);
            } else {
                i += 1;
            }
        }
        released
    }

    /// Removes the held read of slot `key`, if it is one (its future was dropped before the
    /// kernel saw it). Returns whether it was held.
    pub(super) fn unhold_read(&mut self, key: usize) -> bool {
        for i in 0..self.rwin.held.len() {
            let q = &mut self.rwin.held[i].1;
            if let Some(pos) = q.iter().position(|(k, _)| *k == key) {
                q.remove(pos);
                if q.is_empty() {
                    self.rwin.held.swap_remove(i);
                }
                return true;
            }
        }
        false
    }
}
