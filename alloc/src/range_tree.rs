//! Range tree: a set of disjoint, coalesced `[start, end)` segments.
//!
//! Segments are indexed by offset (a [`BlockMap`] start -> length) and, optionally, by size (a
//! `BlockMap` keyed by `(length, start)`), and a power-of-two histogram of segment sizes is kept
//! (bucket `i` counts segments whose byte length lies in `[2^i, 2^(i+1))`), as in ZFS's
//! `range_tree.c`. Both indexes are B+trees of height two with large leaves (see
//! [`crate::blockmap`]): an update finds its segment once and rewrites it in place.
//!
//! The API speaks bytes (absolute device offsets). Internally a segment is stored in units of
//! `2^shift` bytes relative to the tree's `base`, in a [`SegUnit`] word: `u32` for metaslab trees
//! (ZFS's 32-bit segment packing: a metaslab holds at most 2^32 units), which keeps a free segment
//! at 2 x 8 bytes of payload in the two indexes, or `u64` for trees that span a whole device.
//!
//! Adding a range that overlaps an existing segment is [`AllocError::DoubleFree`]; removing a
//! range that is not entirely inside one segment is [`AllocError::DoubleAlloc`]. Neither changes
//! the tree.

use std::fmt::Debug;

use crate::blockmap::{BlockMap, Pos};
use crate::error::AllocError;

/// How many smallest-fitting segments `find_best` probes for an aligned fit before it falls back
/// to segments large enough for any alignment.
const ALIGN_PROBE: usize = 100;

/// Bounds of a first-fit search ([`RangeTree::find_first_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimit {
    /// Segments examined at least before the byte limit may stop the search
    /// (ZFS `metaslab_min_search_count`).
    pub min_count: usize,
    /// Stop once this many bytes past the first segment examined (ZFS `metaslab_df_max_search`).
    pub max_bytes: u64,
    /// Hard cap on segments examined.
    pub max_count: usize,
}

impl SearchLimit {
    /// No limit.
    pub const UNBOUNDED: SearchLimit = SearchLimit {
        min_count: usize::MAX,
        max_bytes: u64::MAX,
        max_count: usize::MAX,
    };
}

/// `move_into` merges in one linear pass (instead of one descent per segment) when the source
/// has at least 1/`BULK_MERGE_RATIO` as many segments as the destination. Measured with
/// allocbench (8 GiB, ~170 deferred segments into ~7000 per metaslab and txg): streaming and
/// rebuilding both indexes costs more than 170 descents, so the bulk path is kept for large
/// batches (a big free, a discard, a checkpoint rewind) only.
const BULK_MERGE_RATIO: usize = 8;

/// How many segments ahead `move_into` prefetches destination leaves.
const MOVE_PREFETCH_AHEAD: usize = 12;

/// "No leaf known" for the by-size index updates (a hint that never validates).
const NO_HINT: usize = usize::MAX;

/// A segment as `(start, len)` in units.
type Seg = (u64, u64);

/// Number of histogram buckets (one per bit of a `u64` length).
pub const HISTOGRAM_BUCKETS: usize = 64;

/// The word a segment's start and length are stored in (units of `2^shift` bytes).
pub trait SegUnit: Copy + Ord + Eq + Debug + Default + Send + Sync + 'static {
    /// Key of the by-size index: orders by length, then start.
    type SizeKey: Copy + Ord + Debug + Send + Sync + 'static;
    /// Largest representable value.
    const MAX: u64;
    /// The by-size key of a segment (`len`, `start` in units, both `<= MAX`).
    fn size_key(len: u64, start: u64) -> Self::SizeKey;
    /// `(len, start)` of a by-size key.
    fn unpack(key: Self::SizeKey) -> (u64, u64);
    /// Convert from `u64`; the caller guarantees `v <= Self::MAX`.
    fn from_u64(v: u64) -> Self;
    /// Widen to `u64`.
    fn get(self) -> u64;
}

