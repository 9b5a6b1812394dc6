//! Executes a [`Request`] on an open pool. The same code runs in a command that opened the pool
//! itself and in `serve` answering its control socket.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use ringpool_driver::pool::directory::Directory;
use ringpool_driver::pool::inspect::{SpaceMapItem, SpaceMapWhich};
use ringpool_driver::pool::{CheckpointState, DeviceErrors, Pool, PoolHealth, SpaceInfo};
use ringpool_ondisk::space_map::SmAction;
use serde_json::{json, Value};

use crate::request::{Progress, Request};

/// How often a long request reports progress (a bar redraws at about this rate; a control
/// socket client gets a line this often).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Receives notice of volume changes, so `serve` can add or remove NBD exports.
pub trait VolumeHook {
    fn volume_created(&self, pool: &Arc<Pool>, volume: &str);
    fn volume_removed(&self, pool: &str, volume: &str);
}

/// A hook that does nothing (a command's own short-lived pool).
#[derive(Debug)]
pub struct NoHook;

impl VolumeHook for NoHook {
    fn volume_created(&self, _: &Arc<Pool>, _: &str) {}
    fn volume_removed(&self, _: &str, _: &str) {}
}

fn space_json(s: &SpaceInfo) -> Value {
    let cap = s
        .allocated
        .saturating_mul(100)
        .checked_div(s.size)
        .unwrap_or(0);
    json!({
        "size": s.size,
        "allocated": s.allocated,
        "free": s.free,
        "deferred": s.deferred,
        "checkpoint": s.checkpointed,
        "fragmentation": s.fragmentation,
        "capacity": cap,
    })
}

/// How the pool is opened, as the state directory remembers its import.
#[derive(Debug, Clone, Copy, Default)]
pub struct View {
    /// Imported `--readonly` (a command that only reads opens every pool read-only; this is
    /// about the import).
    pub readonly: bool,
    /// A `--rewind-to-checkpoint --readonly` preview: the checkpointed state, read-only.
    pub checkpoint_view: bool,
}

impl View {
    /// How the state directory says the pool was imported.
    pub fn of(kp: &crate::statedir::KnownPool) -> View {
        View {
            readonly: kp.readonly || kp.checkpoint_view,
            checkpoint_view: kp.checkpoint_view,
        }
    }
}

/// The directory: through a sync task on a writable pool (it includes what is not committed
/// yet), from disk on a read-only pool (which runs no sync tasks).
fn directory(pool: &Pool) -> Result<Directory> {
    let dir = if pool.read_only() {
        pool.committed_directory()
    } else {
        pool.directory()
    };
    dir.map_err(|e| anyhow!("cannot read the directory of '{}': {e}", pool.name()))
}

fn errors_json(e: &DeviceErrors) -> Value {
    json!({ "read": e.read, "write": e.write, "checksum": e.checksum })
}

/// The `list`/`status` view of a pool.
pub fn pool_json(pool: &Pool, view: View) -> Value {
    let stats = pool.stats();
    let status = pool.status();
    let health = status.health.name();
    let mut totals = DeviceErrors::default();
    let devices: Vec<Value> = stats
        .devices
        .iter()
        .map(|(index, name, space)| {
            let mut v = space_json(space);
            v["index"] = json!(index);
            v["name"] = json!(name);
            v["health"] = json!(health);
            if let Some(d) = status.devices.iter().find(|d| d.index == *index) {
                totals.read += d.errors.read;
                totals.write += d.errors.write;
                totals.checksum += d.errors.checksum;
                v["guid"] = json!(d.guid.to_string());
                v["errors"] = errors_json(&d.errors);
            }
            v
        })
        .collect();
    let mut v = space_json(&stats.space);
    v["name"] = json!(stats.name);
    v["guid"] = json!(stats.guid.to_string());
    v["health"] = json!(health);
    v["errors"] = errors_json(&totals);
    if let PoolHealth::Suspended { txg, errno, reason } = &status.health {
        v["suspended"] = json!({ "txg": txg, "errno": errno, "reason": reason });
    }
    v["read_only"] = json!(view.readonly);
    v["checkpoint_view"] = json!(view.checkpoint_view);
    v["slop"] = json!(stats.slop);
    v["synced_txg"] = json!(stats.synced_txg);
    v["open_txg"] = json!(stats.open_txg);
    v["devices"] = json!(devices);
    v["checkpoint"] = checkpoint_json(pool);
    // The tree-block cache: a miss is one more device read in front of a data read, so a
    // latency question starts here.
    v["tree_cache"] = json!({
        "entries": stats.cache.entries,
        "bytes": stats.cache.bytes,
        "hits": stats.cache.hits,
        "misses": stats.cache.misses,
    });
    // Writes that waited for a sync to get the space of overwritten blocks back: a pool
    // that counts many runs close to its slop.
    v["space_waits"] = json!(stats.space_waits);
    v
}

