//! Commands that open a pool in this process (no `serve` holds it): create, import, export,
//! one-shot requests, wait, inspect.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ringpool_driver::pool::{CreateOptions, ImportOptions, Pool};
use ringpool_ondisk::label::{LabelHeader, PoolState};
use ringpool_ondisk::layout::{
    DeviceLayout, LABEL_COUNT, LABEL_HEADER_AREA_SIZE, LABEL_HEADER_OFFSET, LABEL_RING_OFFSET,
    LABEL_RING_SIZE, MIN_ASHIFT,
};
use ringpool_ondisk::uberblock::Uberblock;
use serde_json::{json, Value};

use crate::cli::{InspectArgs, InspectWhat};
use crate::exec::{self, NoHook, View};
use crate::progress::{Activity, Reporter};
use crate::request::{Progress, Request, Response};
use crate::size::parse_size;
use crate::statedir::{KnownPool, StateDir};

/// Creates missing device files sparse with `size`; absolute paths for the state directory.
pub fn prepare_devices(devices: &[PathBuf], size: Option<&str>) -> Result<Vec<PathBuf>> {
    let size = size.map(parse_size).transpose()?;
    let mut out = Vec::new();
    for dev in devices {
        if !dev.exists() {
            let Some(size) = size else {
                bail!(
                    "cannot open '{}': no such device or file (use --size to create a sparse file)",
                    dev.display()
                );
            };
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dev)
                .with_context(|| format!("cannot create '{}'", dev.display()))?;
            file.set_len(size)
                .with_context(|| format!("cannot size '{}'", dev.display()))?;
        }
        out.push(
            fs::canonicalize(dev).with_context(|| format!("cannot resolve '{}'", dev.display()))?,
        );
    }
    Ok(out)
}

fn parse_create_options(options: &[String]) -> Result<CreateOptions> {
    let mut opts = CreateOptions::default();
    for o in options {
        let Some((k, v)) = o.split_once('=') else {
            bail!("missing '=' for property=value argument '{o}'");
        };
        match k {
            "ashift" => {
                let a: u8 = v.parse().with_context(|| format!("invalid ashift '{v}'"))?;
                opts.ashift = Some(a);
            }
            "metaslab_size" => {
                let s = parse_size(v)?;
                if !s.is_power_of_two() {
                    bail!("metaslab_size must be a power of two");
                }
                let shift =
                    u8::try_from(s.trailing_zeros()).map_err(|_| anyhow!("bad metaslab_size"))?;
                opts.ms_shift = Some(shift);
            }
            _ => bail!("property '{k}' is not a valid pool property at creation"),
        }
    }
    Ok(opts)
}

pub fn create(
    state: &StateDir,
    name: &str,
    devices: &[PathBuf],
    options: &[String],
    size: Option<&str>,
    force: bool,
) -> Result<()> {
    if state.pools()?.contains_key(name) {
        bail!("cannot create '{name}': pool already exists");
    }
    let opts = parse_create_options(options)?;
    let devices = prepare_devices(devices, size)?;
    if !force {
        for d in &devices {
            if let Some(h) = read_labels(d)?.into_iter().flatten().next() {
                bail!(
                    "cannot create '{name}': {} is part of pool '{}' (use -f to overwrite)",
                    d.display(),
                    h.pool_name
                );
            }
        }
    }
    let pool = Pool::create_paths(name, &devices, &opts)
        .map_err(|e| anyhow!("cannot create '{name}': {e}"))?;
    pool.export()
        .map_err(|e| anyhow!("cannot create '{name}': {e}"))?;
    state.set_pool(name, Some(KnownPool::new(devices)))?;
    Ok(())
}

/// Refuses devices that hold a label of a pool (this one or another): adding them would
/// destroy that pool (zpool's "is part of pool" check).
pub fn check_unused(pool: &str, devices: &[PathBuf]) -> Result<()> {
    for d in devices {
        if let Some(h) = read_labels(d)?.into_iter().flatten().next() {
            bail!(
                "cannot add to '{pool}': {} is part of pool '{}'",
                d.display(),
                h.pool_name
            );
        }
    }
    Ok(())
}

pub fn remember_added(state: &StateDir, name: &str, added: &[PathBuf]) -> Result<()> {
    let mut pools = state.pools()?;
    if let Some(p) = pools.get_mut(name) {
        p.devices.extend(added.iter().cloned());
        let p = p.clone();
        state.set_pool(name, Some(p))?;
    }
    Ok(())
}

