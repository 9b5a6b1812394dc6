//! [`NbdServer`]: listeners, the acceptor and connection placement on the reactors.
//!
//! Listeners (TCP, by default 127.0.0.1:10809, and/or a unix socket) are bound synchronously in
//! [`NbdServer::start`] so that errors and the actual port come back to the caller. Accepting
//! runs on the first serving reactor; each accepted connection goes to the serving reactor with
//! the fewest open connections, among those to the one on its client's CPU (with
//! [`Placement::Client`]), then to a preferred one ([`NbdServerConfig::prefer_reactors`]), else
//! the first (see [`super::place`]), and lives there for its whole life (socket I/O through that
//! reactor's ring). So where a lone client is served does not depend
//! on how many connections came and went before it (with round robin it did, and two benchmark
//! scripts measured the same server on different reactors: perf/results/README-nbd.md).
//! [`NbdServer::shutdown`] stops accepting, answers further handshake options with
//! ERR_SHUTDOWN, stops reading requests, lets in-flight requests finish and their replies go
//! out, then waits for every connection to close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::conn;
use super::exports::Exports;
use super::handshake::{HandshakeConfig, TlsPolicy};
use super::place::{self, Family, Placement};
use super::tls::TlsConfig;
use super::NbdError;
use crate::io::net::{Stream, TcpListener, UnixListener};
use crate::io::{JoinHandle, ReactorHandle, ReactorSet};

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct NbdServerConfig {
    /// TCP listen address (default 127.0.0.1:10809; `None`: no TCP).
    pub tcp: Option<SocketAddr>,
    /// Unix socket path (default none). A stale socket file is replaced.
    pub unix: Option<PathBuf>,
    /// Connections beyond this are closed right after accept (default 1024).
    pub max_connections: usize,
    /// Largest READ/WRITE payload (default 32 MiB), advertised in NBD_INFO_BLOCK_SIZE.
    pub max_payload: u32,
    /// Oversized WRITE payloads up to this size are read and discarded with EINVAL; larger
    /// ones (and any oversized payload under extended headers) disconnect (default 128 MiB).
    pub max_discard: u64,
    /// Per-connection cap on bytes held by in-flight requests (default 64 MiB; at least
    /// `max_payload`).
    pub max_inflight_bytes: u64,
    /// Per-connection cap on in-flight requests (default 512).
    pub max_inflight_requests: usize,
    /// Indexes of the reactors that serve connections (default: all of the set).
    pub reactors: Option<Vec<usize>>,
    /// Reactors (indexes in the set) a new connection goes to when they have no more open
    /// connections than the others, e.g. those pinned to the CPUs that take the exported
    /// devices' completion interrupts ([`crate::io::irq::completion_cpus`], what `ringpool
    /// serve` passes unless `RINGPOOL_NBD_PREFER_IRQ_CPU=0`). A connection elsewhere learns of
    /// every device completion through a cross-CPU wake-up: on the 2-vCPU test box (virtio-blk,
    /// interrupts on CPU 1) a lone client's 4 KiB reads at QD1 had a p50 of 87–91 us on the
    /// reactor of CPU 1 against 118–128 on CPU 0 (alternated, both pool sides), at the price of
    /// 8–19 % of the IOPS at QD32, where reactor and interrupts then share one CPU
    /// (perf/results/README-nbd.md). Default empty: no preference.
    pub prefer_reactors: Vec<usize>,
    /// How a connection picks among the reactors with the fewest open connections: the
    /// preferred ones ([`Placement::Irq`], the default), the one pinned to the client's CPU
    /// first ([`Placement::Client`]) or the first ([`Placement::None`]). `Client` pays only for
    /// a client that stays on its CPU: on the 2-vCPU test box, fio pinned to CPU 0 had a QD1
    /// read p50 of 0.87–0.92x, and 0.61–0.64x with [`crate::io::ReactorConfig::read_spin`];
    /// unpinned, the scheduler moved it after connecting and it gained nothing
    /// (perf/results/README-nbd.md). `RINGPOOL_NBD_PLACE=irq|client|none` in the environment
    /// sets the default.
    pub placement: Placement,
    /// Handshake limits and switches (its `tls` is set from [`NbdServerConfig::tls`]).
    pub handshake: HandshakeConfig,
    /// NBD_OPT_STARTTLS: the certificate, key and policy (default `None`: no TLS, STARTTLS
    /// gets ERR_POLICY).
    pub tls: Option<TlsConfig>,
    /// A client that has not entered transmission this long after connecting is dropped
    /// (default 10 s, like qemu-nbd's handshake limit; `None`: no limit).
    pub handshake_timeout: Option<Duration>,
    /// Hand small WRITEs that arrive while earlier ones are being written to the backend
    /// together, when it gathers writes ([`ExportBackend::gathers_writes`]). Default on;
    /// `RINGPOOL_NBD_GATHER=0` in the environment turns the default off (for comparisons).
    ///
    /// [`ExportBackend::gathers_writes`]: super::backend::ExportBackend::gathers_writes
    pub gather_writes: bool,
    /// Hand WRITEs without FUA to the backend's [`ExportBackend::write_back`] (gathered ones
    /// to [`ExportBackend::write_batch_back`]), which may acknowledge them before they reach
    /// the device (a ringpool volume does, within a bound;
    /// durability after FLUSH is unchanged; a device error after the acknowledgement
    /// suspends the pool so that every later FLUSH fails, see `pool/volume/writeback.rs`).
    /// Default on: in alternated A/Bs of 128 KiB sequential writes at QD8 on the 2-vCPU test
    /// box it gave 1.075x the IOPS (median of 8 rounds, every one above 1) on the quiet
    /// machine and 1.21x at real-time priority under load, p50 0.4-0.9x, p99 1.04x quiet and
    /// up to 1.9x with the disk shared; see perf/results/README-nbd.md.
    /// `RINGPOOL_NBD_WRITE_BACK=0` in the environment turns the default off.
    ///
    /// [`ExportBackend::write_back`]: super::backend::ExportBackend::write_back
    /// [`ExportBackend::write_batch_back`]: super::backend::ExportBackend::write_batch_back
    pub write_back: bool,
    /// Once this many small replies are queued on a connection and no send is in flight, the
    /// request task that queued the last one sends them at once instead of leaving them to the
    /// connection's writer task, which runs only after every task woken by the same burst of
    /// completions (0: the writer only). Default 0 (off): on the 2-vCPU test box, 4k randread
    /// QD32 through `ringpool serve` with 8 did 0.87x (median of 10 alternated pairs, 0.71 to
    /// 1.20) the IOPS of the writer alone when server and fio ran at real-time priority (no CPU
    /// contention), and anything from 0.4x to 2x under the other helpers' load. The client
    /// shares a core with the reactor often enough that waking it early costs more than it
    /// overlaps. `RINGPOOL_NBD_REPLY_FLUSH=N` in the environment sets the default (for
    /// comparisons).
    pub reply_flush: usize,
    /// A send of queued replies of at least this many bytes in all (large read replies) is
    /// made by one of the kernel's io-wq worker threads (IOSQE_ASYNC) rather than inside the
    /// reactor's `io_uring_enter` (0: never). The socket send copies the replies and, on a
    /// local connection, does the client's wake-up too: about 60 % of the reactor's CPU in
    /// 128 KiB sequential reads, which a worker then spends on the other core while the
    /// reactor serves the next requests (one connection is otherwise capped at one core).
    /// `RINGPOOL_NBD_OFFLOAD=N` in the environment sets the default (0 for comparisons).
    pub offload_min: usize,
}

