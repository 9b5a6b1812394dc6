//! WRITE without FUA on a pool volume goes the write-back way (acknowledged before its device
//! write, `Volume::write_back`), unless the server is configured otherwise: seen end to end
//! through a device whose writes fail. With write-back the WRITE succeeds and the FLUSH after
//! it reports the loss; without, the WRITE itself fails. Either way no FLUSH after the lost
//! write succeeds, and data written back is read back on another connection.

#[path = "nbd/client.rs"]
mod client;
#[path = "nbd/common.rs"]
mod common;
mod pool_common;

use std::sync::Arc;
use std::time::Duration;

use client::*;
use common::*;
use ringpool_driver::io::FaultyEngine;
use ringpool_driver::nbd::proto::{cflags, cmd};
use ringpool_driver::nbd::{ExportBackend, MemBackend, NbdServerConfig};
use ringpool_driver::pool::Pool;

const LEN: usize = 128 << 10;

fn serve(write_back: bool) -> (TestServer, Pool, FaultyEngine) {
    serve_on(1, write_back)
}

fn serve_on(reactors: usize, write_back: bool) -> (TestServer, Pool, FaultyEngine) {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = pool_common::create_one_shard(
        "nbdwb",
        vec![Arc::new(dev.clone())],
        Duration::from_secs(60),
    )
    .expect("pool");
    let vol = pool.create_volume("v", 8 << 20, 4096).expect("volume");
    let backend: Arc<dyn ExportBackend> = Arc::new(vol);
    let unused = Arc::new(MemBackend::new(4096, 4096));
    let srv = TestServer::start_backend(
        reactors,
        backend,
        false,
        unused,
        |cfg: &mut NbdServerConfig| {
            cfg.tcp = None;
            cfg.write_back = write_back;
        },
    );
    (srv, pool, dev)
}

fn flush(c: &mut Client, cookie: u64) -> u32 {
    c.send(0, cmd::FLUSH, cookie, 0, 0, &[]);
    c.status(cookie)
}

#[test]
fn pipelined_writes_written_back_are_read_back_on_another_connection() {
    let (srv, pool, _dev) = serve(true);
    let mut w = Client::connect(&srv, EXPORT, true, false);
    let n = 32u64;
    for k in 0..n {
        let data = pattern(LEN, u8::try_from(k).unwrap());
        w.send(0, cmd::WRITE, k, k * LEN as u64, LEN as u64, &data);
    }
    for _ in 0..n {
        match w.recv(0, &mut Vec::new()) {
            Reply::Chunk { kind, .. } => assert_eq!(kind, 0, "write reply is NONE"),
            Reply::Simple { errno, .. } => assert_eq!(errno, 0),
        }
    }
    let mut r = Client::connect(&srv, EXPORT, true, false);
    for k in 0..n {
        let got = r.read(100 + k, k * LEN as u64, LEN).expect("read");
        assert!(
            got == pattern(LEN, u8::try_from(k).unwrap()),
            "write {k} read back"
        );
    }
    assert_eq!(flush(&mut w, 999), 0);
    drop((w, r, srv));
    pool.export().expect("export");
}

#[test]
fn a_lost_write_fails_the_flush_with_write_back_and_the_write_without() {
    let (srv, pool, dev) = serve(true);
    let mut c = Client::connect(&srv, EXPORT, true, false);
    assert_eq!(c.write(1, 0, &pattern(LEN, 1)), 0);
    assert_eq!(flush(&mut c, 2), 0);
    dev.inject_eio(0..64 << 20, false, true);
    assert_eq!(
        c.write(3, 0, &pattern(LEN, 2)),
        0,
        "acknowledged before the device write"
    );
    assert_ne!(flush(&mut c, 4), 0, "the FLUSH after it reports the loss");
    assert_ne!(flush(&mut c, 5), 0, "and so does every later one");
    drop((c, srv));
    dev.clear_faults();
    let _ = pool.export();

    let (srv, pool, dev) = serve(false);
    let mut c = Client::connect(&srv, EXPORT, true, false);
    dev.inject_eio(0..64 << 20, false, true);
    assert_ne!(
        c.write(1, 0, &pattern(LEN, 2)),
        0,
        "without write-back the WRITE itself fails"
    );
    drop((c, srv));
    dev.clear_faults();
    let _ = pool.export();
}