/// How a known pool is opened: as it was imported (read-only, or the read-only checkpoint
/// preview), and read-only anyway when the caller changes nothing.
pub fn import_options(kp: &KnownPool, name: &str, read_only: bool) -> ImportOptions {
    ImportOptions {
        name: Some(name.to_string()),
        read_only: read_only || kp.readonly || kp.checkpoint_view,
        rewind_to_checkpoint: kp.checkpoint_view,
        ..Default::default()
    }
}

fn open(state: &StateDir, name: &str, read_only: bool) -> Result<(Pool, View)> {
    let known = state.pools()?;
    let Some(kp) = known.get(name) else {
        bail!("cannot open '{name}': no such pool");
    };
    let opts = import_options(kp, name, read_only);
    let pool =
        Pool::import_paths(&kp.devices, &opts).map_err(|e| anyhow!("cannot open '{name}': {e}"))?;
    let view = View::of(kp);
    Ok((pool, view))
}

/// Requests that change nothing open the pool read-only: a `status` writes no uberblock.
/// (`get` and `history` read the directory through a sync task on a writable pool, which also
/// logs the open in the history; read-only they read it from disk.)
fn is_read_only(req: &Request) -> bool {
    matches!(
        req,
        Request::Status { .. }
            | Request::List { .. }
            | Request::VolumeList { .. }
            | Request::Verify { .. }
            | Request::Metaslabs { .. }
            | Request::SpaceMap { .. }
    )
}

/// Runs `req` on a pool opened here, then exports it again.
pub fn execute(
    state: &StateDir,
    req: &Request,
    progress: &mut dyn FnMut(Progress),
) -> Result<Response> {
    let Some(name) = req.pool() else {
        return Ok(Response::Ok {
            value: json!(state.pools()?.into_keys().collect::<Vec<_>>()),
        });
    };
    if matches!(req, Request::Open { .. }) {
        // Nobody serves: the next command opens the pool itself.
        return Ok(Response::Ok { value: json!({}) });
    }
    let (pool, view) = open(state, name, is_read_only(req))?;
    let pool = Arc::new(pool);
    let result = exec::execute(&pool, req, &NoHook, view, progress);
    let pool = Arc::try_unwrap(pool).map_err(|_| anyhow!("pool '{name}' still in use"))?;
    pool.export()
        .map_err(|e| anyhow!("cannot export '{name}': {e}"))?;
    Ok(match result {
        Ok(value) => Response::Ok { value },
        Err(e) => Response::Error {
            message: format!("{e:#}"),
        },
    })
}

pub fn export(state: &StateDir, name: &str) -> Result<()> {
    let (pool, _) = open(state, name, false)?;
    pool.export()
        .map_err(|e| anyhow!("cannot export '{name}': {e}"))
}

