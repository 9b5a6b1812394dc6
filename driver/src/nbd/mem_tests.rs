//! Tests of [`MemBackend`] and the [`Exports`] registry (no sockets: the backend's futures are
//! ready at once and polled with a no-op waker).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;

use super::backend::{ExportBackend, ReadLayout};
use super::exports::{Catalog, Exports, ExportsError};
use super::handshake::ExportCatalog;
use super::mem::MemBackend;
use super::proto::{state, Errno};
use super::reply::Extent;
use crate::io::IoBuf;

fn now<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("MemBackend future not ready"),
    }
}

fn read(m: &MemBackend, off: u64, len: usize) -> (Vec<u8>, ReadLayout) {
    let mut b = IoBuf::zeroed(len + 4096);
    b[..4096].fill(0xee);
    let (r, b) = now(m.read(off, b, 4096..4096 + len));
    assert!(
        b[..4096].iter().all(|x| *x == 0xee),
        "read touched the header area"
    );
    (b[4096..].to_vec(), r.expect("read"))
}

fn write(m: &MemBackend, off: u64, data: &[u8]) {
    let (r, _) = now(m.write(off, IoBuf::from_slice(data), false));
    r.expect("write");
}

fn status(m: &MemBackend, off: u64, len: u64) -> Vec<(u64, u32)> {
    now(m.block_status(off, len))
        .unwrap()
        .into_iter()
        .map(|e: Extent| (e.length, e.flags))
        .collect()
}

const H: u32 = state::HOLE | state::ZERO;

#[test]
fn holes_data_and_partial_blocks() {
    let m = MemBackend::new(4 << 20, 4096);
    assert_eq!(read(&m, 0, 8192), (vec![0; 8192], ReadLayout::Hole));
    write(&m, 5000, &[1; 100]);
    let (d, l) = read(&m, 0, 12288);
    assert_eq!(&d[5000..5100], &[1; 100]);
    assert!(d[..5000].iter().chain(&d[5100..]).all(|x| *x == 0));
    assert_eq!(l, ReadLayout::Holes(vec![0..4096, 8192..12288]));
    assert_eq!(read(&m, 4096, 4096).1, ReadLayout::Data);
    assert_eq!(
        status(&m, 0, 3 * 4096),
        vec![(4096, H), (4096, 0), (4096, H)]
    );
    assert_eq!(m.allocated_bytes(), 4096);
    // A write across a chunk boundary.
    write(&m, (1 << 20) - 10, &[2; 20]);
    assert_eq!(m.contents((1 << 20) - 10, 20), vec![2; 20]);
    assert_eq!(m.allocated_bytes(), 3 * 4096);
}

#[test]
fn trim_and_zeroes() {
    let m = MemBackend::new(3 << 20, 4096);
    write(&m, 0, &vec![9; 3 << 20]);
    // Partial blocks at both ends are zeroed but stay allocated.
    now(m.trim(1000, 3 * 4096)).unwrap();
    assert_eq!(m.contents(0, 1000), vec![9; 1000]);
    assert_eq!(m.contents(1000, 3 * 4096), vec![0; 3 * 4096]);
    assert_eq!(m.contents(1000 + 3 * 4096, 10), vec![9; 10]);
    assert_eq!(
        status(&m, 0, 5 * 4096),
        vec![(4096, 0), (2 * 4096, H), (2 * 4096, 0)]
    );
    now(m.write_zeroes(1 << 20, 1 << 20, false, false)).unwrap();
    assert_eq!(status(&m, 1 << 20, 1 << 20), vec![(1 << 20, 0)]);
    assert_eq!(m.contents(1 << 20, 1 << 20), vec![0; 1 << 20]);
    now(m.write_zeroes(1 << 20, 1 << 20, true, true)).unwrap();
    assert_eq!(status(&m, 1 << 20, 1 << 20), vec![(1 << 20, H)]);
    // Trimming everything frees the memory.
    now(m.trim(0, 3 << 20)).unwrap();
    assert_eq!(m.allocated_bytes(), 0);
    assert_eq!(read(&m, 0, 1 << 20).1, ReadLayout::Hole);
}

