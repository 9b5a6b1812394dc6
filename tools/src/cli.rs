//! The command line: zpool's shape, adapted to ringpool (DESIGN.md section 8).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ringpool_driver::nbd::Placement;

/// ringpool: a user-space block storage engine. Pools of files or block devices, thin
/// copy-on-write volumes exported over NBD, and OpenZFS-style pool checkpoints.
#[derive(Debug, Parser)]
#[command(
    name = "ringpool",
    version,
    propagate_version = true,
    after_help = "Getting started:\n  \
    ringpool serve                       # no pool yet: creates 'demo' with volume demo/vol0\n  \
    qemu-io -f raw -c 'write -P 0xab 0 1M' nbd://127.0.0.1:10809/demo/vol0\n  \
    ringpool status demo                 # health, devices, errors, checkpoint\n  \
    ringpool checkpoint demo             # then: export, import --rewind-to-checkpoint\n\n\
    While 'serve' holds a pool, every command reaches it through the control socket of the\n\
    state directory; otherwise a command opens the pool itself, exclusively.\n\n\
    Environment:\n  \
    RINGPOOL_STATE_DIR         the state directory (as --state-dir)\n  \
    RINGPOOL_LOG               log filter for stderr (tracing syntax, default info)\n  \
    RINGPOOL_PROGRESS_EVERY_MS interval of plain progress lines when stderr is not a\n                             \
    terminal (default 1000)"
)]
pub struct Cli {
    /// The state directory: known pools, the control socket of a running `serve`, logs.
    #[arg(long, global = true, env = "RINGPOOL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a pool on one or more devices (files are created sparse with --size).
    Create {
        /// Pool properties at creation: ashift=N, metaslab_size=SIZE.
        #[arg(short = 'o', value_name = "PROP=VALUE")]
        options: Vec<String>,
        /// Size of device files that do not exist yet (created sparse).
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// Create even if a device holds a label of another pool.
        #[arg(short = 'f', long)]
        force: bool,
        pool: String,
        #[arg(required = true)]
        devices: Vec<PathBuf>,
    },
    /// Add devices to a pool (allowed while a checkpoint exists; a rewind removes them).
    Add {
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        pool: String,
        #[arg(required = true)]
        devices: Vec<PathBuf>,
    },
    /// Import a pool, or list importable pools when no pool is named.
    Import {
        /// Search this directory for devices (repeatable).
        #[arg(short = 'd', value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Rewind the pool to its checkpoint (permanent unless --readonly).
        #[arg(long)]
        rewind_to_checkpoint: bool,
        /// Import read-only: nothing is written.
        #[arg(long)]
        readonly: bool,
        /// Recovery: roll back to an older uberblock if the newest cannot be opened.
        #[arg(short = 'F')]
        recover: bool,
        /// Import even if the pool seems active on another host or process.
        #[arg(short = 'f')]
        force: bool,
        /// With no pool named: list the importable pools as JSON.
        #[arg(long)]
        json: bool,
        /// The pool's name or numeric identifier.
        pool: Option<String>,
    },
    /// Sync and export a pool: labels are marked exported and devices released.
    Export { pool: String },
    /// Show pool health, devices with their error counters, and the checkpoint state.
    Status {
        /// Also show slop space and txgs.
        #[arg(short = 'v')]
        verbose: bool,
        /// Exact numbers (bytes) instead of human-readable sizes.
        #[arg(short = 'p')]
        parsable: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        pool: Option<String>,
    },
    /// List pools with their space: NAME SIZE ALLOC FREE CKPOINT FRAG CAP HEALTH.
    List {
        /// Also list devices.
        #[arg(short = 'v')]
        verbose: bool,
        /// Scripted mode: no header, tab-separated.
        #[arg(short = 'H')]
        scripted: bool,
        /// Exact numbers (bytes) instead of human-readable sizes.
        #[arg(short = 'p')]
        parsable: bool,
        /// Columns to show, comma separated.
        #[arg(short = 'o', value_name = "COLS")]
        columns: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        pool: Option<String>,
    },
    /// Get pool properties (`all` for every property, or a comma-separated list).
    Get {
        /// Scripted mode: no header, tab-separated.
        #[arg(short = 'H')]
        scripted: bool,
        /// Exact numbers (bytes) instead of human-readable sizes.
        #[arg(short = 'p')]
        parsable: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        property: String,
        pool: String,
    },
    /// Set a pool property: a user property of any name (kept in the pool, shown by `get`),
    /// checkpoint_discard_memory_limit=BYTES (checkpoint-map memory a discard txg may use),
    /// checkpoint_discard_sync_time_us=MICROSECONDS (sync time a discard txg may spend) or
    /// checkpoint_discard_txg_wait_ms=MILLISECONDS (how long a discard round waits for a txg
    /// synced anyway before forcing one; 0 = always force).
    Set {
        /// PROPERTY=VALUE, e.g. comment=backup-target.
        #[arg(value_name = "PROPERTY=VALUE")]
        assignment: String,
        pool: String,
    },
    /// Take a checkpoint of the pool, or discard it with -d.
    Checkpoint {
        /// Discard the checkpoint.
        #[arg(short = 'd', long = "discard")]
        discard: bool,
        /// With -d: wait until the discard has finished.
        #[arg(short = 'w', long = "wait")]
        wait: bool,
        /// The pool (exactly one).
        #[arg(num_args = 0..)]
        args: Vec<String>,
    },
    /// Wait until background activity of a pool has finished.
    Wait {
        /// The activity: discard.
        #[arg(short = 't', value_name = "ACTIVITY", default_value = "discard")]
        activity: String,
        pool: String,
    },
    /// Give the pool a new GUID (refused while a checkpoint exists or is being discarded).
    Reguid { pool: String },
    /// Reset the READ / WRITE / CKSUM error counters of the pool's devices, and resume a
    /// SUSPENDED pool once the cause (a failing device, a full file system under a device
    /// file) is gone: `serve` reopens it at its last committed txg.
    Clear { pool: String },
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Show the pool's command history.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        pool: String,
    },
    /// Walk every block pointer, check every checksum, reconcile space maps and the checkpoint
    /// (a progress bar on a terminal; exit status 1 when problems are found).
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        pool: String,
    },
    /// Print on-disk structures: labels, uberblocks, metaslabs, a space map.
    Inspect(InspectArgs),
    /// Import the pools and export every volume over NBD until SIGINT or SIGTERM.
    Serve(ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a thin volume POOL/VOL.
    Create {
        /// Volume size.
        #[arg(short = 's', long = "size", value_name = "SIZE")]
        size: String,
        /// Block size, 4K to 128K (power of two).
        #[arg(
            short = 'b',
            long = "blocksize",
            value_name = "SIZE",
            default_value = "4K"
        )]
        block_size: String,
        name: String,
    },
    /// Destroy a volume and free its space.
    Destroy { name: String },
    /// List volumes.
    List {
        #[arg(short = 'H')]
        scripted: bool,
        #[arg(short = 'p')]
        parsable: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        pool: Option<String>,
    },
    /// Change a volume's size (shrinking frees the blocks past the new end).
    Resize {
        #[arg(short = 's', long = "size", value_name = "SIZE")]
        size: String,
        name: String,
    },
}

