//! NBD client protocol: the fixed-newstyle handshake (blocking, before the measurement starts)
//! and the transmission-phase codec (requests, simple and structured replies).
//!
//! All integers are big-endian. The handshake asks for structured replies, then `OPT_GO` with
//! `INFO_BLOCK_SIZE`; a server that refuses GO with `ERR_UNSUP` gets `OPT_EXPORT_NAME`.

use std::io::{self, Read, Write};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_FLAG_FUA: u16 = 1;

pub const CHUNK_NONE: u16 = 0;
pub const CHUNK_OFFSET_DATA: u16 = 1;
pub const CHUNK_OFFSET_HOLE: u16 = 2;
pub const CHUNK_FLAG_DONE: u16 = 1;

pub const REQUEST_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const STRUCTURED_HDR_LEN: usize = 20;

/// What the server told us about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub structured: bool,
    /// (minimum, preferred, maximum payload) when the server sent INFO_BLOCK_SIZE.
    pub block_size: Option<(u32, u32, u32)>,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn send_opt<S: Write>(s: &mut S, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    let len = u32::try_from(data.len()).map_err(|_| proto_err("option too long"))?;
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

/// Reads one option reply: (reply type, data).
fn read_opt_reply<S: Read>(s: &mut S, opt: u32) -> io::Result<(u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    if be64(&h) != OPT_REPLY_MAGIC {
        return Err(proto_err("bad option reply magic"));
    }
    if be32(&h[8..]) != opt {
        return Err(proto_err(format!(
            "option reply for option {} while waiting for {opt}",
            be32(&h[8..])
        )));
    }
    let len = be32(&h[16..]);
    if len > 64 << 10 {
        return Err(proto_err(format!("option reply of {len} bytes")));
    }
    let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
    s.read_exact(&mut data)?;
    Ok((be32(&h[12..]), data))
}

fn opt_error(opt: &str, ty: u32, data: &[u8]) -> io::Error {
    proto_err(format!(
        "server refused {opt}: reply type {ty:#x} {}",
        String::from_utf8_lossy(data)
    ))
}

/// Performs the fixed-newstyle handshake for `export` over a blocking stream.
pub fn handshake<S: Read + Write>(s: &mut S, export: &str) -> io::Result<ExportInfo> {
    let mut g = [0u8; 18];
    s.read_exact(&mut g)?;
    if be64(&g) != NBDMAGIC {
        return Err(proto_err("not an NBD server (bad NBDMAGIC)"));
    }
    if be64(&g[8..]) != IHAVEOPT {
        return Err(proto_err(
            "server speaks oldstyle NBD, which is not supported",
        ));
    }
    let sflags = be16(&g[16..]);
    if sflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto_err("server is not fixed-newstyle"));
    }
    let no_zeroes = sflags & FLAG_NO_ZEROES != 0;
    let cflags: u32 = 1 | if no_zeroes { 2 } else { 0 };
    s.write_all(&cflags.to_be_bytes())?;

    send_opt(s, OPT_STRUCTURED_REPLY, &[])?;
    let structured = loop {
        let (ty, data) = read_opt_reply(s, OPT_STRUCTURED_REPLY)?;
        match ty {
            REP_ACK => break true,
            t if t & (1 << 31) != 0 => break false,
            // Ignore informational replies we did not ask for.
            _ => drop(data),
        }
    };

    let name = export.as_bytes();
    let mut go = Vec::new();
    go.extend_from_slice(
        &u32::try_from(name.len())
            .map_err(|_| proto_err("export name too long"))?
            .to_be_bytes(),
    );
    go.extend_from_slice(name);
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_opt(s, OPT_GO, &go)?;
    let (mut size, mut flags, mut bsz) = (None, 0u16, None);
    loop {
        let (ty, data) = read_opt_reply(s, OPT_GO)?;
        match ty {
            REP_INFO if data.len() >= 2 => match be16(&data) {
                INFO_EXPORT if data.len() >= 12 => {
                    size = Some(be64(&data[2..]));
                    flags = be16(&data[10..]);
                }
                INFO_BLOCK_SIZE if data.len() >= 14 => {
                    bsz = Some((be32(&data[2..]), be32(&data[6..]), be32(&data[10..])));
                }
                _ => {}
            },
            REP_ACK => break,
            REP_ERR_UNSUP => {
                // Old server: EXPORT_NAME ends the handshake with size and flags.
                send_opt(s, OPT_EXPORT_NAME, name)?;
                let mut r = [0u8; 10];
                s.read_exact(&mut r)?;
                if !no_zeroes {
                    let mut z = [0u8; 124];
                    s.read_exact(&mut z)?;
                }
                size = Some(be64(&r));
                flags = be16(&r[8..]);
                break;
            }
            t if t & (1 << 31) != 0 => return Err(opt_error("OPT_GO", t, &data)),
            _ => {}
        }
    }
    let size = size.ok_or_else(|| proto_err("server sent no NBD_INFO_EXPORT"))?;
    Ok(ExportInfo {
        size,
        flags,
        structured,
        block_size: bsz,
    })
}

/// Ends the handshake without transmission (used by probes).
pub fn abort<S: Write>(s: &mut S) -> io::Result<()> {
    send_opt(s, OPT_ABORT, &[])
}

/// Appends a request header to `out`.
pub fn encode_request(out: &mut Vec<u8>, cmd: u16, flags: u16, cookie: u64, off: u64, len: u32) {
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&cmd.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&off.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// A parsed reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// Simple reply; a successful READ is followed by its data.
    Simple { cookie: u64, error: u32 },
    /// One structured chunk of `len` payload bytes.
    Chunk {
        cookie: u64,
        flags: u16,
        ty: u16,
        len: u32,
    },
}

