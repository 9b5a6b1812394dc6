//! The state directory: the list of known pools, the control socket of a running `serve`,
//! and the embedded default pool's backing file.
//!
//! Default location: `$RINGPOOL_STATE_DIR`, else `/var/lib/ringpool` for root, else
//! `$XDG_STATE_HOME/ringpool` or `~/.local/state/ringpool`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Name of the file that lists known pools.
const POOLS_FILE: &str = "pools.json";
/// Name of the control socket of a running `serve`.
const CONTROL_SOCKET: &str = "control.sock";

/// What the state directory remembers about one pool: where its devices are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KnownPool {
    pub devices: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(explicit: Option<&Path>) -> Result<StateDir> {
        let root = match explicit {
            Some(p) => p.to_path_buf(),
            None => default_root(),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .with_context(|| format!("cannot create state directory {}", root.display()))?;
        Ok(StateDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn control_socket(&self) -> PathBuf {
        self.root.join(CONTROL_SOCKET)
    }

    /// The unix socket `serve` exports NBD on unless told otherwise.
    pub fn nbd_socket(&self) -> PathBuf {
        self.root.join("nbd.sock")
    }

    /// The known pools, by name.
    pub fn pools(&self) -> Result<BTreeMap<String, KnownPool>> {
        let path = self.root.join(POOLS_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is corrupt", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Remembers (or, with `None`, forgets) a pool. Written atomically: temp file, fsync, rename.
    pub fn set_pool(&self, name: &str, pool: Option<KnownPool>) -> Result<()> {
        let mut pools = self.pools()?;
        match pool {
            Some(p) => {
                pools.insert(name.to_string(), p);
            }
            None => {
                pools.remove(name);
            }
        }
        let path = self.root.join(POOLS_FILE);
        let tmp = self.root.join(format!("{POOLS_FILE}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(&pools)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Restricts a socket created in the state directory to its owner.
    pub fn restrict(path: &Path) -> Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", path.display()))
    }
}

fn default_root() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGPOOL_STATE_DIR") {
        return PathBuf::from(p);
    }
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/ringpool");
    }
    if let Some(p) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(p).join("ringpool");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/ringpool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets_pools() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(Some(dir.path())).unwrap();
        assert!(state.pools().unwrap().is_empty());
        let pool = KnownPool {
            devices: vec![PathBuf::from("/tmp/a.img")],
        };
        state.set_pool("tank", Some(pool.clone())).unwrap();
        assert_eq!(state.pools().unwrap().get("tank"), Some(&pool));
        state.set_pool("tank", None).unwrap();
        assert!(state.pools().unwrap().is_empty());
    }
}
