//! The checkpoint from the command line: the README walkthrough (checkpoint, change, rewind),
//! the read-only preview of the checkpointed state, a discard in progress and its errors.

mod common;

use common::{assert_qemu_io, assert_qemu_io_opts, free_port, have, qemu_io, Env, Serve};
use serde_json::Value;

#[test]
fn checkpoint_rewind_walkthrough() {
    if !have("qemu-io") {
        eprintln!("skipping: qemu-io missing (qemu-utils)");
        return;
    }
    let env = Env::new();
    let dev = env.path("d1.img");
    env.ok(&["create", "--size", "512M", "ck", dev.to_str().unwrap()]);
    env.ok(&["volume", "create", "-s", "64M", "ck/v"]);
    assert!(env
        .fails(&["checkpoint", "-d", "ck"])
        .contains("checkpoint does not exist"));
    let port = free_port();
    let url = format!("nbd://127.0.0.1:{port}/ck/v");
    let serve = Serve::start(&env, port, &[]);
    assert_qemu_io(&url, &["write -P 0x11 0 4M", "flush"]);
    env.ok(&["checkpoint", "ck"]);
    assert!(env
        .fails(&["checkpoint", "ck"])
        .contains("checkpoint exists"));
    assert_qemu_io(&url, &["write -P 0x22 0 4M", "flush"]);
    let status = env.json(&["status", "--json", "ck"]);
    assert_eq!(status[0]["checkpoint"]["state"], "exists");
    // Overwritten checkpoint-born blocks stay allocated: CKPOINT holds them.
    assert!(
        status[0]["checkpoint"]["space"].as_u64().unwrap() >= 4 << 20,
        "{status}"
    );
    assert!(env.ok(&["status", "ck"]).contains("checkpoint: created"));
    // A new GUID would orphan the checkpoint: refused (OpenZFS's wording).
    let guid = status[0]["guid"].clone();
    assert!(env
        .fails(&["reguid", "ck"])
        .contains("cannot reguid 'ck': checkpoint exists"));
    assert!(serve.stop().success());

    assert!(env
        .fails(&["import", "-d", env.dir.path().to_str().unwrap(), "nope"])
        .contains("no such pool"));
    env.ok(&["export", "ck"]);
    env.ok(&[
        "import",
        "-d",
        env.dir.path().to_str().unwrap(),
        "--rewind-to-checkpoint",
        "ck",
    ]);
    assert_eq!(
        env.json(&["status", "--json", "ck"])[0]["checkpoint"]["state"],
        "none"
    );
    assert_eq!(env.json(&["verify", "--json", "ck"])["clean"], true);
    let serve = Serve::start(&env, port, &[]);
    assert_qemu_io(&url, &["read -P 0x11 0 4M"]);
    env.ok(&["checkpoint", "ck"]);
    assert_qemu_io(&url, &["write -P 0x33 0 1M", "flush"]);
    env.ok(&["checkpoint", "-d", "-w", "ck"]);
    assert_eq!(
        env.json(&["status", "--json", "ck"])[0]["checkpoint"]["state"],
        "none"
    );
    // Without a checkpoint the pool takes a new GUID (through serve's control socket).
    env.ok(&["reguid", "ck"]);
    let new_guid = env.json(&["status", "--json", "ck"])[0]["guid"].clone();
    assert_ne!(new_guid, guid);
    assert!(serve.stop().success());
    // The new GUID is on disk.
    assert_eq!(env.json(&["status", "--json", "ck"])[0]["guid"], new_guid);
    // Without serve: create and discard with wait in this process.
    env.ok(&["checkpoint", "ck"]);
    env.ok(&["checkpoint", "-d", "-w", "ck"]);
    env.ok(&["wait", "-t", "discard", "ck"]);
    assert_eq!(env.json(&["verify", "--json", "ck"])["clean"], true);
    let history = env.ok(&["history", "ck"]);
    assert!(history.contains("checkpoint discard finished"), "{history}");
    // The rewind consumed the checkpoint: rewinding again is refused, a plain import works.
    env.ok(&["export", "ck"]);
    let dir = env.dir.path().to_str().unwrap();
    assert!(env
        .fails(&["import", "-d", dir, "--rewind-to-checkpoint", "ck"])
        .contains("cannot import 'ck': checkpoint does not exist"));
    env.ok(&["import", "-d", dir, "ck"]);
    assert!(env
        .fails(&["import", "-d", dir, "ck"])
        .contains("a pool with that name already exists"));
}