fn checkpoint_json(pool: &Pool) -> Value {
    let ck = pool.checkpoint_status();
    let state = match ck.state {
        CheckpointState::None => "none",
        CheckpointState::Exists => "exists",
        CheckpointState::Discarding => "discarding",
    };
    json!({ "state": state, "created": ck.created, "txg": ck.txg, "space": ck.space })
}

fn volumes_json(pool: &Pool) -> Value {
    let vols: Vec<Value> = pool
        .list_volumes()
        .into_iter()
        .map(|v| {
            json!({
                "name": format!("{}/{}", pool.name(), v.name),
                "size": v.size,
                "block_size": v.block_size,
                "object": v.object,
                "created_txg": v.created_txg,
            })
        })
        .collect();
    json!(vols)
}

/// Every property `get all` reports, with its value.
fn properties(pool: &Pool, view: View) -> Result<Vec<(String, Value)>> {
    let v = pool_json(pool, view);
    let mut props = vec![
        ("size".to_string(), v["size"].clone()),
        ("allocated".to_string(), v["allocated"].clone()),
        ("free".to_string(), v["free"].clone()),
        ("checkpoint".to_string(), v["checkpoint"]["space"].clone()),
        ("fragmentation".to_string(), v["fragmentation"].clone()),
        ("capacity".to_string(), v["capacity"].clone()),
        ("health".to_string(), v["health"].clone()),
        ("guid".to_string(), v["guid"].clone()),
        (
            "readonly".to_string(),
            json!(if view.readonly { "on" } else { "off" }),
        ),
    ];
    let dir = directory(pool)?;
    for (k, val) in dir.props {
        props.push((k, json!(val)));
    }
    Ok(props)
}

fn action_name(a: SmAction) -> &'static str {
    match a {
        SmAction::Alloc => "alloc",
        SmAction::Free => "free",
    }
}

fn metaslabs_json(pool: &Pool) -> Result<Value> {
    let names: std::collections::BTreeMap<u32, String> = pool
        .stats()
        .devices
        .into_iter()
        .map(|(i, n, _)| (i, n))
        .collect();
    let ms = pool
        .metaslabs()
        .map_err(|e| anyhow!("cannot inspect '{}': {e}", pool.name()))?;
    Ok(json!(ms
        .iter()
        .map(|m| json!({
            "device": m.device,
            "device_name": names.get(&m.device),
            "index": m.index,
            "offset": m.offset,
            "size": m.size,
            "allocated": m.allocated,
            "free": m.free,
            "allocatable": m.allocatable,
            "deferred": m.deferred,
            "max_free": m.max_free,
            "fragmentation": m.fragmentation,
            "weight": m.weight,
            "spacemap": m.sm_object,
            "spacemap_length": m.sm_length,
            "histogram": m.histogram,
        }))
        .collect::<Vec<_>>()))
}

