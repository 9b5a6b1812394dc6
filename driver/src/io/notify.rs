//! [`Notify`]: a cross-thread wake-up primitive (like tokio's). `notify_one` wakes one waiter
//! or, if nobody waits, stores a single permit that the next `notified().await` consumes;
//! `notify_waiters` wakes every current waiter without storing a permit. `Notify` is
//! `Send + Sync`; share it in an `Arc`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// `Waiter::notified` values.
const NOT_NOTIFIED: u8 = 0;
/// Chosen by `notify_one`: must be passed on if the waiter goes away without observing it.
const NOTIFIED_ONE: u8 = 1;
/// Woken by `notify_waiters`: nothing to pass on.
const NOTIFIED_ALL: u8 = 2;

struct Waiter {
    notified: AtomicU8,
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
                    w.notified.store(NOTIFIED_ONE, Ordering::SeqCst);
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
            w.notified.store(NOTIFIED_ALL, Ordering::SeqCst);
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
                    notified: AtomicU8::new(NOT_NOTIFIED),
                    waker: Mutex::new(Some(cx.waker().clone())),
                });
                st.waiters.push_back(Arc::clone(&w));
                drop(st);
                self.waiter = Some(w);
                Poll::Pending
            }
            Some(w) => {
                if w.notified.load(Ordering::SeqCst) != NOT_NOTIFIED {
                    self.done = true;
                    return Poll::Ready(());
                }
                *w.waker.lock() = Some(cx.waker().clone());
                // Re-check: a notification may have raced with the waker update.
                if w.notified.load(Ordering::SeqCst) != NOT_NOTIFIED {
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
        match w.notified.load(Ordering::SeqCst) {
            NOT_NOTIFIED => st.waiters.retain(|x| !Arc::ptr_eq(x, &w)),
            NOTIFIED_ONE => {
                // Chosen by notify_one but never observed: pass the notification on.
                drop(st);
                self.notify.notify_one();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(n: &mut Pin<&mut Notified<'_>>) -> bool {
        n.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn permit_and_handoff() {
        let n = Notify::new();
        n.notify_one();
        let mut a = std::pin::pin!(n.notified());
        assert!(poll(&mut a), "stored permit consumed");
        let mut b = std::pin::pin!(n.notified());
        assert!(!poll(&mut b));
        n.notify_waiters();
        assert!(poll(&mut b));
        // notify_waiters stores no permit.
        let mut c = std::pin::pin!(n.notified());
        assert!(!poll(&mut c));
        {
            let d = n.notified();
            let mut d = std::pin::pin!(d);
            assert!(!poll(&mut d));
            // c is first in line: notify_one picks c.
            n.notify_one();
            assert!(!poll(&mut d));
        }
        assert!(poll(&mut c));
        // A chosen waiter dropped without observing passes its notification on.
        let e = Box::pin(n.notified());
        let mut e = e;
        assert!(e
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        n.notify_one();
        drop(e);
        let mut f = std::pin::pin!(n.notified());
        assert!(poll(&mut f), "handed-off notification becomes a permit");
    }
}
