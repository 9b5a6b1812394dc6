//! End-to-end tests of the `ringpool` binary in a temporary state directory: pool and volume
//! lifecycle, serve with the control socket, the demo pool.

mod common;

use std::process::Command;

use common::{assert_qemu_io, free_port, have, Env, Serve};
use serde_json::Value;

#[test]
fn pool_and_volume_lifecycle() {
    let env = Env::new();
    let dev = env.path("d1.img");
    let dev_s = dev.to_str().unwrap();
    assert!(env
        .fails(&["create", "tank", dev_s])
        .contains("no such device"));
    env.ok(&["create", "--size", "512M", "tank", dev_s]);
    assert!(env
        .fails(&["create", "--size", "512M", "tank", dev_s])
        .contains("already exists"));
    let other = env.path("d2.img");
    std::fs::copy(&dev, &other).ok();
    assert!(env
        .fails(&["create", "tank2", other.to_str().unwrap()])
        .contains("is part of pool"));

    let list = env.json(&["list", "--json"]);
    assert_eq!(list[0]["name"], "tank");
    let size = list[0]["size"].as_u64().unwrap();
    assert!(size > 400 << 20 && size < 512 << 20, "size {size}");
    let text = env.ok(&["list"]);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("CKPOINT") && text.contains("ONLINE"));
    let scripted = env.ok(&["list", "-H", "-p", "-o", "name,size"]);
    assert_eq!(scripted.trim(), format!("tank\t{size}"));
    assert!(env
        .fails(&["list", "-o", "bogus"])
        .contains("invalid property"));

    env.ok(&["volume", "create", "-s", "64M", "tank/vol0"]);
    env.ok(&["volume", "create", "-s", "32M", "-b", "16K", "tank/vol1"]);
    assert!(env
        .fails(&["volume", "create", "-s", "64M", "tank/vol0"])
        .contains("cannot create"));
    assert!(env
        .fails(&["volume", "create", "-s", "64M", "novol"])
        .contains("POOL/VOLUME"));
    assert!(env
        .fails(&["volume", "create", "-s", "1M", "-b", "3K", "tank/bad"])
        .contains("cannot create"));
    let vols = env.json(&["volume", "list", "--json"]);
    assert_eq!(vols.as_array().unwrap().len(), 2);
    assert_eq!(vols[1]["block_size"], 16384);
    env.ok(&["volume", "resize", "-s", "128M", "tank/vol0"]);
    let vols = env.json(&["volume", "list", "--json", "tank"]);
    assert_eq!(vols[0]["size"], 128u64 << 20);
    env.ok(&["volume", "destroy", "tank/vol1"]);
    assert!(env
        .fails(&["volume", "destroy", "tank/vol1"])
        .contains("cannot destroy"));

    env.ok(&["set", "comment=hello", "tank"]);
    let got = env.json(&["get", "--json", "comment", "tank"]);
    assert_eq!(got[0]["value"], "hello");
    let all = env.json(&["get", "--json", "all", "tank"]);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["property"] == "checkpoint"));
    assert!(env
        .fails(&["get", "nosuchprop", "tank"])
        .contains("invalid property"));
    let history = env.json(&["history", "--json", "tank"]);
    assert!(history.as_array().unwrap().len() >= 4, "{history}");
    let status = env.json(&["status", "--json", "tank"]);
    assert_eq!(status[0]["health"], "ONLINE");
    assert_eq!(status[0]["checkpoint"]["state"], "none");
    for e in ["read", "write", "checksum"] {
        assert_eq!(status[0]["errors"][e], 0, "{status}");
        assert_eq!(status[0]["devices"][0]["errors"][e], 0, "{status}");
    }
    let text = env.ok(&["status", "tank"]);
    assert!(
        text.contains("pool: tank") && text.contains("READ  WRITE  CKSUM"),
        "{text}"
    );
    assert!(text.contains("No known data errors"), "{text}");
    let exact = env.ok(&["status", "-p", "tank"]);
    assert!(exact.contains(&size.to_string()), "{exact}");
    let verbose = env.ok(&["status", "-v", "tank"]);
    assert!(
        verbose.contains("slop: ") && verbose.contains("open txg: "),
        "{verbose}"
    );
    // list -v: the pool's row, then its device indented under it, in the same columns.
    let listv = env.ok(&["list", "-v", "tank"]);
    let rows: Vec<&str> = listv.lines().collect();
    assert_eq!(rows.len(), 3, "{listv}");
    assert!(
        rows[0].starts_with("NAME") && rows[1].starts_with("tank "),
        "{listv}"
    );
    assert!(rows[2].starts_with(&format!("  {dev_s}")), "{listv}");
    assert_eq!(rows[1].len(), rows[2].len(), "{listv}");
    assert_eq!(
        env.ok(&["get", "-H", "-p", "size", "tank"]),
        format!("tank\tsize\t{size}\n")
    );
    let got = env.ok(&["get", "size,health", "tank"]);
    assert!(got.starts_with("NAME  PROPERTY  VALUE"), "{got}");
    assert!(got.contains("tank  health    ONLINE"), "{got}");
    env.ok(&["clear", "tank"]);
    assert!(env.fails(&["clear", "nope"]).contains("no such pool"));
    let verify = env.json(&["verify", "--json", "tank"]);
    assert_eq!(verify["clean"], true, "{verify}");
    assert!(env
        .ok(&["inspect", "labels", "tank"])
        .contains("pool 'tank'"));

    assert!(env.fails(&["status", "nope"]).contains("no such pool"));
    assert!(env.fails(&["checkpoint"]).contains("missing pool argument"));
    assert!(env
        .fails(&["checkpoint", "-w", "tank"])
        .contains("--wait only valid"));
    assert!(env
        .fails(&["checkpoint", "tank", "extra"])
        .contains("too many arguments"));
    assert!(env
        .fails(&["checkpoint", "tank/vol0"])
        .contains("doesn't work on volumes"));

    env.ok(&["export", "tank"]);
    assert!(env.fails(&["status", "tank"]).contains("no such pool"));
    let listing = env.ok(&["import", "-d", env.dir.path().to_str().unwrap()]);
    assert!(listing.contains("pool: tank"), "{listing}");
    assert!(env
        .fails(&["import", "-d", env.dir.path().to_str().unwrap(), "other"])
        .contains("no such pool"));
    env.ok(&["import", "-d", env.dir.path().to_str().unwrap(), "tank"]);
    let vols = env.json(&["volume", "list", "--json", "tank"]);
    assert_eq!(vols[0]["name"], "tank/vol0");
    assert_eq!(env.json(&["verify", "--json", "tank"])["clean"], true);
}