impl SegUnit for u32 {
    /// `len << 32 | start`: one word compares faster than a tuple and keeps the index at
    /// 8 bytes per segment.
    type SizeKey = u64;
    const MAX: u64 = u32::MAX as u64;
    #[inline]
    fn size_key(len: u64, start: u64) -> u64 {
        debug_assert!(len <= <Self as SegUnit>::MAX && start <= <Self as SegUnit>::MAX);
        (len << 32) | start
    }
    #[inline]
    fn unpack(key: u64) -> (u64, u64) {
        (key >> 32, key & 0xffff_ffff)
    }
    #[inline]
    fn from_u64(v: u64) -> Self {
        debug_assert!(v <= <Self as SegUnit>::MAX);
        // Truncation is impossible: every caller converts values it checked against
        // the tree's span, which `RangeTree::with_index` bounds by `Self::MAX`.
        #[allow(clippy::cast_possible_truncation)]
        let w = v as u32;
        w
    }
    #[inline]
    fn get(self) -> u64 {
        u64::from(self)
    }
}

impl SegUnit for u64 {
    type SizeKey = (u64, u64);
    const MAX: u64 = u64::MAX;
    #[inline]
    fn size_key(len: u64, start: u64) -> (u64, u64) {
        (len, start)
    }
    #[inline]
    fn unpack(key: (u64, u64)) -> (u64, u64) {
        key
    }
    #[inline]
    fn from_u64(v: u64) -> Self {
        v
    }
    #[inline]
    fn get(self) -> u64 {
        self
    }
}

/// Bucket of the size histogram for a length in bytes (`floor(log2(len))`).
#[inline]
pub fn hist_bucket(len_bytes: u64) -> usize {
    debug_assert!(len_bytes > 0);
    // 63 - leading_zeros is in 0..=63 for a non-zero value.
    (63 - len_bytes.leading_zeros()) as usize
}

/// Round `v` up to a multiple of the power of two `align`; `None` on overflow.
#[inline]
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

/// A set of disjoint, coalesced segments. See the module documentation.
#[derive(Clone)]
pub struct RangeTree<U: SegUnit = u32> {
    base: u64,
    shift: u32,
    /// Number of units the tree may cover, `<= U::MAX`.
    span: u64,
    by_start: BlockMap<U, U>,
    /// The by-size index while it is built (see [`RangeTree::drop_size_index`]).
    by_size: Option<BlockMap<U::SizeKey, ()>>,
    /// The tree keeps a by-size index (built lazily: [`RangeTree::build_size_index`]).
    indexed: bool,
    /// Segments shorter than this many units stay out of the by-size index (ZFS
    /// `mra_floor_shift`; see [`RangeTree::set_size_floor`]). 0: every segment is indexed.
    floor: u64,
    /// An upper bound of the longest segment (units), exact when `largest_exact`: every
    /// segment added at least this long makes it exact, removing a segment this long makes it a
    /// bound. Lets `largest` stay O(1) without the by-size index as long as only adds happen
    /// (an idle metaslab only receives deferred frees).
    largest_hint: u64,
    largest_exact: bool,
    hist: [u64; HISTOGRAM_BUCKETS],
    space: u64,
    /// Segments of at least `large.min` units: how many and their units (see
    /// [`RangeTree::set_large_min`]).
    large: LargeSegs,
    /// The segments as a bitmap instead of `by_start` (see `compact`).
    compact: Option<Box<compact::Compact>>,
}

/// Count and units of the segments at least `min` units long (`min` = `u64::MAX`: none
/// counted), and how many pieces of `min` units they hold (`floor(len / min)` each). Kept
/// beside the histogram because it cannot say how many bytes lie in the short segments, and
/// the pool's sync reserve must be measured in pieces of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LargeSegs {
    min: u64,
    count: u64,
    units: u64,
    pieces: u64,
}

impl LargeSegs {
    #[inline]
    fn add(&mut self, len: u64) {
        if len >= self.min {
            self.count += 1;
            self.units += len;
            self.pieces += len / self.min;
        }
    }

