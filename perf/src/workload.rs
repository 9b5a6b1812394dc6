//! Seeded workload generators: which operation, at which offset, of which size.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::cli::Rw;

/// One I/O to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
}

/// Offset distribution of the random patterns.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Dist {
    Uniform,
    Zipf(f64),
}

impl Dist {
    pub fn parse(s: &str) -> Result<Dist, String> {
        if s == "uniform" {
            return Ok(Dist::Uniform);
        }
        if let Some(t) = s.strip_prefix("zipf:") {
            let theta: f64 = t.parse().map_err(|e| format!("dist '{s}': {e}"))?;
            if !(theta.is_finite() && theta > 0.0) {
                return Err(format!("dist '{s}': theta must be > 0"));
            }
            return Ok(Dist::Zipf(theta));
        }
        Err(format!("dist '{s}': expected uniform or zipf:THETA"))
    }
}

/// What a job generates: fixed for the run.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub rw: Rw,
    pub read_pct: u8,
    /// (block size, cumulative weight); the last cumulative weight is the total.
    pub sizes: Vec<(u64, u32)>,
    /// Offsets are multiples of this (the smallest block size).
    pub align: u64,
    pub dist: Dist,
}

impl Pattern {
    pub fn new(rw: Rw, mixread: u8, split: &[(u64, u32)], dist: Dist) -> Pattern {
        let mut cum = 0;
        let sizes = split
            .iter()
            .map(|&(bs, w)| {
                cum += w;
                (bs, cum)
            })
            .collect();
        let align = split.iter().map(|&(bs, _)| bs).min().unwrap_or(4096);
        Pattern {
            rw,
            read_pct: rw.read_pct(mixread),
            sizes,
            align,
            dist,
        }
    }

    pub fn max_bs(&self) -> u64 {
        self.sizes
            .iter()
            .map(|&(bs, _)| bs)
            .max()
            .unwrap_or(self.align)
    }
}

/// The per-job generator over `[start, start + len)`.
#[derive(Debug)]
pub struct Generator {
    rng: SmallRng,
    pat: Pattern,
    start: u64,
    len: u64,
    cursor: u64,
    zipf: Option<Zipf>,
}

impl Generator {
    /// `len` must hold at least one block of the largest size.
    pub fn new(pat: Pattern, seed: u64, start: u64, len: u64) -> Generator {
        let blocks = len / pat.align;
        let zipf = match pat.dist {
            Dist::Zipf(theta) => Some(Zipf::new(blocks.max(1), theta)),
            Dist::Uniform => None,
        };
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            pat,
            start,
            len,
            cursor: 0,
            zipf,
        }
    }

    /// The next I/O: (kind, absolute offset, length).
    pub fn next_io(&mut self) -> (OpKind, u64, u64) {
        let kind = if self.pat.read_pct >= 100
            || (self.pat.read_pct > 0 && self.rng.random_range(0..100u8) < self.pat.read_pct)
        {
            OpKind::Read
        } else {
            OpKind::Write
        };
        let bs = self.pick_bs();
        let off = if self.pat.rw.is_random() {
            self.random_offset(bs)
        } else {
            if self.cursor + bs > self.len {
                self.cursor = 0;
            }
            let o = self.cursor;
            self.cursor += bs;
            o
        };
        (kind, self.start + off, bs)
    }

    fn pick_bs(&mut self) -> u64 {
        if self.pat.sizes.len() == 1 {
            return self.pat.sizes[0].0;
        }
        let total = self.pat.sizes.last().map_or(1, |s| s.1);
        let r = self.rng.random_range(0..total);
        self.pat
            .sizes
            .iter()
            .find(|&&(_, cum)| r < cum)
            .map_or(self.pat.align, |s| s.0)
    }

    fn random_offset(&mut self, bs: u64) -> u64 {
        let align = self.pat.align;
        // Last block index where an I/O of `bs` still fits.
        let slots = (self.len - bs) / align + 1;
        let idx = match &self.zipf {
            None => self.rng.random_range(0..slots),
            Some(z) => {
                // Rank 1 is the hottest; scatter ranks over the region (fio hashes them too),
                // so the hot set is not one contiguous run.
                let rank = z.sample(&mut self.rng);
                scatter(rank) % slots
            }
        };
        idx * align
    }
}

/// A 64-bit mixer (splitmix64 finalizer): spreads zipf ranks over the block indices.
fn scatter(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Zipf distribution over ranks 1..=n with exponent `s`, by rejection-inversion
/// (Hörmann & Derflinger 1996): O(1) setup and sampling for any s > 0, no table of n entries.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    sc: f64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        #[allow(clippy::cast_precision_loss)]
        let nf = n as f64;
        let mut z = Zipf {
            n: nf,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            sc: 0.0,
        };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(nf + 0.5);
        z.sc = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        helper2((1.0 - self.s) * lx) * lx
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// A rank in 1..=n.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> u64 {
        loop {
            let u01: f64 = rng.random();
            let u = self.h_n + u01 * (self.h_x1 - self.h_n);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.sc || u >= self.h_integral(k + 0.5) - self.h(k) {
                // k is an integral value in [1, n] here.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                return k as u64;
            }
        }
    }
}

/// ln(1+x)/x, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (exp(x)-1)/x, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_offsets_aligned_and_in_range() {
        let pat = Pattern::new(Rw::Randrw, 70, &[(4096, 50), (65536, 50)], Dist::Uniform);
        let mut g = Generator::new(pat, 1, 1 << 20, 8 << 20);
        let mut reads = 0;
        for _ in 0..10_000 {
            let (k, off, len) = g.next_io();
            assert_eq!(off % 4096, 0);
            assert!(off >= 1 << 20 && off + len <= 9 << 20, "{off} {len}");
            assert!(len == 4096 || len == 65536);
            reads += usize::from(k == OpKind::Read);
        }
        assert!((6500..7500).contains(&reads), "{reads}");
    }

    #[test]
    fn sequential_wraps() {
        let pat = Pattern::new(Rw::Write, 0, &[(4096, 100)], Dist::Uniform);
        let mut g = Generator::new(pat, 1, 0, 3 * 4096);
        let offs: Vec<u64> = (0..4).map(|_| g.next_io().1).collect();
        assert_eq!(offs, vec![0, 4096, 8192, 0]);
    }

    #[test]
    fn same_seed_same_sequence() {
        let pat = Pattern::new(Rw::Randread, 0, &[(4096, 100)], Dist::Zipf(0.9));
        let mut a = Generator::new(pat.clone(), 7, 0, 1 << 30);
        let mut b = Generator::new(pat, 7, 0, 1 << 30);
        for _ in 0..100 {
            assert_eq!(a.next_io(), b.next_io());
        }
    }

    #[test]
    fn zipf_is_skewed() {
        for s in [0.8, 1.0, 1.2] {
            let z = Zipf::new(1000, s);
            let mut rng = SmallRng::seed_from_u64(3);
            let mut counts = vec![0u32; 1001];
            for _ in 0..100_000 {
                let k = z.sample(&mut rng);
                assert!((1..=1000).contains(&k));
                counts[usize::try_from(k).unwrap()] += 1;
            }
            // Rank 1 is about 2^s times as frequent as rank 2, and far above the median rank.
            let ratio = f64::from(counts[1]) / f64::from(counts[2]);
            assert!(
                (ratio / 2f64.powf(s) - 1.0).abs() < 0.15,
                "s={s} ratio={ratio}"
            );
            assert!(counts[1] > 20 * counts[500], "s={s}");
        }
    }
}
