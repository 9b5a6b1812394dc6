//! `delay:EVERY:MS:TARGET`: a wrapper that freezes a job's target for MS ms at every EVERY-th
//! I/O (like a device pausing for garbage collection): that I/O and every one issued during
//! the freeze wait until it ends. With a closed loop the stall is one slow sample and the workers simply
//! stop asking (coordinated omission); with `--rate` the requests that should have been sent
//! meanwhile are late and their latency, counted from the intended start, shows the stall.

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use ringpool_driver::io::{sleep, IoBuf};

use super::{AnyConn, Conn, IoResult};

#[derive(Debug)]
pub struct DelayConn {
    every: u64,
    stall: Duration,
    count: Cell<u64>,
    frozen_until: Cell<Option<Instant>>,
    inner: Box<AnyConn>,
}

impl DelayConn {
    pub fn new(every: u64, ms: u64, inner: AnyConn) -> DelayConn {
        DelayConn {
            every,
            stall: Duration::from_millis(ms),
            count: Cell::new(0),
            frozen_until: Cell::new(None),
            inner: Box::new(inner),
        }
    }

    pub fn inner(&self) -> &AnyConn {
        &self.inner
    }

    async fn maybe_stall(&self) {
        let n = self.count.get() + 1;
        self.count.set(n);
        let now = Instant::now();
        if n.is_multiple_of(self.every) {
            let until = self.frozen_until.get().map_or(now, |u| u.max(now)) + self.stall;
            self.frozen_until.set(Some(until));
        }
        if let Some(until) = self.frozen_until.get() {
            if until > now {
                sleep(until - now).await;
            }
        }
    }
}

impl Conn for DelayConn {
    async fn read(&self, buf: IoBuf, off: u64) -> IoResult {
        self.maybe_stall().await;
        Box::pin(self.inner.read(buf, off)).await
    }

    async fn write(&self, buf: IoBuf, off: u64, fua: bool) -> IoResult {
        self.maybe_stall().await;
        Box::pin(self.inner.write(buf, off, fua)).await
    }

    async fn flush(&self) -> io::Result<()> {
        Box::pin(self.inner.flush()).await
    }
}
