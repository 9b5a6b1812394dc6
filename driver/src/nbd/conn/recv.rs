//! The receive side of a connection: one large buffer that request headers and small WRITE
//! payloads are parsed out of; large payloads are received straight into their own buffer.

use super::NbdError;
use crate::io::net::Stream;
use crate::io::IoBuf;

/// Size of the receive buffer (headers and small payloads are parsed out of it).
pub(super) const RECV_BUF: usize = 256 * 1024;
/// Most bytes asked of one receive into the buffer. A smaller window would let more of a
/// large WRITE payload arrive straight in its own buffer, but each extra receive is a ring
/// round trip: on the 2-vCPU test box a 32 KiB window made 128 KiB writes slower (QD1 p50
/// 241 us against 179 us) than copying out of a full-size receive.
const RECV_WINDOW: usize = RECV_BUF;
/// WRITE payloads larger than this are received straight into their own buffer once the
/// receive buffer is exhausted; smaller ones always pass through the receive buffer.
const DIRECT_PAYLOAD_MIN: usize = 64 * 1024;

/// The receive side: a buffer with unparsed bytes in `start..end`.
pub(super) struct RecvBuf {
    buf: Option<IoBuf>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    pub(super) fn new() -> RecvBuf {
        RecvBuf {
            buf: Some(IoBuf::with_capacity(RECV_BUF)),
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Ensures at least `n` (<= RECV_BUF) bytes are buffered. `Ok(false)`: clean EOF before
    /// any byte of them arrived; EOF in the middle is an error.
    pub(super) async fn fill(&mut self, stream: &Stream, n: usize) -> Result<bool, NbdError> {
        let mut buf = self.buf.take().ok_or(NbdError::Closed)?;
        if buf.capacity() - self.start < n {
            // Compact: move the unparsed tail to the front.
            buf.spare_and_all_mut().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let cap = buf.capacity();
        let mut result = Ok(true);
        while self.end - self.start < n {
            let want = (n - (self.end - self.start)).max(RECV_WINDOW);
            let stop = cap.min(self.end + want);
            let (r, b) = stream.recv_into(buf, self.end..stop).await;
            buf = b;
            match r {
                Ok(0) if self.end == self.start => {
                    result = Ok(false);
                    break;
                }
                Ok(0) => {
                    result = Err(NbdError::Truncated);
                    break;
                }
                Ok(k) => self.end += k,
                Err(e) => {
                    result = Err(NbdError::Io(e));
                    break;
                }
            }
        }
        self.buf = Some(buf);
        result
    }

    /// Takes `n` buffered bytes (callers ensured they are there).
    pub(super) fn take(&mut self, n: usize) -> &[u8] {
        let s = self.start;
        let n = n.min(self.buffered());
        self.start += n;
        match &self.buf {
            Some(b) => &b.as_full_slice()[s..s + n],
            None => &[],
        }
    }

    /// Reads and drops `n` bytes.
    pub(super) async fn discard(&mut self, stream: &Stream, mut n: u64) -> Result<(), NbdError> {
        let have = u64::try_from(self.buffered()).unwrap_or(u64::MAX).min(n);
        self.take(usize::try_from(have).unwrap_or(0));
        n -= have;
        while n > 0 {
            // Everything buffered is consumed: receive into the whole buffer.
            self.start = 0;
            self.end = 0;
            if !self.fill(stream, 1).await? {
                return Err(NbdError::Truncated);
            }
            let have = u64::try_from(self.buffered()).unwrap_or(u64::MAX).min(n);
            self.take(usize::try_from(have).unwrap_or(0));
            n -= have;
        }
        Ok(())
    }

    /// Receives exactly `len` payload bytes into a fresh buffer (buffered bytes first).
    pub(super) async fn payload(&mut self, stream: &Stream, len: usize) -> Result<IoBuf, NbdError> {
        // A small payload that has not fully arrived is received into this buffer together
        // with whatever follows it (usually the next requests): one ring round trip instead
        // of one for the payload's tail and another for the next header.
        if len <= DIRECT_PAYLOAD_MIN && self.buffered() < len && !self.fill(stream, len).await? {
            return Err(NbdError::Truncated);
        }
        let mut p = crate::io::buf::alloc(len);
        p.set_len(len);
        let have = self.buffered().min(len);
        p[..have].copy_from_slice(self.take(have));
        if have < len {
            let (r, b) = stream.recv_exact_into(p, have..len).await;
            p = b;
            r.map_err(|e| match e {
                crate::io::IoError::UnexpectedEof { .. } => NbdError::Truncated,
                e => NbdError::Io(e),
            })?;
        }
        Ok(p)
    }
}
