//! ringpool's engine.
//!
//! * [`io`]: per-core io_uring reactors, aligned buffers, devices and the three I/O engines
//!   (io_uring, pread/pwrite, in-memory fault-injecting).
//! * [`pool`]: labels and the uberblock ring, transaction groups, the copy-on-write object store,
//!   thin volumes, checkpoints and the discard reactor.
//! * [`nbd`]: the NBD server on the per-core reactors.

pub mod io;
pub mod knob;
pub mod nbd;
pub mod pool;
