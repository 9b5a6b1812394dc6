//! Owned, aligned I/O buffers ([`IoBuf`]) and the per-reactor registered buffer arena.
//!
//! An [`IoBuf`] owns a block of memory aligned for O_DIRECT (4096 bytes by default). All of its
//! `capacity()` bytes are always initialized (heap buffers are zero-allocated, arena buffers are
//! carved from a zeroed mapping), so [`IoBuf::set_len`] is safe for any `n <= capacity()`.
//!
//! Ownership is passed to the kernel tokio-uring style: an op takes the buffer by value and
//! hands it back with the result. The heap memory never moves when the `IoBuf` value moves, so
//! the reactor's in-flight table can hold the `IoBuf` while the kernel uses its memory.
//!
//! **Arena buffers.** [`alloc`] on a reactor thread carves the buffer from that reactor's arena:
//! one `mmap`ed region registered with `io_uring_register_buffers` as fixed buffer 0, so reads
//! and writes use `READ_FIXED`/`WRITE_FIXED` (no per-I/O page pinning). The arena free list is
//! behind a mutex, so an arena buffer may be dropped on any thread (it is `Send` like every
//! `IoBuf`); the arena memory stays mapped until its last buffer is gone. A buffer used on a
//! reactor other than its arena's owner simply goes through the plain (non-fixed) opcode.
//! When the arena is exhausted, not configured, or could not be registered (RLIMIT_MEMLOCK
//! without CAP_IPC_LOCK), [`alloc`] returns a heap buffer instead.

use std::alloc::Layout;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Default alignment of every [`IoBuf`]: a page, which satisfies every O_DIRECT device here.
pub const DEFAULT_ALIGN: usize = 4096;

/// Allocation granule of the registered arena.
pub(crate) const ARENA_UNIT: usize = 4096;

/// An owned, aligned, `Send` byte buffer for ring I/O. See the module docs.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    origin: Origin,
}

enum Origin {
    /// Allocated with the global allocator; `layout` frees it.
    Heap { layout: Layout },
    /// Carved from a registered arena: `units` granules starting at granule `first`.
    Arena {
        arena: Arc<Arena>,
        first: usize,
        units: usize,
    },
}

// SAFETY: IoBuf uniquely owns its memory (heap block or an arena range no one else is handed
// until this buffer returns it), like a Box<[u8]>; the arena free list is mutex-protected.
unsafe impl Send for IoBuf {}
// SAFETY: &IoBuf only gives out &[u8]; no interior mutability.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// An empty buffer (len 0) with `cap` bytes of capacity, aligned to [`DEFAULT_ALIGN`].
    pub fn with_capacity(cap: usize) -> IoBuf {
        IoBuf::with_capacity_aligned(cap, DEFAULT_ALIGN)
    }

    /// An empty buffer with `cap` bytes of capacity aligned to `align` (a power of two; values
    /// below 1 are treated as 1).
    ///
    /// # Panics
    /// If `align` is not a power of two or the size overflows (programming errors).
    pub fn with_capacity_aligned(cap: usize, align: usize) -> IoBuf {
        let align = align.max(1);
        // Zero-sized allocations are not allowed; a one-byte block keeps the pointer real.
        let layout = Layout::from_size_align(cap.max(1), align).expect("IoBuf: invalid layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        IoBuf {
            ptr,
            len: 0,
            cap,
            origin: Origin::Heap { layout },
        }
    }

    /// A buffer of `len` zero bytes (len == capacity == `len`).
    pub fn zeroed(len: usize) -> IoBuf {
        let mut b = IoBuf::with_capacity(len);
        b.len = len;
        b
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut b = IoBuf::zeroed(data.len());
        b.copy_from_slice(data);
        b
    }

    /// Number of valid bytes (what `Deref` exposes and what writes/sends transfer).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when `len() == 0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes available.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Set the number of valid bytes. Every byte of the capacity is initialized, so any
    /// `n <= capacity()` is sound; bytes beyond the old length keep whatever they held.
    ///
    /// # Panics
    /// If `n > capacity()` (a programming error).
    pub fn set_len(&mut self, n: usize) {
        assert!(
            n <= self.cap,
            "IoBuf::set_len({n}) beyond capacity {}",
            self.cap
        );
        self.len = n;
    }

    /// Set `len` to 0.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Append `data` after `len`. Returns false (and changes nothing) if it does not fit.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> bool {
        let Some(end) = self.len.checked_add(data.len()) else {
            return false;
        };
        if end > self.cap {
            return false;
        }
        let start = self.len;
        self.spare_and_all_mut()[start..end].copy_from_slice(data);
        self.len = end;
        true
    }

    /// The whole capacity as a slice (including bytes past `len`).
    pub fn as_full_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap initialized bytes (module invariant) while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The whole capacity as a mutable slice (including bytes past `len`).
    pub fn spare_and_all_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Pointer to the first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable pointer to the first byte.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The address, for alignment checks.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// True if this buffer was carved from a reactor's registered arena.
    pub fn is_arena(&self) -> bool {
        matches!(self.origin, Origin::Arena { .. })
    }

    /// The fixed-buffer index and the arena id, if this buffer lives in a registered arena.
    /// An op may use `READ_FIXED`/`WRITE_FIXED` only on the reactor whose arena id matches.
    pub(crate) fn fixed(&self) -> Option<(u16, u64)> {
        match &self.origin {
            Origin::Arena { arena, .. } if arena.registered => Some((0, arena.id)),
            _ => None,
        }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        match &self.origin {
            Origin::Heap { layout } => {
                // SAFETY: ptr came from alloc_zeroed(layout) and is freed exactly once here.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), *layout) }
            }
            Origin::Arena {
                arena,
                first,
                units,
            } => arena.release(*first, *units),
        }
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: len <= cap; memory initialized and owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: len <= cap; exclusive through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("arena", &self.is_arena())
            .finish()
    }
}

