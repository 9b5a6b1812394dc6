//! Compact mode: a tree's segments as a bitmap (one bit per unit) with per-block counts of
//! run lengths, instead of the offset and by-size indexes. Ceph's hybrid allocator does the
//! same: a range tree while the free space is in few segments, a bitmap once it is fragmented.
//!
//! Why: merging a txg's deferred frees into a fragmented metaslab's free tree touched about
//! every offset leaf of it every txg (one or two segments per leaf), plus up to three by-size
//! leaves per segment: memory traffic that made the merge ~30 % of the allocator benchmark's
//! CPU; batching it per leaf, or deferring it, did not help (`alloc/README.md`). In the bitmap
//! an add tests and sets a word or two, finds its neighbours' lengths in the same words, and
//! updates three counts on one more cache line.
//!
//! Unlike an add-only bitmap (an earlier attempt, which expanded back to the indexes for every
//! allocation and lost), the counts let the bitmap serve the pickers with the indexes' exact
//! results:
//! * every block of [`BLOCK`] units (half a cache line of the bitmap) counts the runs that
//!   start in it per length class (`L - 1` for `L < 64` units, one class for 64 and more);
//! * per class, a bitset of the blocks that have such a run, and which classes occur at all.
//!
//! Best fit (smallest length first, then lowest start, as the by-size index orders) is then
//! the first block of the first class at or above the request (and the size floor, which the
//! index applies), and the first run of that length in it; only runs of 64 units or more are
//! compared by walking them. First fit and near fit walk the runs from the cursor. Results
//! are the same as the indexes' (`tests/range_tree_prop.rs` `bitmap_picks_like_the_indexes`,
//! `metaslab::tests::bitmap_representation_allocates_like_the_indexes`), so a metaslab
//! allocates identically either way. The histogram, the large-segment counts, the largest
//! hint, the space and the segment count are kept as with the indexes. Anything else ordered
//! (`fill_sorted`, `vacate`, `clear_range`, `set_large_min`) converts back first
//! ([`RangeTree::expand`]).
//!
//! Memory: `span / 8` bytes of bitmap, `span / 4` of counts (64 one-byte counts per block, a
//! cache line) and `span / 32` of class bitsets, ~0.41 bytes per unit: 26 bytes per segment
//! at one segment per 64 units, 8 at one per 20 (the benchmark's fragmented metaslabs), where
//! the two indexes hold 16-22 bytes per segment.

use super::{RangeTree, SegUnit, NO_HINT};
use crate::blockmap::BlockMap;
use crate::error::AllocError;

mod pick;

/// Trees spanning more units than this never go compact (a 16 MiB bitmap).
pub(super) const MAX_COMPACT_UNITS: u64 = 1 << 27;

/// Bits per bitmap word.
const W: u64 = 64;
/// Words per summarised block: half a cache line, so that no length class can have more than
/// 128 runs in a block (its counts are bytes).
const BLOCK_WORDS: usize = 4;
/// Units per summarised block.
const BLOCK: u64 = W * BLOCK_WORDS as u64;
/// Runs at least this long share the last length class.
const LONG: u64 = 64;

/// The bitmap of a compact tree and its summaries. Bit `u` is set while unit `u` is in a
/// segment; bits past the span stay clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Compact {
    words: Vec<u64>,
    /// Number of segments (maximal runs of set bits).
    segs: usize,
    /// Per block, per length class (`min(len, LONG) - 1`): how many runs of that class start
    /// in the block. Kept per add and remove (three runs change), so no block is re-read.
    counts: Vec<Counts>,
    /// Per class `c`, words `[c * bw, (c + 1) * bw)`: bit `b` set when block `b` has a run of
    /// class `c`.
    by_class: Vec<u64>,
    /// Words per class in `by_class` (blocks / 64, rounded up).
    bw: usize,
    /// Per class, the number of blocks that have a run of it.
    class_blocks: [u32; CLASSES],
    /// Bit `c` set while some block has a run of class `c`.
    present: u64,
}

/// Length classes: 1..63 units exactly, then 64 and more.
const CLASSES: usize = 64;

/// The run counts of one block, on their own cache line (an add or remove touches one line
/// of counts besides the bitmap's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(align(64))]
struct Counts([u8; CLASSES]);

#[inline]
fn word(u: u64) -> usize {
    // A unit below the span indexes a word of the vector, which was allocated for it.
    usize::try_from(u / W).unwrap_or(usize::MAX)
}

#[inline]
fn block(u: u64) -> usize {
    usize::try_from(u / BLOCK).unwrap_or(usize::MAX)
}

