//! Measures checkpoint create, the held space after churn, and the discard reactor's speed
//! on a pool of O_DIRECT files (default in /tmp; ext4, not tmpfs).
//!
//! `cargo run --release -p ringpool-driver --example ckpt_discard -- [DIR] [BLOCKS] [LIMIT]`
//! writes BLOCKS 4 KiB blocks (default 20000), checkpoints, frees every other block (BLOCKS/2
//! checkpoint-map entries that never coalesce), then discards with a memory limit of LIMIT
//! bytes (default 16 MiB) and reports rounds, txgs and time.

use std::time::Instant;

use ringpool_driver::pool::checkpoint::DISCARD_MEMORY_LIMIT_PROP;
use ringpool_driver::pool::{CreateOptions, Pool};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = tempfile::tempdir_in(args.first().map_or("/tmp", String::as_str))?;
    let blocks: u64 = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let limit: u64 = args.get(2).map_or(Ok(16 << 20), |s| s.parse())?;
    let path = dir.path().join("dev0");
    std::fs::File::create(&path)?.set_len(1 << 30)?;
    let pool = Pool::create_paths("bench", &[path], &CreateOptions::default())?;
    pool.set_property(DISCARD_MEMORY_LIMIT_PROP, &limit.to_string())?;
    let vol = pool.create_volume("v", blocks * 4096, 4096)?;
    let rc = ringpool_driver::io::ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 0,
        ..Default::default()
    };
    let data = vec![0x5au8; 1 << 20];
    ringpool_driver::io::block_on(&rc, async {
        let mut off = 0;
        while off < blocks * 4096 {
            let n = (blocks * 4096 - off).min(1 << 20);
            vol.write(off, &data[..usize::try_from(n)?], false).await?;
            off += n;
        }
        vol.flush().await?;
        anyhow::Ok(())
    })??;
    let t = Instant::now();
    pool.checkpoint()?;
    println!("checkpoint create: {:?}", t.elapsed());
    ringpool_driver::io::block_on(&rc, async {
        for b in (0..blocks).step_by(2) {
            vol.punch(b * 4096, 4096, false).await?;
        }
        vol.flush().await?;
        anyhow::Ok(())
    })??;
    let held = pool.checkpoint_status().space;
    let t0 = pool.stats().synced_txg;
    let t = Instant::now();
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    let el = t.elapsed();
    let txgs = pool.stats().synced_txg - t0;
    println!(
        "discard: {} entries, {held} bytes held, limit {limit} B: {el:?}, {txgs} txgs, {:.0} entries/s",
        blocks / 2,
        (blocks / 2) as f64 / el.as_secs_f64()
    );
    let t = Instant::now();
    let rep = pool.verify()?;
    println!("verify: clean={} in {:?}", rep.is_clean(), t.elapsed());
    pool.export()?;
    Ok(())
}
