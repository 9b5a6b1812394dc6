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
/// Name of the file that lists the directories `import` searches by default.
const SEARCH_FILE: &str = "search.json";
/// Name of the control socket of a running `serve`.
const CONTROL_SOCKET: &str = "control.sock";

/// What the state directory remembers about one pool: where its devices are, and how it was
/// imported (every command and `serve` open it the same way until it is exported).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KnownPool {
    pub devices: Vec<PathBuf>,
    /// Imported with `--readonly`: opened read-only, volumes exported read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// Imported with `--rewind-to-checkpoint --readonly`: a preview of the checkpointed state
    /// (nothing is written, the checkpoint is kept; export and import return to the present).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint_view: bool,
}

impl KnownPool {
    /// A pool imported read-write.
    pub fn new(devices: Vec<PathBuf>) -> KnownPool {
        KnownPool {
            devices,
            ..Default::default()
        }
    }
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
        if let Some(p) = pools.get(name) {
            let mut dirs = self.search_dirs()?;
            for d in p.devices.iter().filter_map(|d| d.parent()) {
                if !dirs.iter().any(|x| x == d) {
                    dirs.push(d.to_path_buf());
                }
            }
            self.write_atomic(SEARCH_FILE, &serde_json::to_vec_pretty(&dirs)?)?;
        }
        self.write_atomic(POOLS_FILE, &serde_json::to_vec_pretty(&pools)?)
    }

    /// Where `import` without `-d` looks for devices: the state directory and every directory
    /// that ever held a device of a known pool (so `export` then `import` finds the pool again).
    pub fn search_dirs(&self) -> Result<Vec<PathBuf>> {
        let path = self.root.join(SEARCH_FILE);
        let mut dirs: Vec<PathBuf> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if !dirs.iter().any(|d| d == &self.root) {
            dirs.insert(0, self.root.clone());
        }
        Ok(dirs)
    }

    /// Writes a file of the state directory atomically: temp file, fsync, rename.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!("{name}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(bytes)?;
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
            readonly: true,
            ..KnownPool::new(vec![PathBuf::from("/tmp/a.img")])
        };
        state.set_pool("tank", Some(pool.clone())).unwrap();
        assert_eq!(state.pools().unwrap().get("tank"), Some(&pool));
        let text = std::fs::read_to_string(dir.path().join(POOLS_FILE)).unwrap();
        assert!(
            !text.contains("checkpoint_view"),
            "false flags are omitted: {text}"
        );
        state.set_pool("tank", None).unwrap();
        assert!(state.pools().unwrap().is_empty());
        // Forgotten pools' directories stay searchable.
        let dirs = state.search_dirs().unwrap();
        assert_eq!(dirs, vec![dir.path().to_path_buf(), PathBuf::from("/tmp")]);
    }
}