    #[inline]
    fn sub(&mut self, len: u64) {
        if len >= self.min {
            self.count -= 1;
            self.units -= len;
            self.pieces -= len / self.min;
        }
    }
}

impl Default for LargeSegs {
    fn default() -> Self {
        Self {
            min: u64::MAX,
            count: 0,
            units: 0,
            pieces: 0,
        }
    }
}

impl<U: SegUnit> Debug for RangeTree<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeTree")
            .field("base", &self.base)
            .field("shift", &self.shift)
            .field("segments", &self.segment_count())
            .field("compact", &self.is_compact())
            .field("space", &self.space)
            .field("indexed", &self.indexed)
            .field("index_built", &self.by_size.is_some())
            .field("floor", &self.floor)
            .finish()
    }
}

impl<U: SegUnit> RangeTree<U> {
    /// A tree over `[base, base + size)` in units of `2^shift` bytes, with the size index.
    pub fn new(base: u64, size: u64, shift: u32) -> Result<Self, AllocError> {
        Self::with_index(base, size, shift, true)
    }

    /// Like [`RangeTree::new`]; `indexed = false` omits the by-size index (cheaper add/remove,
    /// less memory; `find_best` and `largest` then scan). For trees that are only walked.
    pub fn with_index(base: u64, size: u64, shift: u32, indexed: bool) -> Result<Self, AllocError> {
        let unit = 1u64.checked_shl(shift).filter(|_| shift < 63);
        let Some(unit) = unit else {
            return Err(AllocError::InvalidGeometry(format!(
                "shift {shift} too large"
            )));
        };
        if !base.is_multiple_of(unit)
            || !size.is_multiple_of(unit)
            || base.checked_add(size).is_none()
        {
            return Err(AllocError::InvalidGeometry(format!(
                "range tree region [{base:#x}, +{size:#x}) not aligned to {unit:#x}"
            )));
        }
        let span = size >> shift;
        if span > U::MAX {
            return Err(AllocError::InvalidGeometry(format!(
                "range tree region of {span} units exceeds the segment word ({} units)",
                U::MAX
            )));
        }
        Ok(Self {
            base,
            shift,
            span,
            by_start: BlockMap::new(),
            by_size: indexed.then(BlockMap::new),
            indexed,
            floor: 0,
            largest_hint: 0,
            largest_exact: true,
            hist: [0; HISTOGRAM_BUCKETS],
            space: 0,
            large: LargeSegs::default(),
            compact: None,
        })
    }

    /// An empty tree with the same region, unit and indexing as `self`.
    pub fn empty_like(&self) -> Self {
        Self {
            base: self.base,
            shift: self.shift,
            span: self.span,
            by_start: BlockMap::new(),
            by_size: self.indexed.then(BlockMap::new),
            indexed: self.indexed,
            floor: self.floor,
            largest_hint: 0,
            largest_exact: true,
            hist: [0; HISTOGRAM_BUCKETS],
            space: 0,
            large: LargeSegs {
                min: self.large.min,
                ..LargeSegs::default()
            },
            compact: None,
        }
    }

    /// First byte of the region the tree may cover.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// One past the last byte of the region.
    pub fn region_end(&self) -> u64 {
        self.base + (self.span << self.shift)
    }

    /// The unit shift (ashift).
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// Whether the tree keeps a by-size index (built or not).
    pub fn is_indexed(&self) -> bool {
        self.indexed
    }

    /// Whether the by-size index is currently built (every segment of at least the size floor
    /// in it).
    pub fn has_size_index(&self) -> bool {
        self.by_size.is_some()
    }

    /// Total bytes covered by segments.
    pub fn space(&self) -> u64 {
        self.space
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.compact_segs().unwrap_or_else(|| self.by_start.len())
    }

    /// No segments.
    pub fn is_empty(&self) -> bool {
        self.segment_count() == 0
    }

    /// The size histogram (bucket `i`: segments with byte length in `[2^i, 2^(i+1))`).
    pub fn histogram(&self) -> &[u64; HISTOGRAM_BUCKETS] {
        &self.hist
    }