/// Parses a reply header from the start of `b`; `Ok(None)` if more bytes are needed.
/// Returns the header and its length.
pub fn parse_reply(b: &[u8]) -> Result<Option<(ReplyHeader, usize)>, io::Error> {
    if b.len() < 4 {
        return Ok(None);
    }
    match be32(b) {
        SIMPLE_REPLY_MAGIC => {
            if b.len() < SIMPLE_REPLY_LEN {
                return Ok(None);
            }
            Ok(Some((
                ReplyHeader::Simple {
                    error: be32(&b[4..]),
                    cookie: be64(&b[8..]),
                },
                SIMPLE_REPLY_LEN,
            )))
        }
        STRUCTURED_REPLY_MAGIC => {
            if b.len() < STRUCTURED_HDR_LEN {
                return Ok(None);
            }
            Ok(Some((
                ReplyHeader::Chunk {
                    flags: be16(&b[4..]),
                    ty: be16(&b[6..]),
                    cookie: be64(&b[8..]),
                    len: be32(&b[16..]),
                },
                STRUCTURED_HDR_LEN,
            )))
        }
        m => Err(proto_err(format!("bad reply magic {m:#x}"))),
    }
}

/// Decodes the error code of an error chunk payload (u32 error, u16 message length, ...).
pub fn chunk_error(payload: &[u8]) -> u32 {
    if payload.len() >= 4 {
        be32(payload).max(1)
    } else {
        libc_eio()
    }
}

fn libc_eio() -> u32 {
    5
}

/// Offset of an OFFSET_DATA / OFFSET_HOLE chunk payload.
pub fn chunk_offset(payload: &[u8]) -> Option<u64> {
    (payload.len() >= 8).then(|| be64(payload))
}

/// Hole length of an OFFSET_HOLE chunk payload.
pub fn hole_len(payload: &[u8]) -> Option<u32> {
    (payload.len() >= 12).then(|| be32(&payload[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted peer: reads come from `input`, writes go to `output`.
    struct Peer {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Peer {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Peer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn opt_reply(opt: u32, ty: u32, data: &[u8]) -> Vec<u8> {
        let mut v = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn handshake_go() {
        let mut srv = NBDMAGIC.to_be_bytes().to_vec();
        srv.extend_from_slice(&IHAVEOPT.to_be_bytes());
        srv.extend_from_slice(&3u16.to_be_bytes());
        srv.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&(1u64 << 30).to_be_bytes());
        info.extend_from_slice(&(1u16 | TFLAG_SEND_FLUSH).to_be_bytes());
        srv.extend(opt_reply(OPT_GO, REP_INFO, &info));
        let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [1u32, 4096, 32 << 20] {
            bs.extend_from_slice(&v.to_be_bytes());
        }
        srv.extend(opt_reply(OPT_GO, REP_INFO, &bs));
        srv.extend(opt_reply(OPT_GO, REP_ACK, &[]));
        let mut p = Peer {
            input: Cursor::new(srv),
            output: Vec::new(),
        };
        let info = handshake(&mut p, "vol0").unwrap();
        assert_eq!(
            info,
            ExportInfo {
                size: 1 << 30,
                flags: 1 | TFLAG_SEND_FLUSH,
                structured: true,
                block_size: Some((1, 4096, 32 << 20)),
            }
        );
        // Client flags FIXED_NEWSTYLE | NO_ZEROES, then STRUCTURED_REPLY, then GO "vol0".
        assert_eq!(&p.output[..4], &3u32.to_be_bytes());
        assert!(p.output.windows(4).any(|w| w == b"vol0"));
    }

    #[test]
    fn handshake_rejects_garbage_and_errors() {
        let mut p = Peer {
            input: Cursor::new(vec![0u8; 18]),
            output: Vec::new(),
        };
        assert!(handshake(&mut p, "x").is_err());
        let mut srv = NBDMAGIC.to_be_bytes().to_vec();
        srv.extend_from_slice(&IHAVEOPT.to_be_bytes());
        srv.extend_from_slice(&1u16.to_be_bytes());
        srv.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]));
        srv.extend(opt_reply(OPT_GO, (1 << 31) + 6, b"no such export"));
        let mut p = Peer {
            input: Cursor::new(srv),
            output: Vec::new(),
        };
        let e = handshake(&mut p, "x").unwrap_err().to_string();
        assert!(e.contains("no such export"), "{e}");
    }

    #[test]
    fn reply_parsing() {
        let mut b = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(parse_reply(&b).unwrap(), None);
        b.extend_from_slice(&77u64.to_be_bytes());
        assert_eq!(
            parse_reply(&b).unwrap(),
            Some((
                ReplyHeader::Simple {
                    cookie: 77,
                    error: 5
                },
                16
            ))
        );
        let mut c = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        c.extend_from_slice(&CHUNK_FLAG_DONE.to_be_bytes());
        c.extend_from_slice(&CHUNK_OFFSET_DATA.to_be_bytes());
        c.extend_from_slice(&9u64.to_be_bytes());
        c.extend_from_slice(&4104u32.to_be_bytes());
        assert_eq!(
            parse_reply(&c).unwrap(),
            Some((
                ReplyHeader::Chunk {
                    cookie: 9,
                    flags: 1,
                    ty: 1,
                    len: 4104
                },
                20
            ))
        );
        assert!(parse_reply(&[1, 2, 3, 4]).is_err());
        let mut r = Vec::new();
        encode_request(&mut r, CMD_WRITE, CMD_FLAG_FUA, 1, 4096, 512);
        assert_eq!(r.len(), REQUEST_LEN);
    }
}
