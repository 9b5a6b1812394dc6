//! [`FaultyEngine`]: an in-memory device that records every write, flush and discard, can
//! build the image a power loss at any point could leave behind, and injects EIO and bit rot.
//!
//! Crash model (what [`FaultyEngine::crash_image`] produces for a crash after the first
//! `at_event` events of the log):
//! * every write/discard that precedes the last flush among those events is durable;
//! * each later write/discard is independently kept or dropped (`drop_unflushed_subset`);
//! * a kept write spanning several sectors may be torn (`tear_writes`): only a prefix of whole
//!   sectors reaches the medium (sector writes are atomic, multi-sector writes are not);
//! * kept unflushed writes are applied in issue order;
//! * bit flips ([`FaultyEngine::flip_bit`]) model media corruption and are always durable.
//!
//! The engine completes everything synchronously, so "completed before the flush" equals
//! "issued before the flush" in the log. Cloning gives another handle to the same device.

use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{check_discard, check_io, BlockEngine, IoFuture, UnitFuture};
use crate::io::buf::IoBuf;
use crate::io::device::Geometry;
use crate::io::error::{IoError, OpKind};

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultEvent {
    /// A completed write.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes written.
        data: Arc<[u8]>,
    },
    /// A completed flush.
    Flush,
    /// A completed discard (the range reads as zeroes).
    Discard {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A bit flipped on the medium by [`FaultyEngine::flip_bit`].
    Corrupt {
        /// Byte offset.
        offset: u64,
        /// Bit number 0..8.
        bit: u8,
    },
}

/// How [`FaultyEngine::crash_image`] treats writes after the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrashMode {
    /// Keep each unflushed write/discard with probability 1/2 (else all are kept).
    pub drop_unflushed_subset: bool,
    /// Tear each kept unflushed multi-sector write with probability 1/2 (prefix kept).
    pub tear_writes: bool,
}

#[derive(Debug, Clone)]
struct EioRule {
    range: Range<u64>,
    on_read: bool,
    on_write: bool,
}

#[derive(Debug)]
struct State {
    /// Image at the start of the log (entirely durable).
    base: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    events: Vec<FaultEvent>,
    eio: Vec<EioRule>,
    reads: u64,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct FaultyEngine {
    state: Arc<Mutex<State>>,
    geometry: Geometry,
    name: Arc<str>,
}

impl FaultyEngine {
    /// A zero-filled device of `size` bytes with `sector`-byte sectors (a power of two).
    ///
    /// # Panics
    /// If `sector` is not a power of two or `size` is not a multiple of it (test setup bugs).
    pub fn new(size: u64, sector: u32) -> FaultyEngine {
        let len = usize::try_from(size).expect("FaultyEngine size fits in memory");
        FaultyEngine::from_image(vec![0u8; len], sector)
    }

    /// A device whose durable contents are `image`.
    ///
    /// # Panics
    /// As [`FaultyEngine::new`].
    pub fn from_image(image: Vec<u8>, sector: u32) -> FaultyEngine {
        assert!(sector.is_power_of_two(), "sector must be a power of two");
        assert_eq!(
            image.len() % usize::try_from(sector).unwrap_or(1),
            0,
            "image size must be a multiple of the sector"
        );
        let size = image.len() as u64;
        FaultyEngine {
            state: Arc::new(Mutex::new(State {
                current: image.clone(),
                base: image,
                events: Vec::new(),
                eio: Vec::new(),
                reads: 0,
            })),
            geometry: Geometry::memory(size, sector),
            name: Arc::from("faulty"),
        }
    }

    /// Same device with a label used in errors.
    pub fn with_name(mut self, name: &str) -> FaultyEngine {
        self.name = Arc::from(name);
        self
    }

    /// Sector size.
    pub fn sector(&self) -> u32 {
        self.geometry.logical_block_size
    }

    /// Fail reads and/or writes that overlap `range` with EIO until [`Self::clear_faults`].
    pub fn inject_eio(&self, range: Range<u64>, on_read: bool, on_write: bool) {
        self.state.lock().eio.push(EioRule {
            range,
            on_read,
            on_write,
        });
    }

    /// Remove every EIO rule.
    pub fn clear_faults(&self) {
        self.state.lock().eio.clear();
    }

    /// Flip bit `bit` (0..8) of the byte at `offset` on the medium (durable; logged).
    /// Out-of-range offsets are ignored.
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut st = self.state.lock();
        let Ok(i) = usize::try_from(offset) else {
            return;
        };
        if i >= st.current.len() {
            return;
        }
        st.current[i] ^= 1 << (bit & 7);
        st.events.push(FaultEvent::Corrupt {
            offset,
            bit: bit & 7,
        });
    }

    /// A copy of the event log.
    pub fn events(&self) -> Vec<FaultEvent> {
        self.state.lock().events.clone()
    }

