//! Metaslab: one `2^ms_shift`-byte slice of a device with its txg pipeline of range trees.
//!
//! Life of a segment (DESIGN.md section 5, reference C.1-C.3):
//! * allocation: `allocatable` -> `allocating[txg & 3]` -> ALLOC appended at `sync(txg)`;
//! * free in txg `t`: queued for `t` -> at `sync(t)` routed to `freeing` (FREE appended to the
//!   metaslab's map) or, for a block born at or before the checkpoint txg while syncing a later
//!   txg, to `checkpointing` (FREE appended to the device's checkpoint map, never to the
//!   metaslab's own map) -> `freed` -> `defer[t % 2]` at `sync_done(t)` -> `allocatable` at
//!   `sync_done(t + 2)`;
//! * free-now (undo within the still-open txg): `allocating[t & 3]` -> `allocatable`.
//!
//! Frees are queued per txg and routed at sync time, not at call time, because the checkpoint
//! txg is set (or cleared) by an early sync task of the very txg that syncs them: a free issued in
//! open txg `T+1` of a block born at `T` must be checkpointed when the checkpoint `T` is created at
//! the start of `T+1`'s sync, although no checkpoint existed when the free was issued.

use crate::error::AllocError;
use crate::frag::{fragmentation, segment_weight};
use crate::range_tree::{hist_bucket, RangeTree, SearchLimit, HISTOGRAM_BUCKETS};
use crate::record::{SmAction, SmRecord};

/// Per-txg arrays are indexed by `txg & TXG_MASK` (ZFS `TXG_SIZE`).
pub const TXG_SIZE: usize = 4;
/// Mask for the per-txg slot.
pub const TXG_MASK: u64 = 3;
/// Frees become allocatable this many txgs after the txg that freed them.
pub const TXG_DEFER_SIZE: usize = 2;

/// Largest run (in units) a one-word space-map entry can carry; longer runs and offsets of
/// 2^47 units or more need a two-word entry. Used only to estimate the encoded map length.
const SM_ONE_WORD_MAX_RUN: u64 = 1 << 15;
const SM_ONE_WORD_MAX_OFFSET: u64 = 1 << 47;

