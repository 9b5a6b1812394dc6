//! `ringpool serve` stopped while WRITEs acknowledged by write-back (before their device
//! write) are still on their way: by SIGTERM, by SIGINT, and by a clean `ringpool export`
//! of the pool from the control socket. In every case each acknowledged write is on disk
//! after the pool is imported again, whether a FLUSH covered it or not (a clean shutdown
//! drains the write-backs and commits them), and the pool verifies clean.
//!
//! The client is a minimal NBD client of its own (fixed newstyle, EXPORT_NAME, simple
//! replies) so the test controls exactly which requests are in flight when the stop comes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{free_port, Env, Serve};

const LEN: usize = 128 << 10;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;

struct Nbd {
    s: TcpStream,
}

impl Nbd {
    fn connect(port: u16, export: &str) -> Nbd {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        // FIXED_NEWSTYLE | NO_ZEROES.
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&1u32.to_be_bytes()); // EXPORT_NAME
        opt.extend_from_slice(&u32::try_from(export.len()).unwrap().to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt).unwrap();
        let mut info = [0u8; 10];
        s.read_exact(&mut info).unwrap();
        Nbd { s }
    }

    fn send(&mut self, kind: u16, cookie: u64, offset: u64, len: usize, payload: &[u8]) {
        let mut m = Vec::with_capacity(28 + payload.len());
        m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// The next simple reply (cookie, errno), or None once the server closed the connection.
    fn reply(&mut self) -> Option<(u64, u32)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).ok()?;
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), REPLY_MAGIC);
        let errno = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..].try_into().unwrap());
        Some((cookie, errno))
    }

    fn read(&mut self, offset: u64) -> Vec<u8> {
        self.send(CMD_READ, 7, offset, LEN, &[]);
        let (cookie, errno) = self.reply().expect("read reply");
        assert_eq!((cookie, errno), (7, 0), "read at {offset}");
        let mut data = vec![0u8; LEN];
        self.s.read_exact(&mut data).unwrap();
        data
    }
}

/// The data of write `k`: every byte names the write and its place.
fn pattern(k: u64) -> Vec<u8> {
    (0..LEN)
        .map(|i| u8::try_from((k * 131 + i as u64 / 512) % 251).unwrap() + 1)
        .collect()
}

enum Stop {
    Signal(i32),
    /// `ringpool export` of the pool through the running serve, then SIGTERM.
    Export,
}

fn shut_down_with_write_backs_in_flight(stop: Stop) {
    let env = Env::new();
    let dev = env.path("dev.img");
    env.ok(&["create", "--size", "512M", "p", dev.to_str().unwrap()]);
    env.ok(&["volume", "create", "-s", "64M", "p/v"]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = env.cmd(&["serve", "--listen", &listen, "--reactors", "2"]);
    cmd.env("RINGPOOL_NBD_WRITE_BACK", "1")
        .env("RINGPOOL_WRITE_BACK_DELAY_MS", "300");
    let serve = Serve::spawn(cmd);
    let mut c = Nbd::connect(port, "p/v");
    // 0..64: written and flushed. 64..80 (2 MiB, the write-back bound): acknowledged at
    // once, held back 300 ms before their device writes (RINGPOOL_WRITE_BACK_DELAY_MS), so
    // they are in flight when the stop comes, and they are all the open txg has.
    let (flushed, last) = (64u64, 80u64);
    for k in 0..flushed {
        c.send(CMD_WRITE, k, k * LEN as u64, LEN, &pattern(k));
    }
    for _ in 0..flushed {
        let (cookie, errno) = c.reply().expect("write reply");
        assert_eq!(errno, 0, "write {cookie}");
    }
    c.send(CMD_FLUSH, 1000, 0, 0, &[]);
    assert_eq!(c.reply(), Some((1000, 0)), "flush");
    for k in flushed..last {
        c.send(CMD_WRITE, k, k * LEN as u64, LEN, &pattern(k));
    }
    for _ in flushed..last {
        let (cookie, errno) = c.reply().expect("write reply");
        assert_eq!(errno, 0, "write {cookie}");
    }
    let status = match &stop {
        Stop::Signal(sig) => {
            // SAFETY: kill has no memory effects; the pid is our own child's.
            unsafe { libc::kill(i32::try_from(serve.pid()).unwrap(), *sig) };
            assert_eq!(c.reply(), None, "the server closes the connection");
            serve.wait()
        }
        Stop::Export => {
            let out = env.run(&["export", "p"]);
            assert!(
                out.status.success(),
                "export through serve: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serve.stop()
        }
    };
    drop(c);
    assert!(status.success(), "serve exits cleanly: {status:?}");

    if matches!(stop, Stop::Export) {
        // The export made the state directory forget the pool: import it again.
        env.ok(&["import", "-d", env.path("").to_str().unwrap(), "p"]);
    }
    // Imports clean, and holds every acknowledged write.
    let verify = env.run(&["verify", "p"]);
    assert!(
        verify.status.success(),
        "verify after the shutdown: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve = Serve::spawn(env.cmd(&["serve", "--listen", &listen, "--reactors", "1"]));
    let mut c = Nbd::connect(port, "p/v");
    let zeroes = vec![0u8; LEN];
    for k in 0..last {
        let got = c.read(k * LEN as u64);
        assert!(
            got == pattern(k),
            "acknowledged write {k} is on disk ({})",
            if got == zeroes {
                "zeroes"
            } else {
                "other data"
            }
        );
    }
    drop(c);
    assert!(serve.stop().success());
}

#[test]
fn sigterm_with_write_backs_in_flight_commits_every_acknowledged_write() {
    shut_down_with_write_backs_in_flight(Stop::Signal(libc::SIGTERM));
}

#[test]
fn sigint_with_write_backs_in_flight_commits_every_acknowledged_write() {
    shut_down_with_write_backs_in_flight(Stop::Signal(libc::SIGINT));
}

#[test]
fn export_with_write_backs_in_flight_commits_every_acknowledged_write() {
    shut_down_with_write_backs_in_flight(Stop::Export);
}