impl Default for NbdServerConfig {
    fn default() -> Self {
        NbdServerConfig {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))),
            unix: None,
            max_connections: 1024,
            max_payload: 32 << 20,
            max_discard: 128 << 20,
            max_inflight_bytes: 64 << 20,
            max_inflight_requests: 512,
            reactors: None,
            prefer_reactors: Vec::new(),
            placement: crate::knob::env("RINGPOOL_NBD_PLACE").unwrap_or_default(),
            handshake: HandshakeConfig::default(),
            tls: None,
            handshake_timeout: Some(Duration::from_secs(10)),
            gather_writes: crate::knob::enabled("RINGPOOL_NBD_GATHER"),
            write_back: crate::knob::enabled("RINGPOOL_NBD_WRITE_BACK"),
            reply_flush: crate::knob::env("RINGPOOL_NBD_REPLY_FLUSH")
                .unwrap_or(DEFAULT_REPLY_FLUSH),
            offload_min: crate::knob::env("RINGPOOL_NBD_OFFLOAD").unwrap_or(DEFAULT_OFFLOAD_MIN),
        }
    }
}

/// Default of [`NbdServerConfig::reply_flush`].
pub const DEFAULT_REPLY_FLUSH: usize = 0;

/// Default of [`NbdServerConfig::offload_min`].
pub const DEFAULT_OFFLOAD_MIN: usize = 64 << 10;

