//! Corruption: flipped bits in data blocks, tree blocks, space maps, uberblock copies and
//! labels. Damaged data reads fail with a checksum error naming the object and offset (never
//! wrong data, never a panic); import falls back to another label or an older uberblock.

// Test arithmetic on small in-memory sizes: the casts cannot truncate here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::type_complexity
)]

mod pool_common;

use std::sync::Arc;

use ringpool_driver::io::{self, BlockEngine, FaultyEngine};
use ringpool_driver::pool::{CreateOptions, ImportOptions, Pool, PoolError, PoolOptions};
use ringpool_ondisk::layout::{DeviceLayout, LABEL_HEADER_OFFSET};
use ringpool_ondisk::object::ObjectType;

const SIZE: u64 = 64 << 20;

use pool_common::rcfg;

/// A long sync timer: the tests decide when txgs commit.
fn popts() -> PoolOptions {
    pool_common::popts_with(10_000, 1)
}

fn import(dev: &FaultyEngine, rewind: bool) -> Result<Pool, PoolError> {
    let e: Vec<Arc<dyn BlockEngine>> = vec![Arc::new(dev.clone())];
    Pool::import(
        e,
        &ImportOptions {
            pool: popts(),
            rewind,
            ..Default::default()
        },
    )
}

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

/// A pool with one volume holding 2 MiB of known data, exported.
fn setup() -> anyhow::Result<(
    FaultyEngine,
    u64,
    Vec<ringpool_driver::pool::verify::BlockInfo>,
)> {
    let dev = FaultyEngine::new(SIZE, 4096);
    let e: Vec<Arc<dyn BlockEngine>> = vec![Arc::new(dev.clone())];
    let pool = Pool::create(
        "c",
        e,
        &CreateOptions {
            pool: popts(),
            ..Default::default()
        },
    )?;
    let vol = pool.create_volume("v", 8 << 20, 4096)?;
    let data: Vec<u8> = (0..2 << 20).map(byte).collect();
    io::block_on(&rcfg(), async {
        vol.write(0, &data, false).await?;
        vol.flush().await
    })??;
    // A second txg so older uberblocks exist.
    io::block_on(&rcfg(), async {
        vol.write(4 << 20, &data[..65536], false).await?;
        vol.flush().await
    })??;
    let map = pool.block_map()?;
    let obj = vol.object();
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok((dev, obj, map))
}

/// Reads the volume block by block: (offset, result) for the first 2 MiB.
fn read_all(pool: &Pool) -> anyhow::Result<Vec<(u64, Result<Vec<u8>, PoolError>)>> {
    let vol = pool.open_volume("v")?;
    Ok(io::block_on(&rcfg(), async {
        let mut out = Vec::new();
        for b in 0..512u64 {
            let mut buf = vec![0u8; 4096];
            let r = vol.read(b * 4096, &mut buf).await.map(|()| buf);
            out.push((b * 4096, r));
        }
        out
    })?)
}

