//! Pool health as `zpool status` shows it: whether the pool accepts changes, why it stopped if
//! it did, and the error counters of every device.
//!
//! A sync that fails (a device write or flush error, ENOSPC while allocating metadata, a
//! sync that does not converge) leaves the in-memory allocator and object state half way
//! through a txg: it cannot be retried or rolled back in place. The pool is therefore
//! **suspended** for the rest of this import: no new txg opens, writers and FLUSH get
//! `PoolError::Suspended(errno)`, reads keep working. Everything committed before the failure
//! is on disk; the failed txg is not (its uberblock was never written, or was written only to
//! some labels and is then the newest valid one, which import takes). To resume, export the
//! pool (the export reports the suspension and leaves the labels untouched), fix the device
//! and import it again: import loads the last committed uberblock.

use parking_lot::Mutex;

pub use super::vdev::DeviceErrors;

/// The state of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolHealth {
    /// Accepting reads and writes.
    Online,
    /// A sync failed: changes are refused until the pool is exported and imported again.
    Suspended {
        /// The txg whose sync failed.
        txg: u64,
        /// The errno writers and FLUSH receive.
        errno: i32,
        /// What failed, as the sync thread reported it.
        reason: String,
    },
}

impl PoolHealth {
    /// The HEALTH column: `ONLINE` or `SUSPENDED`.
    pub fn name(&self) -> &'static str {
        match self {
            PoolHealth::Online => "ONLINE",
            PoolHealth::Suspended { .. } => "SUSPENDED",
        }
    }

    /// Whether the pool accepts changes.
    pub fn is_online(&self) -> bool {
        matches!(self, PoolHealth::Online)
    }
}

impl std::fmt::Display for PoolHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolHealth::Online => f.write_str("ONLINE"),
            PoolHealth::Suspended { txg, errno, reason } => {
                write!(
                    f,
                    "SUSPENDED (sync of txg {txg} failed, errno {errno}: {reason})"
                )
            }
        }
    }
}

/// One device as `zpool status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHealth {
    /// Index in the pool's device list.
    pub index: u32,
    /// The engine's name (the path for files and block devices).
    pub name: String,
    /// Device GUID.
    pub guid: u64,
    /// READ / WRITE / CKSUM counters since import (or the last clear).
    pub errors: DeviceErrors,
}

/// The pool's health and its devices' error counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// Pool state.
    pub health: PoolHealth,
    /// Per device, in index order.
    pub devices: Vec<DeviceHealth>,
}

/// Where the sync thread records why it suspended the pool.
#[derive(Debug, Default)]
pub(crate) struct Suspension(Mutex<Option<(u64, i32, String)>>);

impl Suspension {
    /// Records the first failure (later ones are consequences of it).
    pub(crate) fn set(&self, txg: u64, errno: i32, reason: String) {
        let mut g = self.0.lock();
        if g.is_none() {
            *g = Some((txg, errno, reason));
        }
    }

    /// The pool's health given the txg engine's failure state.
    pub(crate) fn health(&self, failed: Option<i32>) -> PoolHealth {
        match (self.0.lock().clone(), failed) {
            (Some((txg, errno, reason)), _) => PoolHealth::Suspended { txg, errno, reason },
            // Failed without a recorded reason: the sync thread died (a panic or its ring).
            (None, Some(errno)) => PoolHealth::Suspended {
                txg: 0,
                errno,
                reason: "the txg sync thread stopped".into(),
            },
            (None, None) => PoolHealth::Online,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_is_the_reason() {
        let s = Suspension::default();
        assert_eq!(s.health(None), PoolHealth::Online);
        s.set(9, libc::ENOSPC, "out of space".into());
        s.set(10, libc::EIO, "later".into());
        let h = s.health(Some(libc::ENOSPC));
        assert_eq!(h.name(), "SUSPENDED");
        assert_eq!(
            h,
            PoolHealth::Suspended {
                txg: 9,
                errno: libc::ENOSPC,
                reason: "out of space".into()
            }
        );
        assert!(h.to_string().contains("txg 9"));
        let dead = Suspension::default().health(Some(libc::EIO));
        assert!(!dead.is_online());
    }
}
