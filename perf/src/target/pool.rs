//! `pool:PATH[,PATH...][?OPTIONS]`: a volume of a ringpool pool, in process.
//!
//! The pool is created or imported once, on the main thread, when the target is probed; every
//! job then drives the same [`Volume`] handle from its own reactor with the pool's public async
//! data path (`Volume::read/write/flush`), exactly as the NBD server does, but without a
//! socket in between. FUA writes are `Volume::write(.., fua = true)` (they return once the txg
//! holding them committed) and `--flush-every N` calls `Volume::flush` (commits the open txg).
//!
//! Options (`&`-separated, after `?`):
//!
//! | option | meaning |
//! |---|---|
//! | `create[=SIZE]` | create a fresh pool on the paths (wiping any pool there); files are created or resized to SIZE |
//! | `name=POOL` | pool name (create; default `ringperf`) or the pool to import when the devices hold several |
//! | `volume=NAME` | the volume (default: the only volume, or `vol0` when creating) |
//! | `volsize=SIZE` | size of a volume that has to be created (default `--offset + --size`, else half the free space) |
//! | `bs=SIZE` | block size of a created volume (4k..128k, default 4k) |
//! | `ashift=N` | allocation unit of a created pool (default from the device) |
//! | `cache=SIZE` | tree-block cache budget (default the pool's, 64 MiB) |
//! | `force` | import even if the labels say another host or process holds the pool |
//! | `check` | after the run, sync and run the pool's `verify` (every checksum, space maps) |
//! | `copy` | use the slice API (`Volume::read/write`, data copied) instead of the owned-buffer one |
//!
//! By default a job reads with `Volume::read_into` and writes with `Volume::write_buf`, the
//! owned-buffer calls the NBD export uses: aligned I/O goes between the device and the job's
//! (registered) buffer without a copy.
//! The run's end ([`PoolSpec::finish`]) syncs and exports the pool, reports its space
//! accounting, and fails if the pool was suspended (a failed sync) or `check` found damage.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use ringpool_driver::io::{block_on, spawn_local, IoBuf, ReactorConfig};
use ringpool_driver::pool::{CreateOptions, ImportOptions, Pool, PoolError, PoolOptions, Volume};

use super::{Conn, IoResult, TargetInfo};
use crate::cli::{Prefill, WorkloadArgs};
use crate::error::PerfError;
use crate::units::{fmt_size, parse_size};
use crate::verify;

/// Default name of a pool ringperf creates.
pub const DEFAULT_POOL_NAME: &str = "ringperf";
/// Default name of a volume ringperf creates.
pub const DEFAULT_VOLUME: &str = "vol0";

/// A parsed `pool:` target; the opened pool is shared by every clone.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// The target string, for messages.
    pub label: String,
    pub paths: Vec<PathBuf>,
    /// `Some(size)` = create a fresh pool (files resized to `size` when given).
    pub create: Option<Option<u64>>,
    pub name: Option<String>,
    pub volume: Option<String>,
    pub volsize: Option<u64>,
    pub vol_bs: u32,
    pub ashift: Option<u8>,
    pub cache: Option<usize>,
    pub force: bool,
    pub check: bool,
    /// Use the copying slice API.
    pub copy: bool,
    opened: Arc<Mutex<Option<Opened>>>,
}

#[derive(Debug)]
struct Opened {
    pool: Pool,
    vol: Volume,
}

/// A pool error as an io::Error that keeps the errno (ENOSPC, EIO...) and the pool's message.
pub fn pool_io_err(e: &PoolError) -> io::Error {
    let os = io::Error::from_raw_os_error(e.errno());
    io::Error::new(os.kind(), format!("{os}: {e}"))
}

