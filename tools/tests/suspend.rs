//! A pool suspended by a real device failure, seen by `status`, and resumed by `clear` once
//! the cause is gone.
//!
//! The device is a sparse file on a small ext4 file system (a loop mount in a mount namespace
//! of its own, so it disappears with the `serve` that runs in it). Filling that file system
//! makes the pool's next writes to unbacked parts of the device fail with ENOSPC: the sync
//! fails and the pool is suspended, exactly as a device that stops taking writes. Removing
//! the filler is the cause going away. Needs root (loop devices, mounts), `unshare` and
//! `mkfs.ext4`; the test says so and does nothing without them.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_qemu_io, free_port, have, Env, Serve};

/// Fills the file system holding `path` with a file `path`, until ENOSPC.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever still fits in a partial block.
    while f.write_all(&chunk[..4096]).is_ok() {}
    f.sync_all().ok();
}

#[test]
fn suspended_pool_shows_in_status_and_clear_resumes_it() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !have("unshare") || !have("mkfs.ext4") || !have("qemu-io") {
        eprintln!("skipping: needs root, unshare, mkfs.ext4 and qemu-io (a loop-mounted ext4)");
        return;
    }
    let env = Env::new();
    let image = env.path("fs.img");
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "{mkfs:?}");

    // In its own mount namespace: mount, create the pool on a sparse file four times the
    // file system's size, and become `serve`.
    let bin = env!("CARGO_BIN_EXE_ringpool");
    let dev = mnt.join("dev.img");
    let port = free_port();
    let script = format!(
        "mount -o loop {image} {mnt} && {bin} create --size 256M sick {dev} && \
         {bin} volume create -s 64M sick/v && \
         exec {bin} serve --listen 127.0.0.1:{port} --reactors 1",
        image = image.display(),
        mnt = mnt.display(),
        dev = dev.display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RINGPOOL_STATE_DIR", env.state())
        .env("RINGPOOL_LOG", "warn");
    let serve = Serve::spawn(cmd);
    // The mount is visible through serve's root, in its namespace.
    let inside: PathBuf = Path::new(&format!("/proc/{}/root", serve.pid())).join(
        mnt.strip_prefix("/")
            .unwrap_or_else(|_| panic!("{} is not absolute", mnt.display())),
    );
    assert!(inside.join("dev.img").exists(), "{}", inside.display());
    let url = format!("nbd://127.0.0.1:{port}/sick/v");
    assert_qemu_io(&url, &["write -P 0x77 0 1M", "flush"]);
    assert_eq!(
        env.json(&["status", "--json", "sick"])[0]["health"],
        "ONLINE"
    );

    // The file system fills up: changes keep the sync writing to new places of the device
    // until one of them is refused.
    let filler = inside.join("filler");
    fill(&filler);
    let mut failed = None;
    for i in 0..40 {
        let out = env.run(&["set", &format!("comment=try{i}"), "sick"]);
        if !out.status.success() {
            failed = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
    }
    let failed = failed.expect("the pool kept committing on a full file system");
    assert!(
        failed.contains("cannot set property for 'sick'"),
        "{failed}"
    );

    let status = env.json(&["status", "--json", "sick"]);
    let st = &status[0];
    assert_eq!(st["health"], "SUSPENDED", "{status}");
    assert_eq!(st["suspended"]["errno"], libc::ENOSPC, "{status}");
    assert!(
        st["suspended"]["reason"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{status}"
    );
    assert!(st["errors"]["write"].as_u64().unwrap() >= 1, "{status}");
    let text = env.ok(&["status", "sick"]);
    assert!(
        text.contains(" state: SUSPENDED") && text.contains("'ringpool clear sick'"),
        "{text}"
    );
    let list = env.ok(&["list", "-H", "-o", "name,health", "sick"]);
    assert_eq!(list.trim(), "sick\tSUSPENDED");
    // Reads keep working while suspended.
    assert_qemu_io(&url, &["read -P 0x77 0 1M"]);

    // The cause is still there: clear says so and the pool stays suspended.
    let err = env.fails(&["clear", "sick"]);
    assert!(
        err.contains("cannot clear errors for 'sick'") && err.contains("suspended again"),
        "{err}"
    );
    assert_eq!(
        env.json(&["status", "--json", "sick"])[0]["health"],
        "SUSPENDED"
    );

    // The cause goes away: clear resumes the pool at its last committed txg.
    fs::remove_file(&filler).unwrap();
    env.ok(&["clear", "sick"]);
    let status = env.json(&["status", "--json", "sick"]);
    assert_eq!(status[0]["health"], "ONLINE", "{status}");
    assert_eq!(status[0]["errors"]["write"], 0, "{status}");
    env.ok(&["set", "comment=healthy", "sick"]);
    assert_eq!(
        env.json(&["get", "--json", "comment", "sick"])[0]["value"],
        "healthy"
    );
    // The export is published again; data flushed before the failure is there.
    assert_qemu_io(&url, &["read -P 0x77 0 1M", "write -P 0x78 1M 1M", "flush"]);
    assert_eq!(env.json(&["verify", "--json", "sick"])["clean"], true);
    let history = env.ok(&["history", "sick"]);
    assert!(history.contains("clear: resumed"), "{history}");
    assert!(serve.stop().success());
}
