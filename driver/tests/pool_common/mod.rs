//! Helpers shared by the pool test binaries.
// Test arithmetic on small in-memory sizes: the casts cannot truncate here.
#![allow(dead_code, clippy::cast_possible_truncation)]

pub mod ckpt;
pub mod setup;
pub use setup::*;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringpool_driver::io::engine::{check_discard, check_io};
use ringpool_driver::io::{
    BlockEngine, FaultEvent, Geometry, IoBuf, IoError, IoFuture, OpKind, UnitFuture,
};

const PAGE: usize = 4096;

/// A device image as a shared base plus private copy-on-write pages: building and importing
/// thousands of crash images costs what they changed, not the device size.
#[derive(Debug)]
pub struct SparseImage {
    base: Arc<Vec<u8>>,
    pages: Mutex<HashMap<u64, Box<[u8]>>>,
    geom: Geometry,
}

impl SparseImage {
    /// An image equal to `base`.
    pub fn new(base: Arc<Vec<u8>>, sector: u32) -> SparseImage {
        let size = base.len() as u64;
        SparseImage {
            base,
            pages: Mutex::new(HashMap::new()),
            geom: Geometry::memory(size, sector),
        }
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) {
        let mut pages = self.pages.lock();
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset as usize + done;
            let page = (pos / PAGE) as u64;
            let in_page = pos % PAGE;
            let n = (PAGE - in_page).min(data.len() - done);
            let p = pages.entry(page).or_insert_with(|| {
                let s = page as usize * PAGE;
                self.base[s..s + PAGE].to_vec().into_boxed_slice()
            });
            p[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    fn read_bytes(&self, offset: u64, out: &mut [u8]) {
        let pages = self.pages.lock();
        let mut done = 0usize;
        while done < out.len() {
            let pos = offset as usize + done;
            let page = (pos / PAGE) as u64;
            let in_page = pos % PAGE;
            let n = (PAGE - in_page).min(out.len() - done);
            match pages.get(&page) {
                Some(p) => out[done..done + n].copy_from_slice(&p[in_page..in_page + n]),
                None => out[done..done + n].copy_from_slice(&self.base[pos..pos + n]),
            }
            done += n;
        }
    }

    /// Flips one bit.
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut b = [0u8; 1];
        self.read_bytes(offset, &mut b);
        b[0] ^= 1 << bit;
        self.write_bytes(offset, &b);
    }

    /// Applies a logged event (fully, or only `prefix` bytes of a write).
    pub fn apply(&self, ev: &FaultEvent, prefix: Option<usize>) {
        match ev {
            FaultEvent::Write { offset, data } => {
                let n = prefix.unwrap_or(data.len()).min(data.len());
                self.write_bytes(*offset, &data[..n]);
            }
            FaultEvent::Discard { offset, len } => {
                self.write_bytes(*offset, &vec![0u8; *len as usize]);
            }
            FaultEvent::Corrupt { offset, bit } => self.flip_bit(*offset, *bit),
            _ => {}
        }
    }
}

impl BlockEngine for SparseImage {
    fn geometry(&self) -> Geometry {
        self.geom
    }
    fn name(&self) -> &str {
        "sparse"
    }
    fn read_at(&self, mut buf: IoBuf, offset: u64) -> IoFuture {
        let r = check_io(
            &self.geom,
            "sparse",
            OpKind::Read,
            offset,
            buf.len(),
            buf.addr(),
        );
        if r.is_ok() {
            self.read_bytes(offset, &mut buf);
        }
        Box::pin(async move { (r, buf) })
    }
    fn write_at(&self, buf: IoBuf, offset: u64) -> IoFuture {
        let r = check_io(
            &self.geom,
            "sparse",
            OpKind::Write,
            offset,
            buf.len(),
            buf.addr(),
        );
        if r.is_ok() {
            self.write_bytes(offset, &buf);
        }
        Box::pin(async move { (r, buf) })
    }
    fn flush(&self) -> UnitFuture {
        Box::pin(async { Ok(()) })
    }
    fn discard(&self, offset: u64, len: u64) -> UnitFuture {
        let r = check_discard(&self.geom, "sparse", offset, len);
        if r.is_ok() {
            self.write_bytes(offset, &vec![0u8; len as usize]);
        }
        Box::pin(async move { r.map_err(|e: IoError| e) })
    }
}

/// The power-loss model of the fault-injecting engine, over a logged event window:
/// everything before the last flush in `events[..at]` is durable; each later write/discard is
/// kept with probability 1/2 (`drop_subset`), a kept multi-sector write is torn to a random
/// whole-sector prefix with probability 1/2 (`tear`).
pub fn crash_image(
    base: &Arc<Vec<u8>>,
    events: &[FaultEvent],
    at: usize,
    seed: u64,
    drop_subset: bool,
    tear: bool,
    sector: u32,
) -> SparseImage {
    let img = SparseImage::new(Arc::clone(base), sector);
    let window = &events[..at.min(events.len())];
    let durable_end = window
        .iter()
        .rposition(|e| matches!(e, FaultEvent::Flush))
        .map_or(0, |i| i + 1);
    let mut rng = SmallRng::seed_from_u64(seed);
    let sector = sector as usize;
    for (i, ev) in window.iter().enumerate() {
        if i < durable_end || matches!(ev, FaultEvent::Corrupt { .. }) {
            img.apply(ev, None);
            continue;
        }
        if drop_subset && rng.random_bool(0.5) {
            continue;
        }
        if let FaultEvent::Write { data, .. } = ev {
            let sectors = data.len() / sector;
            if tear && sectors > 1 && rng.random_bool(0.5) {
                img.apply(ev, Some(rng.random_range(1..sectors) * sector));
                continue;
            }
        }
        img.apply(ev, None);
    }
    img
}

/// Indexes of the flush events.
pub fn flush_points(events: &[FaultEvent]) -> Vec<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, FaultEvent::Flush))
        .map(|(i, _)| i)
        .collect()
}