impl PoolSpec {
    /// Parses `pool:PATH[,PATH...][?OPTIONS]`.
    pub fn parse(s: &str) -> Result<PoolSpec, PerfError> {
        let bad = |m: String| PerfError::Config(format!("target '{s}': {m}"));
        let rest = s
            .strip_prefix("pool:")
            .ok_or_else(|| bad("expected pool:PATH[,PATH...][?OPTIONS]".into()))?;
        let (paths, opts) = match rest.split_once('?') {
            Some((p, o)) => (p, o),
            None => (rest, ""),
        };
        let paths: Vec<PathBuf> = paths
            .split(',')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        if paths.is_empty() {
            return Err(bad("no device path".into()));
        }
        let mut spec = PoolSpec {
            label: s.to_string(),
            paths,
            create: None,
            name: None,
            volume: None,
            volsize: None,
            vol_bs: 4096,
            ashift: None,
            cache: None,
            force: false,
            check: false,
            copy: false,
            opened: Arc::new(Mutex::new(None)),
        };
        let size = |k: &str, v: Option<&str>| -> Result<u64, PerfError> {
            let v = v.ok_or_else(|| bad(format!("option '{k}' needs a value")))?;
            parse_size(v).map_err(|e| bad(format!("{k}: {e}")))
        };
        for kv in opts.split('&').filter(|o| !o.is_empty()) {
            let (k, v) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (kv, None),
            };
            match k {
                "create" => spec.create = Some(v.map(|_| size(k, v)).transpose()?),
                "name" => spec.name = v.map(str::to_string),
                "volume" => spec.volume = v.map(str::to_string),
                "volsize" => spec.volsize = Some(size(k, v)?),
                "bs" => {
                    spec.vol_bs = u32::try_from(size(k, v)?)
                        .map_err(|_| bad("bs: too large".into()))?;
                }
                "ashift" => {
                    let a = v
                        .ok_or_else(|| bad("ashift needs a value".into()))?
                        .parse::<u8>()
                        .map_err(|e| bad(format!("ashift: {e}")))?;
                    spec.ashift = Some(a);
                }
                "cache" => {
                    spec.cache = Some(
                        usize::try_from(size(k, v)?).map_err(|_| bad("cache: too large".into()))?,
                    );
                }
                "force" => spec.force = true,
                "check" => spec.check = true,
                "copy" => spec.copy = true,
                _ => {
                    return Err(bad(format!(
                        "unknown option '{k}' (create[=SIZE], name, volume, volsize, bs, ashift, cache, force, check, copy)"
                    )))
                }
            }
        }
        if spec.name.as_deref() == Some("") || spec.volume.as_deref() == Some("") {
            return Err(bad("empty pool or volume name".into()));
        }
        Ok(spec)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Opened>> {
        // A panic while holding it cannot leave the Option half-updated.
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn err(&self, e: &PoolError) -> PerfError {
        PerfError::target(&self.label, pool_io_err(e))
    }

    fn pool_options(&self) -> PoolOptions {
        let mut o = PoolOptions::default();
        if let Some(c) = self.cache {
            o.cache_bytes = c;
        }
        o
    }

    /// Creates or resizes the device files of a fresh pool.
    fn prepare_files(&self, size: Option<u64>) -> Result<(), PerfError> {
        for p in &self.paths {
            let meta = std::fs::metadata(p);
            let is_blk = meta
                .as_ref()
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false);
            if is_blk {
                continue;
            }
            match (meta, size) {
                (Ok(m), Some(sz)) if m.len() != sz || !m.is_file() => {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(p)
                        .map_err(|e| PerfError::target(&self.label, e))?;
                    f.set_len(sz)
                        .map_err(|e| PerfError::target(&self.label, e))?;
                }
                (Ok(_), _) => {}
                (Err(_), Some(sz)) => {
                    let f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(p)
                        .map_err(|e| PerfError::target(&self.label, e))?;
                    f.set_len(sz)
                        .map_err(|e| PerfError::target(&self.label, e))?;
                }
                (Err(e), None) => {
                    return Err(PerfError::target(
                        &format!("{} ({})", self.label, p.display()),
                        io::Error::new(
                            e.kind(),
                            format!("{e}; give create=SIZE to create the file"),
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The volume size to create when none was asked for: the benchmark region if given,
    /// else half the pool's free space (room left for copy-on-write and deferred frees).
    fn default_volsize(&self, pool: &Pool, w: &WorkloadArgs) -> u64 {
        let bs = u64::from(self.vol_bs);
        let want = match (self.volsize, w.size) {
            (Some(v), _) => v,
            (None, Some(s)) => s + w.offset,
            (None, None) => {
                let st = pool.stats();
                st.space.free.saturating_sub(st.slop) / 2
            }
        };
        (want.div_ceil(bs) * bs).max(bs)
    }

    fn open(&self, w: &WorkloadArgs) -> Result<Opened, PerfError> {
        let pool = match self.create {
            Some(size) => {
                self.prepare_files(size)?;
                let opts = CreateOptions {
                    pool: self.pool_options(),
                    ashift: self.ashift,
                    ..Default::default()
                };
                let name = self.name.as_deref().unwrap_or(DEFAULT_POOL_NAME);
                Pool::create_paths(name, &self.paths, &opts).map_err(|e| self.err(&e))?
            }
            None => {
                let opts = ImportOptions {
                    pool: self.pool_options(),
                    name: self.name.clone(),
                    force: self.force,
                    ..Default::default()
                };
                Pool::import_paths(&self.paths, &opts).map_err(|e| self.err(&e))?
            }
        };
        let vols = pool.list_volumes();
        let name = match &self.volume {
            Some(v) => v.clone(),
            None if self.create.is_some() || vols.is_empty() => DEFAULT_VOLUME.to_string(),
            None if vols.len() == 1 => vols[0].name.clone(),
            None => {
                let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
                return Err(PerfError::Config(format!(
                    "target '{}': pool '{}' has several volumes ({}); choose one with volume=NAME",
                    self.label,
                    pool.name(),
                    names.join(", ")
                )));
            }
        };
        let vol = if vols.iter().any(|v| v.name == name) {
            pool.open_volume(&name).map_err(|e| self.err(&e))?
        } else {
            let size = self.default_volsize(&pool, w);
            pool.create_volume(&name, size, self.vol_bs)
                .map_err(|e| self.err(&e))?
        };
        Ok(Opened { pool, vol })
    }

    /// Opens (or creates) the pool and the volume, once.
    pub fn probe(&self, w: &WorkloadArgs) -> Result<TargetInfo, PerfError> {
        let mut g = self.lock();
        if g.is_none() {
            *g = Some(self.open(w)?);
        }
        let Some(o) = g.as_ref() else {
            return Err(PerfError::Config("pool not open".into()));
        };
        let st = o.pool.stats();
        let devs: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        Ok(TargetInfo {
            size: o.vol.size(),
            // The volume takes any sector-aligned range (partial blocks read-modify-write).
            block: 512,
            describe: format!(
                "pool {} on {} ({} allocatable, {} allocated), volume {} ({}, block {})",
                o.pool.name(),
                devs.join(","),
                fmt_size(st.space.size),
                fmt_size(st.space.allocated),
                o.vol.name(),
                fmt_size(o.vol.size()),
                fmt_size(u64::from(o.vol.block_size()))
            ),
        })
    }

    fn volume(&self) -> io::Result<Volume> {
        self.lock()
            .as_ref()
            .map(|o| o.vol.clone())
            .ok_or_else(|| io::Error::other("pool target used before it was probed"))
    }

    /// Prefills `[off, off+len)` through the volume when asked, or (auto) when the volume has
    /// holes there: reading holes measures nothing (they are zeroes without any device I/O).
    pub fn prepare(
        &self,
        w: &WorkloadArgs,
        region: (u64, u64),
        unit: u64,
        run_id: u64,
    ) -> Result<(), PerfError> {
        let vol = self
            .volume()
            .map_err(|e| PerfError::target(&self.label, e))?;
        let (off, len) = region;
        let cfg = ReactorConfig {
            reactors: 1,
            pin: false,
            arena_bytes: 16 << 20,
            thread_name: "ringperf-prefill".into(),
            ..ReactorConfig::default()
        };
        let holes = match w.prefill {
            Prefill::Never => return Ok(()),
            Prefill::Always => vec![(off, len)],
            Prefill::Auto => {
                let v = vol.clone();
                block_on(&cfg, async move { holes_of(&v, off, len).await })?
                    .map_err(|e| self.err(&e))?
            }
        };
        if holes.is_empty() {
            return Ok(());
        }
        let total: u64 = holes.iter().map(|h| h.1).sum();
        if !w.quiet {
            eprintln!(
                "ringperf: prefilling {total} bytes of volume {} at offset {off}{}",
                vol.name(),
                if w.verify { " with verify headers" } else { "" }
            );
        }
        let fill = Fill {
            vol: vol.clone(),
            verify: w.verify,
            unit,
            run_id,
            seed: w.seed,
        };
        block_on(&cfg, fill.run(holes))?.map_err(|e| self.err(&e))?;
        // Commit the prefill so the measured run does not start with its dirty data.
        let g = self.lock();
        if let Some(o) = g.as_ref() {
            o.pool.sync_blocking().map_err(|e| self.err(&e))?;
        }
        Ok(())
    }

    /// A job's handle on the volume.
    pub fn connect(&self) -> io::Result<PoolConn> {
        Ok(PoolConn {
            vol: self.volume()?,
            copy: self.copy,
        })
    }

    /// After the run: syncs, optionally verifies, exports. Returns report lines and whether
    /// the pool is healthy.
    pub fn finish(&self) -> Result<(Vec<String>, bool), PerfError> {
        let Some(o) = self.lock().take() else {
            return Ok((Vec::new(), true));
        };
        let mut lines = Vec::new();
        let mut ok = true;
        let pool = o.pool;
        drop(o.vol);
        if let Some(errno) = pool.txg().failure() {
            ok = false;
            lines.push(format!(
                "pool {}: SUSPENDED (a txg sync failed, errno {errno}): writes after the failure were lost",
                pool.name()
            ));
        } else if let Err(e) = pool.sync_blocking() {
            ok = false;
            lines.push(format!("pool {}: final sync failed: {e}", pool.name()));
        }
        let st = pool.stats();
        lines.push(format!(
            "pool {}: {} allocatable, {} allocated, {} free, {} slop, fragmentation {}%, txg {}; tree cache {} hits {} misses",
            pool.name(),
            fmt_size(st.space.size),
            fmt_size(st.space.allocated),
            fmt_size(st.space.free),
            fmt_size(st.slop),
            st.space.fragmentation,
            st.synced_txg,
            st.cache.hits,
            st.cache.misses
        ));
        let ss = pool.sync_stats();
        let (delayed, delay, waited) = pool.txg().throttle_stats();
        let lim = pool.txg().limits();
        lines.push(format!(
            "pool {}: {} txgs synced, sync mean {:.1} ms max {:.1} ms; dirty limits data {}/{} meta {}/{} (sync/max); {} writes delayed ({:.1} ms in all), {} waited at a limit",
            pool.name(),
            ss.txgs,
            ss.mean_sync().as_secs_f64() * 1e3,
            ss.max_sync.as_secs_f64() * 1e3,
            fmt_size(lim.data_sync),
            fmt_size(lim.data_max),
            fmt_size(lim.meta_sync),
            fmt_size(lim.meta_max),
            delayed,
            delay.as_secs_f64() * 1e3,
            waited
        ));
        if self.check && ok {
            match pool.verify() {
                Ok(rep) if rep.is_clean() => {
                    lines.push(format!("pool {}: verify clean", pool.name()));
                }
                Ok(rep) => {
                    ok = false;
                    lines.push(format!(
                        "pool {}: verify found {} problem(s):",
                        pool.name(),
                        rep.errors.len()
                    ));
                    for e in rep.errors.iter().take(10) {
                        lines.push(format!("  {e}"));
                    }
                }
                Err(e) => {
                    ok = false;
                    lines.push(format!("pool {}: verify failed: {e}", pool.name()));
                }
            }
        }
        let name = pool.name().to_string();
        if let Err(e) = pool.export() {
            ok = false;
            lines.push(format!("pool {name}: export failed: {e}"));
        }
        Ok((lines, ok))
    }
}

/// The hole extents of `[off, off+len)`, looked up in bounded steps.
async fn holes_of(vol: &Volume, off: u64, len: u64) -> Result<Vec<(u64, u64)>, PoolError> {
    const STEP: u64 = 256 << 20;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = off;
    while pos < off + len {
        let n = STEP.min(off + len - pos);
        for e in vol.block_status(pos, n).await? {
            if !e.hole {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.0 + last.1 == e.offset => last.1 += e.len,
                _ => out.push((e.offset, e.len)),
            }
        }
        pos += n;
    }
    Ok(out)
}

/// Prefill writer: 1 MiB writes, several in flight.
#[derive(Debug, Clone)]
struct Fill {
    vol: Volume,
    verify: bool,
    unit: u64,
    run_id: u64,
    seed: u64,
}

impl Fill {
    const CHUNK: u64 = 1 << 20;
    const IN_FLIGHT: usize = 8;

    async fn run(self, holes: Vec<(u64, u64)>) -> Result<(), PoolError> {
        // Chunks aligned to CHUNK inside each hole, so a partly filled chunk is not rewritten.
        let mut chunks = Vec::new();
        for (o, l) in holes {
            let mut p = o;
            while p < o + l {
                let n = (Self::CHUNK - p % Self::CHUNK).min(o + l - p);
                chunks.push((p, n));
                p += n;
            }
        }
        let queue = Rc::new(RefCell::new(chunks.into_iter()));
        let mut tasks = Vec::new();
        for _ in 0..Self::IN_FLIGHT {
            let q = Rc::clone(&queue);
            let f = self.clone();
            tasks.push(spawn_local(async move {
                let mut buf = vec![0u8; usize::try_from(Self::CHUNK).unwrap_or(1 << 20)];
                loop {
                    let next = q.borrow_mut().next();
                    let Some((p, n)) = next else { return Ok(()) };
                    let b = &mut buf[..usize::try_from(n).unwrap_or(0)];
                    f.fill(b, p);
                    f.vol.write(p, b, false).await?;
                }
            }));
        }
        let mut first = Ok(());
        for t in tasks {
            let r = t
                .await
                .unwrap_or_else(|e| Err(PoolError::Internal(format!("prefill task: {e:?}"))));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn fill(&self, b: &mut [u8], pos: u64) {
        if self.verify {
            let unit = usize::try_from(self.unit).unwrap_or(4096);
            let mut uoff = pos;
            for u in b.chunks_exact_mut(unit) {
                verify::format_unit(u, uoff, self.run_id, 0);
                uoff += self.unit;
            }
        } else {
            // Cheap incompressible-looking data (xorshift), seeded by position.
            let mut x = (pos ^ self.seed ^ 0xF111).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for c in b.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let bytes = x.to_le_bytes();
                c.copy_from_slice(&bytes[..c.len()]);
            }
        }
    }
}

/// One job's handle on the volume.
#[derive(Debug)]
pub struct PoolConn {
    vol: Volume,
    copy: bool,
}

impl Conn for PoolConn {
    async fn read(&self, mut buf: IoBuf, off: u64) -> IoResult {
        if self.copy {
            let r = self.vol.read(off, &mut buf[..]).await;
            return (r.map_err(|e| pool_io_err(&e)), buf);
        }
        let len = buf.len();
        let (r, buf) = self.vol.read_into(off, buf, 0..len, None).await;
        (r.map_err(|e| pool_io_err(&e)), buf)
    }

    async fn write(&self, buf: IoBuf, off: u64, fua: bool) -> IoResult {
        if self.copy {
            let r = self.vol.write(off, &buf[..], fua).await;
            return (r.map_err(|e| pool_io_err(&e)), buf);
        }
        let (r, buf) = self.vol.write_buf(off, buf, fua).await;
        (r.map_err(|e| pool_io_err(&e)), buf)
    }

    async fn flush(&self) -> io::Result<()> {
        self.vol.flush().await.map_err(|e| pool_io_err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let s = PoolSpec::parse("pool:/a,/b?create=1G&volume=v&volsize=64M&bs=16k&check").unwrap();
        assert_eq!(s.paths, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(s.create, Some(Some(1 << 30)));
        assert_eq!(s.volume.as_deref(), Some("v"));
        assert_eq!(s.volsize, Some(64 << 20));
        assert_eq!(s.vol_bs, 16384);
        assert!(s.check && !s.force);
        let s = PoolSpec::parse("pool:/a?create&force&copy").unwrap();
        assert_eq!(s.create, Some(None));
        assert!(s.force && s.copy);
        let s = PoolSpec::parse("pool:/a").unwrap();
        assert_eq!(s.create, None);
        assert!(PoolSpec::parse("pool:").is_err());
        assert!(PoolSpec::parse("pool:/a?bogus").is_err());
        assert!(PoolSpec::parse("pool:/a?volsize").is_err());
        assert!(PoolSpec::parse("pool:/a?ashift=x").is_err());
    }
}