/// Tunables of the block picker and the condense decision (ZFS names in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaslabConfig {
    /// Switch from first fit to best fit when the largest free segment is smaller than this
    /// [`metaslab_df_alloc_threshold`, 128 KiB].
    pub df_alloc_threshold: u64,
    /// ... or when less than this percentage of the metaslab is free [`metaslab_df_free_pct`, 4].
    pub df_free_pct: u64,
    /// First-fit search limit in bytes past the first segment examined
    /// [`metaslab_df_max_search`, 16 MiB].
    pub df_max_search: u64,
    /// Segments the first-fit search examines before the byte limit applies
    /// [`metaslab_min_search_count`; ZFS uses 100, we default to 16].
    pub df_min_search_count: usize,
    /// Hard cap on segments a first-fit search examines before falling back to best fit (not in
    /// ZFS, whose search may walk ~2048 segments of a fragmented ashift-12 metaslab; this keeps
    /// an allocation O(log n) + a constant).
    pub df_max_search_count: usize,
    /// Condense when the map is at least this percentage of its optimal size
    /// [`zfs_condense_pct`, 200].
    pub condense_pct: u64,
    /// ... and at least this many bytes long [4 x 16 KiB blocks].
    pub condense_min_bytes: u64,
    /// Check at `free` time that the range is not already free (ZFS `metaslab_check_free`, a
    /// debug option there). Off: the check runs at `sync` over the sorted queue instead, which
    /// is cheaper; either way a double free is an error and nothing wrong is ever emitted.
    pub eager_free_checks: bool,
    /// Once a metaslab has not been allocated from for this many txgs, `sync_done` drops its
    /// by-size index before merging the deferred frees (0: never). An idle metaslab only
    /// receives deferred frees; without the index each costs one offset-index update instead
    /// of three (two of them into the by-size order, i.e. at random places), and the index's
    /// memory is released. The next allocation rebuilds it with one sort (ZFS
    /// `metaslab_size_tree_full_load`; ZFS keeps segments >= 16 KiB of idle metaslabs indexed,
    /// `metaslab_by_size_min_shift`, we keep none). Not 1: the metaslab allocated from in the
    /// open txg would rebuild at once.
    pub drop_index_after_txgs: u64,
    /// Free segments shorter than this stay out of `allocatable`'s by-size index (ZFS
    /// `metaslab_by_size_min_shift`, 16 KiB; 0: index every segment). Merging a deferred free
    /// next to a short segment then skips that segment's by-size updates, and allocating a
    /// short segment whole touches the offset index only. Requests shorter than this take the
    /// best fit among the `df_max_search_count` segments after their cursor
    /// ([`RangeTree::find_near_fit`]) before the by-size index; longer ones are unaffected
    /// (every segment that can hold them is indexed).
    pub size_index_floor: u64,
    /// The piece size of the pool's sync-context metadata blocks (0: none). `allocatable`
    /// counts its segments at least this long, so [`Metaslab::reserve_space`] can say how
    /// much of the free space such blocks can still use (see `crate::reserve`).
    pub reserve_piece: u64,
    /// `allocatable` keeps its segments as a bitmap with run summaries
    /// (`RangeTree::compact`, Ceph's hybrid allocator) while it has at least one segment per
    /// this many units, and goes back to its indexes below a quarter of that (0: never).
    /// Checked at `sync_done`, before the deferred frees are merged: in the bitmap a merged
    /// free sets a word or two and re-summarises one cache line, where the indexes touched a
    /// cold offset leaf and up to three by-size leaves. Allocations are the same either way.
    /// The bitmap and its counts cost ~0.41 bytes per unit: 26 bytes per segment at 64 units
    /// per segment, less than the indexes (16-22) once segments are denser than one per 40.
    pub compact_density: u64,
    /// ... and at least this many segments (fewer: the indexes are a leaf or two, which stay
    /// cached); it goes back below a quarter of this.
    pub compact_min_segments: u64,
}

impl Default for MetaslabConfig {
    fn default() -> Self {
        Self {
            df_alloc_threshold: 128 << 10,
            df_free_pct: 4,
            df_max_search: 16 << 20,
            df_min_search_count: 16,
            df_max_search_count: 64,
            condense_pct: 200,
            condense_min_bytes: 64 << 10,
            eager_free_checks: false,
            drop_index_after_txgs: 2,
            size_index_floor: 16 << 10,
            reserve_piece: 16 << 10,
            compact_density: 64,
            compact_min_segments: 128,
        }
    }
}

/// What one `sync(txg)` call of a metaslab produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaslabSyncOutput {
    /// When true the metaslab's space map must be truncated and replaced by `sm_records` (a
    /// condense); otherwise `sm_records` are appended.
    pub condensed: bool,
    /// Records for the metaslab's own space map: ALLOC (allocations of the txg) first, then FREE.
    pub sm_records: Vec<SmRecord>,
    /// FREE records destined for the DEVICE's checkpoint space map.
    pub ckpt_records: Vec<SmRecord>,
    /// Bytes described by `ckpt_records` (newly held by the checkpoint).
    pub ckpt_space: u64,
}

impl MetaslabSyncOutput {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        !self.condensed && self.sm_records.is_empty() && self.ckpt_records.is_empty()
    }
}

