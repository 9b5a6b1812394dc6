//! `ringpool serve`: imports pools, exports every volume over NBD on the per-core reactors,
//! answers the control socket, and on SIGINT or SIGTERM drains, syncs and exports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use parking_lot::Mutex;
use ringpool_driver::io::{ReactorConfig, ReactorSet};
use ringpool_driver::nbd::{ExportBackend, Exports, NbdServer, NbdServerConfig, TlsConfig};
use ringpool_driver::pool::{Pool, PoolOptions};
use serde_json::json;

use crate::cli::{ServeArgs, TlsMode};
use crate::cpu_latency::{self, CpuLatencyRequest};
use crate::exec::{self, View, VolumeHook};
use crate::request::{Progress, Request, Response};
use crate::statedir::{KnownPool, StateDir};
use crate::{control, local};

/// The embedded default: a pool `demo` on a sparse file with a volume `demo/vol0`.
const DEMO_POOL: &str = "demo";
const DEMO_FILE_SIZE: &str = "4G";
const DEMO_VOLUME_SIZE: u64 = 1 << 30;

/// The pools `serve` holds and the exports it publishes.
struct Served {
    pools: Mutex<BTreeMap<String, Arc<Pool>>>,
    /// How each pool was imported (a read-only checkpoint preview shows so in `status`).
    views: Mutex<BTreeMap<String, View>>,
    exports: Arc<Exports>,
    read_only: bool,
    state: StateDir,
    shards: usize,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("pools", &self.pools.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl VolumeHook for Served {
    fn volume_created(&self, pool: &Arc<Pool>, volume: &str) {
        if let Err(e) = publish(&self.exports, pool, volume, self.read_only) {
            tracing::warn!("cannot export {}/{volume}: {e:#}", pool.name());
        }
    }

    fn volume_removed(&self, pool: &str, volume: &str) {
        self.exports.remove(&format!("{pool}/{volume}"));
    }
}

/// Exports a volume over NBD; read-only when serve was asked so or the pool is read-only.
fn publish(exports: &Exports, pool: &Arc<Pool>, volume: &str, read_only: bool) -> Result<()> {
    let vol = pool.open_volume(volume).map_err(|e| anyhow!("{e}"))?;
    let backend: Arc<dyn ExportBackend> = Arc::new(vol);
    exports
        .add(
            &format!("{}/{volume}", pool.name()),
            backend,
            read_only || pool.read_only(),
        )
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

impl Served {
    fn handle(&self, req: Request, progress: &mut dyn FnMut(Progress)) -> Response {
        let result = match &req {
            Request::Pools => Ok(json!(self.pools.lock().keys().cloned().collect::<Vec<_>>())),
            Request::Export { pool } => self.export(pool).map(|()| json!({})),
            Request::Open { pool } => self.open(pool).map(|()| json!({})),
            Request::Clear { pool } => self.clear(pool),
            other => {
                let name = other.pool().unwrap_or_default().to_string();
                let pool = self.pools.lock().get(&name).cloned();
                let view = self.views.lock().get(&name).copied().unwrap_or_default();
                match pool {
                    Some(p) => exec::execute(&p, other, self, view, progress),
                    None => Err(anyhow!("cannot open '{name}': no such pool")),
                }
            }
        };
        match result {
            Ok(value) => Response::Ok { value },
            Err(e) => Response::Error {
                message: format!("{e:#}"),
            },
        }
    }

    /// Opens a pool of the state directory and exports its volumes (at start, and when
    /// `create` or `import` tell a running serve about a new pool).
    fn open(&self, name: &str) -> Result<()> {
        if self.pools.lock().contains_key(name) {
            return Ok(());
        }
        let known = self.state.pools()?;
        let Some(kp) = known.get(name) else {
            bail!("cannot open '{name}': no such pool");
        };
        let mut opts = local::import_options(kp, name, false);
        opts.pool = PoolOptions {
            shards: self.shards,
            ..Default::default()
        };
        let pool = Arc::new(
            Pool::import_paths(&kp.devices, &opts)
                .map_err(|e| anyhow!("cannot open '{name}': {e}"))?,
        );
        for vol in pool.list_volumes() {
            publish(&self.exports, &pool, &vol.name, self.read_only)?;
        }
        let view = View::of(kp);
        self.views.lock().insert(name.to_string(), view);
        self.pools.lock().insert(name.to_string(), pool);
        Ok(())
    }

    /// Stops serving `name`: its exports go first (connections finish their requests), then
    /// the pool syncs and its labels are marked exported.
    fn export(&self, name: &str) -> Result<()> {
        let Some(pool) = self.pools.lock().remove(name) else {
            bail!("cannot export '{name}': no such pool");
        };
        self.views.lock().remove(name);
        for export in self.exports.names() {
            if export.split_once('/').map(|(p, _)| p) == Some(name) {
                self.exports.remove(&export);
            }
        }
        // Connections may still hold volumes for a moment; wait for them to let go.
        let mut pool = pool;
        for _ in 0..200 {
            match Arc::try_unwrap(pool) {
                Ok(p) => {
                    return p
                        .export()
                        .map_err(|e| anyhow!("cannot export '{name}': {e}"))
                }
                Err(p) => {
                    pool = p;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        bail!("cannot export '{name}': pool is busy")
    }
    /// `clear`: resets the error counters, and resumes a suspended pool. The pool layer cannot
    /// resume a suspended import in place (the failed txg left its in-memory state half way),
    /// so the pool is exported (which reports the suspension and leaves the labels as they
    /// were) and imported again at its last committed txg, and a history record is committed
    /// to prove that writes go through: when the cause (a failing device, a full file system
    /// under a device file) is still there, that commit fails and `clear` says so.
    fn clear(&self, name: &str) -> Result<serde_json::Value> {
        let Some(pool) = self.pools.lock().get(name).cloned() else {
            bail!("cannot clear errors for '{name}': no such pool");
        };
        let was = pool.health();
        if was.is_online() {
            pool.clear_errors();
            return Ok(json!({ "resumed": false }));
        }
        drop(pool);
        if let Err(e) = self.export(name) {
            tracing::info!("{e:#} (expected: the pool was suspended: {was})");
        }
        self.open(name)
            .map_err(|e| anyhow!("cannot clear errors for '{name}': {e:#}"))?;
        let pool = self.pools.lock().get(name).cloned();
        let Some(pool) = pool else {
            bail!("cannot clear errors for '{name}': the pool did not reopen");
        };
        if pool.read_only() {
            return Ok(json!({ "resumed": true }));
        }
        let record = format!("clear: resumed after the suspension ({was})");
        pool.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut ringpool_driver::pool::SyncCtx<'_>| {
                ctx.log(record);
                Ok(())
            }),
        )
        .map_err(|e| {
            anyhow!(
                "cannot clear errors for '{name}': {e}: the pool is suspended again, its cause \
                 is still there ({})",
                pool.health()
            )
        })?;
        tracing::info!("pool '{name}' resumed at txg {}", pool.stats().synced_txg);
        Ok(json!({ "resumed": true }))
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts, so the main thread
/// can take them with sigwait and shut down in order.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t for all three calls.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        bail!("cannot block signals: errno {rc}");
    }
    Ok(set)
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` and `sig` are valid for the duration of the call.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// The reactors pinned to a CPU that takes the completion interrupts of the served pools'
/// devices (see `NbdServerConfig::prefer_reactors`); empty when that is unknown or when every
/// reactor is one (no preference to give).
fn completion_reactors(
    reactors: &ReactorSet,
    known: &BTreeMap<String, KnownPool>,
    names: &[String],
) -> Vec<usize> {
    let paths: Vec<&PathBuf> = names
        .iter()
        .filter_map(|n| known.get(n))
        .flat_map(|kp| kp.devices.iter())
        .collect();
    let Some(cpus) = ringpool_driver::io::irq::completion_cpus(&paths) else {
        return Vec::new();
    };
    let prefer: Vec<usize> = (0..reactors.len())
        .filter(|&i| {
            reactors
                .handle(i)
                .and_then(|h| h.cpu())
                .is_some_and(|c| cpus.contains(&c))
        })
        .collect();
    tracing::info!(?cpus, ?prefer, "device completion interrupts");
    if prefer.len() == reactors.len() {
        return Vec::new();
    }
    prefer
}

/// The TLS settings of `serve`'s flags (`None`: no TLS). Loaded before anything is opened,
/// so a bad certificate or key fails the command at once.
fn tls_config(args: &ServeArgs) -> Result<Option<TlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let require = args.tls.unwrap_or(TlsMode::Require) == TlsMode::Require;
    let cfg = TlsConfig::from_pem_files(cert, key, args.tls_client_ca.as_deref(), require)?;
    Ok(Some(cfg))
}

/// The CPU latency bound of `--cpu-latency-us` (else `RINGPOOL_CPU_LATENCY_US`), if any.
fn hold_cpu_latency(args: &ServeArgs) -> Result<Option<CpuLatencyRequest>> {
    let Some(us) = args
        .cpu_latency_us
        .or_else(|| ringpool_driver::knob::env("RINGPOOL_CPU_LATENCY_US"))
    else {
        return Ok(None);
    };
    let req = CpuLatencyRequest::hold(us).with_context(|| {
        format!(
            "cannot hold a CPU latency bound of {us} us on {}",
            cpu_latency::PATH
        )
    })?;
    // The kernel applies the smallest bound any process holds.
    let effective = cpu_latency::current().ok();
    tracing::info!(us, ?effective, "CPU latency bound held");
    Ok(Some(req))
}

pub fn run(state: &StateDir, args: &ServeArgs) -> Result<()> {
    let tls = tls_config(args)?;
    let signals = block_signals()?;
    if control::call(&state.control_socket(), &Request::Pools)?.is_some() {
        bail!(
            "another 'ringpool serve' already holds the pools of {} (its control socket answers)",
            state.root().display()
        );
    }
    // Held until serve returns; the kernel also drops it when the process dies.
    let _cpu_latency = hold_cpu_latency(args)?;
    let mut known = state.pools()?;
    let mut names: Vec<String> = if args.pools.is_empty() {
        known.keys().cloned().collect()
    } else {
        args.pools.clone()
    };
    if names.is_empty() {
        let file = state.root().join("demo.img");
        println!(
            "no pool known: creating the demo pool '{DEMO_POOL}' on {} (sparse {DEMO_FILE_SIZE})",
            file.display()
        );
        local::create(state, DEMO_POOL, &[file], &[], Some(DEMO_FILE_SIZE), true)?;
        known = state.pools()?;
        names.push(DEMO_POOL.to_string());
        let pool = local_open(&known, DEMO_POOL)?;
        pool.create_volume("vol0", DEMO_VOLUME_SIZE, 4096)
            .map_err(|e| anyhow!("cannot create '{DEMO_POOL}/vol0': {e}"))?;
        pool.export().map_err(|e| anyhow!("{e}"))?;
    }
    let reactors_n = args
        .reactors
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let defaults = ReactorConfig::default();
    let reactors = ReactorSet::start(ReactorConfig {
        reactors: reactors_n,
        read_spin: args
            .read_spin_us
            .map_or(defaults.read_spin, std::time::Duration::from_micros),
        // Pinned unless RINGPOOL_REACTOR_PIN=0 (see ReactorConfig::pin).
        ..defaults
    })
    .context("cannot start the reactors")?;
    let served = Arc::new(Served {
        pools: Mutex::new(BTreeMap::new()),
        views: Mutex::new(BTreeMap::new()),
        exports: Arc::new(Exports::new()),
        read_only: args.read_only,
        state: state.clone(),
        shards: reactors_n,
    });
    for name in &names {
        served.open(name)?;
    }
    let socket: PathBuf = args.socket.clone().unwrap_or_else(|| state.nbd_socket());
    // RINGPOOL_NBD_PREFER_IRQ_CPU=0 turns the preference off (for comparisons).
    let prefer_reactors = if !ringpool_driver::knob::enabled("RINGPOOL_NBD_PREFER_IRQ_CPU") {
        Vec::new()
    } else {
        completion_reactors(&reactors, &known, &names)
    };
    let mut nbd_cfg = NbdServerConfig {
        tcp: Some(args.listen),
        unix: Some(socket.clone()),
        prefer_reactors,
        tls,
        ..Default::default()
    };
    // Without --place the default stands: RINGPOOL_NBD_PLACE, else irq.
    if let Some(placement) = args.place {
        nbd_cfg.placement = placement;
    }
    let mut server = NbdServer::start(nbd_cfg, Arc::clone(&served.exports), &reactors)
        .map_err(|e| anyhow!("cannot listen: {e}"))?;
    let handler = Arc::clone(&served);
    let _control = control::listen(
        &state.control_socket(),
        Arc::new(move |req, progress: &mut dyn FnMut(Progress)| handler.handle(req, progress)),
    )?;
    let addr = server.local_addr().unwrap_or(args.listen);
    for export in served.exports.names() {
        println!(
            "serving nbd://{addr}/{export}  (also nbd+unix:///{export}?socket={})",
            socket.display()
        );
    }
    println!(
        "ready: {} pool(s), {} export(s); SIGINT or SIGTERM stops",
        names.len(),
        served.exports.len()
    );
    let sig = wait_for_signal(&signals);
    tracing::info!("signal {sig}: draining connections, syncing and exporting");
    server.shutdown();
    std::fs::remove_file(state.control_socket()).ok();
    let pools: Vec<String> = served.pools.lock().keys().cloned().collect();
    let mut failed = false;
    for name in pools {
        if let Err(e) = served.export(&name) {
            eprintln!("{e:#}");
            failed = true;
        }
    }
    let mut reactors = reactors;
    reactors.shutdown();
    if failed {
        bail!("some pools did not export cleanly");
    }
    println!("all pools synced and exported");
    Ok(())
}

/// Opens a known pool in this process (the demo pool right after its creation).
fn local_open(known: &BTreeMap<String, KnownPool>, name: &str) -> Result<Pool> {
    let Some(kp) = known.get(name) else {
        bail!("cannot open '{name}': no such pool");
    };
    let opts = local::import_options(kp, name, false);
    Pool::import_paths(&kp.devices, &opts).map_err(|e| anyhow!("cannot open '{name}': {e}"))
}