#[test]
fn unaligned_size_and_errors() {
    let size = (1 << 20) + 6000;
    let m = MemBackend::new(size, 4096);
    write(&m, size - 6000, &[5; 6000]);
    now(m.trim(size - 6000, 6000)).unwrap();
    assert_eq!(
        m.allocated_bytes(),
        0,
        "the partial last block is trimmed when the range reaches the end"
    );
    let (r, _) = now(m.write(size - 10, IoBuf::from_slice(&[0; 20]), false));
    assert_eq!(r.unwrap_err().errno, Errno::Inval);
    m.fail_reads(Some(Errno::Io));
    let (r, _) = now(m.read(0, IoBuf::zeroed(512), 0..512));
    assert_eq!(r.unwrap_err().errno, Errno::Io);
    m.fail_reads(None);
    m.fail_writes(Some(Errno::NoSpc));
    assert_eq!(now(m.trim(0, 4096)).unwrap_err().errno, Errno::NoSpc);
    m.fail_writes(None);
    let slow = MemBackend::new(1 << 20, 4096).with_fast_zero(false);
    assert_eq!(
        now(slow.write_zeroes(0, 4096, true, true))
            .unwrap_err()
            .errno,
        Errno::NotSup
    );
    assert!(now(slow.write_zeroes(0, 4096, true, false)).is_ok());
    let ro = MemBackend::new(1 << 20, 4096).with_read_only(true);
    let (r, _) = now(ro.write(0, IoBuf::from_slice(&[1]), false));
    assert_eq!(r.unwrap_err().errno, Errno::Perm);
}

#[test]
fn registry_names_default_and_revocation() {
    let e = Exports::new();
    let a = Arc::new(MemBackend::new(1 << 20, 4096));
    e.add("tank/a", a.clone(), false).unwrap();
    assert_eq!(
        e.add("tank/a", a.clone(), false),
        Err(ExportsError::Exists("tank/a".into()))
    );
    assert!(matches!(
        e.add("", a.clone(), false),
        Err(ExportsError::InvalidName(_))
    ));
    assert!(matches!(
        e.add("a\0b", a.clone(), false),
        Err(ExportsError::InvalidName(_))
    ));
    let cat = Catalog {
        exports: &e,
        max_payload: 1 << 20,
        shutting_down: false,
    };
    // The only export is the default one.
    let (info, h) = cat.lookup("").unwrap();
    assert_eq!(
        (info.name.as_str(), info.size, info.max_payload),
        ("tank/a", 1 << 20, 1 << 20)
    );
    e.add("tank/b", Arc::new(MemBackend::new(2 << 20, 512)), true)
        .unwrap();
    assert!(cat.lookup("").is_none(), "two exports and no default");
    e.set_default(Some("tank/b"));
    let (info, _) = cat.lookup("").unwrap();
    assert!(info.read_only);
    assert_eq!((info.min_block, info.preferred_block), (1, 512));
    assert_eq!(cat.list().len(), 2);
    assert!(!h.revoked());
    assert!(e.remove("tank/a").is_some());
    assert!(h.revoked());
    assert!(cat.lookup("tank/a").is_none());
    assert_eq!(e.names(), vec!["tank/b".to_string()]);
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, usize, u8),
    Trim(u64, u64),
    Zero(u64, u64, bool),
}

fn arb_op(size: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..size, 1usize..20_000, any::<u8>()).prop_map(move |(o, l, b)| Op::Write(o, l, b.max(1))),
        (0..size, 1u64..200_000).prop_map(|(o, l)| Op::Trim(o, l)),
        (0..size, 1u64..200_000, any::<bool>()).prop_map(|(o, l, t)| Op::Zero(o, l, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// MemBackend behaves like a flat byte array, and holes it reports read as zeroes.
    #[test]
    fn mem_backend_matches_a_flat_model(ops in prop::collection::vec(arb_op(3 << 20), 1..40)) {
        let size = 3u64 << 20;
        let m = MemBackend::new(size, 4096);
        let mut model = vec![0u8; usize::try_from(size).unwrap()];
        for op in ops {
            match op {
                Op::Write(o, l, b) => {
                    let l = l.min(usize::try_from(size - o).unwrap());
                    write(&m, o, &vec![b; l]);
                    let o = usize::try_from(o).unwrap();
                    model[o..o + l].fill(b);
                }
                Op::Trim(o, l) | Op::Zero(o, l, _) => {
                    let l = l.min(size - o);
                    match op {
                        Op::Trim(..) => now(m.trim(o, l)).unwrap(),
                        Op::Zero(_, _, t) => now(m.write_zeroes(o, l, t, false)).unwrap(),
                        Op::Write(..) => unreachable!(),
                    }
                    let (o, l) = (usize::try_from(o).unwrap(), usize::try_from(l).unwrap());
                    model[o..o + l].fill(0);
                }
            }
        }
        let (d, layout) = read(&m, 0, model.len());
        prop_assert!(d == model);
        if let ReadLayout::Holes(h) = layout {
            for r in h {
                let (a, b) = (usize::try_from(r.start).unwrap(), usize::try_from(r.end).unwrap());
                prop_assert!(model[a..b].iter().all(|x| *x == 0));
            }
        }
        let mut at = 0u64;
        for (len, flags) in status(&m, 0, size) {
            if flags & state::ZERO != 0 {
                let (a, b) = (usize::try_from(at).unwrap(), usize::try_from(at + len).unwrap());
                prop_assert!(model[a..b].iter().all(|x| *x == 0));
            }
            at += len;
        }
        prop_assert_eq!(at, size);
    }
}