    /// Number of logged events (valid `at_event` values are `0..=event_count()`).
    pub fn event_count(&self) -> usize {
        self.state.lock().events.len()
    }

    /// Indices of the flush events in the log.
    pub fn flush_points(&self) -> Vec<usize> {
        let st = self.state.lock();
        st.events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, FaultEvent::Flush))
            .map(|(i, _)| i)
            .collect()
    }

    /// Number of reads served (including failed ones).
    pub fn read_count(&self) -> u64 {
        self.state.lock().reads
    }

    /// What reads return now.
    pub fn image(&self) -> Vec<u8> {
        self.state.lock().current.clone()
    }

    /// The image guaranteed to survive a crash now: everything up to the last flush (plus
    /// bit flips).
    pub fn durable_image(&self) -> Vec<u8> {
        let st = self.state.lock();
        let at = st.events.len();
        replay(&st, at, &mut |_| Keep::Drop)
    }

    /// The image a crash after the first `at_event` logged events could leave; see the module
    /// docs. Deterministic for a given `seed`. `at_event` is clamped to `event_count()`.
    pub fn crash_image(&self, at_event: usize, seed: u64, mode: CrashMode) -> Vec<u8> {
        let st = self.state.lock();
        let at = at_event.min(st.events.len());
        let mut rng = SmallRng::seed_from_u64(seed);
        let sector = usize::try_from(self.geometry.logical_block_size).unwrap_or(512);
        replay(&st, at, &mut |ev| {
            if mode.drop_unflushed_subset && rng.random_bool(0.5) {
                return Keep::Drop;
            }
            if let FaultEvent::Write { data, .. } = ev {
                let sectors = data.len() / sector;
                if mode.tear_writes && sectors > 1 && rng.random_bool(0.5) {
                    return Keep::Prefix(rng.random_range(1..sectors) * sector);
                }
            }
            Keep::All
        })
    }

    /// Forget the log: the current image becomes the durable base (bounds memory in long
    /// tests). EIO rules are kept.
    pub fn reset_log(&self) {
        let mut st = self.state.lock();
        st.base = st.current.clone();
        st.events.clear();
    }

    fn eio(&self, st: &State, offset: u64, len: u64, write: bool) -> Option<IoError> {
        let end = offset + len;
        st.eio
            .iter()
            .find(|r| {
                (if write { r.on_write } else { r.on_read })
                    && r.range.start < end
                    && offset < r.range.end
            })
            .map(|r| IoError::Device {
                device: self.name.to_string(),
                offset: r.range.start.max(offset),
                op: if write { OpKind::Write } else { OpKind::Read },
                errno: libc::EIO,
            })
    }

    fn do_read(&self, buf: &mut IoBuf, offset: u64) -> Result<(), IoError> {
        check_io(
            &self.geometry,
            &self.name,
            OpKind::Read,
            offset,
            buf.len(),
            buf.addr(),
        )?;
        let mut st = self.state.lock();
        st.reads += 1;
        if let Some(e) = self.eio(&st, offset, buf.len() as u64, false) {
            return Err(e);
        }
        let o = usize::try_from(offset).unwrap_or(usize::MAX);
        let n = buf.len();
        buf.copy_from_slice(&st.current[o..o + n]);
        Ok(())
    }

    fn do_write(&self, buf: &IoBuf, offset: u64) -> Result<(), IoError> {
        check_io(
            &self.geometry,
            &self.name,
            OpKind::Write,
            offset,
            buf.len(),
            buf.addr(),
        )?;
        let mut st = self.state.lock();
        if let Some(e) = self.eio(&st, offset, buf.len() as u64, true) {
            return Err(e);
        }
        let o = usize::try_from(offset).unwrap_or(usize::MAX);
        st.current[o..o + buf.len()].copy_from_slice(buf);
        st.events.push(FaultEvent::Write {
            offset,
            data: Arc::from(&buf[..]),
        });
        Ok(())
    }

    fn do_discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        check_discard(&self.geometry, &self.name, offset, len)?;
        let mut st = self.state.lock();
        let o = usize::try_from(offset).unwrap_or(usize::MAX);
        let l = usize::try_from(len).unwrap_or(usize::MAX);
        st.current[o..o + l].fill(0);
        st.events.push(FaultEvent::Discard { offset, len });
        Ok(())
    }
}

enum Keep {
    All,
    Drop,
    Prefix(usize),
}

/// Build base + events[..at]: everything up to the last flush in that window is applied;
/// later writes/discards are filtered by `decide`; corruption always applies.
fn replay(st: &State, at: usize, decide: &mut dyn FnMut(&FaultEvent) -> Keep) -> Vec<u8> {
    let mut img = st.base.clone();
    let window = &st.events[..at];
    let durable_end = window
        .iter()
        .rposition(|e| matches!(e, FaultEvent::Flush))
        .map_or(0, |i| i + 1);
    for (i, ev) in window.iter().enumerate() {
        let keep =
            if i < durable_end || matches!(ev, FaultEvent::Corrupt { .. } | FaultEvent::Flush) {
                Keep::All
            } else {
                decide(ev)
            };
        apply(&mut img, ev, keep);
    }
    img
}

