//! Executing one request on the export's backend and queueing its reply.

use std::ops::Range;
use std::rc::Rc;

use super::super::backend::ReadLayout;
use super::super::proto::Errno;
use super::super::reply::{self, Extent, ReplyMode};
use super::super::request::{Command, Request};
use super::send::INLINE_REPLY_MAX;
use super::Conn;
use crate::io::IoBuf;

/// Read data starts at this (page-aligned) offset of a large reply buffer; the header sits
/// just before it.
const DATA_OFFSET: usize = 4096;

/// READ replies up to this size (header and data) are copied into the send batch; larger
/// ones, i.e. every read of a page or more, are sent straight from the buffer the backend read
/// into, their header in the page before the data ([`DATA_OFFSET`]). On the 2-vCPU test box
/// the copy of a 4 KiB reply was 3-4 % of the reactor at 4k randread QD32, on the serial
/// chain from a disk batch's completion to the batch of replies; sending from the read buffer
/// instead (one iovec per reply in the batch's vectored send) did 1.01-1.04x the IOPS at
/// 0.96-0.99x the server CPU per read, in A/Bs both ways round (perf/results/README-nbd.md).
pub(super) const DEFAULT_INLINE_READ_MAX: usize = 4096;

/// [`DEFAULT_INLINE_READ_MAX`], or `RINGPOOL_NBD_INLINE_READ_MAX=N` from the environment (for
/// comparisons; at most [`INLINE_REPLY_MAX`]).
fn inline_read_max() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        crate::knob::env("RINGPOOL_NBD_INLINE_READ_MAX")
            .unwrap_or(DEFAULT_INLINE_READ_MAX)
            .min(INLINE_REPLY_MAX)
    })
}

/// Executes one request and queues its reply.
pub(super) async fn run(
    conn: Rc<Conn>,
    req: Request,
    command: Command,
    payload: Option<IoBuf>,
    credit: u64,
) {
    execute(&conn, req, command, payload, credit).await;
    conn.flush_early().await;
}

