//! What ringperf measures. A [`TargetSpec`] is parsed from `--target` on the main thread and
//! shared by all jobs; each job [`TargetSpec::connect`]s on its own reactor and drives the
//! resulting [`Conn`] with up to `qd` concurrent I/Os.
//!
//! Adding a target means: a `TargetSpec` variant with its `probe`/`prepare`/`connect` (and
//! `finish` when it holds state across the run), and a `Conn` variant implementing
//! read/write/flush.

pub mod delay;
pub mod nbd;
pub mod nbd_proto;
pub mod pool;
pub mod raw;

use std::future::Future;
use std::io;
use std::pin::Pin;

use ringpool_driver::io::IoBuf;

use crate::cli::WorkloadArgs;
use crate::error::PerfError;

/// Result of a data op; the buffer always comes back.
pub type IoResult = (io::Result<()>, IoBuf);

/// One job's connection to a target. Methods take `&self`: the job's I/O workers share it.
pub trait Conn {
    /// Reads `buf.len()` bytes at `off` into `buf`.
    fn read(&self, buf: IoBuf, off: u64) -> impl Future<Output = IoResult>;
    /// Writes `buf[..len]` at `off`; with `fua` it is durable when this completes.
    fn write(&self, buf: IoBuf, off: u64, fua: bool) -> impl Future<Output = IoResult>;
    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>>;
}

/// Facts about a target, learned before the run.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// Bytes addressable.
    pub size: u64,
    /// Offsets and lengths must be multiples of this.
    pub block: u64,
    /// Human-readable description for reports.
    pub describe: String,
}

/// A parsed `--target`.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A file or block device through driver::io.
    Raw(raw::RawSpec),
    /// An NBD server.
    Nbd(nbd::NbdSpec),
    /// A volume of a ringpool pool, in process.
    Pool(pool::PoolSpec),
    /// `delay:EVERY:MS:TARGET`: stalls every EVERY-th I/O of a job by MS milliseconds before
    /// passing it on (a test device for the open-loop / coordinated-omission logic).
    Delay {
        every: u64,
        ms: u64,
        inner: Box<TargetSpec>,
    },
}

impl TargetSpec {
    pub fn parse(s: &str, w: &WorkloadArgs) -> Result<TargetSpec, PerfError> {
        if let Some(rest) = s.strip_prefix("delay:") {
            let mut it = rest.splitn(3, ':');
            let (Some(every), Some(ms), Some(inner)) = (it.next(), it.next(), it.next()) else {
                return Err(PerfError::Config(format!(
                    "target '{s}': expected delay:EVERY:MS:TARGET"
                )));
            };
            let num = |x: &str| {
                x.parse::<u64>()
                    .map_err(|e| PerfError::Config(format!("target '{s}': '{x}': {e}")))
            };
            let every = num(every)?;
            if every == 0 {
                return Err(PerfError::Config(format!(
                    "target '{s}': EVERY must be > 0"
                )));
            }
            return Ok(TargetSpec::Delay {
                every,
                ms: num(ms)?,
                inner: Box::new(TargetSpec::parse(inner, w)?),
            });
        }
        if s.starts_with("nbd://") || s.starts_with("nbd+unix://") {
            let mut spec = nbd::NbdSpec::parse(s, w.nbd_conns)?;
            spec.mode = w.client_mode;
            return Ok(TargetSpec::Nbd(spec));
        }
        if s.starts_with("pool:") {
            return Ok(TargetSpec::Pool(pool::PoolSpec::parse(s)?));
        }
        Ok(TargetSpec::Raw(raw::RawSpec::new(s, w.direct)))
    }

    /// The job rings' submit batch when `--submit-batch` is not given: a raw device is driven
    /// as fio drives it (each I/O entered as soon as it is made), so the two tools measure the
    /// same thing; a pool or NBD target runs on the engine's reactors as `ringpool serve` runs
    /// them (the reactor's default).
    pub fn default_submit_batch(&self) -> usize {
        match self {
            TargetSpec::Raw(_) => 1,
            TargetSpec::Nbd(_) | TargetSpec::Pool(_) => ringpool_driver::io::DEFAULT_SUBMIT_BATCH,
            TargetSpec::Delay { inner, .. } => inner.default_submit_batch(),
        }
    }

