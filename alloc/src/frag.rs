//! Selection data: ZFS's segment-based metaslab weight and fragmentation metric.

use crate::range_tree::HISTOGRAM_BUCKETS;

/// ZFS `zfs_frag_table`: penalty (percent) of free space held in segments of `2^(9+i)` bytes,
/// from 512 B (100 %) to 512 MiB and larger (0 %).
pub const FRAG_TABLE: [u64; 21] = [
    100, // 512 B
    99,  // 1 KiB
    97,  // 2 KiB
    93,  // 4 KiB
    88,  // 8 KiB
    83,  // 16 KiB
    77,  // 32 KiB
    71,  // 64 KiB
    64,  // 128 KiB
    57,  // 256 KiB
    50,  // 512 KiB
    43,  // 1 MiB
    36,  // 2 MiB
    29,  // 4 MiB
    23,  // 8 MiB
    17,  // 16 MiB
    12,  // 32 MiB
    7,   // 64 MiB
    3,   // 128 MiB
    1,   // 256 MiB
    0,   // 512 MiB
];

/// log2 of the smallest size the table describes (ZFS `SPA_MINBLOCKSHIFT`).
const FRAG_MIN_SHIFT: usize = 9;

/// Fragmentation percent (0..=100) of free space described by a byte-length histogram
/// (bucket `i` = segments of `[2^i, 2^(i+1))` bytes): the free-space-weighted average of the
/// table penalty, each bucket's space taken as `count << i` as ZFS does. 0 when nothing is free.
pub fn fragmentation(hist: &[u64; HISTOGRAM_BUCKETS]) -> u64 {
    let mut weighted: u128 = 0;
    let mut total: u128 = 0;
    for (i, &count) in hist.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let space = u128::from(count) << i;
        let idx = i.saturating_sub(FRAG_MIN_SHIFT).min(FRAG_TABLE.len() - 1);
        weighted += space * u128::from(FRAG_TABLE[idx]);
        total += space;
    }
    if total == 0 {
        return 0;
    }
    u64::try_from(weighted / total).unwrap_or(100)
}

/// Bit position of the bucket index in a segment-based weight (ZFS bits 59..54).
pub const WEIGHT_IDX_SHIFT: u32 = 54;
/// Mask of the count field (bits 53..0).
pub const WEIGHT_COUNT_MASK: u64 = (1 << WEIGHT_IDX_SHIFT) - 1;

/// Segment-based weight (ZFS `metaslab_segment_weight`): the index of the highest non-empty
/// size bucket in bits 59..54 and the number of segments in it in bits 53..0; 0 when empty.
/// Compares like "largest free segment class first, then more of them".
pub fn segment_weight(hist: &[u64; HISTOGRAM_BUCKETS]) -> u64 {
    for i in (0..HISTOGRAM_BUCKETS).rev() {
        if hist[i] != 0 {
            // i < 64 always fits in the 6-bit field.
            let idx = u64::try_from(i).unwrap_or(63);
            return (idx << WEIGHT_IDX_SHIFT) | hist[i].min(WEIGHT_COUNT_MASK);
        }
    }
    0
}

/// Bucket index encoded in a segment weight.
pub fn weight_bucket(weight: u64) -> u64 {
    weight >> WEIGHT_IDX_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frag_of_single_sizes() {
        let mut h = [0u64; HISTOGRAM_BUCKETS];
        h[12] = 10; // 4 KiB segments
        assert_eq!(fragmentation(&h), 93);
        let mut h = [0u64; HISTOGRAM_BUCKETS];
        h[34] = 1; // 16 GiB segment
        assert_eq!(fragmentation(&h), 0);
        assert_eq!(fragmentation(&[0; HISTOGRAM_BUCKETS]), 0);
        let mut h = [0u64; HISTOGRAM_BUCKETS];
        h[20] = 1; // 1 MiB: 43
        h[24] = 1; // 16 MiB: 17, 16x the space
        assert_eq!(fragmentation(&h), (43 + 16 * 17) / 17);
    }

    #[test]
    fn weight_orders_by_bucket_then_count() {
        let mut a = [0u64; HISTOGRAM_BUCKETS];
        a[20] = 1;
        let mut b = [0u64; HISTOGRAM_BUCKETS];
        b[19] = 1000;
        assert!(segment_weight(&a) > segment_weight(&b));
        b[20] = 2;
        assert!(segment_weight(&b) > segment_weight(&a));
        assert_eq!(weight_bucket(segment_weight(&a)), 20);
    }
}
