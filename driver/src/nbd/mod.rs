//! The NBD server.
//!
//! Layers, bottom up:
//! * [`proto`]: wire constants and [`Errno`].
//! * [`handshake`]: the sans-IO fixed-newstyle handshake (options, INFO/GO, meta contexts,
//!   structured replies, extended headers).
//! * [`request`]: sans-IO request decoding and validation.
//! * [`reply`]: reply encoding (simple, structured, extended).

pub mod handshake;
pub mod proto;
pub mod reply;
pub mod request;

#[cfg(test)]
mod tests;

pub use handshake::{
    ExportCatalog, ExportInfo, Handshake, HandshakeConfig, HandshakeError, Negotiated, Step,
};
pub use proto::Errno;
pub use reply::{Extent, ReplyMode};
pub use request::{Command, Rejection, Request, RequestDecoder, RequestError};