/// Masks of the units `[s % 64, ..]` of the first word and `[.., (e - 1) % 64]` of the last.
#[inline]
fn edge_masks(s: u64, e: u64) -> (u64, u64) {
    (u64::MAX << (s % W), u64::MAX >> (W - 1 - (e - 1) % W))
}

/// Length class of a run of `len` units (`len > 0`).
#[inline]
fn class_of(len: u64) -> usize {
    // In 0..64.
    #[allow(clippy::cast_possible_truncation)]
    let c = (len.min(LONG) - 1) as usize;
    c
}

impl Compact {
    /// An empty bitmap for `span` units.
    fn new(span: u64) -> Self {
        let n = usize::try_from(span.div_ceil(W)).unwrap_or(0);
        let blocks = n.div_ceil(BLOCK_WORDS);
        let bw = blocks.div_ceil(64);
        Self {
            words: vec![0; n],
            segs: 0,
            counts: vec![Counts([0; CLASSES]); blocks],
            by_class: vec![0; bw * CLASSES],
            bw,
            class_blocks: [0; CLASSES],
            present: 0,
        }
    }

    /// Count a new run `(s, len)` (units, `len > 0`).
    #[inline]
    fn run_added(&mut self, s: u64, len: u64) {
        let (b, c) = (block(s), class_of(len));
        let n = &mut self.counts[b].0[c];
        *n += 1;
        if *n == 1 {
            self.by_class[c * self.bw + b / 64] |= 1 << (b % 64);
            self.class_blocks[c] += 1;
            self.present |= 1 << c;
        }
    }

    /// Uncount a run `(s, len)` that goes away.
    #[inline]
    fn run_removed(&mut self, s: u64, len: u64) {
        let (b, c) = (block(s), class_of(len));
        let n = &mut self.counts[b].0[c];
        *n -= 1;
        if *n == 0 {
            self.by_class[c * self.bw + b / 64] &= !(1 << (b % 64));
            self.class_blocks[c] -= 1;
            if self.class_blocks[c] == 0 {
                self.present &= !(1 << c);
            }
        }
    }

    /// Whether any unit of `[s, e)` is set (`s < e`, inside the span).
    fn any(&self, s: u64, e: u64) -> bool {
        let (first, last) = (word(s), word(e - 1));
        let (head, tail) = edge_masks(s, e);
        if first == last {
            return self.words[first] & head & tail != 0;
        }
        self.words[first] & head != 0
            || self.words[first + 1..last].iter().any(|&w| w != 0)
            || self.words[last] & tail != 0
    }

    /// Whether every unit of `[s, e)` is set (`s < e`, inside the span).
    fn all(&self, s: u64, e: u64) -> bool {
        let (first, last) = (word(s), word(e - 1));
        let (head, tail) = edge_masks(s, e);
        if first == last {
            let m = head & tail;
            return self.words[first] & m == m;
        }
        self.words[first] & head == head
            && self.words[first + 1..last].iter().all(|&w| w == u64::MAX)
            && self.words[last] & tail == tail
    }

    /// Set (`on`) or clear `[s, e)` (`s < e`, inside the span).
    fn fill(&mut self, s: u64, e: u64, on: bool) {
        let (first, last) = (word(s), word(e - 1));
        let (head, tail) = edge_masks(s, e);
        let apply = |w: &mut u64, m: u64| {
            if on {
                *w |= m;
            } else {
                *w &= !m;
            }
        };
        if first == last {
            apply(&mut self.words[first], head & tail);
            return;
        }
        apply(&mut self.words[first], head);
        for w in &mut self.words[first + 1..last] {
            *w = if on { u64::MAX } else { 0 };
        }
        apply(&mut self.words[last], tail);
    }

    /// Length of the run of set units ending just before unit `p`.
    fn run_left(&self, p: u64) -> u64 {
        let mut n = 0;
        let mut i = p;
        while i > 0 {
            let b = (i - 1) % W;
            let mask = u64::MAX >> (W - 1 - b);
            let zeros = !self.words[word(i - 1)] & mask;
            if zeros != 0 {
                let hz = u64::from(63 - zeros.leading_zeros());
                return n + (b - hz);
            }
            n += b + 1;
            i -= b + 1;
        }
        n
    }

