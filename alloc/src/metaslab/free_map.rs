//! A bitmap of the units of a metaslab that are free on disk: the union of `allocatable`,
//! `freeing`, `freed` and `defer[]` (not `checkpointing`, which a sync fills and empties in the
//! same call, nor the `allocating` trees: space allocated in an open txg may be freed).
//!
//! Why: the double-free check of a txg's queued frees used to look every free up in
//! `allocatable` (a cold offset-index leaf per free, about half of a metaslab's leaves every
//! txg) and walk the four small trees beside the sorted queue. With the bitmap it tests one
//! word (rarely two) per free instead, and needs no tree at all. The price is one bit per unit
//! of the metaslab (16 KiB for 512 MiB at ashift 12, 32 MiB per TiB; Ceph's bitmap allocator
//! keeps the same), kept up to date wherever a range enters or leaves those trees.

/// Bits per word.
const W: u64 = 64;

/// One bit per unit of a metaslab, set while the unit is free on disk (see the module
/// documentation). Offsets and lengths are in units relative to the metaslab's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FreeMap {
    words: Vec<u64>,
    units: u64,
}

/// The words `[first, last]` a non-empty unit range touches and the masks of the first and
/// last word (equal words: the caller ands them).
#[inline]
fn span(start: u64, len: u64) -> (usize, usize, u64, u64) {
    debug_assert!(len > 0);
    let end = start + len; // exclusive
    let first = start / W;
    let last = (end - 1) / W;
    let head = u64::MAX << (start % W);
    let tail = u64::MAX >> (W - 1 - (end - 1) % W);
    // Word indexes of an in-range unit fit in usize: the map holds `units / 64` words.
    #[allow(clippy::cast_possible_truncation)]
    (first as usize, last as usize, head, tail)
}

impl FreeMap {
    /// A map of `units` units, all free (a new metaslab).
    pub(super) fn full(units: u64) -> Self {
        let n = usize::try_from(units.div_ceil(W)).unwrap_or(0);
        let mut words = vec![u64::MAX; n];
        // Bits past the last unit stay clear, so that whole-word comparisons (`verify`) hold.
        if !units.is_multiple_of(W) {
            if let Some(last) = words.last_mut() {
                *last = u64::MAX >> (W - units % W);
            }
        }
        Self { words, units }
    }

    /// An all-allocated map of `units` units.
    pub(super) fn empty(units: u64) -> Self {
        let n = usize::try_from(units.div_ceil(W)).unwrap_or(0);
        Self {
            words: vec![0; n],
            units,
        }
    }

    /// Whether `[start, start + len)` lies inside the map (callers check ranges before).
    fn in_range(&self, start: u64, len: u64) -> bool {
        len > 0 && start.checked_add(len).is_some_and(|e| e <= self.units)
    }

    /// Apply `f(word, mask)` to every word of the range.
    #[inline]
    fn update(&mut self, start: u64, len: u64, f: impl Fn(&mut u64, u64)) {
        if !self.in_range(start, len) {
            debug_assert!(false, "free map range {start}+{len} outside {}", self.units);
            return;
        }
        let (first, last, head, tail) = span(start, len);
        if first == last {
            f(&mut self.words[first], head & tail);
            return;
        }
        f(&mut self.words[first], head);
        for w in &mut self.words[first + 1..last] {
            f(w, u64::MAX);
        }
        f(&mut self.words[last], tail);
    }

    /// Mark `[start, start + len)` free on disk.
    #[inline]
    pub(super) fn set(&mut self, start: u64, len: u64) {
        self.update(start, len, |w, m| *w |= m);
    }

    /// Mark `[start, start + len)` allocated.
    #[inline]
    pub(super) fn clear(&mut self, start: u64, len: u64) {
        self.update(start, len, |w, m| *w &= !m);
    }

    /// Whether any unit of `[start, start + len)` is free on disk (out of range: false).
    #[inline]
    pub(super) fn any(&self, start: u64, len: u64) -> bool {
        if !self.in_range(start, len) {
            return false;
        }
        let (first, last, head, tail) = span(start, len);
        if first == last {
            return self.words[first] & head & tail != 0;
        }
        self.words[first] & head != 0
            || self.words[first + 1..last].iter().any(|&w| w != 0)
            || self.words[last] & tail != 0
    }

    /// Start loading the word holding `unit` (a hint: no effect on results).
    #[inline]
    pub(super) fn prefetch(&self, unit: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let i = usize::try_from(unit / W).unwrap_or(usize::MAX);
            if let Some(w) = self.words.get(i) {
                // SAFETY: SSE is part of the x86_64 baseline, so the intrinsic's target feature
                // is always present; a prefetch never faults, and the address is an element of
                // the vector anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(w).cast::<i8>()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = unit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a `Vec<bool>` model: random sets and clears, then `any` on random ranges
        /// and the whole map compared bit by bit.
        #[test]
        fn matches_a_vector_of_bools(
            units in 1u64..300,
            ops in proptest::collection::vec((any::<bool>(), 0u64..300, 1u64..140), 0..60),
            probes in proptest::collection::vec((0u64..300, 1u64..140), 0..40),
        ) {
            let mut m = FreeMap::full(units);
            let ix = |v: u64| usize::try_from(v).unwrap();
            let mut model = vec![true; ix(units)];
            for (set, s, l) in ops {
                if s + l > units {
                    continue;
                }
                if set { m.set(s, l) } else { m.clear(s, l) }
                for b in &mut model[ix(s)..ix(s + l)] {
                    *b = set;
                }
            }
            for (s, l) in probes {
                let want = s + l <= units && model[ix(s)..ix(s + l)].iter().any(|&b| b);
                prop_assert_eq!(m.any(s, l), want, "any({}, {})", s, l);
            }
            let mut rebuilt = FreeMap::empty(units);
            for (u, &b) in model.iter().enumerate() {
                if b {
                    rebuilt.set(u as u64, 1);
                }
            }
            prop_assert_eq!(m, rebuilt);
        }
    }

    #[test]
    fn word_edges() {
        let mut m = FreeMap::empty(130);
        m.set(63, 2);
        assert!(m.any(63, 1) && m.any(64, 1) && !m.any(62, 1) && !m.any(65, 1));
        assert!(m.any(0, 130) && !m.any(65, 65));
        m.clear(0, 130);
        assert!(!m.any(0, 130));
        assert!(!m.any(129, 2), "out of range is not free");
        let f = FreeMap::full(130);
        assert!(f.any(129, 1) && f.words[2] == 0b11);
    }
}
