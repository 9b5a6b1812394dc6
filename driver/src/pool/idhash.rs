//! A fast, seeded hasher for maps keyed by block ids (volume overlays, block locks).
//!
//! A 128 KiB write on a volume of 4 KiB blocks publishes 32 overlay entries and takes 32 block
//! locks; with the standard SipHash those hashes were 5–7 % of a reactor's time in a sequential
//! write. This one is a folded multiply of the key (xor a per-map random seed) by a constant:
//! a few cycles. The seed comes from the standard library's per-process random keys, so a
//! client choosing block ids cannot aim at collisions without knowing it.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// Builds [`IdHasher`]s with one random seed per map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHash {
    seed: u64,
}

impl Default for IdHash {
    fn default() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        IdHash { seed: h.finish() }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.seed }
    }
}

/// Folded-multiply hasher for integer keys (other input is folded in 8 bytes at a time).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHasher {
    state: u64,
}

/// An odd constant with well-mixed bits (the 64-bit golden ratio).
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    // Truncations on purpose: the low and high halves of the product are mixed together.
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (p as u64, (p >> 64) as u64);
    lo ^ hi
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, k: u64) {
        self.state = fold(self.state ^ k, MUL);
    }

    fn finish(&self) -> u64 {
        // One more round so the high bits (hashbrown's control byte) depend on every key bit.
        fold(self.state, MUL ^ 0xff51_afd7_ed55_8ccd)
    }
}

/// A map keyed by block id.
pub(crate) type IdMap<V> = HashMap<u64, V, IdHash>;
/// A set of block ids (or level-1 / level-2 indexes).
pub(crate) type IdSet = HashSet<u64, IdHash>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_over_buckets_and_control_bytes() {
        let b = IdHash::default();
        let mut low = HashSet::new();
        let mut top = HashSet::new();
        for k in 0..256u64 {
            let h = b.hash_one(k);
            low.insert(h & 255);
            top.insert(h >> 57);
        }
        // Random hashes give ~162 distinct low bytes and ~111 of the 128 control bytes; a bad
        // mix (e.g. the identity) puts every key under one control byte.
        assert!(low.len() > 120, "{} distinct low bytes", low.len());
        assert!(top.len() > 90, "{} control bytes used", top.len());
    }

    #[test]
    fn seeds_differ_between_maps() {
        let (a, b) = (IdHash::default(), IdHash::default());
        assert_ne!(a.hash_one(7u64), b.hash_one(7u64));
    }
}
