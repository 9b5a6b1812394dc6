//! Reusable write buffers of the sync thread.
//!
//! A txg rewrites hundreds of 16 KiB tree blocks. A fresh zero-filled heap buffer for each of
//! them (then a copy into an aligned I/O buffer) cost about a fifth of the sync thread's CPU
//! and most of its malloc churn; the blocks are fully overwritten by the encoder anyway, so
//! buffers come back here after their write completes and the next block reuses them as they are.

use crate::io::IoBuf;

/// Bytes of idle buffers kept between uses (beyond this, returned buffers are dropped).
const KEEP_BYTES: usize = 32 << 20;

/// A free list of I/O buffers, by exact size.
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    free: Vec<IoBuf>,
    idle_bytes: usize,
    /// Buffers handed out that came from the free list (for tests and stats).
    reused: u64,
}

impl BufPool {
    /// A buffer of exactly `len` bytes. Its contents are unspecified (initialized, possibly
    /// an earlier block's bytes): the caller overwrites every byte it writes out.
    pub(crate) fn take(&mut self, len: usize) -> IoBuf {
        if let Some(i) = self.free.iter().rposition(|b| b.capacity() == len) {
            let mut b = self.free.swap_remove(i);
            self.idle_bytes -= len;
            self.reused += 1;
            b.set_len(len);
            return b;
        }
        IoBuf::zeroed(len)
    }

    /// Returns a buffer for reuse (dropped if the pool already holds enough). Arena buffers go
    /// back to their arena instead: the reactor's other I/O needs them.
    pub(crate) fn give(&mut self, buf: IoBuf) {
        let cap = buf.capacity();
        if buf.is_arena() || cap == 0 || self.idle_bytes + cap > KEEP_BYTES {
            return;
        }
        self.idle_bytes += cap;
        self.free.push(buf);
    }

    /// How many buffers were served from the free list so far.
    #[cfg(test)]
    pub(crate) fn reused(&self) -> u64 {
        self.reused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_by_size_and_caps_idle_bytes() {
        let mut p = BufPool::default();
        let a = p.take(16 << 10);
        let addr = a.addr();
        p.give(a);
        let b = p.take(4096);
        assert_eq!(b.len(), 4096);
        assert_eq!(p.reused(), 0, "a different size is a new buffer");
        let c = p.take(16 << 10);
        assert_eq!((c.addr(), c.len(), p.reused()), (addr, 16 << 10, 1));
        // Past the idle budget, returned buffers are dropped.
        let many: Vec<IoBuf> = (0..(KEEP_BYTES / (1 << 20)) + 4)
            .map(|_| p.take(1 << 20))
            .collect();
        for m in many {
            p.give(m);
        }
        assert!(p.idle_bytes <= KEEP_BYTES);
        assert_eq!(p.free.len(), KEEP_BYTES / (1 << 20));
    }
}