    /// Convert a byte range to (start unit, length unit), validating alignment and bounds.
    #[inline]
    fn to_units(&self, start: u64, len: u64) -> Result<(u64, u64), AllocError> {
        let mask = (1u64 << self.shift) - 1;
        if len == 0 || (start | len) & mask != 0 {
            return Err(AllocError::Misaligned {
                start,
                len,
                unit: mask + 1,
            });
        }
        let out = || AllocError::OutOfRange {
            start,
            len,
            region_start: self.base,
            region_end: self.region_end(),
        };
        let rel = start.checked_sub(self.base).ok_or_else(out)? >> self.shift;
        let ulen = len >> self.shift;
        match rel.checked_add(ulen) {
            Some(end) if end <= self.span => Ok((rel, ulen)),
            _ => Err(out()),
        }
    }

    #[inline]
    fn to_bytes(&self, unit: u64) -> u64 {
        self.base + (unit << self.shift)
    }

    /// Start loading the offset-index leaf that `add(start, len)` or `remove(start, len)` will
    /// search (ranges outside the region are ignored). See [`BlockMap::prefetch`].
    #[inline]
    pub fn prefetch_range(&self, start: u64, len: u64) {
        if let Ok((s, l)) = self.to_units(start, len) {
            self.by_start.prefetch(U::from_u64(s + l));
        }
    }

    /// [`RangeTree::prefetch_range`] for ranges visited in ascending order, skipping the leaf
    /// requested by the previous call (`last`, its return value; `usize::MAX` at first).
    #[inline]
    pub fn prefetch_range_once(&self, start: u64, len: u64, last: usize) -> usize {
        match self.to_units(start, len) {
            Ok((s, l)) => match self.compact_prefetch_once(s, last) {
                Some(b) => b,
                None => self.by_start.prefetch_once(U::from_u64(s + l), last),
            },
            Err(_) => last,
        }
    }

    /// The segment containing unit `u`, or the last one starting before it: `(start, len)`.
    #[inline]
    fn seg_at_or_before(&self, u: u64) -> Option<(u64, u64)> {
        self.by_start.pred(U::from_u64(u)).map(|p| {
            let (s, l) = self.by_start.get(p);
            (s.get(), l.get())
        })
    }

    /// Add `[start, start + len)`, merging with touching neighbours. Overlap with an existing
    /// segment is [`AllocError::DoubleFree`] and leaves the tree unchanged.
    pub fn add(&mut self, start: u64, len: u64) -> Result<(), AllocError> {
        let (s, l) = self.to_units(start, len)?;
        if self.compact.is_some() {
            return self.compact_add(s, l);
        }
        let e = s + l;
        // One descent: the last two segments starting at or before `e`. Because segments are
        // disjoint and sorted, they are the only candidates for an overlap, for the neighbour
        // ending at `s` and for the neighbour starting at `e`.
        let mut cand = self.by_start.pred(U::from_u64(e));
        let mut next_at_e = None;
        if let Some(p) = cand {
            let (k, v) = self.by_start.get(p);
            if k.get() == e {
                next_at_e = Some((p, v.get()));
                cand = self.by_start.prev(p);
            }
        }
        if let Some(p) = cand {
            let (k, v) = self.by_start.get(p);
            let (ps, pl) = (k.get(), v.get());
            if ps + pl > s {
                return Err(AllocError::DoubleFree { start, len });
            }
            if ps + pl == s {
                // Merge with prev: grow it in place (and swallow next if it touches too).
                let nlen = pl + l + next_at_e.map_or(0, |n| n.1);
                let [h_old, h_new, h_next] = self.prefetch_size_keys([
                    (pl, ps),
                    (nlen, ps),
                    next_at_e.map_or((0, 0), |n| (n.1, e)),
                ]);
                self.by_start.set_val(p, U::from_u64(nlen));
                if let Some((np, nl)) = next_at_e {
                    self.by_start.remove_at(np);
                    self.index_remove(e, nl, h_next);
                }
                self.index_remove(ps, pl, h_old);
                self.index_insert(ps, nlen, h_new);
                self.space += len;
                return Ok(());
            }
        }
        match next_at_e {
            Some((np, nl)) => {
                // Grow the next segment downwards: its key moves from `e` to `s`, which keeps
                // the order (nothing lies in between, checked above).
                let nlen = l + nl;
                let [h_old, h_new, _] = self.prefetch_size_keys([(nl, e), (nlen, s), (0, 0)]);
                self.by_start.set_key(np, U::from_u64(s));
                self.by_start.set_val(np, U::from_u64(nlen));
                self.index_remove(e, nl, h_old);
                self.index_insert(s, nlen, h_new);
            }
            None => {
                let [h_new, _, _] = self.prefetch_size_keys([(l, s), (0, 0), (0, 0)]);
                // Right after `cand` (the last segment before it, or the front): the segment
                // after `cand` starts past `e`.
                self.by_start
                    .insert_after(cand, U::from_u64(s), U::from_u64(l));
                self.index_insert(s, l, h_new);
            }
        }
        self.space += len;
        Ok(())
    }

