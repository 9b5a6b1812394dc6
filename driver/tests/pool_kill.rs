//! Process kill: a child process (this test binary re-invoked with `RINGPOOL_KILL_CHILD`) runs
//! the pool on real O_DIRECT files through io_uring and is SIGKILLed mid-workload. The parent
//! re-imports and checks that every write acknowledged before a completed FLUSH reads back
//! (or a newer version), that nothing reads as garbage, and that verify is clean. Three rounds
//! on the same pool (each child imports what the previous one left).

// Test arithmetic on small sizes: the casts cannot truncate here.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod pool_common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use ringpool_driver::io::{self, Device};
use ringpool_driver::pool::{CreateOptions, ImportOptions, Pool, PoolError, PoolOptions};

use pool_common::rcfg;

const BS: usize = 4096;
const VOL: u64 = 4 << 20;

/// A 50 ms sync timer: many txgs commit while the child runs.
fn popts() -> PoolOptions {
    pool_common::popts_with(50, 1)
}

fn paths(dir: &Path) -> Vec<PathBuf> {
    vec![dir.join("d0.img"), dir.join("d1.img")]
}

/// Block content for (block, sequence number): self-describing, so a read can name what it saw.
fn content(blk: u64, seq: u64) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    v[..8].copy_from_slice(&blk.to_le_bytes());
    v[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut x =
        blk.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1;
    for b in &mut v[16..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

/// The child: import, then write / flush forever, logging each flushed write.
#[test]
fn kill_child() -> anyhow::Result<()> {
    let Ok(dir) = std::env::var("RINGPOOL_KILL_CHILD") else {
        return Ok(());
    };
    let round: u64 = std::env::var("RINGPOOL_KILL_ROUND")?.parse()?;
    let dir = PathBuf::from(dir);
    let pool = Pool::import_paths(
        &paths(&dir),
        &ImportOptions {
            pool: popts(),
            ..Default::default()
        },
    )?;
    let vol = pool.open_volume("k")?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("flushed.log"))?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(round);
    io::block_on(&rcfg(), async {
        let mut seq = round << 32;
        let mut pending = Vec::new();
        loop {
            let blk = rng.random_range(0..VOL / BS as u64);
            seq += 1;
            vol.write(blk * BS as u64, &content(blk, seq), false)
                .await?;
            pending.push((blk, seq));
            if pending.len() >= 6 {
                vol.flush().await?;
                // One write per batch: `writeln!` on a File is a write per piece, and a kill
                // between them left a line without its newline, which the next round's first
                // line was appended to (a bogus "flushed" seq the check then demanded).
                let mut lines = String::new();
                for (b, s) in pending.drain(..) {
                    lines.push_str(&format!("{b} {s}\n"));
                }
                log.write_all(lines.as_bytes())
                    .map_err(|e| PoolError::Invalid(e.to_string()))?;
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), PoolError>(())
    })??;
    Ok(())
}

/// Complete lines in the child's log of flushed writes.
fn flushed_lines(dir: &Path) -> usize {
    std::fs::read(dir.join("flushed.log")).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// Cuts a torn tail (bytes after the last newline: the child was killed mid-write) off the
/// log, so that it is not counted and the next round's lines start on a line of their own.
fn drop_torn_tail(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("flushed.log");
    let Ok(b) = std::fs::read(&path) else {
        return Ok(());
    };
    let keep = b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    if keep < b.len() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(u64::try_from(keep)?)?;
    }
    Ok(())
}

fn check(dir: &Path) -> anyhow::Result<usize> {
    drop_torn_tail(dir)?;
    let mut required: HashMap<u64, u64> = HashMap::new();
    if let Ok(s) = std::fs::read_to_string(dir.join("flushed.log")) {
        for line in s.lines() {
            let mut it = line.split_whitespace();
            if let (Some(b), Some(q)) = (it.next(), it.next()) {
                if let (Ok(b), Ok(q)) = (b.parse::<u64>(), q.parse::<u64>()) {
                    let e = required.entry(b).or_insert(0);
                    *e = (*e).max(q);
                }
            }
        }
    }
    let pool = Pool::import_paths(
        &paths(dir),
        &ImportOptions {
            pool: popts(),
            ..Default::default()
        },
    )?;
    let vol = pool.open_volume("k")?;
    io::block_on(&rcfg(), async {
        for blk in 0..VOL / BS as u64 {
            let mut buf = vec![0u8; BS];
            vol.read(blk * BS as u64, &mut buf).await?;
            let need = required.get(&blk).copied().unwrap_or(0);
            if buf.iter().all(|&x| x == 0) {
                anyhow::ensure!(need == 0, "block {blk}: zeroes but seq {need} was flushed");
                continue;
            }
            let b = u64::from_le_bytes(buf[..8].try_into()?);
            let s = u64::from_le_bytes(buf[8..16].try_into()?);
            anyhow::ensure!(b == blk, "block {blk} holds block {b}'s data");
            anyhow::ensure!(buf == content(b, s), "block {blk}: garbage");
            anyhow::ensure!(s >= need, "block {blk}: seq {s} older than flushed {need}");
        }
        Ok::<(), anyhow::Error>(())
    })??;
    let rep = pool.verify()?;
    anyhow::ensure!(rep.is_clean(), "verify: {:?}", rep.errors);
    pool.export()?;
    Ok(required.len())
}

#[test]
fn sigkill_mid_workload() -> anyhow::Result<()> {
    if std::env::var("RINGPOOL_KILL_CHILD").is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir_in("/tmp")?;
    for p in paths(dir.path()) {
        Device::create_sparse_file(&p, 64 << 20)?;
    }
    let pool = match Pool::create_paths(
        "killme",
        &paths(dir.path()),
        &CreateOptions {
            pool: popts(),
            ..Default::default()
        },
    ) {
        Ok(p) => p,
        Err(e) => {
            println!("skipping: cannot create a pool on O_DIRECT files in /tmp: {e}");
            return Ok(());
        }
    };
    pool.create_volume("k", VOL, BS as u32)?;
    pool.export()?;
    let exe = std::env::current_exe()?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for round in 1..=3u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env("RINGPOOL_KILL_CHILD", dir.path())
            .env("RINGPOOL_KILL_ROUND", round.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        // Kill at a random point after the child's first completed FLUSH of this round, not a
        // fixed time after spawning it: on a loaded machine the child's start and import alone
        // took longer than a fixed delay once, and it was killed before flushing anything.
        let before = flushed_lines(dir.path());
        let started = std::time::Instant::now();
        while flushed_lines(dir.path()) == before {
            anyhow::ensure!(
                child.try_wait()?.is_none(),
                "the child ended before its first flush"
            );
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "the child flushed nothing in 120 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        // SAFETY: plain syscall on the child's pid, which we own and have not reaped yet.
        let rc = unsafe { libc::kill(i32::try_from(child.id())?, libc::SIGKILL) };
        anyhow::ensure!(rc == 0, "kill failed");
        let status = child.wait()?;
        anyhow::ensure!(!status.success(), "the child ended on its own: {status}");
        let n = check(dir.path())?;
        println!("round {round}: {n} flushed blocks verified after SIGKILL");
        anyhow::ensure!(n > 0, "no flushed block to verify");
    }
    Ok(())
}
