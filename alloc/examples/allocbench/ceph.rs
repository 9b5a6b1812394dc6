//! Ceph's fragmentation score of a class's free space.

use anyhow::Result;
use ringpool_alloc::MetaslabClass;

/// Ceph's `Allocator::get_fragmentation_score`: each free extent is worth its length times a
/// per-byte factor growing 1.2x per doubling up to 1 MiB, 1.2 -> 1.15 between 1 and 128 MiB;
/// score = (ideal - actual) / (ideal - worst), ideal = one extent, worst = all single units.
pub(crate) struct CephScore {
    scales: Vec<f64>,
}

impl CephScore {
    fn new() -> Self {
        Self { scales: vec![1.0] }
    }

    fn get(&mut self, v: u64) -> f64 {
        const SMALL: f64 = 1.2;
        const HUGE: f64 = 1.15;
        const SMALL_P2: usize = 20;
        const HUGE_P2: usize = 27;
        let sc = (63 - v.leading_zeros()) as usize;
        while self.scales.len() <= sc + 1 {
            let ss = self.scales.len();
            let scale = if ss >= HUGE_P2 {
                HUGE
            } else if ss > SMALL_P2 {
                (HUGE * (ss - SMALL_P2) as f64 + SMALL * (HUGE_P2 - ss) as f64)
                    / (HUGE_P2 - SMALL_P2) as f64
            } else {
                SMALL
            };
            let last = *self.scales.last().unwrap_or(&1.0);
            self.scales.push(last * scale);
        }
        let shifted = 1u64 << sc;
        let x = (v - shifted) as f64 / shifted as f64;
        shifted as f64 * self.scales[sc] * (1.0 - x)
            + (shifted * 2) as f64 * self.scales[sc + 1] * x
    }

    pub(crate) fn score(class: &MetaslabClass, unit: u64) -> Result<f64> {
        let mut s = CephScore::new();
        let mut sum = 0u64;
        let mut score_sum = 0.0;
        class.walk_free(0, |_, len| {
            score_sum += s.get(len);
            sum += len;
        })?;
        if sum == 0 {
            return Ok(0.0);
        }
        let ideal = s.get(sum);
        let terrible = (sum / unit) as f64 * s.get(unit);
        if ideal <= terrible {
            return Ok(0.0);
        }
        Ok((ideal - score_sum) / (ideal - terrible))
    }
}