    /// Length of the run of set units starting at unit `p`, counting at most `cap` (0 when `p`
    /// is clear or past the span: bits past the span are clear).
    #[inline]
    fn run_right_capped(&self, p: u64, cap: u64) -> u64 {
        let mut n = 0;
        let mut i = p;
        while let Some(&w) = self.words.get(word(i)) {
            let zeros = !w >> (i % W);
            if zeros != 0 {
                return n + u64::from(zeros.trailing_zeros());
            }
            n += W - i % W;
            i += W - i % W;
            if n >= cap {
                return n;
            }
        }
        n
    }

    /// Length of the run of set units starting at unit `p`.
    fn run_right(&self, p: u64) -> u64 {
        self.run_right_capped(p, u64::MAX)
    }

    /// The first run starting at or after unit `p`: `(start, len)` (`p` must not be inside a
    /// run, or that run's tail is returned).
    fn next_run(&self, p: u64) -> Option<(u64, u64)> {
        let mut wi = word(p);
        let mut w = *self.words.get(wi)? & (u64::MAX << (p % W));
        while w == 0 {
            wi += 1;
            w = *self.words.get(wi)?;
        }
        let s = u64::try_from(wi).unwrap_or(u64::MAX) * W + u64::from(w.trailing_zeros());
        Some((s, self.run_right(s)))
    }

    /// The start of the run containing unit `u`, or else of the first run after it.
    fn run_at_or_after(&self, u: u64) -> Option<(u64, u64)> {
        let set = self
            .words
            .get(word(u))
            .is_some_and(|&w| w >> (u % W) & 1 == 1);
        if set {
            let s = u - self.run_left(u);
            Some((s, self.run_right(s)))
        } else {
            self.next_run(u)
        }
    }

    /// Call `f(start, len capped at LONG)` for the runs starting in block `b`, in order,
    /// until it returns true; returns that run.
    #[inline]
    fn find_in_block(&self, b: usize, mut f: impl FnMut(u64, u64) -> bool) -> Option<(u64, u64)> {
        let lo = b * BLOCK_WORDS;
        let hi = (lo + BLOCK_WORDS).min(self.words.len());
        let mut carry = if lo > 0 { self.words[lo - 1] >> 63 } else { 0 };
        for i in lo..hi {
            let w = self.words[i];
            let mut starts = w & !((w << 1) | carry);
            carry = w >> 63;
            while starts != 0 {
                let p = starts.trailing_zeros();
                starts &= starts - 1;
                // Zeros of `w` from `p` up; none: the run reaches the next word.
                let inv = !w >> p;
                let u = i as u64 * W + u64::from(p);
                let len = if inv != 0 {
                    u64::from(inv.trailing_zeros())
                } else {
                    self.run_right_capped(u, LONG)
                };
                if f(u, len) {
                    return Some((u, len));
                }
            }
        }
        None
    }

    /// The runs starting in block `b` as `(start, len capped at LONG)`, in order.
    fn block_runs(&self, b: usize) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        self.find_in_block(b, |s, l| {
            v.push((s, l));
            false
        });
        v
    }

    /// Blocks with a run of class `c`, in order.
    fn blocks_of(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        let words = &self.by_class[c * self.bw..(c + 1) * self.bw];
        words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + b)
            })
        })
    }

    /// The first block with a run of class `c`.
    fn first_block_of(&self, c: usize) -> Option<usize> {
        self.blocks_of(c).next()
    }

    /// Longest run in units when no run reaches `LONG` (then the classes are exact).
    fn longest_short(&self) -> Option<u64> {
        (self.present >> (LONG - 1) & 1 == 0).then(|| 64 - u64::from(self.present.leading_zeros()))
    }

    /// Longest run in units (0: none): from the classes, or a walk of the long runs.
    fn longest(&self) -> u64 {
        self.longest_short().unwrap_or_else(|| {
            self.long_runs()
                .into_iter()
                .map(|(_, l)| l)
                .max()
                .unwrap_or(0)
        })
    }

    /// The runs of at least `LONG` units, in order, with their full lengths.
    fn long_runs(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for b in self.blocks_of(class_of(LONG)) {
            self.find_in_block(b, |s, l| {
                if l >= LONG {
                    v.push((s, self.run_right(s)));
                }
                false
            });
        }
        v
    }

    /// The summaries checked against the bitmap (for `verify`).
    fn check_summaries(&self) -> Result<(), String> {
        let mut class_blocks = [0u32; CLASSES];
        for (b, have) in self.counts.iter().enumerate() {
            let mut want = [0u8; CLASSES];
            for (_, l) in self.block_runs(b) {
                want[class_of(l)] += 1;
            }
            let have = &have.0;
            if *have != want {
                return Err(format!(
                    "block {b}: run counts {have:?}, the bitmap has {want:?}"
                ));
            }
            for (c, n) in class_blocks.iter_mut().enumerate() {
                let listed = self.by_class[c * self.bw + b / 64] >> (b % 64) & 1 == 1;
                if listed != (want[c] > 0) {
                    return Err(format!(
                        "block {b} class {c}: listed {listed}, {} runs",
                        want[c]
                    ));
                }
                *n += u32::from(want[c] > 0);
            }
        }
        let present =
            class_blocks
                .iter()
                .enumerate()
                .fold(0u64, |m, (c, &n)| if n > 0 { m | 1 << c } else { m });
        if class_blocks != self.class_blocks || present != self.present {
            return Err("class counts or present mask differ from the run counts".into());
        }
        Ok(())
    }

    /// Start loading the run counts of block `b` (a picker found a run there: taking it
    /// updates them).
    #[inline]
    fn prefetch_counts(&self, b: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            if let Some(n) = self.counts.get(b) {
                // SAFETY: SSE is part of the x86_64 baseline; a prefetch never faults, and the
                // address is an element of the vector anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(n).cast::<i8>()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = b;
    }

    /// Start loading the line of the bitmap holding unit `u` and its block's run counts.
    #[inline]
    fn prefetch(&self, u: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            if let (Some(w), Some(n)) = (self.words.get(word(u)), self.counts.get(block(u))) {
                // SAFETY: SSE is part of the x86_64 baseline, so the intrinsic's target feature
                // is always present; a prefetch never faults, and the addresses are elements of
                // the vectors anyway.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(w).cast::<i8>());
                    _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(n).cast::<i8>());
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = u;
    }
}

