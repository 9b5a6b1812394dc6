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

/// Whether a large WRITE payload makes the next receive into the buffer take only what
/// is asked (the next header), so that a following large payload arrives straight in its own
/// buffer instead of being copied out of this one (`RINGPOOL_NBD_RECV_EXACT=0` in the
/// environment turns it off, for comparisons). On the 2-vCPU test box that copy was 13 % of
/// the reactor in a 128 KiB sequential write at QD8; the price is one more receive per
/// request while the client streams large writes.
fn recv_exact_after_large_write() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::knob::enabled("RINGPOOL_NBD_RECV_EXACT"))
}

/// The receive side: a buffer with unparsed bytes in `start..end`.
pub(super) struct RecvBuf {
    buf: Option<IoBuf>,
    start: usize,
    end: usize,
    /// The last request had a large payload: the next fill receives only what it needs.
    exact_next: bool,
}

impl RecvBuf {
    pub(super) fn new() -> RecvBuf {
        RecvBuf {
            buf: Some(IoBuf::with_capacity(RECV_BUF)),
            start: 0,
            end: 0,
            exact_next: false,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Ensures at least `n` (<= RECV_BUF) bytes are buffered. `Ok(false)`: clean EOF before
    /// any byte of them arrived; EOF in the middle is an error.
    pub(super) async fn fill(&mut self, stream: &Stream, n: usize) -> Result<bool, NbdError> {
        let mut buf = self.buf.take().ok_or(NbdError::Closed)?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if buf.capacity() - self.start < n {
            // Compact: move the unparsed tail to the front.
            buf.spare_and_all_mut().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let cap = buf.capacity();
        let mut result = Ok(true);
        let window = if std::mem::take(&mut self.exact_next) {
            0
        } else {
            RECV_WINDOW
        };
        while self.end - self.start < n {
            let want = (n - (self.end - self.start)).max(window);
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

    /// Takes every buffered byte.
    pub(super) fn take_all(&mut self) -> Vec<u8> {
        let n = self.buffered();
        self.take(n).to_vec()
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
        self.exact_next = len > DIRECT_PAYLOAD_MIN && recv_exact_after_large_write();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const HDR: usize = 28;
    const PAYLOAD: usize = DIRECT_PAYLOAD_MIN + 16 * 1024;

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| seed.wrapping_add(u8::try_from(i % 251).unwrap_or(0)))
            .collect()
    }

    /// After a large payload only the next header is received into the buffer, so the next
    /// large payload arrives straight in its own buffer; what is received is unaffected.
    #[test]
    fn after_a_large_payload_only_the_next_header_is_buffered() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut first = bytes(0, HDR);
        first.extend_from_slice(&bytes(100, PAYLOAD));
        b.write_all(&first).expect("write");
        let cfg = crate::io::ReactorConfig::default();
        crate::io::block_on(&cfg, async move {
            let stream = Stream::from_fd(a.into());
            let mut rx = RecvBuf::new();
            assert!(rx.fill(&stream, HDR).await.expect("fill"));
            assert_eq!(rx.buffered(), HDR + PAYLOAD, "a fill takes what is there");
            assert_eq!(rx.take(HDR), &bytes(0, HDR)[..]);
            let p = rx.payload(&stream, PAYLOAD).await.expect("payload");
            assert_eq!(&p[..], &bytes(100, PAYLOAD)[..]);
            // The next request and a header after it are all there (they fit the socket's
            // buffer): a greedy receive would take them at once.
            let mut rest = bytes(1, HDR);
            rest.extend_from_slice(&bytes(101, PAYLOAD));
            rest.extend_from_slice(&bytes(2, HDR));
            b.write_all(&rest).expect("write");
            assert!(rx.fill(&stream, HDR).await.expect("fill"));
            if recv_exact_after_large_write() {
                assert_eq!(rx.buffered(), HDR, "only the header after a large payload");
            }
            assert_eq!(rx.take(HDR), &bytes(1, HDR)[..]);
            let p = rx.payload(&stream, PAYLOAD).await.expect("payload");
            assert_eq!(&p[..], &bytes(101, PAYLOAD)[..]);
            assert!(rx.fill(&stream, HDR).await.expect("fill"));
            assert_eq!(rx.take(HDR), &bytes(2, HDR)[..]);
            drop(b);
            assert!(!rx.fill(&stream, HDR).await.expect("eof"), "clean EOF");
        })
        .expect("reactor");
    }
}
