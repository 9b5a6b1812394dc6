//! Counting global allocator: live heap bytes, summed over per-thread padded slots so the count
//! itself does not bounce a cache line between the benchmark threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

const SLOTS: usize = 64;

#[repr(align(128))]
struct Slot(AtomicIsize);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_SLOT: Slot = Slot(AtomicIsize::new(0));
static HEAP: [Slot; SLOTS] = [ZERO_SLOT; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn slot() -> usize {
    MY_SLOT
        .try_with(|s| {
            let v = s.get();
            if v != usize::MAX {
                return v;
            }
            let n = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
            s.set(n);
            n
        })
        .unwrap_or(0)
}

fn account(delta: isize) {
    HEAP[slot()].0.fetch_add(delta, Ordering::Relaxed);
}

pub(crate) fn heap_bytes() -> isize {
    HEAP.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

struct Counting;

pub(crate) fn isz(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract is System's; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(isz(layout.size()));
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` via this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) };
        account(-isz(layout.size()));
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(isz(layout.size()));
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` describe a live block from this allocator; forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(isz(new_size) - isz(layout.size()));
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