/// The runs of a compact tree from a unit on, in order (units).
pub(super) struct Runs<'a> {
    c: &'a Compact,
    pos: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        let (s, l) = self.c.next_run(self.pos)?;
        self.pos = s + l;
        Some((s, l))
    }
}

impl<U: SegUnit> RangeTree<U> {
    /// Whether the tree is in compact mode (see the module documentation).
    pub fn is_compact(&self) -> bool {
        self.compact.is_some()
    }

    /// Switch to compact mode: the segments move into a bitmap and both indexes are dropped
    /// (a no-op for a region of more than 2^27 units). Adds, removes and the pickers keep it
    /// compact; see the module documentation.
    pub fn compact(&mut self) {
        if self.compact.is_some() || self.span > MAX_COMPACT_UNITS {
            return;
        }
        let mut c = Compact::new(self.span);
        c.segs = self.by_start.len();
        for (s, l) in self.by_start.iter() {
            let (s, l) = (s.get(), l.get());
            c.fill(s, s + l, true);
            c.run_added(s, l);
        }
        self.largest_hint = c.longest();
        self.largest_exact = true;
        self.by_start.clear();
        self.by_size = None;
        self.compact = Some(Box::new(c));
    }

    /// Leave compact mode: the offset index is rebuilt from the bitmap in one pass (the by-size
    /// index stays dropped; [`RangeTree::build_size_index`] builds it).
    pub fn expand(&mut self) {
        let Some(c) = self.compact.take() else {
            return;
        };
        let runs: Vec<(U, U)> = Runs { c: &c, pos: 0 }
            .map(|(s, l)| (U::from_u64(s), U::from_u64(l)))
            .collect();
        // Runs are sorted and disjoint, so `from_sorted` accepts them.
        self.by_start = BlockMap::from_sorted(&runs).unwrap_or_default();
    }

