//! Raw-socket protocol tests: malformed and abusive traffic, pipelining, back-pressure,
//! disconnects, DISC, shutdown and export removal. A client that misbehaves must never
//! disturb another connection or half-apply a write.

#[path = "nbd/client.rs"]
mod client;
#[path = "nbd/common.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use client::*;
use common::*;
use ringpool_driver::nbd::proto::{self, cflags, cmd, opt, rep};
use ringpool_driver::nbd::request::encode_request;
use ringpool_driver::nbd::MemBackend;

#[test]
fn good_traffic_in_every_reply_mode() {
    let s = TestServer::start(16 << 20);
    for (structured, extended) in [(false, false), (true, false), (false, true)] {
        let mut c = Client::connect(&s, EXPORT, structured, extended);
        assert_eq!(c.size, 16 << 20);
        assert!(c.flags & proto::tflags::CAN_MULTI_CONN != 0);
        let d = pattern(100_000, 7);
        assert_eq!(c.write(1, 12345, &d), 0);
        assert_eq!(c.read(2, 12345, d.len()).unwrap(), d);
        assert_eq!(c.read(3, 8 << 20, 5000).unwrap(), vec![0u8; 5000]);
        // Large read (zero-copy path) of data.
        let big = pattern(1 << 20, 9);
        assert_eq!(c.write(4, 2 << 20, &big), 0);
        assert_eq!(c.read(5, 2 << 20, 1 << 20).unwrap(), big);
        c.send(0, cmd::FLUSH, 6, 0, 0, &[]);
        assert_eq!(c.status(6), 0);
        c.send(0, cmd::TRIM, 7, 2 << 20, 1 << 20, &[]);
        assert_eq!(c.status(7), 0);
        assert_eq!(c.read(8, 2 << 20, 1 << 20).unwrap(), vec![0u8; 1 << 20]);
        c.send(0, cmd::DISC, 9, 0, 0, &[]);
        assert!(c.closed());
    }
    s.wait_idle();
    assert_eq!(s.connections(), 0);
}

#[test]
fn bad_requests_get_errors_and_the_connection_survives() {
    let s = TestServer::start(1 << 20);
    let mut c = Client::connect(&s, EXPORT, false, false);
    const EINVAL: u32 = 22;
    const ENOSPC: u32 = 28;
    c.send(0, 42, 1, 0, 0, &[]);
    assert_eq!(c.status(1), EINVAL, "unknown command");
    c.send(0x8000, cmd::READ, 2, 0, 4096, &[]);
    assert_eq!(c.status(2), EINVAL, "unknown flag");
    c.send(cflags::DF, cmd::READ, 3, 0, 4096, &[]);
    assert_eq!(c.status(3), EINVAL, "DF without structured replies");
    assert_eq!(c.read(4, 1 << 20, 4096), Err(EINVAL), "read at the end");
    assert_eq!(
        c.read(5, (1 << 20) - 4096, 8192),
        Err(EINVAL),
        "read straddling the end"
    );
    assert_eq!(
        c.write(6, 1 << 20, &[1u8; 4096]),
        ENOSPC,
        "write at the end (payload consumed)"
    );
    assert_eq!(
        c.write(7, (1 << 20) - 100, &[1u8; 4096]),
        ENOSPC,
        "write straddling the end"
    );
    c.send(0, cmd::WRITE_ZEROES, 8, 1 << 20, 4096, &[]);
    assert_eq!(c.status(8), ENOSPC);
    c.send(0, cmd::TRIM, 9, 1 << 20, 4096, &[]);
    assert_eq!(c.status(9), EINVAL);
    c.send(0, cmd::BLOCK_STATUS, 10, 0, 4096, &[]);
    assert_eq!(c.status(10), EINVAL, "block status without a context");
    assert_eq!(
        c.read(11, 0, 64 << 20),
        Err(EINVAL),
        "read above the max payload"
    );
    assert_eq!(
        c.read(12, 1, 511),
        Ok(vec![0u8; 511]),
        "unaligned read with min block 1"
    );
    assert_eq!(c.read(13, 0, 0), Ok(vec![]), "zero-length read");
    // Nothing past the end was written.
    assert_eq!(s.mem.allocated_bytes(), 0);
    let d = pattern(4096, 3);
    assert_eq!(c.write(14, 0, &d), 0);
    assert_eq!(c.read(15, 0, 4096).unwrap(), d);
}

