//! The per-reactor executor: local tasks, Send + Sync wakers, join handles.
//!
//! Tasks live in a thread-local `Slab`; a task is identified by (slab key, generation) so a
//! stale waker of a finished task never polls a newer task that reuses its slot. Wakers are
//! `Send + Sync`: waking on the reactor's own thread pushes onto the local run queue; waking
//! from any other thread pushes onto the reactor's mutex-protected remote queue and signals the
//! reactor's eventfd (which the ring always has a read armed on), so a sleeping reactor wakes.
//!
//! **Two run queues.** Runnable tasks wait in FIFO order, except that a task spawned with
//! [`super::spawn_local_first`] is polled for the first time, and a task that called
//! [`super::prefer_current_task`] is polled every time it is woken, before the tasks already
//! waiting in the ordinary queue (still in FIFO order among themselves). The NBD server uses it
//! so that a request it has just parsed reaches the device, and newly received requests get
//! parsed, before the replies of a burst of completed reads are built: a virtio disk completes
//! a whole queue of reads at once, and building 30 replies takes ~60 us in which the device
//! would otherwise get nothing new. On the 2-vCPU test box it neither gained nor lost
//! measurably (A/B in perf/results/README-nbd.md): there the disk's batches set the cycle.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::{Condvar, Mutex};
use slab::Slab;

use super::{current_core, Shared};

/// Pseudo task key of the `block_on` root future.
pub(crate) const MAIN_TASK: usize = usize::MAX;

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskSlot {
    gen: u64,
    fut: Option<LocalFuture>,
    waker: Waker,
    queued: bool,
    /// Every wake-up goes to the front queue ([`Executor::prefer_current`]).
    preferred: bool,
}

/// Thread-local task storage and run queue of one reactor.
pub(crate) struct Executor {
    tasks: RefCell<Slab<TaskSlot>>,
    run_queue: RefCell<VecDeque<(usize, u64)>>,
    /// Polled before `run_queue` (see the module docs).
    front_queue: RefCell<VecDeque<(usize, u64)>>,
    /// Key of the task being polled.
    current: Cell<Option<usize>>,
    next_gen: Cell<u64>,
}

impl Executor {
    pub(crate) fn new() -> Executor {
        Executor {
            tasks: RefCell::new(Slab::with_capacity(64)),
            run_queue: RefCell::new(VecDeque::with_capacity(64)),
            front_queue: RefCell::new(VecDeque::with_capacity(16)),
            current: Cell::new(None),
            next_gen: Cell::new(1),
        }
    }

    /// Add a task and schedule its first poll (before the ordinary queue with `first`).
    pub(crate) fn spawn(&self, shared: &Arc<Shared>, fut: LocalFuture, first: bool) {
        let gen = self.next_gen.get();
        self.next_gen.set(gen + 1);
        let key = {
            let mut tasks = self.tasks.borrow_mut();
            let entry = tasks.vacant_entry();
            let key = entry.key();
            let waker = Waker::from(Arc::new(TaskWaker {
                shared: Arc::clone(shared),
                key,
                gen,
            }));
            entry.insert(TaskSlot {
                gen,
                fut: Some(fut),
                waker,
                queued: true,
                preferred: false,
            });
            key
        };
        let queue = if first {
            &self.front_queue
        } else {
            &self.run_queue
        };
        queue.borrow_mut().push_back((key, gen));
    }

    /// Makes every later wake-up of the task being polled go to the front queue. Returns
    /// false outside a task (the `block_on` root future).
    pub(crate) fn prefer_current(&self) -> bool {
        let Some(key) = self.current.get() else {
            return false;
        };
        match self.tasks.borrow_mut().get_mut(key) {
            Some(slot) => {
                slot.preferred = true;
                true
            }
            None => false,
        }
    }

    /// Schedule task (key, gen) if it still exists and is not queued already.
    pub(crate) fn schedule(&self, key: usize, gen: u64) {
        let mut tasks = self.tasks.borrow_mut();
        if let Some(slot) = tasks.get_mut(key) {
            if slot.gen == gen && !slot.queued {
                slot.queued = true;
                let queue = if slot.preferred {
                    &self.front_queue
                } else {
                    &self.run_queue
                };
                queue.borrow_mut().push_back((key, gen));
            }
        }
    }

    /// True when no task is runnable.
    pub(crate) fn is_idle(&self) -> bool {
        self.run_queue.borrow().is_empty() && self.front_queue.borrow().is_empty()
    }

    /// Number of live tasks.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// Poll up to `budget` runnable tasks. Returns how many were polled.
    pub(crate) fn run_ready(&self, budget: usize) -> usize {
        let mut polled = 0;
        while polled < budget {
            let next = self.front_queue.borrow_mut().pop_front();
            let Some((key, gen)) = next.or_else(|| self.run_queue.borrow_mut().pop_front()) else {
                break;
            };
            let taken = {
                let mut tasks = self.tasks.borrow_mut();
                match tasks.get_mut(key) {
                    Some(slot) if slot.gen == gen => {
                        slot.queued = false;
                        slot.fut.take().map(|f| (f, slot.waker.clone()))
                    }
                    _ => None,
                }
            };
            let Some((mut fut, waker)) = taken else {
                continue;
            };
            polled += 1;
            // No executor borrow is held while polling: the task may spawn, wake or drop ops.
            let mut cx = Context::from_waker(&waker);
            let outer = self.current.replace(Some(key));
            let polled_result = fut.as_mut().poll(&mut cx);
            self.current.set(outer);
            match polled_result {
                Poll::Ready(()) => {
                    let slot = self.tasks.borrow_mut().remove(key);
                    drop(slot);
                    drop(fut);
                }
                Poll::Pending => {
                    if let Some(slot) = self.tasks.borrow_mut().get_mut(key) {
                        slot.fut = Some(fut);
                    }
                }
            }
        }
        polled
    }

