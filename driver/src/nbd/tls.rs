//! NBD over TLS: NBD_OPT_STARTTLS with rustls.
//!
//! **Where TLS sits.** After the server acknowledges NBD_OPT_STARTTLS, the connection's socket
//! is handed to a *pump*: three local tasks on the connection's reactor that move bytes between
//! the socket (TLS records) and one end of a socketpair (plain NBD). The connection carries on
//! with the option haggling and then transmission on the other end of the pair, with exactly
//! the code it runs for a plain-text client. Why not TLS inside the transmission loop: that loop
//! receives WRITE payloads straight into the buffers that go to the backend and sends READ
//! replies straight from the buffers the device read into, through the ring; a TLS client
//! needs a decrypting copy and an encrypting copy anyway, and a second code path (and a branch
//! per request) in the fast path would be the price of saving one more copy on the slow one.
//! So a TLS connection costs one copy more per direction (through the socketpair) and plain
//! connections cost nothing. qemu-nbd and nbdkit copy through GnuTLS the same way.
//!
//! **The pump.**
//! * `from_net`: receives records from the socket, decrypts them and sends the plain text to
//!   the connection's end. On EOF or an error from the socket it shuts the pair down, so the
//!   connection sees EOF; a TLS error (a bad record, a failed handshake) queues rustls's alert
//!   first.
//! * `to_net`: receives plain text from the connection's end and encrypts it; when the
//!   connection closes its end, queues close_notify.
//! * `sender`: the only task that writes the socket: whatever rustls has to send (handshake
//!   messages, records, alerts), in order; after close_notify (or an alert) it shuts the socket
//!   down, which also ends `from_net`.
//!
//! Memory per connection is bounded: `from_net` holds one received chunk and its plain text
//! until the pair took it; `to_net` stops feeding rustls beyond [`PLAIN_LIMIT`] bytes not yet
//! encrypted and sent, and waits for `sender`.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::NbdError;
use crate::io::net::Stream;
use crate::io::{IoBuf, IoError, Notify, OpKind};

/// Bytes asked of one receive from either socket.
const CHUNK: usize = 64 * 1024;
/// Plain text rustls may hold before it is encrypted and sent (rustls's own default limit).
const PLAIN_LIMIT: usize = 64 * 1024;
/// Plain text `from_net` hands to the pair at once. Half a receive, so a large receive
/// decrypts in two rounds: the round that fills the buffer and goes on with the rest is then
/// the common path (and the tests' large transfers drive it), not a corner only a huge first
/// flight of records reaches.
const PLAIN_CHUNK: usize = CHUNK / 2;
/// Bytes of TLS records sent at once: what rustls may hold encrypted (its plain-text limit
/// plus each record's header, padding and tag).
const SEND_CHUNK: usize = PLAIN_LIMIT + 8 * 1024;

/// TLS settings of a server: its certificate and key, optionally the CA that client
/// certificates must chain to, and whether TLS is required.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    /// Refuse every option but STARTTLS and ABORT until TLS is up (the protocol's FORCEDTLS).
    pub require: bool,
}