    /// Remove `[start, start + len)`, which must lie entirely inside one segment (trimming or
    /// splitting it). Otherwise [`AllocError::DoubleAlloc`] and the tree is unchanged.
    pub fn remove(&mut self, start: u64, len: u64) -> Result<(), AllocError> {
        if self.is_compact() {
            let (s, l) = self.to_units(start, len)?;
            return self.compact_remove(s, l);
        }
        self.remove_inner(start, len, None, None)
    }

    /// Remove `len` bytes at `fit.start`, a place a picker of this tree just returned (the tree
    /// unchanged since). Like [`RangeTree::remove`], but the offset leaf and the by-size leaves
    /// of the segment and its remainders are requested together first (they are known from
    /// the fit), so their cache misses overlap. A stale fit is still checked by `remove`.
    pub fn take(&mut self, fit: Fit, len: u64) -> Result<(), AllocError> {
        if self.is_compact() {
            return self.remove(fit.start, len);
        }
        let (ss, sl) = fit.seg;
        if let Ok((s, l)) = self.to_units(fit.start, len) {
            if ss <= s && s + l <= ss + sl && ss + sl <= self.span {
                if fit.pos.is_none() {
                    self.by_start.prefetch(U::from_u64(ss));
                }
                let e = s + l;
                let hints = self.prefetch_size_keys([(sl, ss), (s - ss, ss), (ss + sl - e, e)]);
                return self.remove_inner(fit.start, len, Some(hints), fit.pos);
            }
        }
        self.remove(fit.start, len)
    }

    /// [`RangeTree::remove`]; `hints`: the by-size leaves [`RangeTree::take`] already
    /// requested (else they are requested here first).
    fn remove_inner(
        &mut self,
        start: u64,
        len: u64,
        hints: Option<[usize; 3]>,
        pos: Option<Pos>,
    ) -> Result<(), AllocError> {
        let (s, l) = self.to_units(start, len)?;
        let e = s + l;
        // A position whose segment holds `s` is the one the descent would find (segments are
        // disjoint); any other (stale) position is ignored.
        let held = |p: &Pos| {
            self.by_start
                .get_checked(*p)
                .is_some_and(|(k, v)| k.get() <= s && k.get() + v.get() > s)
        };
        let Some(p) = pos
            .filter(held)
            .or_else(|| self.by_start.pred(U::from_u64(s)))
        else {
            return Err(AllocError::DoubleAlloc { start, len });
        };
        let (k, v) = self.by_start.get(p);
        let (ps, pl) = (k.get(), v.get());
        let pe = ps + pl;
        if pe < e {
            return Err(AllocError::DoubleAlloc { start, len });
        }
        let left = s - ps;
        let right = pe - e;
        let [h_old, h_left, h_right] =
            hints.unwrap_or_else(|| self.prefetch_size_keys([(pl, ps), (left, ps), (right, e)]));
        if left > 0 {
            // Trim in place; the right remainder (if any) is a new segment.
            self.by_start.set_val(p, U::from_u64(left));
            if right > 0 {
                self.by_start
                    .insert_after(Some(p), U::from_u64(e), U::from_u64(right));
            }
        } else if right > 0 {
            // Cut from the front: the key moves up to `e`, still below the next segment.
            self.by_start.set_key(p, U::from_u64(e));
            self.by_start.set_val(p, U::from_u64(right));
        } else {
            self.by_start.remove_at(p);
        }
        self.index_remove(ps, pl, h_old);
        if left > 0 {
            self.index_insert(ps, left, h_left);
        }
        if right > 0 {
            self.index_insert(e, right, h_right);
        }
        self.space -= len;
        Ok(())
    }