    /// The segments starting at or after unit `u` when compact (`None`: not compact).
    pub(super) fn compact_runs(&self, u: u64) -> Option<Runs<'_>> {
        self.compact.as_deref().map(|c| {
            // A run that started before `u` is not one of them.
            let inside = u > 0 && u <= self.span && c.run_left(u) > 0;
            let pos = if inside { u + c.run_right(u) } else { u };
            Runs { c, pos }
        })
    }

    /// Segment count of a compact tree.
    pub(super) fn compact_segs(&self) -> Option<usize> {
        self.compact.as_deref().map(|c| c.segs)
    }

    /// Longest segment in units of a compact tree (exact; a walk of the runs of `LONG`
    /// units or more unless the largest hint is exact).
    pub(super) fn compact_longest(&self) -> Option<u64> {
        let c = self.compact.as_deref()?;
        Some(c.longest_short().unwrap_or_else(|| {
            if self.largest_exact {
                self.largest_hint
            } else {
                c.longest()
            }
        }))
    }

    /// An upper bound of the longest segment of a compact tree in O(1): exact from the
    /// classes while no run reaches `LONG`, else the largest hint.
    pub(super) fn compact_longest_bound(&self) -> Option<u64> {
        let c = self.compact.as_deref()?;
        Some(c.longest_short().unwrap_or(self.largest_hint))
    }

    /// `add` in compact mode (units checked by the caller): the range must be clear; the
    /// runs touching it on either side are joined with it.
    pub(super) fn compact_add(&mut self, s: u64, l: u64) -> Result<(), AllocError> {
        let (start, len) = (self.to_bytes(s), l << self.shift);
        let Some(c) = self.compact.as_deref_mut() else {
            return Err(AllocError::Invariant(
                "compact add on an expanded tree".into(),
            ));
        };
        let e = s + l;
        if c.any(s, e) {
            return Err(AllocError::DoubleFree { start, len });
        }
        let left = c.run_left(s);
        let right = c.run_right(e);
        c.fill(s, e, true);
        c.segs = c.segs + 1 - usize::from(left > 0) - usize::from(right > 0);
        if left > 0 {
            c.run_removed(s - left, left);
        }
        if right > 0 {
            c.run_removed(e, right);
        }
        c.run_added(s - left, left + l + right);
        if right > 0 {
            self.index_remove(e, right, NO_HINT);
        }
        if left > 0 {
            self.index_remove(s - left, left, NO_HINT);
        }
        self.index_insert(s - left, left + l + right, NO_HINT);
        self.space += len;
        Ok(())
    }

    /// `remove` in compact mode (units checked by the caller): the range must lie inside one
    /// segment; its remainders stay.
    pub(super) fn compact_remove(&mut self, s: u64, l: u64) -> Result<(), AllocError> {
        let (start, len) = (self.to_bytes(s), l << self.shift);
        let Some(c) = self.compact.as_deref_mut() else {
            return Err(AllocError::Invariant(
                "compact remove on an expanded tree".into(),
            ));
        };
        let e = s + l;
        // All set means inside one run: runs are maximal.
        if !c.all(s, e) {
            return Err(AllocError::DoubleAlloc { start, len });
        }
        let left = c.run_left(s);
        let right = c.run_right(e);
        c.fill(s, e, false);
        c.segs = c.segs + usize::from(left > 0) + usize::from(right > 0) - 1;
        c.run_removed(s - left, left + l + right);
        if left > 0 {
            c.run_added(s - left, left);
        }
        if right > 0 {
            c.run_added(e, right);
        }
        self.index_remove(s - left, left + l + right, NO_HINT);
        if left > 0 {
            self.index_insert(s - left, left, NO_HINT);
        }
        if right > 0 {
            self.index_insert(e, right, NO_HINT);
        }
        self.space -= len;
        Ok(())
    }

    /// Prefetch for a compact tree (`None`: not compact): the bitmap line of unit `u`, unless
    /// it is the one requested last (`last`, a block number). Returns the block.
    pub(super) fn compact_prefetch_once(&self, u: u64, last: usize) -> Option<usize> {
        let c = self.compact.as_deref()?;
        let b = block(u);
        if b != last {
            c.prefetch(u);
        }
        Some(b)
    }

    /// `overlaps` in compact mode for units `[s, e)` inside the span.
    pub(super) fn compact_any(&self, s: u64, e: u64) -> Option<bool> {
        self.compact.as_deref().map(|c| c.any(s, e))
    }

    /// `contains` in compact mode for units `[s, e)` inside the span.
    pub(super) fn compact_all(&self, s: u64, e: u64) -> Option<bool> {
        self.compact.as_deref().map(|c| c.all(s, e))
    }

    /// A compact tree's bitmap checked against its counters and summaries (see `verify`):
    /// the runs, or what is wrong.
    pub(super) fn compact_segments(&self) -> Option<Result<Vec<(u64, u64)>, String>> {
        let c = self.compact.as_deref()?;
        let runs: Vec<(u64, u64)> = Runs { c, pos: 0 }.collect();
        let check = || {
            if runs.last().is_some_and(|&(s, l)| s + l > self.span) {
                return Err("compact tree: bits set past the span".to_string());
            }
            if runs.len() != c.segs {
                return Err(format!(
                    "compact tree: {} runs, counted {}",
                    runs.len(),
                    c.segs
                ));
            }
            if !self.by_start.is_empty() || self.by_size.is_some() {
                return Err("compact tree kept an index".into());
            }
            c.check_summaries()
        };
        Some(check().map(|()| runs.clone()))
    }
}