fn config_error(what: &str, path: &Path, e: impl std::fmt::Display) -> NbdError {
    NbdError::Config(format!("TLS {what} {}: {e}", path.display()))
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, NbdError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| config_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(what, path, e))?;
    if certs.is_empty() {
        return Err(config_error(what, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The crypto provider: *ring*. rustls deprecates it because it has no post-quantum key
/// exchange; the alternative, aws-lc-rs, needs cmake and a long C build on every fresh
/// machine. A block export on a LAN with classical ECDHE is what qemu-nbd and nbdkit offer too.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// Loads the server's certificate chain and private key (PEM files; the key in PKCS#8,
    /// PKCS#1 or SEC1 form). With `client_ca`, clients must present a certificate issued by a
    /// CA in that PEM file (mutual TLS, like qemu-nbd's `verify-peer=on`).
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        require: bool,
    ) -> Result<TlsConfig, NbdError> {
        let chain = load_certs(cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| config_error("key", key, e))?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| NbdError::Config(format!("TLS: {e}")))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca, "client CA")? {
                    roots.add(c).map_err(|e| config_error("client CA", ca, e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| config_error("client CA", ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder
            .with_single_cert(chain, key)
            .map_err(|e| config_error("certificate and key", cert, e))?;
        Ok(TlsConfig {
            server: Arc::new(server),
            require,
        })
    }
}

/// State shared by the three tasks of one connection's pump.
struct Pump {
    tls: RefCell<ServerConnection>,
    /// The client's socket (TLS records).
    net: Stream,
    /// The pump's end of the socketpair (plain NBD).
    plain: Stream,
    /// Wakes `sender`: rustls may have something to send, or the pump is closing.
    send_wake: Notify,
    /// Wakes `to_net`: `sender` sent what rustls had.
    sent: Notify,
    /// close_notify or an alert is queued: `sender` shuts the socket down after sending it.
    closing: Cell<bool>,
    /// The socket failed or was shut down: everyone stops.
    dead: Cell<bool>,
}

/// Starts TLS on `stream` (just after the STARTTLS ACK was sent on it), with `early` = bytes
/// the connection had already received past the STARTTLS option (the start of the client's
/// TLS handshake, if any), and replaces `stream` by the end of the pump the connection goes on
/// with, in plain text. The TLS handshake itself runs in the pump while the connection waits
/// for its next option.
pub(crate) fn start(stream: &mut Stream, early: Vec<u8>, cfg: &TlsConfig) -> Result<(), NbdError> {
    let mut tls = ServerConnection::new(Arc::clone(&cfg.server))
        .map_err(|e| NbdError::Config(format!("TLS: {e}")))?;
    tls.set_buffer_limit(Some(PLAIN_LIMIT));
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| NbdError::Io(IoError::from_std(OpKind::Other, &e)))?;
    let net = std::mem::replace(stream, Stream::from_fd(theirs.into()));
    let pump = Rc::new(Pump {
        tls: RefCell::new(tls),
        net,
        plain: Stream::from_fd(ours.into()),
        send_wake: Notify::new(),
        sent: Notify::new(),
        closing: Cell::new(false),
        dead: Cell::new(false),
    });
    crate::io::spawn_local(from_net(Rc::clone(&pump), early));
    crate::io::spawn_local(to_net(Rc::clone(&pump)));
    crate::io::spawn_local(sender(pump));
    Ok(())
}

impl Pump {
    /// Ends the connection: the socket and the pair are shut down, so every task (and the
    /// connection on the other end of the pair) sees EOF.
    fn kill(&self) {
        self.dead.set(true);
        let _ = self.net.shutdown(std::net::Shutdown::Both);
        let _ = self.plain.shutdown(std::net::Shutdown::Both);
        self.send_wake.notify_one();
        self.sent.notify_one();
    }

    /// Feeds `records` to rustls and takes the plain text out into `plain`, until `plain` is
    /// full or every record is taken and decrypted. Returns whether the peer sent close_notify
    /// and whether `plain` filled up (the caller sends it and calls again with the rest).
    /// `Err`: a TLS error (rustls queued the alert to send).
    fn decrypt(&self, records: &mut &[u8], plain: &mut IoBuf) -> Result<Decrypted, rustls::Error> {
        let mut tls = self.tls.borrow_mut();
        let mut peer_closed = false;
        loop {
            // Plain text first: rustls buffers at most PLAIN_LIMIT of it, so it is taken out
            // before more records go in. Ok(0): close_notify came and everything before it
            // was taken; Err: nothing more for now (WouldBlock).
            loop {
                let len = plain.len();
                if len == plain.capacity() {
                    return Ok(Decrypted {
                        peer_closed,
                        full: true,
                    });
                }
                match tls.reader().read(&mut plain.spare_and_all_mut()[len..]) {
                    Ok(k @ 1..) => plain.set_len(len + k),
                    _ => break,
                }
            }
            if records.is_empty() {
                return Ok(Decrypted {
                    peer_closed,
                    full: false,
                });
            }
            // Cannot fail on a slice; a full buffer of undelivered plain text is impossible as
            // the loop above takes it all out.
            if tls.read_tls(records).is_err() {
                return Err(rustls::Error::General("TLS receive buffer full".into()));
            }
            let state = tls.process_new_packets()?;
            peer_closed |= state.peer_has_closed();
        }
    }
}

/// What one [`Pump::decrypt`] call left.
struct Decrypted {
    peer_closed: bool,
    /// The plain-text buffer filled up before every record was decrypted.
    full: bool,
}

async fn from_net(p: Rc<Pump>, early: Vec<u8>) {
    // Records are decrypted straight from the receive buffer and the plain text goes to the
    // pair from a buffer kept for the connection's life: the only copies are rustls's own.
    let mut buf = IoBuf::with_capacity(CHUNK);
    let mut plain = IoBuf::with_capacity(PLAIN_CHUNK);
    let mut first = Some(early).filter(|e| !e.is_empty());
    'recv: loop {
        let n = if first.is_some() {
            0
        } else {
            let (r, b) = p.net.recv_into(buf, 0..CHUNK).await;
            buf = b;
            match r {
                Ok(n) if n > 0 && !p.dead.get() => n,
                _ => break,
            }
        };
        let early = first.take();
        let mut records: &[u8] = match &early {
            Some(e) => e,
            None => &buf.as_full_slice()[..n],
        };
        loop {
            plain.clear();
            let decrypted = p.decrypt(&mut records, &mut plain);
            // Handshake messages, alerts or nothing: `sender` finds out.
            p.send_wake.notify_one();
            let d = match decrypted {
                Ok(d) => d,
                Err(e) => {
                    tracing::info!(error = %e, "TLS error, closing the connection");
                    p.closing.set(true);
                    break 'recv;
                }
            };
            if !plain.is_empty() {
                let (r, b) = p.plain.send_all(plain).await;
                plain = b;
                if r.is_err() {
                    break 'recv;
                }
            }
            if d.peer_closed {
                break 'recv;
            }
            if !d.full {
                break;
            }
        }
    }
    // The client is done (or spoke garbage): the connection sees EOF, finishes what is in
    // flight and closes its end, and `to_net` then says goodbye, as for a plain client that
    // half-closes after NBD_CMD_DISC.
    let _ = p.plain.shutdown(std::net::Shutdown::Write);
}

async fn to_net(p: Rc<Pump>) {
    let mut buf = IoBuf::with_capacity(CHUNK);
    loop {
        let (r, b) = p.plain.recv_into(buf, 0..CHUNK).await;
        buf = b;
        let n = match r {
            Ok(n) if n > 0 && !p.dead.get() => n,
            _ => break,
        };
        let mut data = &buf.as_full_slice()[..n];
        while !data.is_empty() {
            if p.dead.get() {
                return;
            }
            let written = p.tls.borrow_mut().writer().write(data).unwrap_or(0);
            if written == 0 {
                // rustls holds its limit of unsent bytes: wait until `sender` sent them.
                p.send_wake.notify_one();
                p.sent.notified().await;
                continue;
            }
            data = &data[written..];
        }
        p.send_wake.notify_one();
    }
    // The connection closed its end: say goodbye properly.
    p.tls.borrow_mut().send_close_notify();
    p.closing.set(true);
    p.send_wake.notify_one();
}

async fn sender(p: Rc<Pump>) {
    // Records are written by rustls straight into the buffer that is sent, kept for the
    // connection's life.
    let mut out = IoBuf::with_capacity(SEND_CHUNK);
    loop {
        loop {
            out.clear();
            {
                let mut tls = p.tls.borrow_mut();
                while tls.wants_write() {
                    // Ok(0): `out` is full (rustls keeps the rest for the next round).
                    match tls.write_tls(&mut Append(&mut out)) {
                        Ok(1..) => {}
                        _ => break,
                    }
                }
            }
            if out.is_empty() {
                break;
            }
            let (r, b) = p.net.send_all(out).await;
            out = b;
            if r.is_err() {
                p.kill();
                return;
            }
        }
        p.sent.notify_one();
        if p.dead.get() {
            return;
        }
        if p.closing.get() {
            p.kill();
            return;
        }
        p.send_wake.notified().await;
    }
}

/// `io::Write` into the free capacity of an [`IoBuf`] (short writes when it fills up).
struct Append<'a>(&'a mut IoBuf);

impl Write for Append<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let len = self.0.len();
        let k = data.len().min(self.0.capacity() - len);
        self.0.spare_and_all_mut()[len..len + k].copy_from_slice(&data[..k]);
        self.0.set_len(len + k);
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"").expect("write");
        let missing = dir.path().join("missing.pem");
        let e = TlsConfig::from_pem_files(&missing, &empty, None, false)
            .expect_err("missing certificate");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e =
            TlsConfig::from_pem_files(&empty, &empty, None, false).expect_err("empty certificate");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