/// What `inspect` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectWhat {
    /// The four labels of every device (pool, guids, layout, state, host).
    Labels,
    /// The labels and every valid uberblock of their rings.
    Uberblocks,
    /// Every metaslab: offset, size, allocated, free, fragmentation, weight, space map.
    Metaslabs,
    /// One space map, header and every entry (--metaslab DEV:INDEX or --checkpoint DEV).
    Spacemap,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ringpool inspect labels tank\n  \
    ringpool inspect uberblocks --device /tmp/d1.img\n  \
    ringpool inspect metaslabs tank\n  \
    ringpool inspect spacemap tank --metaslab 0:3\n  \
    ringpool inspect spacemap tank --checkpoint 0")]
pub struct InspectArgs {
    /// What to show.
    #[arg(value_enum, value_name = "WHAT")]
    pub what: InspectWhat,
    /// The pool (known to the state directory, or found on --device).
    pub pool: Option<String>,
    /// Read these devices directly instead of a known pool (labels: plain reads; metaslabs
    /// and spacemap: a read-only open of the pool on them).
    #[arg(long, value_name = "PATH")]
    pub device: Vec<PathBuf>,
    /// With `spacemap`: the metaslab, as DEVICE:INDEX (e.g. 0:3).
    #[arg(long, value_name = "DEV:INDEX", conflicts_with = "checkpoint")]
    pub metaslab: Option<String>,
    /// With `spacemap`: the checkpoint space map of device DEV (default 0).
    #[arg(long, value_name = "DEV", num_args = 0..=1, default_missing_value = "0")]
    pub checkpoint: Option<u32>,
    /// Exact numbers (bytes) instead of human-readable sizes.
    #[arg(short = 'p')]
    pub parsable: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Pools to serve (default: every known pool, or the embedded demo pool).
    pub pools: Vec<String>,
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: SocketAddr,
    /// Unix socket to listen on as well (default: nbd.sock in the state directory).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Number of reactors (default: one per core).
    #[arg(long)]
    pub reactors: Option<usize>,
    /// While a reactor waits for one device read and has nothing else to do, watch its ring
    /// for up to this many microseconds instead of sleeping (0: off). Saves a sleep and a
    /// wake-up per read at queue depth 1, at the cost of a busy CPU meanwhile; the poll stops
    /// early and pauses for 100 ms whenever the reactor is preempted. Default:
    /// RINGPOOL_REACTOR_READ_SPIN_US, else off.
    #[arg(long, value_name = "US")]
    pub read_spin_us: Option<u64>,
    /// Which reactor serves a new connection, among those with the fewest connections: `irq`
    /// the one on a CPU that takes the disks' completion interrupts, `client` the one on the
    /// CPU the client connected from (then as `irq`), `none` the first. `client` pays when the
    /// client stays on its CPU (pinned), best with --read-spin-us: on a 2-vCPU VM with fio
    /// pinned, 4k reads at queue depth 1 had 0.61x the p50 latency of `irq` (0.92x without
    /// the poll); an unpinned client is moved by the scheduler and gains nothing
    /// (perf/results/README-nbd.md). Default: RINGPOOL_NBD_PLACE, else irq.
    #[arg(long, value_name = "irq|client|none")]
    pub place: Option<Placement>,
    /// Hold a CPU wake-up latency bound of this many microseconds while serving
    /// (/dev/cpu_dma_latency, root only; machine-wide): 0 makes idle CPUs poll instead of
    /// halting. A read at queue depth 1 waits for up to three wake-ups of an idle CPU; on the
    /// 2-vCPU test VM 0 took its p50 from 93-101 us to 66-76 us (the raw file's from 51-54 to
    /// 38-41). Costs power, or host CPU on a VM, while the machine idles. Default:
    /// RINGPOOL_CPU_LATENCY_US, else none.
    #[arg(long, value_name = "US")]
    pub cpu_latency_us: Option<u32>,
    /// Export every volume read-only.
    #[arg(long)]
    pub read_only: bool,
    /// NBD over TLS (NBD_OPT_STARTTLS): `require` refuses clients that do not start TLS, `on`
    /// also serves plain ones. Default with --tls-cert: require.
    #[arg(long, value_enum, requires_all = ["tls_cert", "tls_key"])]
    pub tls: Option<TlsMode>,
    /// The server's certificate chain (PEM) for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1) for TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate issued by a CA in this PEM file (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// `ringpool serve --tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// Offer TLS; plain-text clients are served too.
    On,
    /// Every client must start TLS before anything else.
    Require,
}
