//! The allocator's own, plain space-map record.
//!
//! The allocator is pure in-memory: `sync` hands back what must be appended to each metaslab's
//! space map (and to each device's checkpoint space map) as these records; the pool converts them
//! to the on-disk encoding. Loading replays the same records. Offsets are absolute byte offsets
//! on the device, lengths are bytes; both are multiples of the device's 2^ashift.

/// ALLOC or FREE, as in a ZFS space map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmAction {
    /// The range became allocated.
    Alloc,
    /// The range became free.
    Free,
}

/// One space-map record: `action` applied to `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmRecord {
    /// ALLOC or FREE.
    pub action: SmAction,
    /// First byte (absolute device offset).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl SmRecord {
    /// An ALLOC record.
    pub fn alloc(start: u64, len: u64) -> Self {
        Self {
            action: SmAction::Alloc,
            start,
            len,
        }
    }

    /// A FREE record.
    pub fn free(start: u64, len: u64) -> Self {
        Self {
            action: SmAction::Free,
            start,
            len,
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}
