//! [`Notify`]: a cross-thread wake-up primitive (like tokio's). `notify_one` wakes one waiter
//! or, if nobody waits, stores a single permit that the next `notified().await` consumes;
//! `notify_waiters` wakes every current waiter without storing a permit. `Notify` is
//! `Send + Sync`; share it in an `Arc`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

struct Waiter {
    notified: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

#[derive(Default)]
struct State {
    permit: bool,
    waiters: VecDeque<Arc<Waiter>>,
}

/// See the module docs.
#[derive(Default)]
pub struct Notify {
    state: Mutex<State>,
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Notify")
            .field("permit", &st.permit)
            .field("waiters", &st.waiters.len())
            .finish()
    }
}

impl Notify {
    /// A new `Notify` without a permit.
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Wake one waiter (FIFO), or store a permit if there is none.
    pub fn notify_one(&self) {
        let w = {
            let mut st = self.state.lock();
            match st.waiters.pop_front() {
                Some(w) => {
                    w.notified.store(true, Ordering::SeqCst);
                    w
                }
                None => {
                    st.permit = true;
                    return;
                }
            }
        };
        let k = w.waker.lock().take();
        if let Some(k) = k {
            k.wake();
        }
    }

    /// Wake every current waiter; stores no permit.
    pub fn notify_waiters(&self) {
        let all: Vec<Arc<Waiter>> = self.state.lock().waiters.drain(..).collect();
        for w in all {
            w.notified.store(true, Ordering::SeqCst);
            let k = w.waker.lock().take();
            if let Some(k) = k {
                k.wake();
            }
        }
    }

    /// A future that completes on the next notification (or consumes a stored permit).
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            waiter: None,
            done: false,
        }
    }
}

/// Future of [`Notify::notified`].
#[must_use = "futures do nothing unless awaited"]
pub struct Notified<'a> {
    notify: &'a Notify,
    waiter: Option<Arc<Waiter>>,
    done: bool,
}

impl std::fmt::Debug for Notified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notified")
            .field("done", &self.done)
            .finish()
    }
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        match &self.waiter {
            None => {
                let mut st = self.notify.state.lock();
                if st.permit {
                    st.permit = false;
                    drop(st);
                    self.done = true;
                    return Poll::Ready(());
                }
                let w = Arc::new(Waiter {
                    notified: AtomicBool::new(false),
                    waker: Mutex::new(Some(cx.waker().clone())),
                });
                st.waiters.push_back(Arc::clone(&w));
                drop(st);
                self.waiter = Some(w);
                Poll::Pending
            }
            Some(w) => {
                if w.notified.load(Ordering::SeqCst) {
                    self.done = true;
                    return Poll::Ready(());
                }
                *w.waker.lock() = Some(cx.waker().clone());
                // Re-check: a notification may have raced with the waker update.
                if w.notified.load(Ordering::SeqCst) {
                    self.done = true;
                    return Poll::Ready(());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        let Some(w) = self.waiter.take() else {
            return;
        };
        if self.done {
            return;
        }
        let mut st = self.notify.state.lock();
        if w.notified.load(Ordering::SeqCst) {
            // We were chosen by notify_one but never observed it: pass it on.
            drop(st);
            self.notify.notify_one();
        } else {
            st.waiters.retain(|x| !Arc::ptr_eq(x, &w));
        }
    }
}
