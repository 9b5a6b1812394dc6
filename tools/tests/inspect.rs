//! `ringpool inspect`: labels, uberblocks, metaslabs and space map dumps, checked against each
//! other and against `list` (the space maps replayed must give the allocated space).

mod common;

use common::Env;
use serde_json::Value;

/// A digest of a file's bytes, read in 1 MiB chunks.
fn digest(path: &std::path::Path) -> u64 {
    use std::hash::Hasher;
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finish();
        }
        h.write(&buf[..n]);
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Replays a space map dump: net allocated bytes, and every extent inside the region.
fn replay(map: &Value) -> i64 {
    let start = u(&map["region_start"]);
    let end = start + u(&map["region_size"]);
    let mut net = 0i64;
    let mut seen_debug = false;
    for r in map["records"].as_array().unwrap() {
        match r["type"].as_str().unwrap() {
            "debug" => {
                seen_debug = true;
                assert!(u(&r["txg"]) > 0, "{r}");
            }
            "padding" => {}
            "entry" => {
                assert!(seen_debug, "an entry before any debug word: {r}");
                let (s, l) = (u(&r["start"]), u(&r["length"]));
                assert!(
                    s >= start && s + l <= end && l > 0,
                    "{r} outside [{start}, {end})"
                );
                let l = i64::try_from(l).unwrap();
                match r["action"].as_str().unwrap() {
                    "alloc" => net += l,
                    "free" => net -= l,
                    other => panic!("action {other}"),
                }
            }
            other => panic!("record type {other}"),
        }
    }
    net
}

#[test]
fn inspect_metaslabs_and_space_maps() {
    let env = Env::new();
    let dev = env.path("d1.img");
    let dev_s = dev.to_str().unwrap();
    env.ok(&[
        "create",
        "--size",
        "512M",
        "-o",
        "metaslab_size=32M",
        "tank",
        dev_s,
    ]);
    env.ok(&["volume", "create", "-s", "64M", "tank/vol0"]);
    env.ok(&["volume", "create", "-s", "8M", "tank/vol1"]);
    env.ok(&["volume", "destroy", "tank/vol1"]);

    let ms = env.json(&["inspect", "metaslabs", "--json", "tank"]);
    let ms = ms.as_array().unwrap();
    assert!(ms.len() >= 10, "{} metaslabs", ms.len());
    let list = env.json(&["list", "--json", "tank"]);
    let mut allocated = 0;
    let mut prev_end = 0;
    for m in ms {
        assert_eq!(m["device"], 0);
        assert_eq!(u(&m["size"]), 32 << 20, "{m}");
        assert_eq!(u(&m["allocated"]) + u(&m["free"]), u(&m["size"]), "{m}");
        assert!(u(&m["offset"]) >= prev_end, "metaslabs overlap: {m}");
        prev_end = u(&m["offset"]) + u(&m["size"]);
        assert!(u(&m["fragmentation"]) <= 100);
        assert!(u(&m["spacemap"]) > 0);
        assert_eq!(m["histogram"].as_array().unwrap().len(), 32);
        allocated += u(&m["allocated"]);
    }
    // The committed space maps account for exactly what the pool reports allocated.
    assert_eq!(allocated, u(&list[0]["allocated"]), "{list}");
    assert!(allocated > 0);

    // Every used metaslab's space map replays to its allocated bytes.
    let mut dumped = 0;
    for m in ms.iter().filter(|m| u(&m["spacemap_length"]) > 0) {
        let sel = format!("0:{}", u(&m["index"]));
        let map = env.json(&["inspect", "spacemap", "--json", "tank", "--metaslab", &sel]);
        assert_eq!(map["object"], m["spacemap"]);
        assert_eq!(map["length"], m["spacemap_length"]);
        assert_eq!(map["region_start"], m["offset"]);
        let net = replay(&map);
        assert_eq!(net, map["allocated"].as_i64().unwrap(), "header vs entries");
        assert_eq!(u64::try_from(net).unwrap(), u(&m["allocated"]));
        dumped += 1;
    }
    assert!(dumped >= 1);
    // The human forms.
    let text = env.ok(&["inspect", "metaslabs", "tank"]);
    assert!(
        text.contains("METASLAB") && text.contains("SPACEMAP"),
        "{text}"
    );
    let exact = env.ok(&["inspect", "metaslabs", "-p", "tank"]);
    assert!(exact.contains(&(32u64 << 20).to_string()), "{exact}");
    let text = env.ok(&["inspect", "spacemap", "tank", "--metaslab", "0:0"]);
    assert!(
        text.contains("smp_length") && text.contains("ALLOC: txg") && text.contains("range:"),
        "{text}"
    );
    // No checkpoint: no checkpoint space map.
    let ck = env.json(&["inspect", "spacemap", "--json", "tank", "--checkpoint"]);
    assert_eq!(ck["object"], 0);
    assert!(env
        .ok(&["inspect", "spacemap", "tank", "--checkpoint", "0"])
        .contains("no space map"));

    // Errors.
    assert!(env
        .fails(&["inspect", "spacemap", "tank", "--metaslab", "0:9999"])
        .contains("no metaslab 9999"));
    assert!(env
        .fails(&["inspect", "spacemap", "tank", "--metaslab", "zero"])
        .contains("DEVICE:INDEX"));
    assert!(env
        .fails(&["inspect", "spacemap", "tank", "--metaslab", "7:0"])
        .contains("no device 7"));
    assert!(env
        .fails(&["inspect", "spacemap", "tank"])
        .contains("--metaslab"));
    assert!(env
        .fails(&["inspect", "metaslabs", "nope"])
        .contains("no such pool"));
    assert!(env.fails(&["inspect", "bogus", "tank"]).contains("bogus"));
    assert!(env.fails(&["inspect", "metaslabs"]).contains("pool"));

    // Labels and uberblocks, human and JSON.
    let labels = env.json(&["inspect", "labels", "--json", "tank"]);
    let l = &labels[0]["labels"];
    assert_eq!(l.as_array().unwrap().len(), 4);
    for label in l.as_array().unwrap() {
        assert_eq!(label["pool"], "tank", "{label}");
        assert!(!label["uberblocks"].as_array().unwrap().is_empty());
    }
    let ubs = env.ok(&["inspect", "uberblocks", "tank"]);
    assert!(ubs.contains("txg") && ubs.contains("slot"), "{ubs}");

    // An exported pool is inspected from its devices (a read-only open: nothing changes).
    env.ok(&["export", "tank"]);
    let before = digest(&dev);
    let ms2 = env.json(&["inspect", "metaslabs", "--json", "--device", dev_s]);
    assert_eq!(ms2.as_array().unwrap().len(), ms.len());
    let sum: u64 = ms2
        .as_array()
        .unwrap()
        .iter()
        .map(|m| u(&m["allocated"]))
        .sum();
    assert_eq!(sum, allocated);
    let map = env.json(&[
        "inspect",
        "spacemap",
        "--json",
        "--device",
        dev_s,
        "--metaslab",
        "0:0",
    ]);
    assert!(u(&map["length"]) > 0);
    assert!(
        digest(&dev) == before,
        "inspecting an exported pool wrote to its device"
    );
}
