//! Deferred write-back device writes (`ReactorConfig::write_defer`): the ring holds the device
//! write of an acknowledged write-back to merge it with the next ones, but nothing that waits
//! on that write waits for the deferral: a read or a rewrite of its blocks and a FLUSH send it
//! at once. The deferral time here is an hour, so a test that waited for it would not finish
//! (a watchdog fails it after a minute).

mod pool_common;

use pool_common::{create_one_shard, file_engine, pattern};
use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{self, FaultyEngine, IoBuf, ReactorConfig};
use ringpool_driver::pool::Pool;

const BS: u32 = 4096;
const LEN: usize = 128 << 10;

fn cfg() -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 0,
        write_defer: 1 << 20,
        write_defer_for: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// Runs `f` on a thread of its own and fails if it takes more than a minute.
fn within_a_minute<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow::anyhow!("waited for the deferral (over a minute)"))?
}

#[test]
fn reads_rewrites_and_flush_do_not_wait_for_a_deferred_write_back() -> anyhow::Result<()> {
    within_a_minute(|| {
        let dir = tempfile::tempdir_in("/tmp")?;
        let path = dir.path().join("dev.img");
        let engine = file_engine(&path, 64 << 20)?;
        let pool = create_one_shard("wd", vec![engine], Duration::from_secs(3600))?;
        let vol = pool.create_volume("v", 4 << 20, BS)?;
        let (old, new, a, b) = (
            pattern(1, LEN),
            pattern(2, LEN),
            pattern(3, LEN),
            pattern(4, LEN),
        );
        io::block_on(&cfg(), async {
            vol.write(0, &old, false).await?;
            vol.flush().await?;
            let before = io::ring_stats().expect("in a reactor");
            let (r, kept) = vol.write_back(0, IoBuf::from_slice(&new)).await;
            r?;
            anyhow::ensure!(kept.is_none(), "the write went the write-back way");
            for _ in 0..4 {
                io::yield_now().await;
            }
            let d = io::ring_stats().expect("in a reactor").since(&before);
            anyhow::ensure!(
                d.writes >= 1 && d.write_sqes == 0,
                "the device write is deferred: {d:?}"
            );
            // A read of its blocks waits for their locks, which sends the deferred write.
            let mut got = vec![0u8; LEN];
            vol.read(0, &mut got).await?;
            anyhow::ensure!(got == new, "the read sees the acknowledged write");
            // A rewrite of the same blocks likewise.
            let (r, _) = vol.write_back(1 << 20, IoBuf::from_slice(&a)).await;
            r?;
            let (r, _) = vol.write_back(1 << 20, IoBuf::from_slice(&b)).await;
            r?;
            // A FLUSH sends what is deferred and waits for it.
            vol.flush().await?;
            anyhow::Ok(())
        })??;
        // What the file held right after the FLUSH returned has both writes.
        let image = std::fs::read(&path)?;
        drop(vol);
        pool.export()?;
        let copy = Pool::import(
            vec![Arc::new(FaultyEngine::from_image(image, 4096))],
            &pool_common::iopts(),
        )?;
        let v = copy.open_volume("v")?;
        let (first, second) = io::block_on(&pool_common::rcfg(), async {
            let mut first = vec![0u8; LEN];
            let mut second = vec![0u8; LEN];
            v.read(0, &mut first).await?;
            v.read(1 << 20, &mut second).await?;
            anyhow::Ok((first, second))
        })??;
        anyhow::ensure!(first == new, "the flushed first write is durable");
        anyhow::ensure!(second == b, "the flushed rewrite is durable");
        drop(v);
        copy.export()?;
        Ok(())
    })
}
