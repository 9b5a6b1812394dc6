//! A one-shot channel usable across threads: the [`Sender`] is `Send` (a plain thread, e.g.
//! the txg sync thread, can complete it); the [`Receiver`] is a future awaitable on a reactor
//! (the wake-up reaches a sleeping reactor through its eventfd) and can also be waited for
//! blocking with [`Receiver::recv_blocking`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

struct State<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

/// Sending half. Dropping it without sending makes the receiver resolve to [`RecvError`].
pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

/// Receiving half: a future of `Result<T, RecvError>`.
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

/// The sender was dropped without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("oneshot sender dropped without sending")]
pub struct RecvError;

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot::Sender")
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot::Receiver")
    }
}

/// Create a connected pair.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            value: None,
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        cond: Condvar::new(),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

impl<T> Sender<T> {
    /// Deliver `value`. Returns it back if the receiver is gone.
    pub fn send(self, value: T) -> Result<(), T> {
        let waker = {
            let mut st = self.inner.state.lock();
            if st.receiver_gone {
                return Err(value);
            }
            st.value = Some(value);
            st.waker.take()
        };
        self.inner.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        // Drop runs next and marks the sender gone; the value is already in place.
        Ok(())
    }

    /// True if the receiver has been dropped.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().receiver_gone
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.inner.state.lock();
            st.sender_gone = true;
            st.waker.take()
        };
        self.inner.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Block the thread until a value arrives (never on the reactor that must send it).
    pub fn recv_blocking(self) -> Result<T, RecvError> {
        let mut st = self.inner.state.lock();
        loop {
            if let Some(v) = st.value.take() {
                return Ok(v);
            }
            if st.sender_gone {
                return Err(RecvError);
            }
            self.inner.cond.wait(&mut st);
        }
    }

    /// Non-blocking check: `Ok(Some(v))` if delivered, `Ok(None)` if still pending.
    pub fn try_recv(&mut self) -> Result<Option<T>, RecvError> {
        let mut st = self.inner.state.lock();
        match st.value.take() {
            Some(v) => Ok(Some(v)),
            None if st.sender_gone => Err(RecvError),
            None => Ok(None),
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.inner.state.lock();
        if let Some(v) = st.value.take() {
            return Poll::Ready(Ok(v));
        }
        if st.sender_gone {
            return Poll::Ready(Err(RecvError));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.inner.state.lock().receiver_gone = true;
    }
}