/// Counters of a server since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// Sends of queued replies made by a request task at [`NbdServerConfig::reply_flush`]
    /// queued replies, ahead of the writer task.
    pub early_reply_flushes: u64,
}

/// State shared by the server handle, the acceptors and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: NbdServerConfig,
    pub(crate) exports: Arc<Exports>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Open connections per serving reactor (same order as the acceptors' target list).
    live: Vec<AtomicUsize>,
    /// Whether each serving reactor is a preferred one.
    preferred: Vec<bool>,
    /// The CPU each serving reactor is pinned to (`None`: unpinned).
    cpus: Vec<Option<usize>>,
    /// Reactor index (in the set) of each serving reactor.
    reactor_index: Vec<usize>,
    /// Live connections: a duplicate of each socket, to shut it down from another thread.
    conns: Mutex<HashMap<u64, OwnedFd>>,
    conns_changed: Condvar,
    /// See [`NbdStats::early_reply_flushes`].
    pub(crate) early_flushes: AtomicU64,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The serving reactor for a new connection (a slot of the target list) whose client last
    /// ran on `client_cpu`: see [`place::choose`]. Only the acceptors place connections, so the
    /// counts cannot change under it except downwards (closes).
    fn place(&self, client_cpu: Option<usize>) -> usize {
        let live: Vec<usize> = self
            .live
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        let client = client_cpu.and_then(|c| self.cpus.iter().position(|&r| r == Some(c)));
        place::choose(&live, &self.preferred, client)
    }
}

/// Deregisters a connection when its task ends (or is never started).
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
    /// Serving-reactor slot counted in `Shared::live`.
    slot: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.live[self.slot].fetch_sub(1, Ordering::Relaxed);
        let mut g = self.shared.conns.lock();
        g.remove(&self.id);
        self.shared.conns_changed.notify_all();
    }
}

#[derive(Debug, Clone)]
enum Listener {
    Tcp(Arc<TcpListener>),
    Unix(Arc<UnixListener>),
}

