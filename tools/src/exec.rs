//! Executes a [`Request`] on an open pool. The same code runs in a command that opened the pool
//! itself and in `serve` answering its control socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ringpool_driver::pool::{CheckpointState, Pool, SpaceInfo};
use serde_json::{json, Value};

use crate::request::Request;

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

/// The `list`/`status` view of a pool.
pub fn pool_json(pool: &Pool) -> Value {
    let stats = pool.stats();
    let devices: Vec<Value> = stats
        .devices
        .iter()
        .map(|(index, name, space)| {
            let mut v = space_json(space);
            v["index"] = json!(index);
            v["name"] = json!(name);
            v
        })
        .collect();
    let mut v = space_json(&stats.space);
    v["name"] = json!(stats.name);
    v["guid"] = json!(stats.guid.to_string());
    v["health"] = json!("ONLINE");
    v["read_only"] = json!(pool.read_only());
    v["slop"] = json!(stats.slop);
    v["synced_txg"] = json!(stats.synced_txg);
    v["open_txg"] = json!(stats.open_txg);
    v["devices"] = json!(devices);
    v["checkpoint"] = checkpoint_json(pool);
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
fn properties(pool: &Pool) -> Result<Vec<(String, Value)>> {
    let v = pool_json(pool);
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
            json!(if pool.read_only() { "on" } else { "off" }),
        ),
    ];
    let dir = pool.directory().context("cannot read the pool directory")?;
    for (k, val) in dir.props {
        props.push((k, json!(val)));
    }
    Ok(props)
}

/// Runs `req` on `pool`.
pub fn execute(pool: &Arc<Pool>, req: &Request, hook: &dyn VolumeHook) -> Result<Value> {
    let name = pool.name().to_string();
    match req {
        Request::Pools => Ok(json!([name])),
        Request::Status { .. } | Request::List { .. } => Ok(pool_json(pool)),
        Request::Get { property, .. } => {
            let props = properties(pool)?;
            let chosen: Vec<Value> = props
                .into_iter()
                .filter(|(k, _)| property == "all" || k == property)
                .map(|(k, v)| json!({ "name": name, "property": k, "value": v }))
                .collect();
            if chosen.is_empty() {
                bail!("bad property list: invalid property '{property}'");
            }
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
            let dir = pool.directory().context("cannot read the pool directory")?;
            let rows: Vec<Value> = dir
                .history
                .iter()
                .map(|(time, txg, text)| json!({ "time": time, "txg": txg, "text": text }))
                .collect();
            Ok(json!(rows))
        }
        Request::Verify { .. } => {
            let report = pool
                .verify()
                .map_err(|e| anyhow!("cannot verify '{name}': {e}"))?;
            Ok(json!({ "clean": report.is_clean(), "report": format!("{report:?}") }))
        }
        Request::Checkpoint { .. } => {
            pool.checkpoint()
                .map_err(|e| anyhow!("cannot checkpoint '{name}': {e}"))?;
            Ok(checkpoint_json(pool))
        }
        Request::DiscardCheckpoint { wait, .. } => {
            pool.discard_checkpoint()
                .map_err(|e| anyhow!("cannot discard checkpoint in '{name}': {e}"))?;
            if *wait {
                pool.wait_discard()
                    .map_err(|e| anyhow!("cannot discard checkpoint in '{name}': {e}"))?;
            }
            Ok(checkpoint_json(pool))
        }
        Request::WaitDiscard { .. } => {
            pool.wait_discard()
                .map_err(|e| anyhow!("cannot wait for '{name}': {e}"))?;
            Ok(checkpoint_json(pool))
        }
        Request::Export { .. } => bail!("export is handled by the pool's owner"),
    }
}
