//! Read-only views of the pool's on-disk structures for `ringpool inspect` (the pool's `zdb -m`
//! and `zdb -mmm`) and for commands that must work on a read-only import.
//!
//! Everything here reads the state committed by the last uberblock (after a sync on a writable
//! pool, so it includes what was written up to now) and never queues a sync task: a read-only
//! pool (including a `--rewind-to-checkpoint --readonly` preview) drops sync tasks, so the
//! directory and the space maps are read from disk instead. The in-core allocator state
//! (allocatable space, weight, fragmentation) comes from the metaslab class under each
//! metaslab's lock.

use std::collections::BTreeMap;

use ringpool_ondisk::object::{Bonus, ObjectRecord};
use ringpool_ondisk::space_map::{decode_block, SmAction, SmRecord, SpaceMapHeader};
use ringpool_ondisk::uberblock::Uberblock;

use super::directory::Directory;
use super::error::{PoolError, Result};
use super::shared::Shared;
use super::syncer::{
    decode_root_block, read_ms_array, read_object_bytes, read_objects, DIRECTORY_OBJECT,
};
use super::Pool;

/// One metaslab, as `inspect metaslabs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaslabInfo {
    /// Device index.
    pub device: u32,
    /// Metaslab index within the device.
    pub index: u64,
    /// First byte (absolute device offset).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated bytes per the committed space map (includes checkpoint-held space).
    pub allocated: u64,
    /// Free bytes per the committed space map (`size - allocated`).
    pub free: u64,
    /// Allocatable now (in core: free minus frees still in their defer period).
    pub allocatable: u64,
    /// Freed but not yet allocatable (defer period).
    pub deferred: u64,
    /// Largest allocatable segment.
    pub max_free: u64,
    /// Fragmentation of the free space, percent.
    pub fragmentation: u64,
    /// Allocator weight (segment-based).
    pub weight: u64,
    /// Space map object number.
    pub sm_object: u64,
    /// Bytes of entry words in the space map.
    pub sm_length: u64,
    /// Free-segment histogram of the committed header (bucket i: `[2^(i+ashift), 2^(i+ashift+1))`).
    pub histogram: Vec<u64>,
}

/// Which space map to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceMapWhich {
    /// The space map of metaslab `index` of `device`.
    Metaslab {
        /// Device index.
        device: u32,
        /// Metaslab index.
        index: u64,
    },
    /// The checkpoint space map of `device` (blocks freed since the checkpoint, still held).
    Checkpoint {
        /// Device index.
        device: u32,
    },
}

/// One record of a space map, in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceMapItem {
    /// A debug word: the batch that follows was written by `txg`, sync pass `sync_pass`.
    Debug {
        /// Action of the batch.
        action: SmAction,
        /// Txg that wrote it.
        txg: u64,
        /// Sync pass that wrote it.
        sync_pass: u16,
    },
    /// A padding word (a two-word entry never straddles a block).
    Padding,
    /// An extent, in absolute device bytes.
    Extent {
        /// Alloc or free.
        action: SmAction,
        /// First byte.
        start: u64,
        /// Length in bytes.
        length: u64,
    },
}

/// A space map: its header and every record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceMapDump {
    /// Which map.
    pub which: SpaceMapWhich,
    /// Object number (0: the map does not exist, e.g. no checkpoint).
    pub object: u64,
    /// First byte of the map's region (device offset).
    pub region_start: u64,
    /// Region size in bytes.
    pub region_size: u64,
    /// Unit shift of offsets and runs.
    pub ashift: u8,
    /// Data block size of the map object.
    pub block_size: u32,
    /// The header (bonus).
    pub header: SpaceMapHeader,
    /// (byte position in the map, record), in log order.
    pub records: Vec<(u64, SpaceMapItem)>,
}

/// The committed state: root object set and the directory.
struct Committed {
    objects: BTreeMap<u64, ObjectRecord>,
    dir: Directory,
}

fn header_of(rec: &ObjectRecord) -> SpaceMapHeader {
    match &rec.bonus {
        Bonus::SpaceMap(h) => **h,
        _ => SpaceMapHeader::default(),
    }
}

fn last_ub(shared: &Shared) -> Result<Uberblock> {
    shared
        .last_ub
        .lock()
        .ok_or_else(|| PoolError::Internal("no committed uberblock".into()))
}

async fn committed(shared: &Shared, ub: Uberblock) -> Result<Committed> {
    let root = ub.root.data().copied().ok_or_else(|| PoolError::Corrupt {
        object: "uberblock".into(),
        offset: 0,
        reason: "the root pointer is a hole".into(),
    })?;
    let meta = decode_root_block(&shared.read_verified(&root, "root block", 0).await?)?;
    let objects = read_objects(shared, &meta).await?;
    let dir_rec = objects
        .get(&DIRECTORY_OBJECT)
        .ok_or_else(|| PoolError::Corrupt {
            object: "root object set".into(),
            offset: 0,
            reason: "no pool directory".into(),
        })?;
    let dir = Directory::decode(
        &read_object_bytes(shared, "pool directory", dir_rec, dir_rec.length).await?,
    )?;
    Ok(Committed { objects, dir })
}

/// The space map object numbers of device `di`'s metaslabs.
async fn ms_objects(shared: &Shared, c: &Committed, di: usize) -> Result<Vec<u64>> {
    let dobj = c
        .dir
        .devices
        .get(di)
        .ok_or_else(|| PoolError::Invalid(format!("no device {di} in the pool")))?;
    read_ms_array(shared, &c.objects, di, dobj.ms_array).await
}