#[test]
fn data_block_flip_names_object_and_offset() -> anyhow::Result<()> {
    let (dev, obj, map) = setup()?;
    let victim = map
        .iter()
        .find(|b| b.object == Some(obj) && b.level == 0 && b.kind == ObjectType::VolumeData)
        .expect("a data block");
    dev.flip_bit(victim.offset + 1000, 3);
    let pool = import(&dev, false)?;
    let res = read_all(&pool)?;
    let bad: Vec<_> = res.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(bad.len(), 1, "exactly the damaged block fails");
    let errs = pool.status().devices[0].errors;
    assert_eq!(
        (errs.checksum, errs.read, errs.write),
        (1, 0, 0),
        "CKSUM counts it"
    );
    assert!(
        pool.health().is_online(),
        "a damaged block does not suspend the pool"
    );
    let (off, err) = bad[0];
    let err = err.as_ref().unwrap_err();
    assert!(err.is_checksum(), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    let msg = err.to_string();
    assert!(
        msg.contains("volume 'v'") && msg.contains(&format!("at offset {off}")),
        "{msg}"
    );
    for (o, r) in &res {
        if let Ok(d) = r {
            let want: Vec<u8> = (*o as usize..*o as usize + 4096).map(byte).collect();
            assert_eq!(d, &want, "block at {o}");
        }
    }
    let rep = pool.verify()?;
    assert!(!rep.is_clean());
    assert!(
        rep.errors.iter().any(|e| e.contains("checksum")),
        "{:?}",
        rep.errors
    );
    pool.abandon();
    Ok(())
}

#[test]
fn tree_block_flip_fails_reads_below_it_only() -> anyhow::Result<()> {
    let (dev, obj, map) = setup()?;
    let victim = map
        .iter()
        .find(|b| b.object == Some(obj) && b.level == 1)
        .expect("an indirect block");
    dev.flip_bit(victim.offset + 64 * 3 + 20, 1);
    let pool = import(&dev, false)?;
    let res = read_all(&pool)?;
    let bad = res.iter().filter(|(_, r)| r.is_err()).count();
    assert!(bad > 0 && bad < 512, "{bad} blocks failed");
    for (o, r) in &res {
        match r {
            Ok(d) => {
                let want: Vec<u8> = (*o as usize..*o as usize + 4096).map(byte).collect();
                assert_eq!(d, &want, "block at {o}");
            }
            Err(e) => {
                assert!(e.is_checksum(), "{e}");
                assert!(e.to_string().contains("level 1"), "{e}");
            }
        }
    }
    pool.abandon();
    Ok(())
}

#[test]
fn space_map_flip_is_detected_at_import() -> anyhow::Result<()> {
    let (dev, _obj, map) = setup()?;
    let victim = map
        .iter()
        .find(|b| b.kind == ObjectType::SpaceMap && b.level == 0)
        .expect("a space-map block");
    dev.flip_bit(victim.offset + 8, 0);
    let Err(err) = import(&dev, false) else {
        panic!("import must notice the damaged space map");
    };
    assert!(err.is_checksum(), "{err}");
    assert!(err.to_string().contains("space map"), "{err}");
    // With rewind, older uberblocks are tried; whatever happens, no panic and no lie.
    match import(&dev, true) {
        Ok(p) => {
            let _ = p.verify()?;
            p.abandon();
        }
        Err(e) => assert!(e.errno() != 0),
    }
    Ok(())
}

#[test]
fn uberblock_copy_and_label_damage_fall_back() -> anyhow::Result<()> {
    let (dev, _obj, _map) = setup()?;
    let pool = import(&dev, false)?;
    let txg = pool.last_uberblock().expect("ub").txg;
    pool.export()?;
    // Exporting wrote labels only: the newest uberblock is still `txg`.
    let layout = DeviceLayout::new(SIZE, 12)?;
    // One damaged copy: the other labels still hold the newest uberblock.
    dev.flip_bit(layout.uberblock_offset(0, txg)? + 20, 2);
    let pool = import(&dev, false)?;
    assert_eq!(pool.last_uberblock().expect("ub").txg, txg);
    let res = read_all(&pool)?;
    assert!(res.iter().all(|(_, r)| r.is_ok()));
    let txg2 = pool.last_uberblock().expect("ub").txg;
    pool.export()?;
    // Every copy of the newest uberblock damaged: an older one is used.
    for l in 0..4 {
        dev.flip_bit(layout.uberblock_offset(l, txg2)? + 30, 5);
    }
    let pool = import(&dev, false)?;
    let t = pool.last_uberblock().expect("ub").txg;
    assert!(t < txg2, "fell back from {txg2} to {t}");
    assert!(pool.verify()?.is_clean());
    let res = read_all(&pool)?;
    assert!(res.iter().all(|(_, r)| r.is_ok()));
    pool.export()?;
    // One damaged label header: the others are used.
    dev.flip_bit(LABEL_HEADER_OFFSET + 40, 0);
    let pool = import(&dev, false)?;
    pool.export()?;
    // Every label header damaged: no pool, a clean error.
    for l in 0..4 {
        dev.flip_bit(layout.label_offset(l)? + LABEL_HEADER_OFFSET + 50, 1);
    }
    let Err(err) = import(&dev, false) else {
        panic!("no valid label");
    };
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    Ok(())
}