#[test]
fn oversized_payloads_are_skipped_or_disconnected() {
    let s = TestServer::start_with(8 << 20, 4096, |c| {
        c.max_payload = 1 << 20;
        c.max_discard = 4 << 20;
    });
    let mut c = Client::connect(&s, EXPORT, true, false);
    let mut other = Client::connect(&s, EXPORT, false, false);
    // Between max payload and the discard limit: payload read and dropped, EINVAL, still usable.
    assert_eq!(c.write(1, 0, &vec![9u8; 2 << 20]), 22);
    assert_eq!(c.read(2, 0, 4096).unwrap(), vec![0u8; 4096]);
    assert_eq!(s.mem.allocated_bytes(), 0);
    // Beyond the discard limit: hard disconnect, without touching the data.
    c.send(0, cmd::WRITE, 3, 0, 6 << 20, &[]);
    let _ = c.s.write_all(&vec![5u8; 1 << 20]);
    assert!(c.closed());
    assert_eq!(s.mem.allocated_bytes(), 0);
    // Extended headers: any payload above the max is a disconnect.
    let mut x = Client::connect(&s, EXPORT, false, true);
    x.send(cflags::PAYLOAD_LEN, cmd::WRITE, 1, 0, 2 << 20, &[]);
    assert!(x.closed());
    // The other connection never noticed.
    assert_eq!(other.write(1, 0, &[1u8; 512]), 0);
    assert_eq!(other.read(2, 0, 512).unwrap(), vec![1u8; 512]);
}

#[test]
fn bad_magic_truncation_and_vanishing_clients() {
    let s = TestServer::start(4 << 20);
    let mut good = Client::connect(&s, EXPORT, true, false);
    // Bad magic: hard disconnect.
    let mut c = Client::connect(&s, EXPORT, false, false);
    let mut h = encode_request(false, 0, cmd::READ, 1, 0, 4096);
    h[0] ^= 0xff;
    c.s.write_all(&h).unwrap();
    assert!(c.closed());
    // Truncated header, then close.
    let mut c = Client::connect(&s, EXPORT, false, false);
    c.s.write_all(&encode_request(false, 0, cmd::READ, 1, 0, 4096)[..10])
        .unwrap();
    drop(c);
    // Disconnect in the middle of a write payload: the write is not applied.
    let mut c = Client::connect(&s, EXPORT, false, false);
    c.send(0, cmd::WRITE, 1, 1 << 20, 65536, &[0xaa; 1000]);
    drop(c);
    // Garbage during the handshake.
    let mut raw = Client::connect_raw(&s);
    Client::greet(&mut raw);
    raw.write_all(b"this is not an option header at all")
        .unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(raw.read(&mut b), Ok(0) | Err(_)));
    // Unknown client flags.
    let mut raw = Client::connect_raw(&s);
    let mut g = [0u8; 18];
    raw.read_exact(&mut g).unwrap();
    raw.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    assert!(matches!(raw.read(&mut b), Ok(0) | Err(_)));
    // EXPORT_NAME of an unknown export: closed without a reply.
    let mut raw = Client::connect_raw(&s);
    Client::greet(&mut raw);
    let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
    m.extend_from_slice(&4u32.to_be_bytes());
    m.extend_from_slice(b"nope");
    raw.write_all(&m).unwrap();
    assert!(matches!(raw.read(&mut b), Ok(0) | Err(_)));
    drop(raw);
    // The well-behaved connection kept working throughout; the torn write never landed.
    let d = pattern(8192, 1);
    assert_eq!(good.write(1, 0, &d), 0);
    assert_eq!(good.read(2, 0, 8192).unwrap(), d);
    assert_eq!(good.read(3, 1 << 20, 65536).unwrap(), vec![0u8; 65536]);
    drop(good);
    s.wait_idle();
    assert_eq!(s.connections(), 0, "connections leaked");
}