/// Device files in the search directories (by default the state directory's search list).
fn candidates(state: &StateDir, dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let explicit = !dirs.is_empty();
    let dirs = if explicit {
        dirs.to_vec()
    } else {
        state.search_dirs()?
    };
    let mut out = Vec::new();
    for d in &dirs {
        let found = match ringpool_driver::pool::scan_dir(d) {
            Ok(found) => found,
            // A remembered directory that is gone is no error; a named one is.
            Err(_) if !explicit => continue,
            Err(e) => bail!("cannot search '{}': {e}", d.display()),
        };
        for f in found {
            let f = fs::canonicalize(&f).unwrap_or(f);
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// An importable pool found on devices: its newest label, and its devices found (path and
/// device GUID).
struct Found {
    header: LabelHeader,
    devices: Vec<(PathBuf, u64)>,
}

impl Found {
    /// GUIDs of the pool's devices that were not found.
    fn missing(&self) -> Vec<u64> {
        self.header
            .devices
            .iter()
            .map(|d| d.guid)
            .filter(|g| !self.devices.iter().any(|(_, found)| found == g))
            .collect()
    }

    fn state_word(&self) -> &'static str {
        if self.missing().is_empty() {
            "ONLINE"
        } else {
            "UNAVAIL"
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.devices.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// Groups `devices` by the pool (GUID) their newest label names: two pools of the same name
/// are listed apart, as zpool does.
fn find_pools(devices: &[PathBuf]) -> BTreeMap<u64, Found> {
    let mut pools: BTreeMap<u64, Found> = BTreeMap::new();
    for d in devices {
        let Some(h) = read_labels(d)
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .max_by_key(|h| h.config_txg)
        else {
            continue;
        };
        let f = pools.entry(h.pool_guid).or_insert_with(|| Found {
            header: h.clone(),
            devices: Vec::new(),
        });
        f.devices.push((d.clone(), h.device_guid));
        if h.config_txg > f.header.config_txg {
            f.header = h;
        }
    }
    pools
}

/// `import` without a pool: zpool's listing of what could be imported.
fn list_importable(state: &StateDir, pools: &BTreeMap<u64, Found>, json: bool) -> Result<()> {
    let known = state.pools()?;
    let importable: Vec<&Found> = pools
        .values()
        .filter(|f| !known.contains_key(&f.header.pool_name))
        .collect();
    if json {
        let list: Vec<Value> = importable
            .iter()
            .map(|f| {
                json!({
                    "name": f.header.pool_name,
                    "guid": f.header.pool_guid.to_string(),
                    "state": f.state_word(),
                    "missing_devices": f.missing().len(),
                    "missing_guids": f.missing().iter().map(u64::to_string).collect::<Vec<_>>(),
                    "last_state": format!("{:?}", f.header.state),
                    "host": f.header.host.hostname,
                    "devices": f.devices.iter().map(|(d, _)| d.display().to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if importable.is_empty() {
        println!("no pools available to import");
    }
    for f in importable {
        let name = &f.header.pool_name;
        let missing = f.missing();
        let state_word = f.state_word();
        println!(
            "   pool: {name}\n     id: {}\n  state: {state_word}",
            f.header.pool_guid
        );
        if !missing.is_empty() {
            println!(
                " status: {} device(s) of the pool are missing.\n action: The pool cannot be \
                 imported. Attach the missing devices and try again (-d DIR).",
                missing.len()
            );
        } else if f.header.state == PoolState::Active {
            println!(
                " status: The pool was last opened by host '{}' (pid {}) and not exported.\n action: The pool can be imported if that process is gone; otherwise use -f.",
                f.header.host.hostname, f.header.host.pid
            );
        } else {
            println!(" action: The pool can be imported using its name or numeric identifier.");
        }
        // zpool's config block: the pool, then its devices indented by two, in a NAME column
        // as wide as the longest entry (at least 10) followed by the STATE; a missing device
        // shows its GUID.
        let mut rows: Vec<(String, &str)> = vec![(name.clone(), state_word)];
        rows.extend(
            f.devices
                .iter()
                .map(|(d, _)| (format!("  {}", d.display()), "ONLINE")),
        );
        rows.extend(missing.iter().map(|g| (format!("  {g}"), "UNAVAIL")));
        let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(10) + 2;
        println!(" config:\n");
        for (n, st) in rows {
            println!("\t{n:<width$}{st}");
        }
        println!();
    }
    Ok(())
}

/// What `import` was asked.
#[derive(Debug, Clone, Default)]
pub struct ImportRequest<'a> {
    pub dirs: &'a [PathBuf],
    pub name: Option<&'a str>,
    pub rewind_to_checkpoint: bool,
    pub readonly: bool,
    pub recover: bool,
    pub force: bool,
    pub json: bool,
}

/// Imports a pool: opens it once (replaying, rewinding to the checkpoint or recovering as
/// asked), exports it again and records it in the state directory so that every command and
/// `serve` open it the same way. `--readonly` (with or without `--rewind-to-checkpoint`)
/// writes nothing and is remembered, so the pool stays a read-only view until exported.
/// Returns the pool's name when one was imported.
pub fn import(state: &StateDir, req: &ImportRequest<'_>) -> Result<Option<String>> {
    let devices = candidates(state, req.dirs)?;
    let pools = find_pools(&devices);
    let Some(name) = req.name else {
        list_importable(state, &pools, req.json)?;
        return Ok(None);
    };
    // Accept the numeric identifier as well as the name.
    let by_name: Vec<&Found> = pools
        .values()
        .filter(|f| f.header.pool_name == name)
        .collect();
    let found = match by_name.as_slice() {
        [one] => *one,
        [] => match pools
            .values()
            .find(|f| f.header.pool_guid.to_string() == name)
        {
            Some(f) => f,
            None => bail!("cannot import '{name}': no such pool available"),
        },
        _ => bail!(
            "cannot import '{name}': more than one matching pool\nimport by numeric ID instead"
        ),
    };
    let name = found.header.pool_name.clone();
    if state.pools()?.contains_key(&name) {
        bail!("cannot import '{name}': a pool with that name already exists");
    }
    let opts = ImportOptions {
        name: Some(name.clone()),
        read_only: req.readonly,
        rewind: req.recover,
        rewind_to_checkpoint: req.rewind_to_checkpoint,
        force: req.force,
        ..Default::default()
    };
    let pool = Pool::import_paths(&found.paths(), &opts)
        .map_err(|e| anyhow!("cannot import '{name}': {e}"))?;
    let at = pool
        .last_uberblock()
        .filter(|u| u.checkpoint_txg > 0)
        .map_or(String::new(), |u| format!(" (txg {})", u.checkpoint_txg));
    pool.export()
        .map_err(|e| anyhow!("cannot import '{name}': {e}"))?;
    let checkpoint_view = req.rewind_to_checkpoint && req.readonly;
    state.set_pool(
        &name,
        Some(KnownPool {
            readonly: req.readonly,
            checkpoint_view,
            ..KnownPool::new(found.paths())
        }),
    )?;
    if checkpoint_view {
        println!(
            "pool '{name}' imported read-only at its checkpoint{at}: nothing is written and \
             the checkpoint is kept.\n'ringpool export {name}' then 'ringpool import {name}' returns \
             to the current state; 'ringpool import --rewind-to-checkpoint {name}' after the export \
             rewinds for good."
        );
    } else if req.rewind_to_checkpoint {
        println!("pool '{name}' rewound to its checkpoint{at}; the checkpoint is gone");
    } else if req.readonly {
        println!("pool '{name}' imported read-only");
    }
    Ok(Some(name))
}

/// Polls the pool's status (through `serve`) until no checkpoint is being discarded, showing
/// the bytes released of what the checkpoint held when the wait began.
pub fn wait_discard(pool: &str, status: impl Fn(&str) -> Result<Value>) -> Result<()> {
    let mut reporter = Reporter::new(Activity::Discard, pool);
    let mut total = None;
    let result = loop {
        let v = match status(pool) {
            Ok(v) => v,
            Err(e) => break Err(e),
        };
        let ck = &v["checkpoint"];
        if ck["state"].as_str() != Some("discarding") {
            break Ok(());
        }
        let remaining = ck["space"].as_u64().unwrap_or(0);
        let total = *total.get_or_insert(remaining);
        reporter.update(Progress {
            done: total.saturating_sub(remaining),
            total,
        });
        std::thread::sleep(Duration::from_millis(200));
    };
    reporter.finish();
    result
}

/// Reads the four labels of a device with plain reads (no exclusive open: inspection only).
fn read_labels(path: &Path) -> Result<Vec<Option<LabelHeader>>> {
    Ok(read_label_areas(path)?
        .into_iter()
        .map(|area| area.and_then(|(_, header, _)| header))
        .collect())
}

type LabelArea = (u64, Option<LabelHeader>, Vec<u8>);

fn read_label_areas(path: &Path) -> Result<Vec<Option<LabelArea>>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    let size = device_size(&file)?;
    let Ok(layout) = DeviceLayout::new(size, MIN_ASHIFT) else {
        return Ok(vec![None; LABEL_COUNT]);
    };
    let mut out = Vec::new();
    for off in layout.label_offsets().iter() {
        let mut header = vec![0u8; LABEL_HEADER_AREA_SIZE];
        let mut ring = vec![0u8; usize::try_from(LABEL_RING_SIZE).unwrap_or(0)];
        let ok = file
            .read_exact_at(&mut header, off + LABEL_HEADER_OFFSET)
            .is_ok()
            && file
                .read_exact_at(&mut ring, off + LABEL_RING_OFFSET)
                .is_ok();
        if !ok {
            out.push(None);
            continue;
        }
        out.push(Some((*off, LabelHeader::decode(&header).ok(), ring)));
    }
    Ok(out)
}

fn device_size(file: &fs::File) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    Ok(f.seek(SeekFrom::End(0))?)
}

/// Opens the pool found on `devices` read-only (no state directory: `inspect --device`, the
/// pool's `zdb -e`), runs `req` on it and closes it.
pub fn execute_on_devices(devices: &[PathBuf], name: Option<&str>, req: &Request) -> Result<Value> {
    let opts = ImportOptions {
        name: name.map(str::to_string),
        read_only: true,
        ..Default::default()
    };
    let what = name.unwrap_or("the pool on the devices");
    let pool = Arc::new(
        Pool::import_paths(devices, &opts).map_err(|e| anyhow!("cannot open '{what}': {e}"))?,
    );
    let result = exec::execute(&pool, req, &NoHook, View::default(), &mut |_| {});
    if let Ok(p) = Arc::try_unwrap(pool) {
        p.export()
            .map_err(|e| anyhow!("cannot close '{what}': {e}"))?;
    }
    result
}

/// `inspect labels|uberblocks`: the four labels of every device and their uberblock rings,
/// read with plain reads (works while the pool is imported, exported or damaged).
pub fn inspect_labels(state: &StateDir, args: &InspectArgs) -> Result<()> {
    let devices: Vec<PathBuf> = if !args.device.is_empty() {
        args.device.clone()
    } else if let Some(pool) = &args.pool {
        let known = state.pools()?;
        known
            .get(pool)
            .map(|k| k.devices.clone())
            .ok_or_else(|| anyhow!("cannot open '{pool}': no such pool"))?
    } else {
        bail!("inspect needs a pool or --device");
    };
    let mut report = Vec::new();
    for dev in &devices {
        let areas = read_label_areas(dev)?;
        let mut labels = Vec::new();
        for (index, area) in areas.into_iter().enumerate() {
            let Some((offset, header, ring)) = area else {
                labels.push(json!({ "index": index, "error": "unreadable" }));
                continue;
            };
            let Some(h) = header else {
                labels.push(
                    json!({ "index": index, "offset": offset, "error": "no valid label header" }),
                );
                continue;
            };
            let slot = ringpool_ondisk::layout::uberblock_slot_size(h.ashift).unwrap_or(1024);
            let ubs: Vec<Value> = ring
                .chunks_exact(slot)
                .enumerate()
                .filter_map(|(i, s)| Uberblock::decode(s).ok().map(|u| (i, u)))
                .filter(|(_, u)| u.pool_guid == h.pool_guid)
                .map(|(i, u)| {
                    json!({
                        "slot": i, "txg": u.txg, "timestamp": u.timestamp,
                        "checkpoint_txg": u.checkpoint_txg, "guid_sum": u.guid_sum.to_string(),
                        "root": format!("{:?}", u.root),
                    })
                })
                .collect();
            labels.push(json!({
                "index": index, "offset": offset, "pool": h.pool_name, "pool_guid": h.pool_guid.to_string(),
                "device_index": h.device_index, "device_guid": h.device_guid.to_string(),
                "ashift": h.ashift, "ms_shift": h.ms_shift, "state": format!("{:?}", h.state),
                "host": h.host.hostname, "config_txg": h.config_txg,
                "devices": h.devices.iter().map(|d| json!({"guid": d.guid.to_string(), "size": d.size})).collect::<Vec<_>>(),
                "uberblocks": ubs,
            }));
        }
        report.push(json!({ "device": dev.display().to_string(), "labels": labels }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for dev in &report {
        println!("device {}", dev["device"].as_str().unwrap_or("?"));
        for l in dev["labels"].as_array().into_iter().flatten() {
            if let Some(err) = l["error"].as_str() {
                println!("  label {}: {err}", l["index"]);
                continue;
            }
            println!(
                "  label {} @{}: pool '{}' guid {} device {} ashift {} ms_shift {} state {} host {} config_txg {}",
                l["index"], l["offset"], l["pool"].as_str().unwrap_or(""), l["pool_guid"].as_str().unwrap_or(""),
                l["device_index"], l["ashift"], l["ms_shift"], l["state"].as_str().unwrap_or(""),
                l["host"].as_str().unwrap_or(""), l["config_txg"]
            );
            if args.what == InspectWhat::Uberblocks {
                for u in l["uberblocks"].as_array().into_iter().flatten() {
                    println!(
                        "    slot {:>4} txg {:>8} checkpoint_txg {} time {}",
                        u["slot"], u["txg"], u["checkpoint_txg"], u["timestamp"]
                    );
                }
            } else {
                let n = l["uberblocks"].as_array().map_or(0, Vec::len);
                let newest = l["uberblocks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|u| u["txg"].as_u64())
                    .max();
                println!(
                    "    {n} valid uberblocks, newest txg {}",
                    newest.map_or("-".into(), |t| t.to_string())
                );
            }
        }
    }
    Ok(())
}