impl Clone for IoBuf {
    /// Clones into a fresh heap buffer with the same length, capacity and content.
    fn clone(&self) -> IoBuf {
        let mut b = IoBuf::with_capacity(self.cap);
        b.spare_and_all_mut().copy_from_slice(self.as_full_slice());
        b.len = self.len;
        b
    }
}

/// Allocate a buffer of `len` bytes (len == `len`, contents unspecified but initialized):
/// from the current reactor's registered arena when possible, else from the heap.
/// Aligned to at least [`DEFAULT_ALIGN`].
pub fn alloc(len: usize) -> IoBuf {
    if let Some(b) = crate::io::reactor::with_arena(|a| a.try_alloc(len)).flatten() {
        return b;
    }
    IoBuf::zeroed(len)
}

/// Like [`alloc`], with every byte zeroed.
pub fn alloc_zeroed(len: usize) -> IoBuf {
    let mut b = alloc(len);
    if b.is_arena() {
        b.fill(0);
    }
    b
}

static NEXT_ARENA_ID: AtomicU64 = AtomicU64::new(1);

/// A registered (or registrable) region carved into [`ARENA_UNIT`] granules.
pub(crate) struct Arena {
    base: NonNull<u8>,
    bytes: usize,
    pub(crate) id: u64,
    pub(crate) registered: bool,
    /// One bit per granule, set = in use; plus a rotating search cursor.
    map: Mutex<(Vec<u64>, usize)>,
}

// SAFETY: the mapping is owned by the Arena; granule ownership is tracked under the mutex.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("bytes", &self.bytes)
            .field("id", &self.id)
            .field("registered", &self.registered)
            .finish()
    }
}

impl Arena {
    /// Map `bytes` (rounded down to granules) of zeroed anonymous memory. `None` if `bytes` is
    /// smaller than one granule or the mapping fails.
    pub(crate) fn map(bytes: usize) -> Option<Arena> {
        let units = bytes / ARENA_UNIT;
        if units == 0 {
            return None;
        }
        let bytes = units * ARENA_UNIT;
        // SAFETY: anonymous private mapping; no pointer arguments.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // Huge pages where the kernel allows them (THP "madvise" mode): buffers are handed out
        // round the whole arena, so with 4 KiB pages nearly every fresh buffer costs a TLB
        // miss (a long page walk in a VM) on its first touch by the checksum, the copy and the
        // kernel; 16 MiB are 8 huge pages. Advice only: a refusal changes nothing else.
        // SAFETY: `p` is the mapping of `bytes` bytes just made; madvise reads no memory.
        let _ = unsafe { libc::madvise(p, bytes, libc::MADV_HUGEPAGE) };
        Some(Arena {
            base: NonNull::new(p.cast::<u8>())?,
            bytes,
            id: NEXT_ARENA_ID.fetch_add(1, Ordering::Relaxed),
            registered: false,
            map: Mutex::new((vec![0u64; units.div_ceil(64)], 0)),
        })
    }

