//! Verify mode: every written block carries a self-describing header, every read checks it.
//!
//! The region is cut into verify units (the smallest block size of the run). Each unit written
//! in verify mode starts with a header (little-endian):
//!
//! | offset | field |
//! |---|---|
//! | 0  | magic `RPVERIF1` |
//! | 8  | byte offset of this unit on the target (catches misdirected writes/reads) |
//! | 16 | run id (random per run; catches stale data from an older run) |
//! | 24 | generation (per job, increasing; catches lost writes within the run) |
//! | 32 | crc32c of the whole unit with this field zeroed (catches corruption) |
//! | 36 | unit length |
//!
//! and the rest is pseudo-random data derived from (offset, generation). Each job tracks the
//! generation it last wrote to every unit it owns (jobs own disjoint slices in verify mode) and
//! keeps units with an I/O in flight busy, so a read always has exactly one expected content.
//! Units this run never wrote must still carry a valid header (a write pass or a prefill in
//! verify mode formats the region).

use std::fmt;

pub const MAGIC: u64 = u64::from_le_bytes(*b"RPVERIF1");
pub const HEADER_LEN: usize = 40;
const CRC_AT: usize = 32;

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub offset: u64,
    pub what: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verify error at offset {}: {}", self.offset, self.what)
    }
}

/// Per-job verify state over `[start, start + len)`.
#[derive(Debug)]
pub struct Verifier {
    unit: u64,
    start: u64,
    run_id: u64,
    next_gen: u64,
    /// Last generation this job wrote per unit; 0 = not written in this run.
    gens: Vec<u64>,
    busy: Vec<bool>,
}

/// The most units a job may track (8 bytes each): 1 GiB of state.
const MAX_UNITS: u64 = 1 << 27;

impl Verifier {
    pub fn new(unit: u64, start: u64, len: u64, run_id: u64) -> Result<Verifier, String> {
        let n = len / unit;
        if n > MAX_UNITS {
            return Err(format!(
                "verify: {n} units of {unit} bytes per job is too many to track (max {MAX_UNITS}); use a smaller --size or more jobs"
            ));
        }
        let n = usize::try_from(n).map_err(|_| "verify: region too large")?;
        Ok(Verifier {
            unit,
            start,
            run_id,
            next_gen: 1,
            gens: vec![0; n],
            busy: vec![false; n],
        })
    }

    fn units(&self, off: u64, len: u64) -> std::ops::Range<usize> {
        // off/len come from the generator: inside the region and unit-aligned.
        let first = usize::try_from((off - self.start) / self.unit).unwrap_or(usize::MAX);
        let n = usize::try_from(len / self.unit).unwrap_or(0);
        first..first.saturating_add(n).min(self.gens.len())
    }

    /// True if no unit of the range has an I/O in flight.
    pub fn is_free(&self, off: u64, len: u64) -> bool {
        self.busy[self.units(off, len)].iter().all(|b| !b)
    }

    pub fn set_busy(&mut self, off: u64, len: u64, busy: bool) {
        let r = self.units(off, len);
        self.busy[r].fill(busy);
    }

    /// Formats `buf` (to be written at `off`) and returns the generation it carries.
    pub fn fill_write(&mut self, buf: &mut [u8], off: u64) -> u64 {
        let gen = self.next_gen;
        self.next_gen += 1;
        let unit = usize::try_from(self.unit).unwrap_or(usize::MAX);
        let mut uoff = off;
        for chunk in buf.chunks_exact_mut(unit) {
            format_unit(chunk, uoff, self.run_id, gen);
            uoff += self.unit;
        }
        gen
    }

    /// Records the outcome of a write: on success the units now hold `gen`; on failure their
    /// content is unknown (old or new), so only the header's own consistency is checked later.
    pub fn write_done(&mut self, off: u64, len: u64, gen: u64, ok: bool) {
        let r = self.units(off, len);
        self.gens[r].fill(if ok { gen } else { 0 });
    }