fn space_map_json(pool: &Pool, device: u32, metaslab: Option<u64>) -> Result<Value> {
    let which = match metaslab {
        Some(index) => SpaceMapWhich::Metaslab { device, index },
        None => SpaceMapWhich::Checkpoint { device },
    };
    let d = pool
        .space_map(which)
        .map_err(|e| anyhow!("cannot inspect '{}': {e}", pool.name()))?;
    let records: Vec<Value> = d
        .records
        .iter()
        .map(|(pos, r)| match *r {
            SpaceMapItem::Debug {
                action,
                txg,
                sync_pass,
            } => json!({ "pos": pos, "type": "debug", "action": action_name(action),
                         "txg": txg, "pass": sync_pass }),
            SpaceMapItem::Padding => json!({ "pos": pos, "type": "padding" }),
            SpaceMapItem::Extent {
                action,
                start,
                length,
            } => json!({ "pos": pos, "type": "entry", "action": action_name(action),
                         "start": start, "length": length }),
        })
        .collect();
    Ok(json!({
        "kind": if metaslab.is_some() { "metaslab" } else { "checkpoint" },
        "device": device,
        "metaslab": metaslab,
        "object": d.object,
        "region_start": d.region_start,
        "region_size": d.region_size,
        "ashift": d.ashift,
        "block_size": d.block_size,
        "length": d.header.length,
        "allocated": d.header.alloc,
        "histogram": d.header.histogram.to_vec(),
        "records": records,
    }))
}

/// Waits for the checkpoint discard to finish, reporting the bytes released so far of what
/// the checkpoint held when the wait began. The pool's own wait runs on a helper thread (it
/// also notices a suspension or a stopped discard); this thread samples the held space.
fn wait_discard(pool: &Pool, progress: &mut dyn FnMut(Progress)) -> Result<()> {
    let total = pool.checkpoint_status().space;
    let waited = std::thread::scope(|s| {
        let waiter = s.spawn(|| pool.wait_discard());
        while !waiter.is_finished() {
            let st = pool.checkpoint_status();
            if st.state == CheckpointState::Discarding {
                progress(Progress {
                    done: total.saturating_sub(st.space),
                    total,
                });
            }
            std::thread::sleep(PROGRESS_EVERY);
        }
        waiter.join()
    });
    match waited {
        Ok(r) => r.map_err(|e| anyhow!("{e}")),
        Err(_) => bail!("the wait for the discard stopped unexpectedly"),
    }
}

/// Verifies the pool, reporting the bytes checked so far of the bytes it expects to check
/// (at most every [`PROGRESS_EVERY`]: the pool reports every block).
fn verify(pool: &Pool, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let name = pool.name();
    let last: Cell<Option<Instant>> = Cell::new(None);
    let sink = RefCell::new(progress);
    let report = pool
        .verify_with_progress(&|p| {
            let now = Instant::now();
            if last
                .get()
                .is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY)
            {
                return;
            }
            last.set(Some(now));
            (*sink.borrow_mut())(Progress {
                done: p.bytes,
                total: p.total_bytes,
            });
        })
        .map_err(|e| anyhow!("cannot verify '{name}': {e}"))?;
    Ok(json!({
        "clean": report.is_clean(),
        "txg": report.txg,
        "blocks": report.blocks,
        "objects": report.objects,
        "referenced_bytes": report.referenced_bytes,
        "allocated_bytes": report.allocated_bytes,
        "checkpoint_bytes": report.checkpoint_bytes,
        "errors": report.errors,
    }))
}