/// Net bytes of a space map dump (ALLOC minus FREE entries).
fn net_bytes(map: &Value) -> i64 {
    map["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "entry")
        .map(|r| {
            let l = i64::try_from(r["length"].as_u64().unwrap()).unwrap();
            if r["action"] == "alloc" {
                l
            } else {
                -l
            }
        })
        .sum()
}

#[test]
fn readonly_rewind_is_a_preview_that_keeps_the_checkpoint() {
    if !have("qemu-io") {
        eprintln!("skipping: qemu-io missing (qemu-utils)");
        return;
    }
    let env = Env::new();
    let dev = env.path("d1.img");
    env.ok(&["create", "--size", "512M", "ro", dev.to_str().unwrap()]);
    env.ok(&["volume", "create", "-s", "64M", "ro/v"]);
    let port = free_port();
    let url = format!("nbd://127.0.0.1:{port}/ro/v");
    let serve = Serve::start(&env, port, &[]);
    assert_qemu_io(&url, &["write -P 0x11 0 4M", "flush"]);
    env.ok(&["checkpoint", "ro"]);
    assert_qemu_io(&url, &["write -P 0x22 0 4M", "flush"]);
    // The checkpoint space map holds exactly what CKPOINT reports.
    let status = env.json(&["status", "--json", "ro"]);
    let held = status[0]["checkpoint"]["space"].as_u64().unwrap();
    assert!(held >= 4 << 20, "{status}");
    let map = env.json(&["inspect", "spacemap", "--json", "ro", "--checkpoint"]);
    assert!(map["object"].as_u64().unwrap() > 0, "{map}");
    assert_eq!(net_bytes(&map), -i64::try_from(held).unwrap(), "{map}");
    assert!(map["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["type"] != "entry" || r["action"] == "free"));

    // Export through serve, then import the checkpointed state read-only: serve picks it up
    // and exports the volume read-only.
    env.ok(&["export", "ro"]);
    let out = env.ok(&["import", "--rewind-to-checkpoint", "--readonly", "ro"]);
    assert!(out.contains("read-only at its checkpoint"), "{out}");
    let status = env.json(&["status", "--json", "ro"]);
    assert_eq!(status[0]["checkpoint_view"], true, "{status}");
    assert_eq!(status[0]["read_only"], true);
    let text = env.ok(&["status", "ro"]);
    assert!(
        text.contains("imported read-only at its checkpoint"),
        "{text}"
    );
    let ro = env.json(&["get", "--json", "readonly", "ro"]);
    assert_eq!(ro[0]["value"], "on");
    assert_eq!(
        env.json(&["volume", "list", "--json", "ro"])[0]["name"],
        "ro/v"
    );
    assert!(
        env.json(&["history", "--json", "ro"])
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    assert_qemu_io_opts(&url, &["-r"], &["read -P 0x11 0 4M"]);
    let w = qemu_io(&url, &["write -P 0x33 0 4k"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(
        !w.status.success() || text.contains("failed") || text.contains("denied"),
        "a write to the read-only preview succeeded: {text}"
    );
    for (args, what) in [
        (
            &["volume", "create", "-s", "1M", "ro/x"][..],
            "cannot create 'ro/x'",
        ),
        (&["checkpoint", "ro"][..], "cannot checkpoint 'ro'"),
        (
            &["set", "comment=x", "ro"][..],
            "cannot set property for 'ro'",
        ),
        (
            &["volume", "resize", "-s", "128M", "ro/v"][..],
            "cannot resize 'ro/v'",
        ),
        (&["reguid", "ro"][..], "cannot reguid 'ro'"),
    ] {
        let err = env.fails(args);
        assert!(
            err.contains(what) && err.contains("read-only"),
            "{args:?}: {err}"
        );
    }
    assert!(env
        .fails(&["import", "ro"])
        .contains("a pool with that name already exists"));

    // Export and a plain import return to the current state, with the checkpoint kept.
    env.ok(&["export", "ro"]);
    env.ok(&["import", "ro"]);
    let status = env.json(&["status", "--json", "ro"]);
    assert_eq!(status[0]["checkpoint"]["state"], "exists", "{status}");
    assert_eq!(status[0]["read_only"], false);
    assert_eq!(status[0]["checkpoint"]["space"].as_u64().unwrap(), held);
    assert_qemu_io(&url, &["read -P 0x22 0 4M"]);
    assert!(serve.stop().success());
    assert_eq!(env.json(&["verify", "--json", "ro"])["clean"], true);
}

#[test]
fn discard_in_progress_refuses_checkpoint_changes() {
    if !have("qemu-io") {
        eprintln!("skipping: qemu-io missing (qemu-utils)");
        return;
    }
    let env = Env::new();
    let dev = env.path("d1.img");
    env.ok(&["create", "--size", "512M", "dc", dev.to_str().unwrap()]);
    env.ok(&["volume", "create", "-s", "64M", "dc/v"]);
    // A tiny discard budget: four checkpoint-map entries per txg (OpenZFS's
    // zfs_spa_discard_memory_limit), so the discard below takes hundreds of txgs.
    env.ok(&["set", "checkpoint_discard_memory_limit=128", "dc"]);
    let port = free_port();
    let url = format!("nbd://127.0.0.1:{port}/dc/v");
    let serve = Serve::start(&env, port, &[]);
    assert_qemu_io(&url, &["write -P 0x11 0 8M", "flush"]);
    env.ok(&["checkpoint", "dc"]);
    // Overwrite every other 4K block: the checkpoint map gets ~1000 separate extents.
    let cmds: Vec<String> = (0..1024u64)
        .map(|i| format!("write -P 0x22 {} 4k", i * 8192))
        .chain(std::iter::once("flush".to_string()))
        .collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    assert_qemu_io(&url, &refs);
    env.ok(&["checkpoint", "-d", "dc"]);
    assert!(env
        .fails(&["checkpoint", "dc"])
        .contains("cannot checkpoint 'dc': currently discarding checkpoint"));
    assert!(env
        .fails(&["checkpoint", "-d", "dc"])
        .contains("cannot discard checkpoint in 'dc': currently discarding checkpoint"));
    assert!(env
        .fails(&["reguid", "dc"])
        .contains("cannot reguid 'dc': currently discarding checkpoint"));
    let status = env.json(&["status", "--json", "dc"]);
    assert_eq!(status[0]["checkpoint"]["state"], "discarding", "{status}");
    assert!(env
        .ok(&["status", "dc"])
        .contains("checkpoint: discarding,"));
    assert!(env
        .fails(&["wait", "-t", "scrub", "dc"])
        .contains("invalid activity"));
    env.ok(&["wait", "-t", "discard", "dc"]);
    let status = env.json(&["status", "--json", "dc"]);
    assert_eq!(status[0]["checkpoint"]["state"], "none", "{status}");
    assert_eq!(status[0]["checkpoint"]["space"], 0);
    assert_qemu_io(&url, &["read -P 0x22 0 4k", "read -P 0x11 4k 4k"]);
    assert!(serve.stop().success());
    assert_eq!(env.json(&["verify", "--json", "dc"])["clean"], true);
    let history = env.ok(&["history", "dc"]);
    assert!(history.contains("checkpoint discard finished"), "{history}");
}

/// The percentages of the plain progress lines starting with `prefix` on `stderr`.
fn percents(stderr: &str, prefix: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            let open = l.rfind('(').unwrap_or_else(|| panic!("{l}"));
            let pct = l[open + 1..].split('%').next().unwrap();
            pct.parse().unwrap_or_else(|_| panic!("{l}"))
        })
        .collect()
}

/// `verify` and `checkpoint -d -w` report progress: plain lines when stderr is not a terminal
/// (every report with RINGPOOL_PROGRESS_EVERY_MS=0), through serve's control socket as well
/// as in a pool opened by the command; a bar on a terminal.
#[test]
fn verify_and_discard_report_progress() {
    if !have("qemu-io") {
        eprintln!("skipping: qemu-io missing (qemu-utils)");
        return;
    }
    let env = Env::new();
    let dev = env.path("d1.img");
    env.ok(&["create", "--size", "512M", "pg", dev.to_str().unwrap()]);
    env.ok(&["volume", "create", "-s", "64M", "pg/v"]);
    env.ok(&["set", "checkpoint_discard_memory_limit=128", "pg"]);
    let port = free_port();
    let url = format!("nbd://127.0.0.1:{port}/pg/v");
    let serve = Serve::start(&env, port, &[]);
    assert_qemu_io(&url, &["write -P 0x11 0 16M", "flush"]);
    env.ok(&["checkpoint", "pg"]);
    let cmds: Vec<String> = (0..1024u64)
        .map(|i| format!("write -P 0x22 {} 4k", i * 8192))
        .chain(std::iter::once("flush".to_string()))
        .collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    assert_qemu_io(&url, &refs);

    let verify_lines = |what: &str| {
        let out = env
            .cmd(&["verify", "pg"])
            .env("RINGPOOL_PROGRESS_EVERY_MS", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{what}: {stdout}{stderr}");
        assert!(stdout.starts_with("verify of 'pg': no errors"), "{stdout}");
        let pct = percents(&stderr, "verify of 'pg': ");
        assert!(!pct.is_empty(), "{what}: no progress line: {stderr}");
        assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{what}: {pct:?}");
        assert!(pct.iter().all(|&p| p <= 100), "{what}: {pct:?}");
    };
    verify_lines("through serve");

    // On a terminal: a bar (script(1) gives the command a pty).
    if have("script") {
        let bin = env!("CARGO_BIN_EXE_ringpool");
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("{bin} verify pg"), "/dev/null"])
            .env("RINGPOOL_STATE_DIR", env.state())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("verifying 'pg'") && text.contains("no errors"),
            "{text}"
        );
    }
    assert!(serve.stop().success());

    verify_lines("opened by the command");
    let out = env
        .cmd(&["checkpoint", "-d", "-w", "pg"])
        .env("RINGPOOL_PROGRESS_EVERY_MS", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let pct = percents(&stderr, "checkpoint: discarding, ");
    assert!(!pct.is_empty(), "no progress line: {stderr}");
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{pct:?}");
    assert!(pct.iter().all(|&p| p <= 100), "{pct:?}");
    let status = env.json(&["status", "--json", "pg"]);
    assert_eq!(status[0]["checkpoint"]["state"], "none", "{status}");
    assert_eq!(env.json(&["verify", "--json", "pg"])["clean"], true);
}