async fn execute(
    conn: &Rc<Conn>,
    req: Request,
    command: Command,
    payload: Option<IoBuf>,
    credit: u64,
) {
    let backend = &conn.export.backend;
    let (cookie, roff, mode) = (req.cookie, req.offset, conn.mode);
    match command {
        Command::Read { offset, length, df } => {
            read(conn, credit, cookie, roff, offset, length, df).await
        }
        Command::Write { offset, fua, .. } => {
            let Some(data) = payload else {
                conn.queue_error(credit, cookie, roff, Errno::Io, "write without payload");
                return;
            };
            let (r, data) = if fua || !conn.shared.cfg.write_back {
                backend.write(offset, data, fua).await
            } else {
                backend.write_back(offset, data).await
            };
            drop(data);
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::Flush => {
            let r = backend.flush().await;
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::Trim {
            offset,
            length,
            fua,
        } => {
            let mut r = backend.trim(offset, length).await;
            if r.is_ok() && fua {
                r = backend.flush().await;
            }
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::WriteZeroes {
            offset,
            length,
            fua,
            may_trim,
            fast_only,
        } => {
            let mut r = backend
                .write_zeroes(offset, length, may_trim, fast_only)
                .await;
            if r.is_ok() && fua {
                r = backend.flush().await;
            }
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::Cache { offset, length } => {
            let r = backend.cache(offset, length).await;
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::BlockStatus {
            offset,
            length,
            req_one,
            context,
        } => match backend.block_status(offset, length).await {
            Ok(ext) => {
                let ext = clip_extents(ext, length, req_one, conn.min_block);
                conn.queue_small(credit, |v| {
                    reply::block_status(v, mode, cookie, roff, context, &ext, true);
                });
            }
            Err(e) => conn.queue_error(credit, cookie, roff, e.errno, &e.message),
        },
        Command::Disconnect => conn.release(credit, 1),
    }
}

/// Keeps extents within the request (dropping empty ones), one extent with REQ_ONE, and
/// always at least one (status 0 covering the whole range is always a safe answer).
fn clip_extents(ext: Vec<Extent>, length: u64, req_one: bool, min_block: u32) -> Vec<Extent> {
    let mut out = Vec::with_capacity(ext.len().min(1 << 16));
    let mut left = length;
    for e in ext {
        if left == 0 || (req_one && !out.is_empty()) {
            break;
        }
        if e.length == 0 {
            continue;
        }
        let l = e.length.min(left);
        left -= l;
        out.push(Extent {
            length: l,
            flags: e.flags,
        });
    }
    // Extents other than the last must be multiples of the minimum block size.
    let mask = u64::from(min_block.max(1)) - 1;
    if let Some(pos) = out.iter().position(|e| e.length & mask != 0) {
        if pos + 1 < out.len() {
            out.truncate(pos + 1);
            if let Some(last) = out.last_mut() {
                last.length &= !mask;
                if last.length == 0 {
                    out.pop();
                }
            }
        }
    }
    if out.is_empty() {
        out.push(Extent { length, flags: 0 });
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn read(
    conn: &Conn,
    credit: u64,
    cookie: u64,
    roff: u64,
    offset: u64,
    length: u32,
    df: bool,
) {
    let mode = conn.mode;
    let len = usize::try_from(length).unwrap_or(0);
    if len == 0 {
        conn.queue_small(credit, |v| reply::none_done(v, mode, cookie, roff));
        return;
    }
    let inline = len + reply::MAX_READ_PREFIX <= inline_read_max();
    let (start, total) = if inline {
        (0, len)
    } else {
        (DATA_OFFSET, DATA_OFFSET + len)
    };
    let mut buf = crate::io::buf::alloc(total);
    buf.set_len(total);
    let (r, mut buf) = conn.export.backend.read(offset, buf, start..total).await;
    let layout = match r {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(conn = conn.id, offset, length, error = %e, "read failed");
            conn.queue_error(credit, cookie, roff, e.errno, &e.message);
            return;
        }
    };
    let structured = mode.structured();
    match layout {
        ReadLayout::Hole if structured => {
            conn.queue_small(credit, |v| {
                reply::hole_chunk(v, mode, cookie, roff, offset, length, true)
            });
        }
        // Holes are answered as hole chunks up to the batch's reply size, also for reads that
        // would otherwise be sent from their buffer (a page or more).
        ReadLayout::Holes(holes)
            if structured && !df && len + reply::MAX_READ_PREFIX <= INLINE_REPLY_MAX =>
        {
            let data = &buf[start..total];
            conn.queue_small(credit, |v| {
                chunks_with_holes(v, mode, cookie, roff, offset, data, &holes)
            });
        }
        _ if inline => {
            let data = &buf[..len];
            let mut h = [0u8; reply::MAX_READ_PREFIX];
            let n = reply::read_data_header(
                &mut h,
                mode,
                cookie,
                roff,
                offset,
                u64::from(length),
                true,
            );
            // Header and data go into the send batch with one copy.
            conn.queue_parts(credit, &[&h[..n], data]);
        }
        _ => {
            let n = mode.read_prefix_len();
            let hstart = DATA_OFFSET - n;
            reply::read_data_header(
                &mut buf[hstart..DATA_OFFSET],
                mode,
                cookie,
                roff,
                offset,
                u64::from(length),
                true,
            );
            conn.queue_data(credit, buf, hstart..total);
        }
    }
}

/// Encodes a read as alternating data and hole chunks (the last one carries DONE).
fn chunks_with_holes(
    v: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    roff: u64,
    offset: u64,
    data: &[u8],
    holes: &[Range<u32>],
) {
    let len = data.len();
    let mut segs: Vec<(Range<usize>, bool)> = Vec::with_capacity(holes.len() * 2 + 1);
    let mut at = 0usize;
    for h in holes {
        let (s, e) = (
            usize::try_from(h.start).unwrap_or(len).min(len),
            usize::try_from(h.end).unwrap_or(len).min(len),
        );
        if s < at || s >= e {
            continue;
        }
        if s > at {
            segs.push((at..s, false));
        }
        segs.push((s..e, true));
        at = e;
    }
    if at < len {
        segs.push((at..len, false));
    }
    let last = segs.len().saturating_sub(1);
    for (i, (r, hole)) in segs.into_iter().enumerate() {
        let done = i == last;
        let pos = offset + u64::try_from(r.start).unwrap_or(0);
        let rl = u32::try_from(r.len()).unwrap_or(0);
        if hole {
            reply::hole_chunk(v, mode, cookie, roff, pos, rl, done);
        } else {
            let mut h = [0u8; reply::MAX_READ_PREFIX];
            let n = reply::read_data_header(&mut h, mode, cookie, roff, pos, u64::from(rl), done);
            v.extend_from_slice(&h[..n]);
            v.extend_from_slice(&data[r]);
        }
    }
}