    /// Remove whatever part of `[start, start + len)` is present (ZFS `range_tree_clear`).
    pub fn clear_range(&mut self, start: u64, len: u64) -> Result<(), AllocError> {
        self.expand();
        let (s, l) = self.to_units(start, len)?;
        let e = s + l;
        let mut pieces = Vec::new();
        if let Some((ps, pl)) = self.seg_at_or_before(s) {
            if ps + pl > s {
                pieces.push((s, (ps + pl).min(e) - s));
            }
        }
        for (ns, nl) in self.by_start.iter_from(U::from_u64(s + 1)) {
            let (ns, nl) = (ns.get(), nl.get());
            if ns >= e {
                break;
            }
            pieces.push((ns, (ns + nl).min(e) - ns));
        }
        for (ps, pl) in pieces {
            self.remove(self.to_bytes(ps), pl << self.shift)?;
        }
        Ok(())
    }

    /// Count segments at least `bytes` long (rounded up to whole units; 0: none) for
    /// [`RangeTree::large_segments`]. Walks the tree once.
    pub fn set_large_min(&mut self, bytes: u64) {
        self.expand();
        let min = if bytes == 0 {
            u64::MAX
        } else {
            bytes.div_ceil(1 << self.shift)
        };
        let mut large = LargeSegs {
            min,
            ..LargeSegs::default()
        };
        for (_, l) in self.by_start.iter() {
            large.add(l.get());
        }
        self.large = large;
    }

    /// `(count, bytes)` of the segments at least as long as [`RangeTree::set_large_min`] set.
    pub fn large_segments(&self) -> (u64, u64) {
        (self.large.count, self.large.units << self.shift)
    }

    /// How many ranges of the [`RangeTree::set_large_min`] length the segments can hand out
    /// (`floor(len / min)` per segment), and that length in bytes.
    pub fn large_pieces(&self) -> (u64, u64) {
        if self.large.min == u64::MAX {
            return (0, 0);
        }
        (self.large.pieces, self.large.min << self.shift)
    }

    /// Whether `[start, start + len)` lies entirely inside one segment. Invalid ranges are not
    /// contained.
    pub fn contains(&self, start: u64, len: u64) -> bool {
        let Ok((s, l)) = self.to_units(start, len) else {
            return false;
        };
        if let Some(all) = self.compact_all(s, s + l) {
            return all;
        }
        matches!(self.seg_at_or_before(s), Some((ps, pl)) if ps + pl >= s + l)
    }

