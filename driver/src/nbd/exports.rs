//! The export registry: names (`POOL/VOLUME`) to backends, changeable while serving.
//!
//! Adding an export makes it visible to new handshakes at once. Removing one hides it from new
//! handshakes and revokes it for connections already using it: their further requests fail
//! with ESHUTDOWN (after which a client must disconnect); requests already running finish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::backend::ExportBackend;
use super::handshake::{ExportCatalog, ExportInfo};

/// Registry errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportsError {
    /// The name is taken.
    #[error("export {0:?} already exists")]
    Exists(String),
    /// The name is empty, too long, or contains NUL.
    #[error("invalid export name {0:?}")]
    InvalidName(String),
}

/// One export as a connection holds it.
#[derive(Debug, Clone)]
pub struct ExportHandle {
    /// Canonical name.
    pub name: Arc<str>,
    /// The backend.
    pub backend: Arc<dyn ExportBackend>,
    /// Exported read-only (by the registry or the backend).
    pub read_only: bool,
    revoked: Arc<AtomicBool>,
}

impl ExportHandle {
    /// True once the export was removed from the registry.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<String, ExportHandle>,
    default: Option<String>,
}

/// The registry. Share it in an `Arc` between the server and whoever manages volumes.
#[derive(Debug, Default)]
pub struct Exports {
    inner: RwLock<Inner>,
}

impl Exports {
    /// An empty registry.
    pub fn new() -> Exports {
        Exports::default()
    }

    /// Adds an export; `read_only` forces read-only even if the backend is writable.
    pub fn add(
        &self,
        name: &str,
        backend: Arc<dyn ExportBackend>,
        read_only: bool,
    ) -> Result<(), ExportsError> {
        if name.is_empty() || name.len() > super::proto::MAX_STRING_LEN || name.contains('\0') {
            return Err(ExportsError::InvalidName(name.to_string()));
        }
        let mut g = self.inner.write();
        if g.map.contains_key(name) {
            return Err(ExportsError::Exists(name.to_string()));
        }
        let read_only = read_only || backend.read_only();
        let h = ExportHandle {
            name: Arc::from(name),
            backend,
            read_only,
            revoked: Arc::new(AtomicBool::new(false)),
        };
        g.map.insert(name.to_string(), h);
        tracing::info!(export = name, read_only, "export added");
        Ok(())
    }

    /// Removes an export and revokes it for connected clients. Returns its backend.
    pub fn remove(&self, name: &str) -> Option<Arc<dyn ExportBackend>> {
        let mut g = self.inner.write();
        let h = g.map.remove(name)?;
        if g.default.as_deref() == Some(name) {
            g.default = None;
        }
        h.revoked.store(true, Ordering::Release);
        tracing::info!(export = name, "export removed");
        Some(h.backend)
    }

    /// The export named `name` (`""`: the default export, or the only one if there is one).
    pub fn get(&self, name: &str) -> Option<ExportHandle> {
        let g = self.inner.read();
        if name.is_empty() {
            if let Some(d) = &g.default {
                return g.map.get(d).cloned();
            }
            if g.map.len() == 1 {
                return g.map.values().next().cloned();
            }
            return None;
        }
        g.map.get(name).cloned()
    }

    /// Names of every export, sorted.
    pub fn names(&self) -> Vec<String> {
        self.inner.read().map.keys().cloned().collect()
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.inner.read().map.len()
    }

    /// True when there is no export.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Chooses the export served for the empty name (`None`: only when there is exactly one).
    pub fn set_default(&self, name: Option<&str>) {
        self.inner.write().default = name.map(str::to_string);
    }

    /// What a handshake tells a client about `h`, with READ/WRITE payloads capped at
    /// `max_payload`.
    pub fn info(h: &ExportHandle, max_payload: u32) -> ExportInfo {
        let b = &h.backend;
        let min_block = b.min_block_size().clamp(1, 64 * 1024);
        let min_block = if min_block.is_power_of_two() {
            min_block
        } else {
            min_block.next_power_of_two()
        };
        let preferred = b.block_size().max(min_block).max(512);
        let preferred = if preferred.is_power_of_two() {
            preferred
        } else {
            preferred.next_power_of_two()
        };
        ExportInfo {
            name: h.name.to_string(),
            description: b.description(),
            size: b.size(),
            read_only: h.read_only,
            min_block,
            preferred_block: preferred,
            max_payload: max_payload.max(preferred),
            rotational: b.rotational(),
            multi_conn: b.multi_conn(),
        }
    }
}

/// The registry as the handshake sees it from one server: payload limit and shutdown state.
#[derive(Debug)]
pub(crate) struct Catalog<'a> {
    pub(crate) exports: &'a Exports,
    pub(crate) max_payload: u32,
    pub(crate) shutting_down: bool,
}

impl ExportCatalog for Catalog<'_> {
    type Export = ExportHandle;

    fn lookup(&self, name: &str) -> Option<(ExportInfo, ExportHandle)> {
        let h = self.exports.get(name)?;
        Some((Exports::info(&h, self.max_payload), h))
    }

    fn list(&self) -> Vec<(String, String)> {
        let g = self.exports.inner.read();
        g.map
            .iter()
            .map(|(n, h)| (n.clone(), h.backend.description()))
            .collect()
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down
    }
}