/// A metaslab. Not thread-safe: the group keeps each one behind its own lock.
#[derive(Debug)]
pub struct Metaslab {
    dev: u32,
    index: u64,
    start: u64,
    size: u64,
    ashift: u32,
    cfg: MetaslabConfig,
    allocatable: RangeTree,
    allocating: [RangeTree; TXG_SIZE],
    allocating_txg: [u64; TXG_SIZE],
    pending_frees: [QueuedFrees; TXG_SIZE],
    pending_txg: [u64; TXG_SIZE],
    freeing: RangeTree,
    freed: RangeTree,
    defer: [RangeTree; TXG_DEFER_SIZE],
    checkpointing: RangeTree,
    /// The units free on disk (allocatable, freeing, freed, deferred): the double-free check.
    free_map: FreeMap,
    /// First-fit cursors, one per power-of-two alignment class of the request size.
    cursors: [u64; 64],
    /// Net allocated bytes according to the records emitted so far (ZFS `smp_alloc`).
    sm_alloc: u64,
    /// Estimated encoded length of the space map in bytes (ZFS `smp_length`).
    sm_length: u64,
    /// Last txg through `sync_done`.
    synced_txg: u64,
    /// Txg of the last `sync` call (detects the first pass of a txg).
    last_sync_txg: u64,
    /// Txg whose queued frees `check_queued_frees` validated (0: none).
    queue_checked_txg: u64,
    /// True once anything was allocated, freed or loaded (load requires a pristine metaslab).
    touched: bool,
    /// Txg of the last allocation attempt (drives dropping the by-size index).
    active_txg: u64,
    /// Times the by-size index was rebuilt (for benchmarks).
    index_builds: u64,
}

impl Metaslab {
    /// A fully free metaslab covering `[start, start + size)` of device `dev` in units of
    /// `2^ashift` bytes (an empty space map).
    pub fn new(
        dev: u32,
        index: u64,
        start: u64,
        size: u64,
        ashift: u32,
        cfg: MetaslabConfig,
    ) -> Result<Self, AllocError> {
        if size == 0 {
            return Err(AllocError::InvalidGeometry("empty metaslab".into()));
        }
        let mut allocatable = RangeTree::with_index(start, size, ashift, true)?;
        allocatable.set_size_floor(cfg.size_index_floor);
        allocatable.set_large_min(cfg.reserve_piece);
        allocatable.add(start, size)?;
        let plain = || RangeTree::with_index(start, size, ashift, false);
        Ok(Self {
            dev,
            index,
            start,
            size,
            ashift,
            cfg,
            allocatable,
            allocating: [plain()?, plain()?, plain()?, plain()?],
            allocating_txg: [0; TXG_SIZE],
            pending_frees: Default::default(),
            pending_txg: [0; TXG_SIZE],
            freeing: plain()?,
            freed: plain()?,
            defer: [plain()?, plain()?],
            checkpointing: plain()?,
            free_map: FreeMap::full(size >> ashift),
            cursors: [start; 64],
            sm_alloc: 0,
            sm_length: 0,
            synced_txg: 0,
            last_sync_txg: 0,
            queue_checked_txg: 0,
            touched: false,
            active_txg: 0,
            index_builds: 0,
        })
    }

