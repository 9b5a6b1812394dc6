//! [`ReactorSet`]: one pinned reactor thread per core.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use super::task::{JoinError, JoinHandle, JoinInner, TaskFuture};
use super::{current_core, Core, CurrentGuard, ReactorConfig, RingInfo, Shared};
use crate::io::error::IoError;

/// A cloneable, `Send` handle to one reactor of a set: spawn onto it from any thread
/// (e.g. an accept loop on reactor 0 handing connections to reactor k).
#[derive(Clone)]
pub struct ReactorHandle {
    index: usize,
    /// The CPU the reactor thread is pinned to (`None`: unpinned).
    cpu: Option<usize>,
    shared: Arc<Shared>,
    info: RingInfo,
}

impl std::fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("index", &self.index)
            .field("cpu", &self.cpu)
            .field("info", &self.info)
            .finish()
    }
}

impl ReactorHandle {
    /// This reactor's index in its set.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The CPU this reactor's thread is pinned to, if it is pinned.
    pub fn cpu(&self) -> Option<usize> {
        self.cpu
    }

    /// What the reactor's ring setup chose.
    pub fn ring_info(&self) -> &RingInfo {
        &self.info
    }

    /// Run `f` on the reactor thread and spawn the future it returns there. The result can
    /// be awaited from any reactor or waited for with [`JoinHandle::join_blocking`].
    /// Resolves to [`JoinError::Rejected`] if the reactor has shut down.
    pub fn spawn<F, Fut, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let join = JoinInner::new();
        let j2 = Arc::clone(&join);
        let job: Box<dyn FnOnce(bool) + Send> = Box::new(move |run| {
            if !run {
                j2.complete(Err(JoinError::Rejected));
                return;
            }
            let Some(core) = current_core() else {
                j2.complete(Err(JoinError::Rejected));
                return;
            };
            // Building the future runs user code: contain a panic like a task panic.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(fut) => core
                    .exec
                    .spawn(&core.shared, Box::pin(TaskFuture::new(fut, j2)), false),
                Err(_) => j2.complete(Err(JoinError::Panicked(
                    "spawn_on closure panicked".to_string(),
                ))),
            }
        });
        if let Err(job) = self.shared.inject(job) {
            job(false);
        }
        JoinHandle::from_inner(join)
    }
}

/// A set of reactor threads, one per core (see [`ReactorConfig`]).
pub struct ReactorSet {
    handles: Vec<ReactorHandle>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ReactorSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorSet")
            .field("reactors", &self.handles)
            .finish()
    }
}

impl ReactorSet {
    /// Start `cfg.reactors` reactor threads (at least one), pinned if `cfg.pin`.
    /// Fails if any ring cannot be set up (the others are stopped).
    pub fn start(cfg: ReactorConfig) -> Result<ReactorSet, IoError> {
        let n = cfg.reactors.max(1);
        let cores = if cfg.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut set = ReactorSet {
            handles: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel::<Result<(Arc<Shared>, RingInfo), IoError>>();
            let cfg_i = cfg.clone();
            let core_id = if cores.is_empty() {
                None
            } else {
                Some(cores[i % cores.len()])
            };
            let spawned = thread::Builder::new()
                .name(format!("{}{i}", cfg.thread_name))
                .spawn(move || {
                    if let Some(id) = core_id {
                        core_affinity::set_for_current(id);
                    }
                    let core = match Core::new(&cfg_i, Some(i)) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let info = core.driver.borrow().info().clone();
                    let guard = match CurrentGuard::install(std::rc::Rc::clone(&core)) {
                        Ok(g) => g,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok((Arc::clone(&core.shared), info)));
                    let shared = Arc::clone(&core.shared);
                    let stop = std::future::poll_fn(move |_| {
                        if shared.shutdown.load(Ordering::SeqCst) {
                            std::task::Poll::Ready(())
                        } else {
                            std::task::Poll::Pending
                        }
                    });
                    if let Err(e) = core.run(stop) {
                        tracing::error!(reactor = i, "reactor loop failed: {e}");
                    }
                    // What the ring did over the reactor's life (SQEs per enter, writes per
                    // write SQE): for diagnostics with RINGPOOL_LOG=debug.
                    tracing::debug!(reactor = i, stats = ?core.driver.borrow().stats(), "ring counters");
                    drop(guard);
                    drop(core);
                });
            let t = match spawned {
                Ok(t) => t,
                Err(e) => {
                    return Err(IoError::ReactorStart {
                        index: i,
                        reason: e.to_string(),
                    })
                }
            };
            match rx.recv() {
                Ok(Ok((shared, info))) => {
                    set.handles.push(ReactorHandle {
                        index: i,
                        cpu: core_id.map(|c| c.id),
                        shared,
                        info,
                    });
                    set.threads.push(t);
                }
                Ok(Err(e)) => {
                    let _ = t.join();
                    return Err(e);
                }
                Err(_) => {
                    let _ = t.join();
                    return Err(IoError::ReactorStart {
                        index: i,
                        reason: "reactor thread exited during setup".into(),
                    });
                }
            }
        }
        Ok(set)
    }

    /// Number of reactors.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True if the set has no reactors (only after shutdown).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// A `Send` handle to reactor `i`.
    pub fn handle(&self, i: usize) -> Option<ReactorHandle> {
        self.handles.get(i).cloned()
    }

    /// Ring facts of reactor `i`.
    pub fn ring_info(&self, i: usize) -> Option<RingInfo> {
        self.handles.get(i).map(|h| h.info.clone())
    }

    /// Run `f` on reactor `i` and spawn its future there; see [`ReactorHandle::spawn`].
    /// An out-of-range `i` yields a handle resolving to [`JoinError::Rejected`].
    pub fn spawn_on<F, Fut, T>(&self, i: usize, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        match self.handles.get(i) {
            Some(h) => h.spawn(f),
            None => {
                let join = JoinInner::new();
                join.complete(Err(JoinError::Rejected));
                JoinHandle::from_inner(join)
            }
        }
    }

    /// Stop every reactor: no new tasks are accepted, running tasks are cancelled (dropped,
    /// their in-flight ops are cancelled and reaped), and the threads are joined.
    pub fn shutdown(&mut self) {
        for h in &self.handles {
            h.shared.shutdown.store(true, Ordering::SeqCst);
            h.shared.main_woken.store(true, Ordering::SeqCst);
            h.shared.signal();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.handles.clear();
    }
}

impl Drop for ReactorSet {
    fn drop(&mut self) {
        self.shutdown();
    }
}
