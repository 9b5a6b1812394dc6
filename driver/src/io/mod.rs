//! Per-core io_uring reactors, buffers, devices and I/O engines.
//!
//! * [`IoBuf`] ([`buf`]): owned aligned buffers, optionally from a reactor's registered arena.
//! * Reactors: [`block_on`], [`ReactorSet`], [`spawn_local`], [`sleep`], [`yield_now`],
//!   [`current_reactor_index`], [`ring_info`]; cross-thread primitives [`oneshot`] and
//!   [`Notify`]. Wakers are `Send + Sync` and wake a sleeping reactor through its eventfd.
//! * Ring ops ([`ops`], re-exported here): ownership-passing `read_at`, `write_at`, `fsync`,
//!   `fallocate`, `recv`, `recv_into`, `send`, `send_all`, `accept`; sockets in [`net`].
//! * [`device`]: open policy (O_DIRECT, exclusivity) and geometry discovery.
//! * [`engine`]: the [`BlockEngine`] trait and its io_uring, sync and fault-injecting backends.
//! * [`irq`]: which CPUs take a device's completion interrupts (connection placement).
//! * [`IoError`]: the layer's error, with `errno()` for protocol replies.

pub mod buf;
pub mod device;
pub mod engine;
mod error;
pub mod irq;
pub mod net;
mod notify;
pub mod oneshot;
mod op;
pub mod ops;
mod reactor;
mod time;

pub use buf::IoBuf;
pub use device::{Device, DeviceOptions, DirectIo, Geometry};
pub use engine::{
    BlockEngine, CrashMode, FaultEvent, FaultyEngine, IoFuture, SyncEngine, UnitFuture, UringEngine,
};
pub use error::{IoError, OpKind};
pub use notify::{Notified, Notify};
pub use ops::{
    accept, block_discard, connect, fallocate, fsync, read_at, read_exact_at, recv,
    recv_exact_into, recv_into, send, send_all, send_all_ranges, send_all_vectored, send_range,
    send_vectored, write_all_at, write_at, FileRef,
};
pub use reactor::{
    block_on, current_reactor_index, in_reactor, outside_read_window, prefer_current_task,
    reactor_stats, ring_info, ring_stats, spawn_local, spawn_local_first, submit_now,
    try_spawn_local, JoinError, JoinHandle, ReactorConfig, ReactorHandle, ReactorSet, RingInfo,
    RingStats, TaskRunMode, DEFAULT_READ_SPIN_US, DEFAULT_READ_WINDOW, DEFAULT_SUBMIT_BATCH,
    DEFAULT_WRITE_AGGREGATE, DEFAULT_WRITE_AGGREGATE_WINDOW, DEFAULT_WRITE_DEFER,
    DEFAULT_WRITE_DEFER_FOR,
};
pub(crate) use reactor::{deferred_writes, writes_wanted};
pub use time::{sleep, yield_now, YieldNow};