#[test]
fn pipelined_requests_complete_with_their_cookies() {
    let s = TestServer::start(8 << 20);
    let mut c = Client::connect(&s, EXPORT, true, false);
    let n = 64u64;
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(encode_request(false, 0, cmd::WRITE, i, i * 65536, 65536));
        burst.extend(pattern(65536, u8::try_from(i).unwrap()));
    }
    c.s.write_all(&burst).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        match c.recv(0, &mut Vec::new()) {
            Reply::Simple { cookie, errno: 0 } => assert!(seen.insert(cookie)),
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(seen.len(), usize::try_from(n).unwrap());
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(encode_request(
            false,
            0,
            cmd::READ,
            1000 + i,
            i * 65536,
            65536,
        ));
    }
    c.s.write_all(&burst).unwrap();
    // Replies may come in any order: collect chunks per cookie.
    let mut got = std::collections::HashMap::new();
    while got.len() < usize::try_from(n).unwrap() {
        let Reply::Chunk {
            cookie,
            flags,
            kind,
            payload,
        } = c.recv(0, &mut Vec::new())
        else {
            panic!()
        };
        assert_eq!(kind, proto::chunk::OFFSET_DATA);
        assert_eq!(flags & 1, 1);
        let i = cookie - 1000;
        assert_eq!(be64(&payload), i * 65536);
        got.insert(i, payload[8..].to_vec());
    }
    for i in 0..n {
        assert!(
            got[&i] == pattern(65536, u8::try_from(i).unwrap()),
            "data of request {i}"
        );
    }
    // Many small reads at once: their replies are copied into send batches; more than one
    // batch fills up, and the full ones go out together in order.
    let small = 1024u64;
    let mut burst = Vec::new();
    for i in 0..small {
        let off = (i * 4096 * 7) % (n * 65536);
        burst.extend(encode_request(false, 0, cmd::READ, 5000 + i, off, 4096));
    }
    c.s.write_all(&burst).unwrap();
    let mut got = std::collections::HashMap::new();
    while got.len() < usize::try_from(small).unwrap() {
        let Reply::Chunk {
            cookie, payload, ..
        } = c.recv(0, &mut Vec::new())
        else {
            panic!()
        };
        let i = cookie - 5000;
        let off = (i * 4096 * 7) % (n * 65536);
        assert_eq!(be64(&payload), off);
        assert!(
            got.insert(i, payload[8..].to_vec()).is_none(),
            "one reply per cookie"
        );
    }
    for i in 0..small {
        let off = (i * 4096 * 7) % (n * 65536);
        let blk = off / 65536;
        let within = usize::try_from(off % 65536).unwrap();
        let want = pattern(65536, u8::try_from(blk).unwrap());
        assert!(
            got[&i] == want[within..within + 4096],
            "data of small read {i}"
        );
    }
}

/// A burst of writes sent in one go is written by several gather tasks at once, not as one
/// batch whose replies all wait for the whole of it (that halved a bursty client's pipeline).
#[test]
fn a_burst_of_writes_is_shared_out_between_gather_tasks() {
    let s = TestServer::start(8 << 20);
    let mut c = Client::connect(&s, EXPORT, true, false);
    let stats = s.mem.stats();
    for round in 0..4u64 {
        let mut burst = Vec::new();
        for i in 0..32u64 {
            let cookie = round * 100 + i;
            burst.extend(encode_request(false, 0, cmd::WRITE, cookie, i * 8192, 4096));
            burst.extend(pattern(4096, u8::try_from(cookie % 251).unwrap()));
        }
        c.s.write_all(&burst).unwrap();
        for _ in 0..32 {
            match c.recv(0, &mut Vec::new()) {
                Reply::Simple { errno: 0, .. } => {}
                r => panic!("{r:?}"),
            }
        }
    }
    assert_eq!(stats.writes.load(Ordering::Relaxed), 128);
    let largest = stats.largest_batch.load(Ordering::Relaxed);
    assert!(
        (1..=8).contains(&largest),
        "a burst of 32 is split over the 4 gather tasks, largest batch {largest}"
    );
    for i in 0..32u64 {
        let cookie = 300 + i;
        assert!(
            s.mem.contents(i * 8192, 4096) == pattern(4096, u8::try_from(cookie % 251).unwrap()),
            "data of write {i}"
        );
    }
}