impl Listener {
    async fn accept(&self) -> Result<Stream, crate::io::IoError> {
        match self {
            Listener::Tcp(l) => l.accept().await,
            Listener::Unix(l) => l.accept().await,
        }
    }
    fn raw_fd(&self) -> i32 {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
    fn family(&self) -> Family {
        match self {
            Listener::Tcp(_) => Family::Tcp,
            Listener::Unix(_) => Family::Unix,
        }
    }
}

/// A running NBD server. Dropping it shuts it down (see [`NbdServer::shutdown`]).
#[derive(Debug)]
pub struct NbdServer {
    shared: Arc<Shared>,
    tcp_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    listeners: Vec<Listener>,
    acceptors: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl NbdServer {
    /// Binds the listeners and starts accepting on `reactors`.
    pub fn start(
        cfg: NbdServerConfig,
        exports: Arc<Exports>,
        reactors: &ReactorSet,
    ) -> Result<NbdServer, NbdError> {
        let targets: Vec<ReactorHandle> = match &cfg.reactors {
            Some(list) => list.iter().filter_map(|&i| reactors.handle(i)).collect(),
            None => (0..reactors.len())
                .filter_map(|i| reactors.handle(i))
                .collect(),
        };
        if targets.is_empty() {
            return Err(NbdError::Config(
                "no reactor to serve connections on".into(),
            ));
        }
        if cfg.tcp.is_none() && cfg.unix.is_none() {
            return Err(NbdError::Config(
                "neither a TCP address nor a unix socket to listen on".into(),
            ));
        }
        let mut cfg = cfg;
        cfg.max_payload = cfg.max_payload.clamp(4096, 1 << 30);
        cfg.max_inflight_bytes = cfg.max_inflight_bytes.max(u64::from(cfg.max_payload) * 2);
        // An option must fit the receive buffer of a connection.
        cfg.handshake.max_option_len = cfg.handshake.max_option_len.min(64 * 1024);
        // The handshake offers (or requires) what the server can do, nothing else.
        cfg.handshake.tls = match &cfg.tls {
            None => TlsPolicy::Off,
            Some(t) if t.require => TlsPolicy::Required,
            Some(_) => TlsPolicy::Offered,
        };
        let mut listeners = Vec::new();
        let mut tcp_addr = None;
        if let Some(addr) = cfg.tcp {
            let l = TcpListener::bind(addr).map_err(|e| NbdError::Listen {
                addr: addr.to_string(),
                source: e,
            })?;
            tcp_addr = Some(l.local_addr()?);
            listeners.push(Listener::Tcp(Arc::new(l)));
        }
        let unix_path = cfg.unix.clone();
        if let Some(p) = &unix_path {
            // A socket left behind by a previous run would make bind fail: replace it.
            if std::fs::symlink_metadata(p).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) {
                let _ = std::fs::remove_file(p);
            }
            let l = UnixListener::bind(p).map_err(|e| NbdError::Listen {
                addr: p.display().to_string(),
                source: e,
            })?;
            listeners.push(Listener::Unix(Arc::new(l)));
        }
        let preferred: Vec<bool> = targets
            .iter()
            .map(|t| cfg.placement != Placement::None && cfg.prefer_reactors.contains(&t.index()))
            .collect();
        if preferred.iter().any(|&p| p) {
            tracing::info!(prefer = ?cfg.prefer_reactors, "NBD connections prefer these reactors");
        }
        if cfg.placement == Placement::Client {
            tracing::info!("NBD connections prefer the reactor of their client's CPU");
        }
        let shared = Arc::new(Shared {
            live: targets.iter().map(|_| AtomicUsize::new(0)).collect(),
            preferred,
            cpus: targets.iter().map(ReactorHandle::cpu).collect(),
            reactor_index: targets.iter().map(ReactorHandle::index).collect(),
            cfg,
            exports,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            conns_changed: Condvar::new(),
            early_flushes: AtomicU64::new(0),
        });
        let acceptors = listeners
            .iter()
            .map(|l| {
                let (l, sh, t) = (l.clone(), Arc::clone(&shared), targets.clone());
                targets[0].spawn(move || accept_loop(l, sh, t))
            })
            .collect();
        tracing::info!(tcp = ?tcp_addr, unix = ?unix_path, reactors = targets.len(), "NBD server listening");
        Ok(NbdServer {
            shared,
            tcp_addr,
            unix_path,
            listeners,
            acceptors,
            stopped: false,
        })
    }

    /// The bound TCP address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The unix socket path.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix_path.as_deref()
    }

    /// Counters since the server started.
    pub fn stats(&self) -> NbdStats {
        NbdStats {
            early_reply_flushes: self.shared.early_flushes.load(Ordering::Relaxed),
        }
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().len()
    }

