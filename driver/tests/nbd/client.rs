//! A minimal blocking NBD client over a unix socket for the raw protocol tests: it speaks
//! every reply mode and lets a test send anything, well-formed or not.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::common::TestServer;
use ringpool_driver::nbd::proto::{self, cflags, cmd, opt, rep};
use ringpool_driver::nbd::request::encode_request;

pub struct Client {
    pub s: UnixStream,
    pub extended: bool,
    pub structured: bool,
    pub size: u64,
    pub flags: u16,
}

pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Simple reply: errno, data (for successful reads).
    Simple { cookie: u64, errno: u32 },
    /// One structured/extended chunk.
    Chunk {
        cookie: u64,
        flags: u16,
        kind: u16,
        payload: Vec<u8>,
    },
}

impl Client {
    pub fn connect_raw(s: &TestServer) -> UnixStream {
        let c = UnixStream::connect(s.sock()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    }

    /// The bytes of one option request.
    pub fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
        let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    pub fn opt_exchange(s: &mut UnixStream, option: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        s.write_all(&Client::option_bytes(option, data)).unwrap();
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            assert_eq!(be64(&h), proto::OPT_REPLY_MAGIC);
            assert_eq!(be32(&h[8..]), option);
            let kind = be32(&h[12..]);
            let mut d = vec![0u8; usize::try_from(be32(&h[16..])).unwrap()];
            s.read_exact(&mut d).unwrap();
            out.push((kind, d));
            if kind == rep::ACK || kind & (1 << 31) != 0 {
                return out;
            }
        }
    }

    pub fn greet(s: &mut UnixStream) {
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..8], b"NBDMAGIC");
        s.write_all(&3u32.to_be_bytes()).unwrap();
    }

    /// Connects and GOes to `export` with the given reply mode options.
    pub fn connect(srv: &TestServer, export: &str, structured: bool, extended: bool) -> Client {
        let mut s = Client::connect_raw(srv);
        Client::greet(&mut s);
        if extended {
            assert_eq!(
                Client::opt_exchange(&mut s, opt::EXTENDED_HEADERS, &[])[0].0,
                rep::ACK
            );
        } else if structured {
            assert_eq!(
                Client::opt_exchange(&mut s, opt::STRUCTURED_REPLY, &[])[0].0,
                rep::ACK
            );
        }
        let mut d = u32::try_from(export.len()).unwrap().to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        let r = Client::opt_exchange(&mut s, opt::GO, &d);
        assert_eq!(r.last().unwrap().0, rep::ACK, "GO failed: {r:?}");
        let e = r
            .iter()
            .find(|(k, d)| *k == rep::INFO && d[..2] == [0, 0])
            .expect("INFO_EXPORT");
        Client {
            s,
            extended,
            structured: structured || extended,
            size: be64(&e.1[2..]),
            flags: u16::from_be_bytes([e.1[10], e.1[11]]),
        }
    }

    pub fn send(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) {
        let mut m = encode_request(self.extended, flags, kind, cookie, offset, len);
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// Reads one reply message. For simple replies to reads, `read_len` bytes of data follow
    /// a zero errno and are returned in `data`.
    pub fn recv(&mut self, read_len: usize, data: &mut Vec<u8>) -> Reply {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).unwrap();
        match be32(&m) {
            proto::SIMPLE_REPLY_MAGIC => {
                let mut h = [0u8; 12];
                self.s.read_exact(&mut h).unwrap();
                let errno = be32(&h);
                if errno == 0 && read_len > 0 {
                    data.resize(read_len, 0);
                    self.s.read_exact(data).unwrap();
                }
                Reply::Simple {
                    cookie: be64(&h[4..]),
                    errno,
                }
            }
            proto::STRUCTURED_REPLY_MAGIC => {
                let mut h = [0u8; 16];
                self.s.read_exact(&mut h).unwrap();
                let mut payload = vec![0u8; usize::try_from(be32(&h[12..])).unwrap()];
                self.s.read_exact(&mut payload).unwrap();
                Reply::Chunk {
                    flags: u16::from_be_bytes([h[0], h[1]]),
                    kind: u16::from_be_bytes([h[2], h[3]]),
                    cookie: be64(&h[4..]),
                    payload,
                }
            }
            proto::EXT_REPLY_MAGIC => {
                let mut h = [0u8; 28];
                self.s.read_exact(&mut h).unwrap();
                let mut payload = vec![0u8; usize::try_from(be64(&h[20..])).unwrap()];
                self.s.read_exact(&mut payload).unwrap();
                Reply::Chunk {
                    flags: u16::from_be_bytes([h[0], h[1]]),
                    kind: u16::from_be_bytes([h[2], h[3]]),
                    cookie: be64(&h[4..]),
                    payload,
                }
            }
            m => panic!("bad reply magic {m:#x}"),
        }
    }

    /// The errno of a one-message reply (0 = success).
    pub fn status(&mut self, cookie: u64) -> u32 {
        match self.recv(0, &mut Vec::new()) {
            Reply::Simple { cookie: c, errno } => {
                assert_eq!(c, cookie);
                errno
            }
            Reply::Chunk {
                cookie: c,
                flags,
                kind,
                payload,
            } => {
                assert_eq!(c, cookie);
                assert_eq!(flags & 1, 1, "single chunk must be DONE");
                match kind {
                    proto::chunk::NONE => 0,
                    proto::chunk::ERROR => be32(&payload),
                    k => panic!("unexpected chunk type {k}"),
                }
            }
        }
    }

    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        let f = if self.extended {
            cflags::PAYLOAD_LEN
        } else {
            0
        };
        self.send(
            f,
            cmd::WRITE,
            cookie,
            offset,
            u64::try_from(data.len()).unwrap(),
            data,
        );
        self.status(cookie)
    }

    /// Reads `len` bytes (any reply mode).
    pub fn read(&mut self, cookie: u64, offset: u64, len: usize) -> Result<Vec<u8>, u32> {
        self.send(
            0,
            cmd::READ,
            cookie,
            offset,
            u64::try_from(len).unwrap(),
            &[],
        );
        self.read_reply(cookie, offset, len)
    }

    pub fn read_reply(&mut self, cookie: u64, offset: u64, len: usize) -> Result<Vec<u8>, u32> {
        let mut data = Vec::new();
        if !self.structured {
            return match self.recv(len, &mut data) {
                Reply::Simple {
                    cookie: c,
                    errno: 0,
                } if c == cookie => Ok(data),
                Reply::Simple { errno, .. } => Err(errno),
                r => panic!("{r:?}"),
            };
        }
        let mut out = vec![0u8; len];
        loop {
            let Reply::Chunk {
                cookie: c,
                flags,
                kind,
                payload,
            } = self.recv(0, &mut data)
            else {
                panic!("simple reply to a structured read")
            };
            assert_eq!(c, cookie);
            match kind {
                proto::chunk::OFFSET_DATA => {
                    let at = usize::try_from(be64(&payload) - offset).unwrap();
                    out[at..at + payload.len() - 8].copy_from_slice(&payload[8..]);
                }
                proto::chunk::OFFSET_HOLE => {
                    let at = usize::try_from(be64(&payload) - offset).unwrap();
                    let n = usize::try_from(be32(&payload[8..])).unwrap();
                    out[at..at + n].fill(0);
                }
                proto::chunk::ERROR | proto::chunk::ERROR_OFFSET => return Err(be32(&payload)),
                proto::chunk::NONE => {}
                k => panic!("chunk type {k}"),
            }
            if flags & 1 != 0 {
                return Ok(out);
            }
        }
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap() ^ seed)
        .collect()
}