#[test]
fn small_pipelined_writes_are_gathered_each_with_its_reply() {
    let s = TestServer::start(8 << 20);
    let mut c = Client::connect(&s, EXPORT, true, false);
    let stats = s.mem.stats();
    // 256 scattered 4 KiB writes in one burst, every 8th with FUA (never gathered).
    let n = 256u64;
    let off = |i: u64| (i * 37 % n) * 8192;
    let mut burst = Vec::new();
    for i in 0..n {
        let flags = if i % 8 == 0 { cflags::FUA } else { 0 };
        burst.extend(encode_request(false, flags, cmd::WRITE, i, off(i), 4096));
        burst.extend(pattern(4096, u8::try_from(i).unwrap()));
    }
    c.s.write_all(&burst).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        match c.recv(0, &mut Vec::new()) {
            Reply::Simple { cookie, errno: 0 } => {
                assert!(seen.insert(cookie), "one reply per write")
            }
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(stats.writes.load(Ordering::Relaxed), n);
    assert_eq!(stats.fua_writes.load(Ordering::Relaxed), n / 8);
    assert!(
        stats.write_batches.load(Ordering::Relaxed) > 0,
        "writes that arrived together were handed over together"
    );
    for i in 0..n {
        assert!(
            s.mem.contents(off(i), 4096) == pattern(4096, u8::try_from(i).unwrap()),
            "data of write {i}"
        );
    }
    // Failing writes: every gathered one gets its own error reply, the connection lives on.
    s.mem.fail_writes(Some(proto::Errno::NoSpc));
    let mut burst = Vec::new();
    for i in 0..64u64 {
        burst.extend(encode_request(
            false,
            0,
            cmd::WRITE,
            1000 + i,
            i * 4096,
            4096,
        ));
        burst.extend(pattern(4096, 7));
    }
    c.s.write_all(&burst).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        match c.recv(0, &mut Vec::new()) {
            // Structured replies carry errors as error chunks: errno first.
            Reply::Chunk {
                cookie, payload, ..
            } => {
                assert_eq!(
                    be32(&payload),
                    proto::Errno::NoSpc.code(),
                    "cookie {cookie}"
                );
                assert!(seen.insert(cookie));
            }
            r => panic!("{r:?}"),
        }
    }
    s.mem.fail_writes(None);
    assert_eq!(c.write(2000, 0, &pattern(4096, 9)), 0);
    assert!(s.mem.contents(0, 4096) == pattern(4096, 9));
}