    /// Drop every task (cancellation). Futures are dropped outside the slab borrow because
    /// their destructors may wake, spawn or orphan in-flight ops.
    pub(crate) fn cancel_all(&self) {
        for _ in 0..16 {
            let drained: Vec<TaskSlot> = self.tasks.borrow_mut().drain().collect();
            if drained.is_empty() {
                break;
            }
            drop(drained);
        }
        self.run_queue.borrow_mut().clear();
        self.front_queue.borrow_mut().clear();
    }
}

/// The waker of one task (or of the `block_on` root when `key == MAIN_TASK`).
pub(crate) struct TaskWaker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: usize,
    pub(crate) gen: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let local = current_core().filter(|c| Arc::ptr_eq(&c.shared, &self.shared));
        if self.key == MAIN_TASK {
            self.shared
                .main_woken
                .store(true, std::sync::atomic::Ordering::SeqCst);
            if local.is_none() {
                self.shared.signal();
            }
            return;
        }
        match local {
            Some(core) => core.exec.schedule(self.key, self.gen),
            None => {
                self.shared.remote.lock().push((self.key, self.gen));
                self.shared.signal();
            }
        }
    }
}

/// Why a task produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The task was dropped before completing (reactor shutdown or `abort`).
    #[error("task cancelled")]
    Cancelled,
    /// The task panicked; the message is kept.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The reactor was shut down (or the index was invalid) before the task could start.
    #[error("reactor not accepting tasks")]
    Rejected,
}

struct JoinState<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
    finished: bool,
    abort: bool,
    /// Waker of the task itself, so `abort` can get it polled (and dropped) promptly.
    task_waker: Option<Waker>,
}

pub(crate) struct JoinInner<T> {
    state: Mutex<JoinState<T>>,
    cond: Condvar,
}

impl<T> JoinInner<T> {
    pub(crate) fn new() -> Arc<JoinInner<T>> {
        Arc::new(JoinInner {
            state: Mutex::new(JoinState {
                result: None,
                waker: None,
                finished: false,
                abort: false,
                task_waker: None,
            }),
            cond: Condvar::new(),
        })
    }

    pub(crate) fn complete(&self, r: Result<T, JoinError>) {
        let waker = {
            let mut st = self.state.lock();
            if st.finished {
                return;
            }
            st.finished = true;
            st.result = Some(r);
            st.task_waker = None;
            st.waker.take()
        };
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Handle to a spawned task. Await it (from any reactor) or [`JoinHandle::join_blocking`] it
/// (from a non-reactor thread). Dropping the handle detaches the task. `Send` when `T: Send`.
pub struct JoinHandle<T> {
    inner: Arc<JoinInner<T>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    pub(crate) fn from_inner(inner: Arc<JoinInner<T>>) -> JoinHandle<T> {
        JoinHandle { inner }
    }

    /// True once the task has completed, panicked or been cancelled.
    pub fn is_finished(&self) -> bool {
        self.inner.state.lock().finished
    }

    /// Block the calling thread until the task finishes. Never call this on the reactor thread
    /// that runs the task (it would deadlock).
    pub fn join_blocking(self) -> Result<T, JoinError> {
        let mut st = self.inner.state.lock();
        while !st.finished {
            self.inner.cond.wait(&mut st);
        }
        st.result.take().unwrap_or(Err(JoinError::Cancelled))
    }

    /// Ask the task to stop: it is dropped at its next scheduling point and the handle resolves
    /// to [`JoinError::Cancelled`].
    pub fn abort(&self) {
        let w = {
            let mut st = self.inner.state.lock();
            st.abort = true;
            st.task_waker.clone()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.inner.state.lock();
        if st.finished {
            return Poll::Ready(st.result.take().unwrap_or(Err(JoinError::Cancelled)));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Wraps a task's future: catches panics, stores the output, and reports cancellation on drop.
pub(crate) struct TaskFuture<F: Future> {
    fut: Pin<Box<F>>,
    join: Arc<JoinInner<F::Output>>,
}

impl<F: Future> TaskFuture<F> {
    pub(crate) fn new(fut: F, join: Arc<JoinInner<F::Output>>) -> TaskFuture<F> {
        TaskFuture {
            fut: Box::pin(fut),
            join,
        }
    }
}

impl<F: Future> Future for TaskFuture<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut st = self.join.state.lock();
            if st.finished {
                return Poll::Ready(());
            }
            if st.abort {
                drop(st);
                self.join.complete(Err(JoinError::Cancelled));
                return Poll::Ready(());
            }
            if st.task_waker.is_none() {
                st.task_waker = Some(cx.waker().clone());
            }
        }
        let this = &mut *self;
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => {
                this.join.complete(Ok(v));
                Poll::Ready(())
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                this.join.complete(Err(JoinError::Panicked(msg)));
                Poll::Ready(())
            }
        }
    }
}

impl<F: Future> Drop for TaskFuture<F> {
    fn drop(&mut self) {
        // No-op if already completed.
        self.join.complete(Err(JoinError::Cancelled));
    }
}