    /// Device index.
    pub fn dev(&self) -> u32 {
        self.dev
    }
    /// Index of this metaslab within its device.
    pub fn index(&self) -> u64 {
        self.index
    }
    /// First byte (absolute device offset).
    pub fn start(&self) -> u64 {
        self.start
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
    /// Allocation unit shift.
    pub fn ashift(&self) -> u32 {
        self.ashift
    }
    /// The tree of segments that may be allocated now.
    pub fn allocatable(&self) -> &RangeTree {
        &self.allocatable
    }
    /// Bytes allocatable now.
    pub fn free_space(&self) -> u64 {
        self.allocatable.space()
    }
    /// The allocatable bytes that blocks of `reserve_piece` bytes (rounded up to the unit) can
    /// use: a segment holds `floor(len / piece)` of them, a shorter one none. Exact, from the
    /// piece count the free tree keeps. (It used to be the lower bound `len - (piece - unit)`
    /// per segment, from the segments' count and length: a quarter of the truth for segments
    /// of one piece. A nearly full pool whose free space was in such segments then refused
    /// every data block with 18 MiB free above the slop and nothing deferred.)
    pub fn reserve_space(&self) -> u64 {
        let (pieces, piece) = self.allocatable.large_pieces();
        pieces.saturating_mul(piece)
    }
    /// The least reserve space (see [`Metaslab::reserve_space`]) an allocation of `size` bytes
    /// can cost, whatever segment it takes (see `crate::reserve::min_loss`).
    pub fn min_reserve_loss(&self, size: u64) -> u64 {
        crate::reserve::min_loss(size, self.cfg.reserve_piece, self.unit())
    }
    /// Bytes free on disk but not yet allocatable (`freed` + `defer[]`).
    pub fn deferred_space(&self) -> u64 {
        self.freed.space() + self.defer[0].space() + self.defer[1].space()
    }
    /// Net allocated bytes per the space-map records emitted so far (ZFS `smp_alloc`).
    pub fn sm_allocated(&self) -> u64 {
        self.sm_alloc
    }
    /// Estimated encoded space-map length in bytes.
    pub fn sm_length(&self) -> u64 {
        self.sm_length
    }
    /// Override the space-map length estimate with the real encoded length (after import).
    pub fn set_sm_length(&mut self, bytes: u64) {
        self.sm_length = bytes;
    }
    /// Largest allocatable segment in bytes, O(1): exact while the by-size index is built or
    /// only frees arrived since it was dropped (the usual case: allocating builds it); an upper
    /// bound otherwise.
    pub fn max_free(&self) -> u64 {
        self.allocatable.largest_bound()
    }

    /// Exact largest allocatable segment (may scan).
    pub fn max_free_exact(&self) -> u64 {
        self.allocatable.largest()
    }

    /// Whether the by-size index is built (the metaslab allocated lately).
    pub fn is_active_indexed(&self) -> bool {
        self.allocatable.has_size_index()
    }

    /// Times the by-size index was rebuilt by an allocation.
    pub fn index_builds(&self) -> u64 {
        self.index_builds
    }

    /// Drop the by-size index now and keep the allocatable segments as a bitmap until the next
    /// allocation (see [`MetaslabConfig::drop_index_after_txgs`] and `RangeTree::compact`).
    pub fn passivate(&mut self) {
        self.allocatable.compact();
    }
    /// Segment-based weight of the allocatable tree (see [`crate::frag::segment_weight`]).
    pub fn weight(&self) -> u64 {
        segment_weight(self.allocatable.histogram())
    }
    /// Last txg through `sync_done`.
    pub fn synced_txg(&self) -> u64 {
        self.synced_txg
    }

    /// Byte-length histogram of the space free on disk (allocatable + freed + defer), what ZFS
    /// keeps in the space-map header.
    pub fn sm_histogram(&self) -> [u64; HISTOGRAM_BUCKETS] {
        let mut h = *self.allocatable.histogram();
        for t in [&self.freed, &self.defer[0], &self.defer[1]] {
            for (a, b) in h.iter_mut().zip(t.histogram()) {
                *a += b;
            }
        }
        h
    }

    /// ZFS fragmentation metric (percent) of the space free on disk.
    pub fn fragmentation(&self) -> u64 {
        fragmentation(&self.sm_histogram())
    }

    fn unit(&self) -> u64 {
        1 << self.ashift
    }

    fn check_range(&self, start: u64, len: u64) -> Result<(), AllocError> {
        let unit = self.unit();
        if len == 0 || !start.is_multiple_of(unit) || !len.is_multiple_of(unit) {
            return Err(AllocError::Misaligned { start, len, unit });
        }
        if start < self.start || start.checked_add(len).is_none_or(|e| e > self.end()) {
            return Err(AllocError::OutOfRange {
                start,
                len,
                region_start: self.start,
                region_end: self.end(),
            });
        }
        Ok(())
    }

    /// A checked byte range of the metaslab as `(start, len)` in units from its start.
    fn map_units(&self, start: u64, len: u64) -> (u64, u64) {
        ((start - self.start) >> self.ashift, len >> self.ashift)
    }

    fn check_open(&self, txg: u64) -> Result<(), AllocError> {
        if txg <= self.synced_txg {
            return Err(AllocError::TxgClosed {
                txg,
                synced: self.synced_txg,
            });
        }
        Ok(())
    }

    fn slot(txg: u64) -> usize {
        // txg & 3 is in 0..4.
        usize::try_from(txg & TXG_MASK).unwrap_or(0)
    }

    /// Replay space-map records into a pristine metaslab (ALLOC removes from `allocatable`,
    /// FREE adds), in order. A record outside the metaslab or inconsistent with the replayed
    /// state is an error (the metaslab is then left partially loaded: drop it).
    pub fn load<I: IntoIterator<Item = SmRecord>>(&mut self, records: I) -> Result<(), AllocError> {
        if self.touched || self.allocatable.space() != self.size {
            return Err(AllocError::AlreadyLoaded {
                dev: self.dev,
                index: self.index,
            });
        }
        self.touched = true;
        // Replay into the offset index only; the next allocation builds the by-size index.
        self.allocatable.drop_size_index();
        let mut length = 0u64;
        let mut prev_action = None;
        for r in records {
            self.check_range(r.start, r.len)?;
            match r.action {
                SmAction::Alloc => self.allocatable.remove(r.start, r.len)?,
                SmAction::Free => self.allocatable.add(r.start, r.len)?,
            }
            let (u, n) = self.map_units(r.start, r.len);
            match r.action {
                SmAction::Alloc => self.free_map.clear(u, n),
                SmAction::Free => self.free_map.set(u, n),
            }
            if prev_action != Some(r.action) {
                length += 8; // a debug word starts each batch
                prev_action = Some(r.action);
            }
            length += self.entry_bytes(&r);
        }
        self.allocatable.refresh_largest();
        self.sm_alloc = self.size - self.allocatable.space();
        self.sm_length = length;
        Ok(())
    }

    /// Encoded size of one record (one- or two-word entry).
    fn entry_bytes(&self, r: &SmRecord) -> u64 {
        let run = r.len >> self.ashift;
        let off = (r.start - self.start) >> self.ashift;
        if run <= SM_ONE_WORD_MAX_RUN && off < SM_ONE_WORD_MAX_OFFSET {
            8
        } else {
            16
        }
    }

    fn records_bytes(&self, recs: &[SmRecord]) -> u64 {
        let mut len = 0;
        let mut prev = None;
        for r in recs {
            if prev != Some(r.action) {
                len += 8;
                prev = Some(r.action);
            }
            len += self.entry_bytes(r);
        }
        len
    }

    /// Allocate `size` bytes (a non-zero multiple of the unit) for `txg` with the dynamic-fit
    /// picker: first fit from the cursor of the size's alignment class with a bounded forward
    /// search, best fit when the metaslab is fragmented (largest free segment below the
    /// threshold, or free space below the percentage) or when first fit finds nothing. A
    /// request below [`MetaslabConfig::size_index_floor`] tries the best fit near its cursor
    /// before the by-size index (which does not hold the segments below the floor).
    pub fn alloc(&mut self, size: u64, txg: u64) -> Result<u64, AllocError> {
        let unit = self.unit();
        if size == 0 || !size.is_multiple_of(unit) {
            return Err(AllocError::Misaligned {
                start: 0,
                len: size,
                unit,
            });
        }
        self.check_open(txg)?;
        let slot = Self::slot(txg);
        if self.allocating_txg[slot] != txg && !self.allocating[slot].is_empty() {
            return Err(AllocError::Invariant(format!(
                "allocating slot {slot} still holds txg {} while allocating for txg {txg}",
                self.allocating_txg[slot]
            )));
        }
        if self.allocatable.largest_bound() < size {
            return Err(AllocError::NoSpace { size });
        }
        self.active_txg = txg;
        if !self.allocatable.has_size_index() && !self.allocatable.is_compact() {
            // Becoming active: best fit needs the by-size order (a bitmap's summaries give it).
            self.allocatable.build_size_index();
            self.index_builds += 1;
        }
        if self.allocatable.is_compact() {
            // The first-fit decision below needs the exact largest segment; a bitmap keeps it
            // exact in O(1) unless a segment of 64 units or more was taken (then one walk).
            self.allocatable.refresh_largest();
        }
        // Exact when an indexed segment exists; otherwise (only segments below the size
        // floor left) a bound, which is below the floor and so below the first-fit threshold.
        let largest = self.allocatable.largest_bound();
        if largest < size {
            return Err(AllocError::NoSpace { size });
        }
        let cursor_idx = size.trailing_zeros() as usize;
        let free_pct = self.allocatable.space() * 100 / self.size;
        let mut off = None;
        if largest >= self.cfg.df_alloc_threshold && free_pct >= self.cfg.df_free_pct {
            let limit = SearchLimit {
                min_count: self.cfg.df_min_search_count,
                max_bytes: self.cfg.df_max_search,
                max_count: self.cfg.df_max_search_count,
            };
            off = self
                .allocatable
                .find_first_fit(self.cursors[cursor_idx], size, unit, limit);
        }
        if off.is_none() && size < self.allocatable.size_floor() {
            // Segments this short are not in the by-size index: look near the cursor first.
            off = self.allocatable.find_near_fit(
                self.cursors[cursor_idx],
                size,
                unit,
                self.cfg.df_max_search_count,
            );
        }
        if off.is_none() {
            off = self.allocatable.find_best_fit(size, unit);
        }
        if off.is_none() && size < self.allocatable.size_floor() {
            // Only segments below the floor (not indexed) can still hold it: first fit from the
            // cursor on, then from the start up to the cursor. Stops at the first fit instead
            // of scanning every segment for the best one.
            let cursor = self.cursors[cursor_idx];
            off = self
                .allocatable
                .find_first_fit(cursor, size, unit, SearchLimit::UNBOUNDED)
                .or_else(|| {
                    let limit = SearchLimit {
                        max_bytes: cursor.saturating_sub(self.start),
                        min_count: 0,
                        max_count: usize::MAX,
                    };
                    self.allocatable
                        .find_first_fit(self.start, size, unit, limit)
                });
        }
        let Some(fit) = off else {
            // The largest-free hint may have been only a bound: make it exact, so the group
            // does not send this size here again.
            self.allocatable.refresh_largest();
            return Err(AllocError::NoSpace { size });
        };
        let off = fit.start;
        self.cursors[cursor_idx] = off + size;
        // The free map's word is cold (one bit per unit of the device): requested now, its
        // miss overlaps `take`'s.
        let (u, n) = self.map_units(off, size);
        self.free_map.prefetch(u);
        self.allocatable.take(fit, size)?;
        self.free_map.clear(u, n);
        self.allocating[slot].add(off, size)?;
        self.allocating_txg[slot] = txg;
        self.touched = true;
        Ok(off)
    }

    /// Allocate the specific range `[start, start + len)` for `txg` (it must be allocatable).
    pub fn claim(&mut self, start: u64, len: u64, txg: u64) -> Result<(), AllocError> {
        self.check_range(start, len)?;
        self.check_open(txg)?;
        let slot = Self::slot(txg);
        if self.allocating_txg[slot] != txg && !self.allocating[slot].is_empty() {
            return Err(AllocError::Invariant(format!(
                "allocating slot {slot} still holds txg {}",
                self.allocating_txg[slot]
            )));
        }
        self.allocatable.remove(start, len)?;
        let (u, n) = self.map_units(start, len);
        self.free_map.clear(u, n);
        self.allocating[slot].add(start, len)?;
        self.allocating_txg[slot] = txg;
        self.touched = true;
        Ok(())
    }

    /// Allocate `size` bytes from a free segment shorter than `reserve_piece`: the first one
    /// from the cursor of the size's alignment class on, wrapping to the start; `NoSpace` when
    /// there is none. Such a segment holds no piece of the sync reserve (see
    /// [`Metaslab::reserve_space`]), so neither the allocation nor its remainder costs the
    /// reserve anything: `crate::reserve` takes this path first once the reserve is close to the
    /// slop. The dynamic-fit picker of [`Metaslab::alloc`] cannot be relied on for it: a request
    /// below the size floor looks for short segments only among the `df_max_search_count` after
    /// its cursor and then takes the best fit among the indexed, long ones, which the reserve
    /// check undoes; a nearly full pool then answered ENOSPC with a tenth of it free in short
    /// holes. The walk is skipped when the size histogram counts no segment that could fit.
    pub fn alloc_short(&mut self, size: u64, txg: u64) -> Result<u64, AllocError> {
        let piece = self.cfg.reserve_piece;
        let no_space = AllocError::NoSpace { size };
        if size == 0 || size >= piece || !size.is_multiple_of(self.unit()) {
            return Err(no_space);
        }
        let hist = self.allocatable.histogram();
        if hist[hist_bucket(size)..=hist_bucket(piece - 1)]
            .iter()
            .all(|&n| n == 0)
        {
            return Err(no_space);
        }
        let cursor_idx = size.trailing_zeros() as usize;
        let cursor = self.cursors[cursor_idx];
        let fits = |&(_, len): &(u64, u64)| len >= size && len < piece;
        let found = self.allocatable.iter_from(cursor).find(fits).or_else(|| {
            self.allocatable
                .iter()
                .take_while(|&(start, _)| start < cursor)
                .find(fits)
        });
        let Some((start, _)) = found else {
            return Err(no_space);
        };
        self.claim(start, size, txg)?;
        self.active_txg = txg;
        self.cursors[cursor_idx] = start + size;
        Ok(start)
    }

    /// Whether any part of the range is in a tree of free space.
    fn is_free_somewhere(&self, start: u64, len: u64) -> bool {
        self.allocatable.overlaps(start, len) || self.is_free_elsewhere(start, len)
    }

    /// Whether any part of the range is in a tree of free space other than `allocatable`.
    fn is_free_elsewhere(&self, start: u64, len: u64) -> bool {
        self.freeing.overlaps(start, len)
            || self.freed.overlaps(start, len)
            || self.defer[0].overlaps(start, len)
            || self.defer[1].overlaps(start, len)
            || self.checkpointing.overlaps(start, len)
    }

    /// Undo an allocation made for the still-open `txg`: the range goes straight back to
    /// `allocatable`. It must be inside `allocating[txg & 3]` (else [`AllocError::DoubleAlloc`]).
    pub fn free_now(&mut self, start: u64, len: u64, txg: u64) -> Result<(), AllocError> {
        self.check_range(start, len)?;
        self.check_open(txg)?;
        let slot = Self::slot(txg);
        if self.allocating_txg[slot] != txg {
            return Err(AllocError::DoubleAlloc { start, len });
        }
        self.allocating[slot].remove(start, len)?;
        self.allocatable.add(start, len)?;
        let (u, n) = self.map_units(start, len);
        self.free_map.set(u, n);
        Ok(())
    }

    /// Move a checkpoint-map extent back into `freeing`: it is written FREE to this
    /// metaslab's map at the next `sync` and becomes allocatable after the defer period. Call it
    /// from a sync task of the txg that removes the extent from the checkpoint map, before
    /// that txg's `sync`. The range must currently be allocated (in no free tree).
    pub fn discard_checkpoint_extent(&mut self, start: u64, len: u64) -> Result<(), AllocError> {
        self.check_range(start, len)?;
        if self.range_is_free_anywhere(start, len) {
            return Err(AllocError::DoubleFree { start, len });
        }
        self.freeing.add(start, len)?;
        let (u, n) = self.map_units(start, len);
        self.free_map.set(u, n);
        self.touched = true;
        Ok(())
    }

    /// Whether any part of the range is free on disk, allocatable, or queued for freeing (used
    /// to check that a checkpoint-map extent is still allocated and untouched, I1/I2).
    pub fn range_is_free_anywhere(&self, start: u64, len: u64) -> bool {
        self.is_free_somewhere(start, len)
            || self.allocating.iter().any(|t| t.overlaps(start, len))
            || self.is_queued(start, len)
    }

    /// Visit the allocatable segments.
    pub fn walk_free(&self, f: impl FnMut(u64, u64)) {
        self.allocatable.walk(f);
    }
}

mod free_map;
mod queue;
mod sync;
mod verify;

use free_map::FreeMap;
use queue::QueuedFrees;

#[cfg(test)]
mod tests;