fn apply(img: &mut [u8], ev: &FaultEvent, keep: Keep) {
    let n = match keep {
        Keep::Drop => return,
        Keep::All => usize::MAX,
        Keep::Prefix(n) => n,
    };
    match ev {
        FaultEvent::Write { offset, data } => {
            let o = usize::try_from(*offset).unwrap_or(usize::MAX);
            let n = n.min(data.len());
            img[o..o + n].copy_from_slice(&data[..n]);
        }
        FaultEvent::Discard { offset, len } => {
            let o = usize::try_from(*offset).unwrap_or(usize::MAX);
            let l = usize::try_from(*len).unwrap_or(usize::MAX);
            img[o..o + l].fill(0);
        }
        FaultEvent::Corrupt { offset, bit } => {
            if let Ok(o) = usize::try_from(*offset) {
                img[o] ^= 1 << bit;
            }
        }
        FaultEvent::Flush => {}
    }
}

impl BlockEngine for FaultyEngine {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, mut buf: IoBuf, offset: u64) -> IoFuture {
        let r = self.do_read(&mut buf, offset);
        Box::pin(std::future::ready((r, buf)))
    }

    fn write_at(&self, buf: IoBuf, offset: u64) -> IoFuture {
        let r = self.do_write(&buf, offset);
        Box::pin(std::future::ready((r, buf)))
    }

    fn flush(&self) -> UnitFuture {
        self.state.lock().events.push(FaultEvent::Flush);
        Box::pin(std::future::ready(Ok(())))
    }

    fn discard(&self, offset: u64, len: u64) -> UnitFuture {
        Box::pin(std::future::ready(self.do_discard(offset, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // Engine futures are ready immediately.
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("FaultyEngine future not ready"),
        }
    }

    #[test]
    fn crash_image_semantics() {
        let e = FaultyEngine::new(64 * 512, 512);
        let w = |off: u64, byte: u8, len: usize| {
            let (r, _) = block_on(e.write_at(IoBuf::from_slice(&vec![byte; len]), off));
            r.unwrap();
        };
        w(0, 1, 512);
        block_on(e.flush()).unwrap();
        w(512, 2, 4 * 512);
        w(8192, 3, 512);
        assert_eq!(e.flush_points(), vec![1]);
        let durable = e.durable_image();
        assert!(durable[..512].iter().all(|&b| b == 1));
        assert!(durable[512..].iter().all(|&b| b == 0));
        // Across seeds: the flushed write is always there; the others are all-or-nothing
        // (no tearing) or sector-prefix torn.
        let mut saw_drop = false;
        let mut saw_keep = false;
        let mut saw_torn = false;
        for seed in 0..64 {
            let img = e.crash_image(
                e.event_count(),
                seed,
                CrashMode {
                    drop_unflushed_subset: true,
                    tear_writes: true,
                },
            );
            assert!(img[..512].iter().all(|&b| b == 1));
            let sectors: Vec<bool> = (1..5).map(|s| img[s * 512] == 2).collect();
            for s in 0..4 {
                let sec = &img[(s + 1) * 512..(s + 2) * 512];
                assert!(sec.iter().all(|&b| b == sec[0]), "sector partially written");
            }
            // Prefix property: once a sector is missing, later ones are missing too.
            let first_missing = sectors.iter().position(|&k| !k).unwrap_or(4);
            assert!(sectors[first_missing..].iter().all(|&k| !k));
            match first_missing {
                0 => saw_drop = true,
                4 => saw_keep = true,
                _ => saw_torn = true,
            }
        }
        assert!(saw_drop && saw_keep && saw_torn);
        // Crash before the flush: nothing is guaranteed.
        let img = e.crash_image(1, 0, CrashMode::default());
        assert!(
            img[..512].iter().all(|&b| b == 1),
            "all kept without drop mode"
        );
        let none = e.crash_image(0, 0, CrashMode::default());
        assert!(none.iter().all(|&b| b == 0));
    }

    #[test]
    fn eio_and_bit_flip() {
        let e = FaultyEngine::new(16 * 4096, 4096);
        e.inject_eio(4096..8192, true, false);
        let (r, _) = block_on(e.read_at(IoBuf::zeroed(8192), 0));
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
        let (r, _) = block_on(e.write_at(IoBuf::zeroed(4096), 4096));
        r.unwrap();
        e.clear_faults();
        e.flip_bit(10, 3);
        let (r, b) = block_on(e.read_at(IoBuf::zeroed(4096), 0));
        r.unwrap();
        assert_eq!(b[10], 8);
        assert_eq!(e.durable_image()[10], 8, "corruption is durable");
    }
}
