//! The NBD layer's error type.

use super::backend::BackendError;
use super::handshake::HandshakeError;
use super::proto::Errno;
use super::request::RequestError;
use crate::io::IoError;

/// Errors of the NBD server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// A listener could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address or socket path.
        addr: String,
        /// Why.
        #[source]
        source: IoError,
    },
    /// A socket operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The handshake failed (hard disconnect).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A request could not be framed (hard disconnect).
    #[error("request: {0}")]
    Request(#[from] RequestError),
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// The connection is closed (or its send side broke).
    #[error("connection closed")]
    Closed,
    /// The server configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl NbdError {
    /// The errno a client would be told.
    pub fn errno(&self) -> Errno {
        match self {
            NbdError::Backend(e) => e.errno,
            NbdError::Config(_) | NbdError::Request(_) | NbdError::Handshake(_) => Errno::Inval,
            _ => Errno::Io,
        }
    }
}