    /// The iovec describing the whole arena (for register_buffers).
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.base.as_ptr().cast::<libc::c_void>(),
            iov_len: self.bytes,
        }
    }

    fn units(&self) -> usize {
        self.bytes / ARENA_UNIT
    }

    /// Carve `len` bytes (rounded up to granules). `None` when no contiguous run is free.
    pub(crate) fn try_alloc(self: &Arc<Self>, len: usize) -> Option<IoBuf> {
        let want = len.div_ceil(ARENA_UNIT).max(1);
        let total = self.units();
        if want > total {
            return None;
        }
        let mut guard = self.map.lock();
        let (bits, cursor) = &mut *guard;
        let is_used = |bits: &Vec<u64>, i: usize| bits[i / 64] & (1u64 << (i % 64)) != 0;
        // First fit from the cursor, wrapping once.
        let mut start = if *cursor + want <= total { *cursor } else { 0 };
        let mut scanned = 0usize;
        let found = loop {
            if scanned > total {
                break None;
            }
            if start + want > total {
                scanned += total - start;
                start = 0;
                continue;
            }
            match (start..start + want).find(|&i| is_used(bits, i)) {
                None => break Some(start),
                Some(used) => {
                    scanned += used + 1 - start;
                    start = used + 1;
                }
            }
        }?;
        for i in found..found + want {
            bits[i / 64] |= 1u64 << (i % 64);
        }
        *cursor = found + want;
        drop(guard);
        // SAFETY: found + want <= total, so the range lies inside the mapping.
        let ptr = unsafe { self.base.as_ptr().add(found * ARENA_UNIT) };
        Some(IoBuf {
            ptr: NonNull::new(ptr)?,
            len,
            cap: want * ARENA_UNIT,
            origin: Origin::Arena {
                arena: Arc::clone(self),
                first: found,
                units: want,
            },
        })
    }

    fn release(&self, first: usize, units: usize) {
        let mut guard = self.map.lock();
        for i in first..first + units {
            guard.0[i / 64] &= !(1u64 << (i % 64));
        }
    }

    /// Granules currently handed out (for tests and stats).
    #[cfg(test)]
    pub(crate) fn used_units(&self) -> usize {
        let guard = self.map.lock();
        guard.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: base/bytes describe our own mapping; every IoBuf holding an Arc is gone, and
        // the ring that registered it has unregistered or closed (pages were pinned by the
        // kernel independently of this mapping, so unmapping cannot corrupt kernel state).
        unsafe {
            libc::munmap(self.base.as_ptr().cast::<libc::c_void>(), self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_alignment_and_len() {
        let mut b = IoBuf::with_capacity_aligned(100, 8192);
        assert_eq!(b.addr() % 8192, 0);
        assert_eq!(b.len(), 0);
        b.set_len(100);
        assert!(b.iter().all(|&x| x == 0));
        b[5] = 7;
        let c = b.clone();
        assert_eq!(&c[..], &b[..]);
        assert!(IoBuf::with_capacity(0).is_empty());
        let mut e = IoBuf::with_capacity(4);
        assert!(e.extend_from_slice(&[1, 2]));
        assert!(!e.extend_from_slice(&[1, 2, 3]));
        assert_eq!(&e[..], &[1, 2]);
    }

    #[test]
    fn arena_alloc_free_reuse() {
        let a = Arc::new(Arena::map(16 * ARENA_UNIT).unwrap());
        let b1 = a.try_alloc(3 * ARENA_UNIT).unwrap();
        let b2 = a.try_alloc(ARENA_UNIT + 1).unwrap();
        assert_eq!(b2.capacity(), 2 * ARENA_UNIT);
        assert_eq!(a.used_units(), 5);
        assert!(a.try_alloc(12 * ARENA_UNIT).is_none());
        drop(b1);
        assert_eq!(a.used_units(), 2);
        let big = a.try_alloc(14 * ARENA_UNIT);
        assert!(big.is_none(), "fragmented: 3 free at front + 11 at back");
        let b3 = a.try_alloc(11 * ARENA_UNIT).unwrap();
        assert_eq!(b3.addr() % DEFAULT_ALIGN, 0);
        // Drop on another thread.
        std::thread::spawn(move || drop((b2, b3))).join().unwrap();
        assert_eq!(a.used_units(), 0);
    }
}