    /// Open connections per serving reactor: (reactor index in the set, connections).
    pub fn connections_per_reactor(&self) -> Vec<(usize, usize)> {
        self.shared
            .reactor_index
            .iter()
            .zip(&self.shared.live)
            .map(|(&r, n)| (r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// The export registry served.
    pub fn exports(&self) -> &Arc<Exports> {
        &self.shared.exports
    }

    /// Stops accepting, drains every connection (in-flight requests complete and are answered)
    /// and waits up to `timeout` for them to close; connections still open then (a client that
    /// stopped reading its replies) are cut off. Call it from outside the reactors (it blocks).
    /// Returns the number of connections still open at the end.
    pub fn shutdown_timeout(&mut self, timeout: Duration) -> usize {
        if self.stopped {
            return self.connections();
        }
        self.stopped = true;
        self.shared.stopping.store(true, Ordering::Release);
        for l in &self.listeners {
            // Wakes an accept that is waiting in the ring.
            // SAFETY: plain syscall on a descriptor the listener (kept alive by self) owns.
            unsafe { libc::shutdown(l.raw_fd(), libc::SHUT_RDWR) };
        }
        for a in &self.acceptors {
            a.abort();
        }
        let in_reactor = crate::io::in_reactor();
        for a in self.acceptors.drain(..) {
            if !in_reactor {
                let _ = a.join_blocking();
            }
        }
        {
            let g = self.shared.conns.lock();
            for fd in g.values() {
                // Stop reading requests; replies still go out.
                // SAFETY: syscall on a descriptor owned by the registry entry.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
            }
        }
        let mut left = 0;
        if !in_reactor {
            left = self.wait_for_connections(timeout);
            if left > 0 {
                // Clients that stopped reading keep their writer blocked: cut them off.
                let g = self.shared.conns.lock();
                for fd in g.values() {
                    // SAFETY: syscall on a descriptor owned by the registry entry.
                    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
                }
                drop(g);
                left = self.wait_for_connections(Duration::from_secs(5));
            }
        }
        if left > 0 {
            tracing::warn!(
                connections = left,
                "NBD shutdown: connections still open at the deadline"
            );
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!("NBD server stopped");
        left
    }

    fn wait_for_connections(&self, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.shared.conns.lock();
        while !g.is_empty() {
            if self
                .shared
                .conns_changed
                .wait_until(&mut g, deadline)
                .timed_out()
            {
                break;
            }
        }
        g.len()
    }

    /// [`NbdServer::shutdown_timeout`] with 30 seconds.
    pub fn shutdown(&mut self) {
        self.shutdown_timeout(Duration::from_secs(30));
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(l: Listener, shared: Arc<Shared>, targets: Vec<ReactorHandle>) {
    loop {
        let r = l.accept().await;
        if shared.stopping() {
            return;
        }
        let stream = match r {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                crate::io::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the stream owns this descriptor and is alive for the whole call.
        let dup = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
        let dup = match dup {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register connection");
                continue;
            }
        };
        {
            let mut g = shared.conns.lock();
            if g.len() >= shared.cfg.max_connections {
                tracing::warn!(
                    max = shared.cfg.max_connections,
                    "too many NBD connections; refusing one"
                );
                continue;
            }
            g.insert(id, dup);
        }
        // Learnt before the handshake: the client has just run its connect and now waits for
        // the greeting, which the serving reactor sends. (A unix client costs a read of a small
        // /proc file on the acceptor's thread, once per connection.)
        let client_cpu = (shared.cfg.placement == Placement::Client)
            .then(|| place::client_cpu(stream.as_raw_fd(), l.family()))
            .flatten();
        let k = shared.place(client_cpu);
        shared.live[k].fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard {
            shared: Arc::clone(&shared),
            id,
            slot: k,
        };
        let sh = Arc::clone(&shared);
        tracing::debug!(
            conn = id,
            reactor = targets[k].index(),
            client_cpu = ?client_cpu,
            "connection accepted"
        );
        drop(targets[k].spawn(move || async move {
            let _guard = guard;
            conn::serve(stream, sh, id).await;
        }));
    }
}