/// Runs `fut` to completion on a private ring (blocking; non-reactor threads).
fn run<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    crate::io::block_on(&super::PoolOptions::default().reactor, fut)?
}

impl Pool {
    /// Syncs (a read-only pool has nothing to sync) and returns the last committed uberblock.
    fn committed_ub(&self) -> Result<Uberblock> {
        self.sync_blocking()?;
        last_ub(self.shared())
    }

    /// The directory as last committed (properties, history, volumes, features). Unlike
    /// [`Pool::directory`] it needs no sync task, so it works on a read-only pool.
    pub fn committed_directory(&self) -> Result<Directory> {
        let ub = self.committed_ub()?;
        let shared = self.shared();
        run(async move { Ok(committed(shared, ub).await?.dir) })
    }

    /// Every metaslab of every device: committed space-map figures and in-core allocator state.
    pub fn metaslabs(&self) -> Result<Vec<MetaslabInfo>> {
        let ub = self.committed_ub()?;
        let shared = self.shared();
        let vdevs = shared.vdevs.read().clone();
        run(async move {
            let c = committed(shared, ub).await?;
            let mut out = Vec::new();
            for v in vdevs.iter().take(c.dir.devices.len()) {
                let sms = ms_objects(shared, &c, v.index as usize).await?;
                for (i, obj) in sms.iter().enumerate() {
                    let index = u64::try_from(i).unwrap_or(u64::MAX);
                    let (start, end) = v.layout.metaslab_range(v.ms_shift, index)?;
                    let header = c.objects.get(obj).map(header_of).unwrap_or_default();
                    let allocated = u64::try_from(header.alloc).unwrap_or(0);
                    let size = end - start;
                    let (allocatable, deferred, max_free, fragmentation, weight) = shared
                        .class
                        .with_metaslab(v.index, i, |m| {
                            (
                                m.free_space(),
                                m.deferred_space(),
                                m.max_free(),
                                m.fragmentation(),
                                m.weight(),
                            )
                        })
                        .unwrap_or_default();
                    out.push(MetaslabInfo {
                        device: v.index,
                        index,
                        offset: start,
                        size,
                        allocated,
                        free: size.saturating_sub(allocated),
                        allocatable,
                        deferred,
                        max_free,
                        fragmentation,
                        weight,
                        sm_object: *obj,
                        sm_length: header.length,
                        histogram: header.histogram.to_vec(),
                    });
                }
            }
            Ok(out)
        })
    }

    /// The header and every record of one space map, as committed (`zdb -mmm`).
    pub fn space_map(&self, which: SpaceMapWhich) -> Result<SpaceMapDump> {
        let device = match which {
            SpaceMapWhich::Metaslab { device, .. } | SpaceMapWhich::Checkpoint { device } => device,
        };
        let ub = self.committed_ub()?;
        let shared = self.shared();
        let vdev = shared
            .vdevs
            .read()
            .get(device as usize)
            .cloned()
            .ok_or_else(|| PoolError::Invalid(format!("no device {device} in the pool")))?;
        run(async move {
            let c = committed(shared, ub).await?;
            let di = device as usize;
            let (object, region_start, region_size) = match which {
                SpaceMapWhich::Metaslab { index, .. } => {
                    let sms = ms_objects(shared, &c, di).await?;
                    let obj = usize::try_from(index)
                        .ok()
                        .and_then(|i| sms.get(i))
                        .copied()
                        .ok_or_else(|| {
                            PoolError::Invalid(format!(
                                "device {device} has {} metaslabs, no metaslab {index}",
                                sms.len()
                            ))
                        })?;
                    let (s, e) = vdev.layout.metaslab_range(vdev.ms_shift, index)?;
                    (obj, s, e - s)
                }
                SpaceMapWhich::Checkpoint { .. } => {
                    let obj = c.dir.devices.get(di).map_or(0, |d| d.checkpoint_sm);
                    (obj, 0, vdev.layout.device_size())
                }
            };
            let mut dump = SpaceMapDump {
                which,
                object,
                region_start,
                region_size,
                ashift: vdev.ashift,
                block_size: 0,
                header: SpaceMapHeader::default(),
                records: Vec::new(),
            };
            if object == 0 {
                return Ok(dump);
            }
            let rec = c.objects.get(&object).ok_or_else(|| PoolError::Corrupt {
                object: format!("space map object {object}"),
                offset: 0,
                reason: "object missing".into(),
            })?;
            dump.block_size = rec.data_block_size;
            dump.header = header_of(rec);
            let name = format!("space map object {object}");
            let bytes = read_object_bytes(shared, &name, rec, dump.header.length).await?;
            let bs = usize::try_from(rec.data_block_size).unwrap_or(8).max(8);
            for (bi, block) in bytes.chunks(bs).enumerate() {
                let base = u64::try_from(bi * bs).unwrap_or(u64::MAX);
                let items = decode_block(block).map_err(|e| PoolError::Corrupt {
                    object: name.clone(),
                    offset: base,
                    reason: e.to_string(),
                })?;
                for item in items {
                    let it = match item.record {
                        SmRecord::Debug(d) => SpaceMapItem::Debug {
                            action: d.action,
                            txg: d.txg,
                            sync_pass: d.sync_pass,
                        },
                        SmRecord::Padding => SpaceMapItem::Padding,
                        SmRecord::Entry(e) => SpaceMapItem::Extent {
                            action: e.action,
                            start: region_start + (e.offset << vdev.ashift),
                            length: e.run << vdev.ashift,
                        },
                    };
                    dump.records.push((base + item.pos, it));
                }
            }
            Ok(dump)
        })
    }
}
