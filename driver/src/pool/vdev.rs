//! One device of the pool: its engine, its layout, and label / uberblock-ring I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringpool_ondisk::label::LabelHeader;
use ringpool_ondisk::layout::{
    DeviceLayout, LABEL_COUNT, LABEL_HEADER_AREA_SIZE, LABEL_HEADER_OFFSET, LABEL_RING_OFFSET,
    LABEL_SIZE,
};
use ringpool_ondisk::uberblock::Uberblock;

use crate::io::buf::IoBuf;
use crate::io::engine::BlockEngine;

use super::error::{PoolError, Result};

/// A device of the pool.
pub struct Vdev {
    /// Index in the pool's device list.
    pub index: u32,
    /// Device GUID.
    pub guid: u64,
    /// The engine all I/O goes through.
    pub engine: Arc<dyn BlockEngine>,
    /// Where labels, rings and metaslabs are.
    pub layout: DeviceLayout,
    /// Allocation unit shift.
    pub ashift: u8,
    /// Metaslab shift.
    pub ms_shift: u8,
    /// Txg the device was added in.
    pub added_txg: u64,
    /// I/O and checksum errors seen since import (`zpool status` columns).
    pub errors: ErrorCounters,
}

/// Error counters of one device, in memory only (they start at zero at every import, as in
/// OpenZFS, and [`super::Pool::clear_errors`] resets them).
#[derive(Debug, Default)]
pub struct ErrorCounters {
    read: AtomicU64,
    write: AtomicU64,
    checksum: AtomicU64,
}

impl ErrorCounters {
    /// A block read from this device did not match its parent's checksum.
    pub fn checksum_error(&self) {
        self.checksum.fetch_add(1, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> DeviceErrors {
        DeviceErrors {
            read: self.read.load(Ordering::Relaxed),
            write: self.write.load(Ordering::Relaxed),
            checksum: self.checksum.load(Ordering::Relaxed),
        }
    }

    /// Back to zero.
    pub fn clear(&self) {
        for c in [&self.read, &self.write, &self.checksum] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A snapshot of a device's error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceErrors {
    /// Failed reads.
    pub read: u64,
    /// Failed writes and flushes.
    pub write: u64,
    /// Reads whose content did not match the checksum its parent records.
    pub checksum: u64,
}

impl std::fmt::Debug for Vdev {
    // Engines may hold whole device images (the in-memory engine): print only their name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vdev")
            .field("index", &self.index)
            .field("guid", &format_args!("{:#x}", self.guid))
            .field("engine", &self.engine.name())
            .field("ashift", &self.ashift)
            .field("ms_shift", &self.ms_shift)
            .finish()
    }
}

/// What one label of a device holds.
#[derive(Debug)]
pub struct LabelRead {
    /// Label index 0..4.
    pub index: usize,
    /// The header, if it decoded.
    pub header: Result<LabelHeader>,
    /// Every uberblock of the ring that decoded.
    pub uberblocks: Vec<Uberblock>,
}

fn buf_of(len: usize) -> IoBuf {
    let mut b = crate::io::buf::alloc(len);
    b.fill(0);
    b
}

impl Vdev {
    /// Number of metaslabs.
    pub fn ms_count(&self) -> u64 {
        self.layout.metaslab_count(self.ms_shift)
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u32) -> Result<IoBuf> {
        let buf = buf_of(usize::try_from(len).unwrap_or(0));
        let (r, buf) = self.engine.read_at(buf, offset).await;
        if r.is_err() {
            self.errors.read.fetch_add(1, Ordering::Relaxed);
        }
        r?;
        Ok(buf)
    }

    /// Writes `buf` at `offset`.
    pub async fn write(&self, offset: u64, buf: IoBuf) -> Result<()> {
        let (r, _buf) = self.engine.write_at(buf, offset).await;
        if r.is_err() {
            self.errors.write.fetch_add(1, Ordering::Relaxed);
        }
        r.map_err(PoolError::from)
    }

    /// Reads into `buf[range]` at `offset` (straight into a caller's buffer), counting a
    /// failure as a READ error.
    pub async fn read_into(
        &self,
        buf: IoBuf,
        range: std::ops::Range<usize>,
        offset: u64,
    ) -> (Result<()>, IoBuf) {
        let (r, buf) = self.engine.read_into(buf, range, offset).await;
        if r.is_err() {
            self.errors.read.fetch_add(1, Ordering::Relaxed);
        }
        (r.map_err(PoolError::from), buf)
    }

    /// Writes `buf` at `offset` and hands the buffer back, counting a failure as a WRITE error.
    pub async fn write_keep(&self, buf: IoBuf, offset: u64) -> (Result<()>, IoBuf) {
        let (r, buf) = self.engine.write_at(buf, offset).await;
        if r.is_err() {
            self.errors.write.fetch_add(1, Ordering::Relaxed);
        }
        (r.map_err(PoolError::from), buf)
    }

    /// Makes completed writes durable.
    pub async fn flush(&self) -> Result<()> {
        let r = self.engine.flush().await;
        if r.is_err() {
            self.errors.write.fetch_add(1, Ordering::Relaxed);
        }
        r.map_err(PoolError::from)
    }

    /// Writes `header` into label `index` (the whole header area).
    pub async fn write_label_header(&self, index: usize, header: &LabelHeader) -> Result<()> {
        let mut buf = buf_of(LABEL_HEADER_AREA_SIZE);
        header.encode_area(&mut buf)?;
        let off = self.layout.label_offset(index)? + LABEL_HEADER_OFFSET;
        self.write(off, buf).await
    }

    /// Writes `ub` into its ring slot of label `index`.
    pub async fn write_uberblock(&self, index: usize, ub: &Uberblock) -> Result<()> {
        let mut buf = buf_of(self.layout.slot_size());
        ub.encode_slot(&mut buf)?;
        let off = self.layout.uberblock_offset(index, ub.txg)?;
        self.write(off, buf).await
    }

    /// Zeroes label `index` entirely (create on a device that held something else).
    pub async fn clear_label(&self, index: usize) -> Result<()> {
        let buf = buf_of(usize::try_from(LABEL_SIZE).unwrap_or(0));
        self.write(self.layout.label_offset(index)?, buf).await
    }

    /// Reads label `index`: header and every valid uberblock of its ring.
    pub async fn read_label(&self, index: usize) -> Result<LabelRead> {
        read_label(&*self.engine, &self.layout, index).await
    }
}

/// Reads label `index` of a device given only its engine and layout (import scans).
pub async fn read_label(
    engine: &dyn BlockEngine,
    layout: &DeviceLayout,
    index: usize,
) -> Result<LabelRead> {
    let off = layout.label_offset(index)?;
    let buf = buf_of(usize::try_from(LABEL_SIZE).unwrap_or(0));
    let (r, buf) = engine.read_at(buf, off).await;
    r?;
    let hs = usize::try_from(LABEL_HEADER_OFFSET).unwrap_or(0);
    let header =
        LabelHeader::decode(&buf[hs..hs + LABEL_HEADER_AREA_SIZE]).map_err(PoolError::from);
    let rs = usize::try_from(LABEL_RING_OFFSET).unwrap_or(0);
    let slot = layout.slot_size();
    let mut uberblocks = Vec::new();
    for s in buf[rs..].chunks_exact(slot) {
        if let Ok(ub) = Uberblock::decode(s) {
            uberblocks.push(ub);
        }
    }
    Ok(LabelRead {
        index,
        header,
        uberblocks,
    })
}

/// All label indexes.
pub const LABELS: std::ops::Range<usize> = 0..LABEL_COUNT;