#[test]
fn slow_reader_gets_back_pressure_not_server_memory() {
    let s = TestServer::start_with(64 << 20, 4096, |c| {
        c.max_payload = 1 << 20;
        c.max_inflight_bytes = 4 << 20;
    });
    // Make the data non-hole so replies carry the full payload.
    let mut w = Client::connect(&s, EXPORT, false, false);
    assert_eq!(w.write(1, 0, &vec![7u8; 1 << 20]), 0);
    let mut c = Client::connect(&s, EXPORT, false, false);
    let n = 200u64;
    let reads_before = s.mem.stats().reads.load(Ordering::Relaxed);
    let sender = {
        let mut s2 = c.s.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..n {
                s2.write_all(&encode_request(false, 0, cmd::READ, i, 0, 1 << 20))
                    .unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let served = s.mem.stats().reads.load(Ordering::Relaxed) - reads_before;
    eprintln!("reads executed while the client was not reading: {served}");
    // 4 MiB of credit plus what the socket buffers hold: far below 200 MiB of replies.
    assert!(
        served < 40,
        "server executed {served} reads for a client that reads nothing"
    );
    let mut data = Vec::new();
    for _ in 0..n {
        match c.recv(1 << 20, &mut data) {
            Reply::Simple { errno: 0, .. } => assert!(data.iter().all(|b| *b == 7)),
            r => panic!("{r:?}"),
        }
    }
    sender.join().unwrap();
    assert_eq!(
        s.mem.stats().reads.load(Ordering::Relaxed) - reads_before,
        n
    );
}

#[test]
fn disc_drains_in_flight_writes() {
    let s = TestServer::start(8 << 20);
    let mut c = Client::connect(&s, EXPORT, false, false);
    let mut burst = Vec::new();
    for i in 0..32u64 {
        burst.extend(encode_request(
            false,
            cflags::FUA,
            cmd::WRITE,
            i,
            i * 4096,
            4096,
        ));
        burst.extend(vec![u8::try_from(i + 1).unwrap(); 4096]);
    }
    burst.extend(encode_request(false, 0, cmd::DISC, 99, 0, 0));
    c.s.write_all(&burst).unwrap();
    let mut n = 0;
    loop {
        let mut m = [0u8; 16];
        match c.s.read_exact(&mut m) {
            Ok(()) => {
                assert_eq!(be32(&m[4..]), 0);
                n += 1;
            }
            Err(_) => break,
        }
    }
    assert_eq!(n, 32, "every write before DISC is answered");
    for i in 0..32u64 {
        assert_eq!(
            s.mem.contents(i * 4096, 4096),
            vec![u8::try_from(i + 1).unwrap(); 4096]
        );
    }
}

#[test]
fn export_removal_and_addition_while_serving() {
    let s = TestServer::start(4 << 20);
    s.exports
        .add(
            "pool/other",
            std::sync::Arc::new(MemBackend::new(1 << 20, 4096)),
            true,
        )
        .unwrap();
    let mut ro = Client::connect(&s, "pool/other", false, false);
    assert!(ro.flags & proto::tflags::READ_ONLY != 0);
    assert_eq!(
        ro.write(1, 0, &[1u8; 4096]),
        1,
        "EPERM on a read-only export"
    );
    assert_eq!(ro.read(2, 0, 4096).unwrap(), vec![0u8; 4096]);
    assert!(s.exports.remove("pool/other").is_some());
    assert_eq!(
        ro.read(3, 0, 4096),
        Err(108),
        "ESHUTDOWN once the export is gone"
    );
    // New handshakes no longer see it.
    let mut raw = Client::connect_raw(&s);
    Client::greet(&mut raw);
    let mut d = 10u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"pool/other");
    d.extend_from_slice(&0u16.to_be_bytes());
    let r = Client::opt_exchange(&mut raw, opt::INFO, &d);
    assert_eq!(r[0].0, rep::ERR_UNKNOWN);
    // The main export is unaffected.
    let mut c = Client::connect(&s, EXPORT, true, false);
    assert_eq!(c.write(1, 0, &[3u8; 4096]), 0);
}

#[test]
fn shutdown_drains_and_closes_connections() {
    let mut s = TestServer::start(4 << 20);
    let sock = s.sock();
    let mut c = Client::connect(&s, EXPORT, true, false);
    let mut idle = Client::connect_raw(&s);
    Client::greet(&mut idle);
    assert_eq!(c.write(1, 0, &[4u8; 4096]), 0);
    let mut server = s.server.take().unwrap();
    let t = std::thread::spawn(move || {
        let left = server.shutdown_timeout(Duration::from_secs(10));
        (server, left)
    });
    assert!(c.closed(), "transmission connection closed by shutdown");
    let mut b = [0u8; 1];
    assert!(
        matches!(idle.read(&mut b), Ok(0) | Err(_)),
        "handshake connection closed by shutdown"
    );
    let (server, left) = t.join().unwrap();
    assert_eq!(left, 0);
    assert!(UnixStream::connect(&sock).is_err(), "socket removed");
    drop(server);
}

#[test]
fn handshake_timeout_and_connection_limit() {
    let s = TestServer::start_with(1 << 20, 4096, |c| {
        c.handshake_timeout = Some(Duration::from_millis(300));
        c.max_connections = 2;
    });
    // A client that never finishes the handshake is dropped.
    let mut slow = Client::connect_raw(&s);
    let mut g = [0u8; 18];
    slow.read_exact(&mut g).unwrap();
    let t = std::time::Instant::now();
    let mut b = [0u8; 1];
    assert!(matches!(slow.read(&mut b), Ok(0) | Err(_)));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "dropped after {:?}",
        t.elapsed()
    );
    s.wait_idle();
    // Two transmission connections are allowed; a third is closed at once.
    let mut a = Client::connect(&s, EXPORT, false, false);
    let mut b2 = Client::connect(&s, EXPORT, false, false);
    let mut third = Client::connect_raw(&s);
    assert!(
        matches!(third.read(&mut b), Ok(0) | Err(_)),
        "third connection refused"
    );
    assert_eq!(a.write(1, 0, &[1u8; 512]), 0);
    assert_eq!(b2.read(2, 0, 512).unwrap(), vec![1u8; 512]);
}

