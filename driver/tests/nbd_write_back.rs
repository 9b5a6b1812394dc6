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
use ringpool_driver::nbd::proto::cmd;
use ringpool_driver::nbd::{ExportBackend, MemBackend, NbdServerConfig};
use ringpool_driver::pool::Pool;

const LEN: usize = 128 << 10;

fn serve(write_back: bool) -> (TestServer, Pool, FaultyEngine) {
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
    let srv = TestServer::start_backend(1, backend, false, unused, |cfg: &mut NbdServerConfig| {
        cfg.tcp = None;
        cfg.write_back = write_back;
    });
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