    /// Checks a completed read of `buf` at `off`; returns the failed checks.
    pub fn check_read(&self, buf: &[u8], off: u64) -> Vec<Mismatch> {
        let unit = usize::try_from(self.unit).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut uoff = off;
        for chunk in buf.chunks_exact(unit) {
            let expect_gen = self
                .units(uoff, self.unit)
                .next()
                .map_or(0, |i| self.gens[i]);
            let expect = (expect_gen != 0).then_some((self.run_id, expect_gen));
            if let Err(what) = check_unit(chunk, uoff, expect) {
                out.push(Mismatch { offset: uoff, what });
            }
            uoff += self.unit;
        }
        out
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// crc32c of a unit with its crc field taken as zero.
fn unit_crc(u: &[u8]) -> u32 {
    let c = crc32c::crc32c(&u[..CRC_AT]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &u[CRC_AT + 4..])
}

/// Writes header and body of one unit.
pub fn format_unit(u: &mut [u8], off: u64, run_id: u64, gen: u64) {
    let len = u32::try_from(u.len()).unwrap_or(u32::MAX);
    u[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    u[8..16].copy_from_slice(&off.to_le_bytes());
    u[16..24].copy_from_slice(&run_id.to_le_bytes());
    u[24..32].copy_from_slice(&gen.to_le_bytes());
    u[32..36].fill(0);
    u[36..40].copy_from_slice(&len.to_le_bytes());
    // Body: xorshift64* stream seeded by (offset, generation): cheap and never all-zero.
    let mut x = off ^ gen.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for w in u[HEADER_LEN..].chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
    let crc = unit_crc(u);
    u[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Checks one unit read at `off`; `expect` is (run id, generation) when this run knows it.
pub fn check_unit(u: &[u8], off: u64, expect: Option<(u64, u64)>) -> Result<(), String> {
    if u.len() < HEADER_LEN {
        return Err(format!(
            "unit of {} bytes is shorter than the header",
            u.len()
        ));
    }
    let magic = le64(u, 0);
    if magic != MAGIC {
        return Err(format!(
            "no verify header (magic {magic:#018x}): block not written by a ringperf verify run, or overwritten"
        ));
    }
    let len = le32(u, 36);
    if usize::try_from(len).ok() != Some(u.len()) {
        return Err(format!(
            "header unit length {len} != {} (verify with the same block sizes as the write pass)",
            u.len()
        ));
    }
    let stored = le32(u, CRC_AT);
    let crc = unit_crc(u);
    if stored != crc {
        return Err(format!(
            "crc32c mismatch: stored {stored:#010x}, computed {crc:#010x} (corrupt data)"
        ));
    }
    let hoff = le64(u, 8);
    if hoff != off {
        return Err(format!(
            "header says offset {hoff}: misdirected write or read"
        ));
    }
    if let Some((run, gen)) = expect {
        let (hrun, hgen) = (le64(u, 16), le64(u, 24));
        if hrun != run || hgen != gen {
            return Err(format!(
                "stale data: generation {hgen} of run {hrun:#x}, expected generation {gen} of run {run:#x} (lost write)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_detection() {
        let mut v = Verifier::new(4096, 0, 1 << 20, 42).unwrap();
        let mut buf = vec![0u8; 8192];
        let gen = v.fill_write(&mut buf, 4096);
        assert!(
            v.check_read(&buf, 4096).is_empty(),
            "unknown generation still checks"
        );
        v.write_done(4096, 8192, gen, true);
        assert!(v.check_read(&buf, 4096).is_empty());
        // Same data read at another offset: misdirected.
        assert!(v.check_read(&buf[..4096], 12288)[0].what.contains("offset"));
        // One flipped byte in the body.
        let mut bad = buf.clone();
        bad[5000] ^= 1;
        let m = v.check_read(&bad, 4096);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].offset, 8192);
        assert!(m[0].what.contains("crc32c"));
        // An older generation where a newer one was acknowledged: lost write.
        let gen2 = v.fill_write(&mut vec![0u8; 4096], 4096);
        v.write_done(4096, 4096, gen2, true);
        assert!(v.check_read(&buf[..4096], 4096)[0].what.contains("stale"));
        // Zeroes: not formatted.
        assert!(v.check_read(&[0u8; 4096], 0)[0]
            .what
            .contains("no verify header"));
    }

    #[test]
    fn busy_tracking() {
        let mut v = Verifier::new(4096, 1 << 20, 1 << 20, 1).unwrap();
        assert!(v.is_free((1 << 20) + 8192, 8192));
        v.set_busy((1 << 20) + 12288, 4096, true);
        assert!(!v.is_free((1 << 20) + 8192, 8192));
        assert!(v.is_free(1 << 20, 8192));
        v.set_busy((1 << 20) + 12288, 4096, false);
        assert!(v.is_free((1 << 20) + 8192, 8192));
    }
}