/// Runs `req` on `pool`; a long request (verify, a discard it waits for) reports how far it
/// has come to `progress`.
pub fn execute(
    pool: &Arc<Pool>,
    req: &Request,
    hook: &dyn VolumeHook,
    view: View,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value> {
    let name = pool.name().to_string();
    match req {
        Request::Pools => Ok(json!([name])),
        Request::Status { .. } | Request::List { .. } => Ok(pool_json(pool, view)),
        Request::Get { property, .. } => {
            let props = properties(pool, view)?;
            let wanted: Vec<&str> = property.split(',').map(str::trim).collect();
            for w in &wanted {
                if *w != "all" && !props.iter().any(|(k, _)| k == w) {
                    bail!("bad property list: invalid property '{w}'");
                }
            }
            let chosen: Vec<Value> = props
                .into_iter()
                .filter(|(k, _)| wanted.contains(&"all") || wanted.contains(&k.as_str()))
                .map(|(k, v)| json!({ "name": name, "property": k, "value": v }))
                .collect();
            Ok(json!(chosen))
        }
        Request::Set {
            property, value, ..
        } => {
            pool.set_property(property, value)
                .map_err(|e| anyhow!("cannot set property for '{name}': {e}"))?;
            Ok(json!({}))
        }
        Request::Add { devices, .. } => {
            let paths: Vec<PathBuf> = devices.iter().map(PathBuf::from).collect();
            let engines = ringpool_driver::pool::open_devices(&paths)
                .map_err(|e| anyhow!("cannot add to '{name}': {e}"))?;
            let mut added = Vec::new();
            for engine in engines {
                let index = pool
                    .add_device(engine, None, None)
                    .map_err(|e| anyhow!("cannot add to '{name}': {e}"))?;
                added.push(index);
            }
            Ok(json!({ "added": added }))
        }
        Request::VolumeCreate {
            volume,
            size,
            block_size,
            ..
        } => {
            pool.create_volume(volume, *size, *block_size)
                .map_err(|e| anyhow!("cannot create '{name}/{volume}': {e}"))?;
            hook.volume_created(pool, volume);
            Ok(json!({ "name": format!("{name}/{volume}") }))
        }
        Request::VolumeDestroy { volume, .. } => {
            hook.volume_removed(&name, volume);
            pool.destroy_volume(volume)
                .map_err(|e| anyhow!("cannot destroy '{name}/{volume}': {e}"))?;
            Ok(json!({}))
        }
        Request::VolumeList { .. } => Ok(volumes_json(pool)),
        Request::VolumeResize { volume, size, .. } => {
            pool.resize_volume(volume, *size)
                .map_err(|e| anyhow!("cannot resize '{name}/{volume}': {e}"))?;
            hook.volume_removed(&name, volume);
            hook.volume_created(pool, volume);
            Ok(json!({}))
        }
        Request::History { .. } => {
            let dir = directory(pool)?;
            let rows: Vec<Value> = dir
                .history
                .iter()
                .map(|(time, txg, text)| json!({ "time": time, "txg": txg, "text": text }))
                .collect();
            Ok(json!(rows))
        }
        Request::Verify { .. } => verify(pool, progress),
        Request::Checkpoint { .. } => {
            pool.checkpoint()
                .map_err(|e| anyhow!("cannot checkpoint '{name}': {e}"))?;
            Ok(checkpoint_json(pool))
        }
        Request::DiscardCheckpoint { wait, .. } => {
            pool.discard_checkpoint()
                .map_err(|e| anyhow!("cannot discard checkpoint in '{name}': {e}"))?;
            if *wait {
                wait_discard(pool, progress)
                    .map_err(|e| anyhow!("cannot discard checkpoint in '{name}': {e:#}"))?;
            }
            Ok(checkpoint_json(pool))
        }
        Request::WaitDiscard { .. } => {
            wait_discard(pool, progress).map_err(|e| anyhow!("cannot wait for '{name}': {e:#}"))?;
            Ok(checkpoint_json(pool))
        }
        Request::Metaslabs { .. } => metaslabs_json(pool),
        Request::Reguid { .. } => {
            let guid = pool
                .reguid()
                .map_err(|e| anyhow!("cannot reguid '{name}': {e}"))?;
            Ok(json!({ "guid": guid.to_string() }))
        }
        Request::Clear { .. } => {
            pool.clear_errors();
            Ok(json!({}))
        }
        Request::SpaceMap {
            device, metaslab, ..
        } => space_map_json(pool, *device, *metaslab),
        Request::Export { .. } | Request::Open { .. } => {
            bail!("export and open are handled by the pool's owner")
        }
    }
}