/// Random and half-valid traffic over real sockets: the server never panics, never hangs,
/// keeps serving a good client and closes every bad connection.
#[test]
fn random_traffic_never_hurts_the_server() {
    use rand::{Rng, RngCore, SeedableRng};
    let s = TestServer::start(1 << 20);
    let sock = s.sock();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed + t);
                for _ in 0..60 {
                    let mut c = UnixStream::connect(&sock).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut g = [0u8; 18];
                    c.read_exact(&mut g).unwrap();
                    let mut msg = Vec::new();
                    if rng.random_bool(0.2) {
                        let mut junk = vec![0u8; rng.random_range(0..3000)];
                        rng.fill_bytes(&mut junk);
                        msg.extend(junk);
                    } else {
                        let extended = rng.random_bool(0.3);
                        msg.extend(3u32.to_be_bytes());
                        let mut opt_msg = |o: u32, d: &[u8]| {
                            msg.extend(proto::IHAVEOPT.to_be_bytes());
                            msg.extend(o.to_be_bytes());
                            msg.extend(u32::try_from(d.len()).unwrap().to_be_bytes());
                            msg.extend_from_slice(d);
                        };
                        if extended {
                            opt_msg(opt::EXTENDED_HEADERS, &[]);
                        } else if rng.random_bool(0.5) {
                            opt_msg(opt::STRUCTURED_REPLY, &[]);
                        }
                        let mut go = 8u32.to_be_bytes().to_vec();
                        go.extend_from_slice(EXPORT.as_bytes());
                        go.extend(0u16.to_be_bytes());
                        opt_msg(opt::GO, &go);
                        for _ in 0..rng.random_range(0..40) {
                            let kind = if rng.random_bool(0.8) {
                                rng.random_range(0..9u16)
                            } else {
                                rng.random()
                            };
                            let flags = if rng.random_bool(0.7) {
                                0
                            } else {
                                rng.random::<u16>() & 0x3f
                            };
                            let offset = if rng.random_bool(0.8) {
                                rng.random_range(0..(1u64 << 20))
                            } else {
                                rng.random()
                            };
                            let len = if rng.random_bool(0.9) {
                                rng.random_range(0..70_000u64)
                            } else {
                                rng.random::<u32>().into()
                            };
                            let mut h =
                                encode_request(extended, flags, kind, rng.random(), offset, len);
                            if rng.random_bool(0.03) {
                                h[1] ^= 0x40;
                            }
                            msg.extend(h);
                            if kind == cmd::WRITE && len < 70_000 {
                                let send = if rng.random_bool(0.9) {
                                    len
                                } else {
                                    rng.random_range(0..=len)
                                };
                                msg.extend(std::iter::repeat_n(
                                    0x5a,
                                    usize::try_from(send).unwrap(),
                                ));
                            }
                        }
                        if rng.random_bool(0.5) {
                            msg.extend(encode_request(extended, 0, cmd::DISC, 0, 0, 0));
                        }
                    }
                    let cut = if rng.random_bool(0.2) {
                        rng.random_range(0..=msg.len())
                    } else {
                        msg.len()
                    };
                    let _ = c.write_all(&msg[..cut]);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    // Drain replies until the server closes (never hang).
                    let mut sink = [0u8; 65536];
                    loop {
                        match c.read(&mut sink) {
                            Ok(0) => break,
                            Ok(_) => {}
                            // A reset is a close with our unread bytes still queued at the server.
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                            Err(e) => panic!("server did not close a finished connection: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    s.wait_idle();
    assert_eq!(s.connections(), 0, "connections leaked");
    let mut c = Client::connect(&s, EXPORT, true, false);
    let d = pattern(65536, 77);
    assert_eq!(c.write(1, 4096, &d), 0);
    assert_eq!(c.read(2, 4096, d.len()).unwrap(), d);
}

#[test]
fn minimum_block_size_is_advertised_and_enforced() {
    let s = TestServer::start(1 << 20);
    s.exports
        .add(
            "pool/direct",
            std::sync::Arc::new(MemBackend::new(1 << 20, 4096).with_min_block(512)),
            false,
        )
        .unwrap();
    let mut raw = Client::connect_raw(&s);
    Client::greet(&mut raw);
    let mut d = 11u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"pool/direct");
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&proto::info::BLOCK_SIZE.to_be_bytes());
    let r = Client::opt_exchange(&mut raw, opt::INFO, &d);
    let bs = r
        .iter()
        .find(|(k, d)| *k == rep::INFO && d[..2] == proto::info::BLOCK_SIZE.to_be_bytes())
        .expect("block size");
    assert_eq!(
        (be32(&bs.1[2..]), be32(&bs.1[6..]), be32(&bs.1[10..])),
        (512, 4096, 32 << 20)
    );
    let mut c = Client::connect(&s, "pool/direct", false, false);
    assert_eq!(c.read(1, 100, 512), Err(22), "unaligned offset");
    assert_eq!(c.read(2, 512, 100), Err(22), "unaligned length");
    assert_eq!(
        c.write(3, 1, &[1u8; 512]),
        22,
        "unaligned write refused (payload consumed)"
    );
    c.send(0, cmd::TRIM, 4, 512, 1000, &[]);
    assert_eq!(c.status(4), 22);
    assert_eq!(c.write(5, 512, &[2u8; 1024]), 0);
    assert_eq!(c.read(6, 0, 2048).unwrap()[512..1536], [2u8; 1024]);
}

#[test]
fn a_page_sized_read_over_data_and_a_hole_answers_the_hole_as_a_hole_chunk() {
    // Reads of a page or more are otherwise sent straight from their read buffer as one data
    // chunk; with structured replies a read that covers a hole still gets a hole chunk for it.
    let s = TestServer::start(16 << 20);
    for extended in [false, true] {
        let mut c = Client::connect(&s, EXPORT, !extended, extended);
        let d = pattern(4096, 3);
        assert_eq!(c.write(1, 1 << 20, &d), 0);
        for (len, cookie) in [(8192u64, 2u64), (12288, 3)] {
            c.send(0, cmd::READ, cookie, 1 << 20, len, &[]);
            let mut chunks = Vec::new();
            loop {
                let Reply::Chunk {
                    cookie: k,
                    flags,
                    kind,
                    payload,
                } = c.recv(0, &mut Vec::new())
                else {
                    panic!("simple reply to a structured read")
                };
                assert_eq!(k, cookie);
                let at = be64(&payload) - (1 << 20);
                let n = if kind == proto::chunk::OFFSET_HOLE {
                    u64::from(be32(&payload[8..]))
                } else {
                    assert_eq!(kind, proto::chunk::OFFSET_DATA);
                    assert_eq!(&payload[8..], &d[..], "data of read {cookie}");
                    u64::try_from(payload.len() - 8).unwrap()
                };
                chunks.push((at, n, kind));
                if flags & 1 == 1 {
                    break;
                }
            }
            chunks.sort_unstable();
            assert_eq!(
                chunks,
                [
                    (0, 4096, proto::chunk::OFFSET_DATA),
                    (4096, len - 4096, proto::chunk::OFFSET_HOLE)
                ],
                "read of {len} (extended {extended})"
            );
        }
        c.send(0, cmd::DISC, 9, 0, 0, &[]);
        assert!(c.closed());
    }
}
