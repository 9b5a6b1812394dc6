//! The NBD server.
//!
//! Layers, bottom up:
//! * [`proto`]: wire constants and [`Errno`].
//! * [`handshake`]: the sans-IO fixed-newstyle handshake (options, INFO/GO, meta contexts,
//!   structured replies, extended headers).
//! * [`request`]: sans-IO request decoding and validation.
//! * [`reply`]: reply encoding (simple, structured, extended).
//! * [`backend`]: the [`ExportBackend`] trait a served volume implements; [`MemBackend`] is an
//!   in-memory one.
//! * [`exports`]: the [`Exports`] registry (`POOL/VOLUME` names to backends, changeable live).
//! * [`server`]: [`NbdServer`]: listeners, acceptor, connections on the io_uring reactors.
//! * [`tls`]: NBD_OPT_STARTTLS with rustls ([`TlsConfig`]).
//!
//! Usage:
//! ```no_run
//! use std::sync::Arc;
//! use ringpool_driver::io::{ReactorConfig, ReactorSet};
//! use ringpool_driver::nbd::{Exports, MemBackend, NbdServer, NbdServerConfig};
//!
//! let reactors = ReactorSet::start(ReactorConfig::default()).unwrap();
//! let exports = Arc::new(Exports::new());
//! exports.add("tank/vol", Arc::new(MemBackend::new(1 << 30, 4096)), false).unwrap();
//! let mut server = NbdServer::start(NbdServerConfig::default(), exports, &reactors).unwrap();
//! // ... nbd://127.0.0.1:10809/tank/vol ...
//! server.shutdown();
//! ```

pub mod backend;
mod conn;
mod error;
pub mod exports;
pub mod handshake;
pub mod mem;
pub mod place;
pub mod proto;
pub mod reply;
pub mod request;
pub mod server;
pub mod tls;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod handshake_tests;
#[cfg(test)]
mod mem_tests;

pub use backend::{
    BackendError, BackendFuture, ExportBackend, ReadLayout, ReadResult, WriteResult,
};
pub use error::NbdError;
pub use exports::{ExportHandle, Exports, ExportsError};
pub use handshake::{
    ExportCatalog, ExportInfo, Handshake, HandshakeConfig, HandshakeError, Negotiated, Step,
    TlsPolicy,
};
pub use mem::MemBackend;
pub use place::Placement;
pub use proto::Errno;
pub use reply::{Extent, ReplyMode};
pub use request::{Command, Rejection, Request, RequestDecoder, RequestError};
pub use server::{NbdServer, NbdServerConfig, NbdStats, DEFAULT_PORT, DEFAULT_REPLY_FLUSH};
pub use tls::TlsConfig;