/// The error policy seen by NBD clients (CAN_MULTI_CONN: a FLUSH on any connection covers
/// every connection's writes): a write-back that fails after its acknowledgement makes the
/// next FLUSH fail with EIO on every connection, the one that wrote and the others, old and
/// new, and so does a FUA write; a read of the lost write's blocks returns what they held
/// before it (never garbage).
#[test]
fn a_lost_write_fails_the_next_flush_on_every_connection_and_reads_see_the_old_data() {
    const NBD_EIO: u32 = 5;
    let (srv, pool, dev) = serve_on(2, true);
    let mut a = Client::connect(&srv, EXPORT, true, false);
    let mut b = Client::connect(&srv, EXPORT, true, false);
    assert_eq!(a.write(1, 0, &pattern(LEN, 1)), 0);
    assert_eq!(flush(&mut b, 2), 0, "b's FLUSH covers a's write");
    dev.inject_eio(0..64 << 20, false, true);
    assert_eq!(
        a.write(3, 0, &pattern(LEN, 2)),
        0,
        "acknowledged before the device write"
    );
    assert_eq!(
        flush(&mut b, 4),
        NBD_EIO,
        "the other connection's next FLUSH fails"
    );
    assert_eq!(flush(&mut a, 5), NBD_EIO, "the writer's too");
    let mut c = Client::connect(&srv, EXPORT, true, false);
    assert_eq!(flush(&mut c, 6), NBD_EIO, "and a new connection's");
    dev.clear_faults();
    assert_eq!(
        flush(&mut a, 7),
        NBD_EIO,
        "the device working again changes nothing"
    );
    c.send(
        cflags::FUA,
        cmd::WRITE,
        8,
        LEN as u64,
        4096,
        &pattern(4096, 3),
    );
    assert_eq!(c.status(8), NBD_EIO, "a FUA write fails too");
    assert_eq!(
        b.write(10, 2 * LEN as u64, &pattern(4096, 4)),
        NBD_EIO,
        "and so does a later WRITE"
    );
    for (who, cl) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        match cl.read(9, 0, LEN) {
            Ok(got) => assert!(
                got == pattern(LEN, 1),
                "{who} reads the data before the lost write"
            ),
            Err(errno) => assert_ne!(errno, 0, "{who}'s read fails"),
        }
    }
    drop((a, b, c, srv));
    assert!(pool.export().is_err(), "the export reports the suspension");
}

/// Small WRITEs pipelined together are gathered into batches, and with write-back a batch is
/// acknowledged before its device write too: with the device failing every write, the first
/// WRITEs still succeed (the later ones find the pool suspended) and the FLUSH after them
/// reports the loss; before that, with the device working, the same pipelined writes are
/// read back on another connection and flushed.
#[test]
fn pipelined_small_writes_are_written_back_in_batches() {
    const NBD_EIO: u32 = 5;
    let (srv, pool, dev) = serve(true);
    let mut w = Client::connect(&srv, EXPORT, true, false);
    let n = 256u64;
    // Scattered 4 KiB blocks of the 8 MiB volume, none written twice.
    let at = |k: u64| (k * 37 % 2048) * 4096;
    let pipelined = |w: &mut Client, seed: u64| {
        for k in 0..n {
            let data = pattern(4096, u8::try_from((k + seed) % 251).unwrap());
            w.send(0, cmd::WRITE, k, at(k), 4096, &data);
        }
        let mut errors = 0u64;
        for _ in 0..n {
            match w.recv(0, &mut Vec::new()) {
                Reply::Chunk { kind, .. } => {
                    if kind != 0 {
                        errors += 1;
                    }
                }
                Reply::Simple { errno, .. } => errors += u64::from(errno != 0),
            }
        }
        errors
    };
    assert_eq!(pipelined(&mut w, 0), 0, "every write succeeds");
    let mut r = Client::connect(&srv, EXPORT, true, false);
    for k in 0..n {
        let got = r.read(1000 + k, at(k), 4096).expect("read");
        assert!(
            got == pattern(4096, u8::try_from(k % 251).unwrap()),
            "write {k} read back"
        );
    }
    assert_eq!(flush(&mut w, 999), 0);
    dev.inject_eio(0..64 << 20, false, true);
    // The first batches are acknowledged before their device writes fail; the writes after
    // that find the pool suspended.
    let failed = pipelined(&mut w, 1);
    assert!(
        failed < n,
        "some writes are acknowledged before their device writes ({failed} of {n} failed)"
    );
    assert_eq!(
        flush(&mut w, 998),
        NBD_EIO,
        "the FLUSH after them reports the loss"
    );
    drop((w, r, srv));
    dev.clear_faults();
    assert!(pool.export().is_err(), "the export reports the suspension");
}