    /// Whether any byte of `[start, start + len)` is inside a segment. The range need not be
    /// aligned; parts outside the region are ignored.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        if len == 0 || self.is_empty() {
            return false;
        }
        let end = start.saturating_add(len).min(self.region_end());
        let start = start.max(self.base);
        if start >= end {
            return false;
        }
        // Units covering [start, end): round start down, end up. The last segment starting
        // before `e` is the only candidate (segments are disjoint and sorted).
        let s = (start - self.base) >> self.shift;
        let e = (end - self.base).div_ceil(1 << self.shift);
        if let Some(any) = self.compact_any(s, e) {
            return any;
        }
        self.by_start.pred_lt(U::from_u64(e)).is_some_and(|p| {
            let (ps, pl) = self.by_start.get(p);
            ps.get() + pl.get() > s
        })
    }

    /// Fill an empty tree with `segs` (bytes, sorted by start, disjoint; touching ones are
    /// coalesced) in one pass: the leaves are built from the sorted run instead of one descent
    /// per segment (a txg's queued frees into `freeing`). Falls back to [`RangeTree::add`] per
    /// segment when the tree is not empty or `segs` is not sorted, disjoint and inside the
    /// region, so results and errors are those of adding them one by one.
    pub fn fill_sorted(&mut self, segs: &[(u64, u64)]) -> Result<(), AllocError> {
        self.expand();
        let mut units: Vec<(U, U)> = Vec::with_capacity(segs.len());
        let mut ok = self.is_empty();
        let mut prev_end = 0u64;
        for &(start, len) in segs {
            if !ok {
                break;
            }
            let Ok((s, l)) = self.to_units(start, len) else {
                ok = false;
                break;
            };
            if !units.is_empty() && s < prev_end {
                ok = false;
            } else if !units.is_empty() && s == prev_end {
                if let Some(last) = units.last_mut() {
                    last.1 = U::from_u64(last.1.get() + l);
                }
            } else {
                units.push((U::from_u64(s), U::from_u64(l)));
            }
            prev_end = s + l;
        }
        let map = ok.then(|| BlockMap::from_sorted(&units)).flatten();
        let Some(map) = map else {
            for &(start, len) in segs {
                self.add(start, len)?;
            }
            return Ok(());
        };
        self.by_start = map;
        for &(s, l) in &units {
            let (s, l) = (s.get(), l.get());
            self.index_insert(s, l, NO_HINT);
            self.space += l << self.shift;
        }
        Ok(())
    }

    /// The segments in offset order as `(start, len)` in bytes.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.iter_from(self.base)
    }

    /// The segments starting at or after `from` (byte offset), in offset order.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let u = (from.saturating_sub(self.base) >> self.shift).min(self.span);
        let (tree, bits) = match self.compact_runs(u) {
            Some(runs) => (None, Some(runs)),
            None => (
                Some(
                    self.by_start
                        .iter_from(U::from_u64(u))
                        .map(|(s, l)| (s.get(), l.get())),
                ),
                None,
            ),
        };
        tree.into_iter()
            .flatten()
            .chain(bits.into_iter().flatten())
            .map(|(s, l)| (self.to_bytes(s), l << self.shift))
    }

    /// Visit every segment (offset order) without removing it.
    pub fn walk(&self, mut f: impl FnMut(u64, u64)) {
        for (s, l) in self.iter() {
            f(s, l);
        }
    }

    /// Empty the tree, calling `f(start, len)` for every segment in offset order.
    pub fn vacate(&mut self, mut f: impl FnMut(u64, u64)) {
        self.expand();
        let mut map = std::mem::take(&mut self.by_start);
        for (s, l) in map.drain_all() {
            f(self.to_bytes(s.get()), l.get() << self.shift);
        }
        self.clear();
    }

    /// Remove every segment.
    pub fn clear(&mut self) {
        self.compact = None;
        self.by_start.clear();
        match self.by_size.as_mut() {
            Some(ix) => ix.clear(),
            // The index of an empty tree is empty: built for free.
            None if self.indexed => self.by_size = Some(BlockMap::new()),
            None => {}
        }
        self.hist = [0; HISTOGRAM_BUCKETS];
        self.space = 0;
        self.large.count = 0;
        self.large.units = 0;
        self.large.pieces = 0;
        self.largest_hint = 0;
        self.largest_exact = true;
    }
}

impl<U: SegUnit> PartialEq for RangeTree<U> {
    /// Same segments (region and indexing are not compared).
    fn eq(&self, other: &Self) -> bool {
        self.space == other.space && self.iter().eq(other.iter())
    }
}

/// A range tree over a whole device (64-bit segment words).
pub type WideRangeTree = RangeTree<u64>;

mod compact;
mod merge;
mod search;
mod size_index;
mod verify;

pub use search::Fit;

#[cfg(test)]
mod tests;