#[test]
fn serve_exports_volumes_and_answers_the_control_socket() {
    if !have("qemu-io") || !have("nbdinfo") {
        eprintln!("skipping: qemu-io or nbdinfo missing (ci/run installs them)");
        return;
    }
    let env = Env::new();
    let dev = env.path("d1.img");
    env.ok(&["create", "--size", "512M", "tank", dev.to_str().unwrap()]);
    env.ok(&["volume", "create", "-s", "64M", "tank/vol0"]);
    let side = env.path("side.img");
    env.ok(&["create", "--size", "256M", "side", side.to_str().unwrap()]);
    let port = free_port();
    // serve holds only tank: commands on side open it here.
    let serve = Serve::start(&env, port, &["tank"]);
    env.ok(&["volume", "create", "-s", "8M", "side/x"]);
    assert_eq!(env.json(&["status", "--json", "side"])[0]["name"], "side");
    env.ok(&["export", "side"]);
    assert!(
        serve
            .lines
            .iter()
            .any(|l| l.contains(&format!("nbd://127.0.0.1:{port}/tank/vol0"))),
        "{:?}",
        serve.lines
    );
    let url = format!("nbd://127.0.0.1:{port}/tank/vol0");
    assert_qemu_io(
        &url,
        &[
            "write -P 0x5a 0 1M",
            "write -P 0x33 8M 64k",
            "flush",
            "read -P 0x5a 0 1M",
        ],
    );

    // While serve holds the pool, commands go through its control socket.
    let again = Command::new(env!("CARGO_BIN_EXE_ringpool"))
        .env("RINGPOOL_STATE_DIR", env.state())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{again:?}"
    );
    env.ok(&["volume", "create", "-s", "16M", "tank/vol1"]);
    let info = Command::new("nbdinfo")
        .args(["--list", "--json", &format!("nbd://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let names: Vec<&str> = info["exports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["export-name"].as_str())
        .collect();
    assert!(names.contains(&"tank/vol1"), "{names:?}");
    let list = env.json(&["list", "--json", "tank"]);
    assert!(list[0]["allocated"].as_u64().unwrap() >= 1 << 20);
    assert_eq!(env.json(&["verify", "--json", "tank"])["clean"], true);
    // Trimmed ranges become holes in the block status map.
    assert_qemu_io(&url, &["discard 0 1M"]);
    let map = Command::new("nbdinfo")
        .args(["--map", &url])
        .output()
        .unwrap();
    let map = String::from_utf8_lossy(&map.stdout);
    assert!(
        map.lines().next().is_some_and(|l| l.contains("hole")),
        "{map}"
    );

    let status = serve.stop();
    assert!(status.success(), "serve exit {status:?}");
    // The pool was synced and exported: it opens, verifies clean, and the data is there.
    assert_eq!(env.json(&["verify", "--json", "tank"])["clean"], true);
    let serve = Serve::start(&env, port, &[]);
    assert_qemu_io(&url, &["read -P 0 0 1M", "read -P 0x33 8M 64k"]);
    assert!(serve.stop().success());
}

#[test]
fn serve_creates_the_demo_pool_when_none_is_known() {
    let env = Env::new();
    let port = free_port();
    let serve = Serve::start(&env, port, &[]);
    assert!(
        serve
            .lines
            .iter()
            .any(|l| l.contains(&format!("nbd://127.0.0.1:{port}/demo/vol0"))),
        "{:?}",
        serve.lines
    );
    let vols = env.json(&["volume", "list", "--json", "demo"]);
    assert_eq!(vols[0]["size"], 1u64 << 30);
    assert!(serve.stop().success());
    let demo = env.state().join("demo.img");
    assert_eq!(std::fs::metadata(&demo).unwrap().len(), 4 << 30);
    assert_eq!(env.json(&["verify", "--json", "demo"])["clean"], true);
}

#[test]
fn import_and_device_errors() {
    let env = Env::new();
    let devs = env.path("devs");
    std::fs::create_dir(&devs).unwrap();
    let a = devs.join("a.img");
    let b = devs.join("b.img");
    let c = env.path("c.img");
    let (a_s, b_s, c_s) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
    );
    env.ok(&["create", "--size", "256M", "two", a_s, b_s]);
    env.ok(&["volume", "create", "-s", "32M", "two/v"]);
    env.ok(&["create", "--size", "256M", "other", c_s]);
    // Device in use by another pool; missing device file.
    assert!(env
        .fails(&["add", "two", c_s])
        .contains("cannot add to 'two': "));
    assert!(env
        .fails(&["add", "two", c_s])
        .contains("is part of pool 'other'"));
    let missing = env.path("nofile.img");
    assert!(env
        .fails(&["add", "two", missing.to_str().unwrap()])
        .contains("no such device"));
    assert!(env.fails(&["export", "nope"]).contains("no such pool"));
    let list = env.json(&["list", "-v", "--json", "two"]);
    assert_eq!(list[0]["devices"].as_array().unwrap().len(), 2);
    let guid = list[0]["guid"].as_str().unwrap().to_string();

    // Exported, the pool is found again without -d (the remembered directories).
    env.ok(&["export", "two"]);
    let found = env.json(&["import", "--json"]);
    let two = found
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "two")
        .unwrap_or_else(|| panic!("{found}"))
        .clone();
    assert_eq!(two["state"], "ONLINE");
    assert_eq!(two["guid"], guid.as_str());
    assert!(env.ok(&["import"]).contains("pool: two"));

    // One device gone: listed UNAVAIL, import refused naming the missing device.
    let away = env.path("b.away");
    std::fs::rename(&b, &away).unwrap();
    let dir = devs.to_str().unwrap();
    let found = env.json(&["import", "--json", "-d", dir]);
    assert_eq!(found[0]["state"], "UNAVAIL", "{found}");
    assert_eq!(found[0]["missing_devices"], 1);
    assert_eq!(found[0]["name"], "two");
    let text = env.ok(&["import", "-d", dir]);
    // zpool's config block: the pool's name then its devices, indented, in one NAME column
    // with the STATE aligned after it; the missing device by its GUID.
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(" config:"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows[0].starts_with("\ttwo "), "{text}");
    assert!(
        rows[1].starts_with(&format!("\t  {}", a.display())),
        "{text}"
    );
    let missing_guid = found[0]["missing_guids"][0].as_str().unwrap();
    assert!(
        rows[2].starts_with(&format!("\t  {missing_guid} ")),
        "{text}"
    );
    let state_col: Vec<usize> = rows.iter().map(|r| r.rfind(' ').unwrap() + 1).collect();
    assert!(state_col.iter().all(|&c| c == state_col[0]), "{text}");
    assert!(
        rows[0].ends_with("UNAVAIL") && rows[1].ends_with("ONLINE"),
        "{text}"
    );
    assert!(rows[2].ends_with("UNAVAIL"), "{text}");
    let err = env.fails(&["import", "-d", dir, "two"]);
    assert!(
        err.contains("cannot import 'two'") && err.contains("missing"),
        "{err}"
    );
    assert!(env
        .fails(&["import", "-d", env.path("nodir").to_str().unwrap()])
        .contains("cannot search"));
    std::fs::rename(&away, &b).unwrap();
    // Another exported pool also named 'two': listed apart, importable only by its GUID.
    let twin = devs.join("twin.img");
    let other_state = env.path("other-state");
    let out = env
        .cmd(&["create", "--size", "256M", "two", twin.to_str().unwrap()])
        .env("RINGPOOL_STATE_DIR", &other_state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let found = env.json(&["import", "--json", "-d", dir]);
    assert_eq!(found.as_array().unwrap().len(), 2, "{found}");
    assert!(env
        .fails(&["import", "-d", dir, "two"])
        .contains("more than one matching pool"));
    std::fs::remove_file(&twin).unwrap();
    // By numeric identifier.
    env.ok(&["import", "-d", dir, &guid]);
    assert_eq!(
        env.json(&["status", "--json", "two"])[0]["health"],
        "ONLINE"
    );
    assert_eq!(env.json(&["verify", "--json", "two"])["clean"], true);
    assert_eq!(
        env.json(&["volume", "list", "--json", "two"])[0]["name"],
        "two/v"
    );
}

#[test]
fn serve_refuses_unusable_tls_settings_before_opening_anything() {
    let env = Env::new();
    let missing = env.path("missing-cert.pem");
    let missing = missing.to_str().unwrap();
    let err = env.fails(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
    ]);
    assert!(err.contains("missing-cert.pem"), "{err}");
    assert!(
        !env.state().join("demo.img").exists(),
        "the demo pool was created before the TLS settings were checked"
    );
    // --tls needs a certificate and a key; a key needs a certificate.
    let err = env.fails(&["serve", "--tls", "require"]);
    assert!(err.contains("--tls-cert"), "{err}");
    let err = env.fails(&["serve", "--tls-key", missing]);
    assert!(err.contains("--tls-cert"), "{err}");
}
