//! Registered (fixed) files: each reactor lazily registers a device's descriptor in its ring's
//! sparse file table the first time a [`crate::io::UringEngine`] op runs there, so data ops
//! skip the per-op file lookup/refcount.
//!
//! A registered file holds a kernel reference to the open file, and the kernel drops that
//! reference asynchronously after the slot is cleared. The exclusive claim therefore lives on a
//! separate descriptor that is never registered (see `Device::claim`), and in addition:
//! * `Device` keeps a [`FileRegistrations`] list of the reactors that registered it; its drop
//!   asks each of them to clear the slot and waits (bounded) for the acknowledgement;
//! * a reactor clears its whole table (synchronously) before its ring is closed.
//!
//! A queued op can never refer to a slot that was cleared and reused: every UringEngine future
//! holds an `Arc<Device>` until its op completes, so the device cannot be dropped meanwhile.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{current_core, Core, Shared};
use crate::io::ops::FileRef;

/// Slots in each ring's sparse file table.
const TABLE_SLOTS: u32 = 256;

/// Per-reactor table state.
#[derive(Debug, Default)]
pub(crate) struct FileTable {
    /// None = not tried yet; Some(false) = registration unavailable.
    enabled: Option<bool>,
    by_device: HashMap<u64, u32>,
    free: Vec<u32>,
}

/// The reactors a device is registered in (lives in the `Device`).
#[derive(Default)]
pub(crate) struct FileRegistrations {
    reactors: Mutex<Vec<Arc<Shared>>>,
}

impl std::fmt::Debug for FileRegistrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegistrations")
            .field("reactors", &self.reactors.lock().len())
            .finish()
    }
}

impl Core {
    /// Slot of device `id` (descriptor `fd`) in this ring, registering it if needed.
    fn fixed_slot(
        self: &std::rc::Rc<Self>,
        id: u64,
        fd: RawFd,
        regs: &FileRegistrations,
    ) -> Option<u32> {
        let mut t = self.files.borrow_mut();
        if let Some(&slot) = t.by_device.get(&id) {
            return Some(slot);
        }
        let driver = self.driver.borrow();
        let submitter = driver.ring().submitter();
        if t.enabled.is_none() {
            let ok = submitter.register_files_sparse(TABLE_SLOTS).is_ok();
            t.enabled = Some(ok);
            if ok {
                t.free = (0..TABLE_SLOTS).rev().collect();
            }
        }
        if t.enabled != Some(true) {
            return None;
        }
        let slot = t.free.pop()?;
        if submitter.register_files_update(slot, &[fd]).is_err() {
            t.free.push(slot);
            return None;
        }
        t.by_device.insert(id, slot);
        regs.reactors.lock().push(Arc::clone(&self.shared));
        Some(slot)
    }

    /// Clear device `id`'s slot in this ring (called on the reactor thread).
    pub(crate) fn unregister_file(&self, id: u64) {
        let mut t = self.files.borrow_mut();
        if let Some(slot) = t.by_device.remove(&id) {
            let driver = self.driver.borrow();
            let _ = driver.ring().submitter().register_files_update(slot, &[-1]);
            t.free.push(slot);
        }
    }

    /// Clear the whole table before the ring closes (ring teardown releases registered files
    /// asynchronously in the kernel; this makes the release synchronous).
    pub(crate) fn unregister_all_files(&self) {
        let mut t = self.files.borrow_mut();
        if t.enabled == Some(true) && !t.by_device.is_empty() {
            let driver = self.driver.borrow();
            let _ = driver.ring().submitter().unregister_files();
        }
        t.by_device.clear();
        t.enabled = Some(false);
    }
}

/// The ring file reference to use for device `id` on the current reactor: a fixed slot when
/// registration works, else the raw descriptor.
pub(crate) fn file_for_device(id: u64, fd: RawFd, regs: &FileRegistrations) -> FileRef {
    let Some(core) = current_core() else {
        return FileRef::Raw(fd);
    };
    match core.fixed_slot(id, fd, regs) {
        Some(slot) => FileRef::Fixed(slot),
        None => FileRef::Raw(fd),
    }
}

impl FileRegistrations {
    /// Remove device `id` from every reactor that registered it.
    ///
    /// On a plain thread this waits (up to 5 s per reactor) for each reactor to acknowledge,
    /// so the exclusive claim is gone when `Device` drop returns. On a reactor thread it only
    /// posts the request to the other reactors (a reactor must never block on another one);
    /// they clear the slot on their next loop iteration.
    pub(crate) fn release(&self, id: u64) {
        let reactors: Vec<Arc<Shared>> = std::mem::take(&mut *self.reactors.lock());
        let on_reactor = current_core().is_some();
        for shared in reactors {
            if let Some(core) = current_core().filter(|c| Arc::ptr_eq(&c.shared, &shared)) {
                core.unregister_file(id);
                continue;
            }
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let job: Box<dyn FnOnce(bool) + Send> = Box::new(move |run| {
                if run {
                    if let Some(core) = current_core() {
                        core.unregister_file(id);
                    }
                }
                let _ = tx.send(());
            });
            match shared.inject(job) {
                Ok(()) if on_reactor => {}
                Ok(()) => {
                    if rx.recv_timeout(Duration::from_secs(5)).is_err() {
                        tracing::warn!(device = id, "reactor did not release a fixed file in 5 s");
                    }
                }
                // The reactor is shutting down; it clears its table before closing the ring.
                Err(job) => job(false),
            }
        }
    }
}