    /// Opens the target once on the calling thread to learn its size and alignment.
    pub fn probe(&self, w: &WorkloadArgs) -> Result<TargetInfo, PerfError> {
        match self {
            TargetSpec::Raw(r) => r.probe(w),
            TargetSpec::Nbd(n) => n.probe(),
            TargetSpec::Pool(p) => p.probe(w),
            TargetSpec::Delay { every, ms, inner } => {
                let mut i = inner.probe(w)?;
                i.describe = format!("{} (stall {ms} ms every {every} I/Os)", i.describe);
                Ok(i)
            }
        }
    }

    /// Makes the region readable with real data (prefill), on the calling thread.
    pub fn prepare(
        &self,
        w: &WorkloadArgs,
        region: (u64, u64),
        unit: u64,
        run_id: u64,
    ) -> Result<(), PerfError> {
        match self {
            TargetSpec::Raw(r) => r.prepare(w, region, unit, run_id),
            TargetSpec::Nbd(_) => Ok(()),
            TargetSpec::Pool(p) => p.prepare(w, region, unit, run_id),
            TargetSpec::Delay { inner, .. } => inner.prepare(w, region, unit, run_id),
        }
    }

    /// Opens a connection for one job; runs on the job's reactor.
    pub fn connect(&self, job: u32) -> Pin<Box<dyn Future<Output = io::Result<AnyConn>> + '_>> {
        Box::pin(async move {
            Ok(match self {
                TargetSpec::Raw(r) => AnyConn::Raw(r.connect()?),
                TargetSpec::Nbd(n) => AnyConn::Nbd(n.connect(job).await?),
                TargetSpec::Pool(p) => AnyConn::Pool(p.connect()?),
                TargetSpec::Delay { every, ms, inner } => AnyConn::Delay(delay::DelayConn::new(
                    *every,
                    *ms,
                    inner.connect(job).await?,
                )),
            })
        })
    }

    /// Ends the target after the last run (the pool: sync, optional verify, export).
    /// Returns report lines and false when the target ended unhealthy.
    pub fn finish(&self) -> Result<(Vec<String>, bool), PerfError> {
        match self {
            TargetSpec::Raw(_) | TargetSpec::Nbd(_) => Ok((Vec::new(), true)),
            TargetSpec::Pool(p) => p.finish(),
            TargetSpec::Delay { inner, .. } => inner.finish(),
        }
    }
}

/// The connection of any target.
#[derive(Debug)]
pub enum AnyConn {
    Raw(raw::RawConn),
    Nbd(nbd::NbdConn),
    Pool(pool::PoolConn),
    Delay(delay::DelayConn),
}

impl AnyConn {
    /// Ends the connection cleanly (NBD: DISC); errors are not interesting at that point.
    pub async fn close(&self) {
        match self {
            AnyConn::Raw(_) | AnyConn::Pool(_) => {}
            AnyConn::Nbd(n) => n.close().await,
            AnyConn::Delay(d) => Box::pin(d.inner().close()).await,
        }
    }
}

impl Conn for AnyConn {
    async fn read(&self, buf: IoBuf, off: u64) -> IoResult {
        match self {
            AnyConn::Raw(c) => c.read(buf, off).await,
            AnyConn::Nbd(c) => c.read(buf, off).await,
            AnyConn::Pool(c) => c.read(buf, off).await,
            AnyConn::Delay(c) => c.read(buf, off).await,
        }
    }

    async fn write(&self, buf: IoBuf, off: u64, fua: bool) -> IoResult {
        match self {
            AnyConn::Raw(c) => c.write(buf, off, fua).await,
            AnyConn::Nbd(c) => c.write(buf, off, fua).await,
            AnyConn::Pool(c) => c.write(buf, off, fua).await,
            AnyConn::Delay(c) => c.write(buf, off, fua).await,
        }
    }

    async fn flush(&self) -> io::Result<()> {
        match self {
            AnyConn::Raw(c) => c.flush().await,
            AnyConn::Nbd(c) => c.flush().await,
            AnyConn::Pool(c) => c.flush().await,
            AnyConn::Delay(c) => c.flush().await,
        }
    }
}
