//! Timers and cooperative yielding on the reactor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use io_uring::{opcode, types};

use crate::io::op::run_op;
use crate::io::reactor::OpData;

/// Sleep for `d` using an io_uring Timeout. Outside a reactor it falls back to blocking the
/// thread (so helpers stay usable from plain threads).
pub async fn sleep(d: Duration) {
    if d.is_zero() {
        // A zero timeout still costs a timer round trip in the kernel; a yield is equivalent.
        yield_now().await;
        return;
    }
    let ts = Box::new(types::Timespec::from(d));
    // The box's heap address does not change when the box moves into the op slot.
    let ptr = std::ptr::from_ref(&*ts);
    let (r, _data) = run_op(|_| opcode::Timeout::new(ptr).build(), OpData::Timespec(ts)).await;
    if r.is_err() {
        std::thread::sleep(d);
    }
}

/// Yield to the other tasks of this reactor once (and let the ring be serviced).
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// Future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
