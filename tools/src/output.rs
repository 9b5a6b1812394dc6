//! Human output of the reporting commands, from the same JSON values `--json` prints.

use serde_json::Value;

use crate::size::nicenum;
use crate::table::{Align, Table};

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A size cell: exact bytes with `-p`, nicenum otherwise, "-" for a zero CKPOINT.
fn size_cell(v: &Value, parsable: bool, dash_if_zero: bool) -> String {
    let n = num(v);
    if dash_if_zero && n == 0 {
        return "-".into();
    }
    if parsable {
        n.to_string()
    } else {
        nicenum(n)
    }
}

/// Columns `list` knows, in default order.
pub const LIST_COLUMNS: [&str; 8] = [
    "name", "size", "alloc", "free", "ckpoint", "frag", "cap", "health",
];

fn list_cell(pool_or_dev: &Value, col: &str, parsable: bool) -> String {
    match col {
        "name" => pool_or_dev["name"].as_str().unwrap_or("-").to_string(),
        "size" => size_cell(&pool_or_dev["size"], parsable, false),
        "alloc" => size_cell(&pool_or_dev["allocated"], parsable, false),
        "free" => size_cell(&pool_or_dev["free"], parsable, false),
        "ckpoint" => size_cell(&pool_or_dev["checkpoint"], parsable, true),
        "frag" => {
            let f = num(&pool_or_dev["fragmentation"]);
            if parsable {
                f.to_string()
            } else {
                format!("{f}%")
            }
        }
        "cap" => {
            let c = num(&pool_or_dev["capacity"]);
            if parsable {
                c.to_string()
            } else {
                format!("{c}%")
            }
        }
        "health" => pool_or_dev["health"].as_str().unwrap_or("-").to_string(),
        _ => "-".into(),
    }
}

/// `list`: one row per pool (and per device with `-v`).
pub fn list(
    pools: &[Value],
    columns: &[String],
    verbose: bool,
    scripted: bool,
    parsable: bool,
) -> String {
    let headers: Vec<(String, Align)> = columns
        .iter()
        .map(|c| {
            let align = if c == "name" || c == "health" {
                Align::Left
            } else {
                Align::Right
            };
            (c.to_uppercase(), align)
        })
        .collect();
    let refs: Vec<(&str, Align)> = headers.iter().map(|(h, a)| (h.as_str(), *a)).collect();
    let mut table = Table::new(&refs);
    for pool in pools {
        let mut p = pool.clone();
        p["checkpoint"] = pool["checkpoint"]["space"].clone();
        table.row(columns.iter().map(|c| list_cell(&p, c, parsable)).collect());
        if verbose {
            for dev in pool["devices"].as_array().into_iter().flatten() {
                let mut d = dev.clone();
                d["name"] = Value::String(format!("  {}", dev["name"].as_str().unwrap_or("?")));
                if d["health"].is_null() {
                    d["health"] = pool["health"].clone();
                }
                table.row(columns.iter().map(|c| list_cell(&d, c, parsable)).collect());
            }
        }
    }
    table.render(scripted)
}

fn format_time(secs: u64) -> String {
    // Civil date from days since the epoch (UTC), so no time crate is needed.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02}:{s:02} UTC")
}

/// A device's error counter cell: the count, or "-" when the pool layer reports none.
fn error_cell(dev: &Value, which: &str) -> String {
    dev["errors"][which]
        .as_u64()
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// `status`: zpool status's shape.
pub fn status(pool: &Value, verbose: bool, parsable: bool) -> String {
    let name = pool["name"].as_str().unwrap_or("?");
    let health = pool["health"].as_str().unwrap_or("?");
    let size = |v: &Value| size_cell(v, parsable, false);
    let mut out = String::new();
    out.push_str(&format!("  pool: {name}\n"));
    out.push_str(&format!(" state: {health}\n"));
    if health == "SUSPENDED" {
        let s = &pool["suspended"];
        out.push_str(&format!(
            "status: The sync of txg {} failed (errno {}: {}): the pool is suspended,\n\
             \twrites and flushes fail, reads keep working.\n\
             action: Fix the cause (a failing device, a full file system under a device\n\
             \tfile), then 'ringpool clear {name}': the pool reopens at its last committed txg.\n",
            num(&s["txg"]),
            s["errno"].as_i64().unwrap_or(0),
            s["reason"].as_str().unwrap_or("unknown")
        ));
    } else if pool["checkpoint_view"].as_bool() == Some(true) {
        out.push_str(&format!(
            "status: The pool is imported read-only at its checkpoint: this is the checkpointed\n\
             \tstate, nothing is written and the checkpoint is kept.\n\
             action: 'ringpool export {name}' then 'ringpool import {name}' returns to the current\n\
             \tstate; 'ringpool import --rewind-to-checkpoint {name}' after the export rewinds for good.\n"
        ));
    } else if pool["read_only"].as_bool() == Some(true) {
        out.push_str("status: The pool is imported read-only.\n");
    }
    out.push_str(&format!("   txg: {}\n", num(&pool["synced_txg"])));
    let ck = &pool["checkpoint"];
    match ck["state"].as_str() {
        Some("exists") => out.push_str(&format!(
            "checkpoint: created {}, consumes {}\n",
            format_time(num(&ck["created"])),
            size(&ck["space"])
        )),
        Some("discarding") => out.push_str(&format!(
            "checkpoint: discarding, {} remaining\n",
            size(&ck["space"])
        )),
        _ => {}
    }
    out.push_str("config:\n\n");
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("READ", Align::Right),
        ("WRITE", Align::Right),
        ("CKSUM", Align::Right),
        ("SIZE", Align::Right),
        ("ALLOC", Align::Right),
        ("CKPOINT", Align::Right),
    ]);
    table.row(vec![
        name.to_string(),
        health.to_string(),
        error_cell(pool, "read"),
        error_cell(pool, "write"),
        error_cell(pool, "checksum"),
        size(&pool["size"]),
        size(&pool["allocated"]),
        size_cell(&pool["checkpoint"]["space"], parsable, true),
    ]);
    for dev in pool["devices"].as_array().into_iter().flatten() {
        table.row(vec![
            format!("  {}", dev["name"].as_str().unwrap_or("?")),
            dev["health"].as_str().unwrap_or(health).to_string(),
            error_cell(dev, "read"),
            error_cell(dev, "write"),
            error_cell(dev, "checksum"),
            size(&dev["size"]),
            size(&dev["allocated"]),
            size_cell(&dev["checkpoint"], parsable, true),
        ]);
    }
    for line in table.render(false).lines() {
        out.push('\t');
        out.push_str(line);
        out.push('\n');
    }
    if verbose {
        out.push_str(&format!(
            "\nslop: {}  open txg: {}\n",
            size(&pool["slop"]),
            num(&pool["open_txg"])
        ));
    }
    let e = &pool["errors"];
    let total = num(&e["read"]) + num(&e["write"]) + num(&e["checksum"]);
    if total > 0 {
        out.push_str(&format!(
            "\nerrors: {} read, {} write, {} checksum errors since import; 'ringpool verify {name}'\n\
             \tchecks every block, 'ringpool clear {name}' resets the counters\n",
            num(&e["read"]),
            num(&e["write"]),
            num(&e["checksum"])
        ));
    } else {
        out.push_str("\nerrors: No known data errors\n");
    }
    out
}

/// `inspect metaslabs`: one row per metaslab, grouped by device (zdb -m).
pub fn metaslabs(rows: &[Value], parsable: bool) -> String {
    let mut out = String::new();
    let mut devices: Vec<u64> = rows.iter().map(|r| num(&r["device"])).collect();
    devices.dedup();
    for dev in devices {
        let ms: Vec<&Value> = rows.iter().filter(|r| num(&r["device"]) == dev).collect();
        let name = ms
            .first()
            .and_then(|m| m["device_name"].as_str())
            .unwrap_or("?");
        out.push_str(&format!("device {dev} ({name}): {} metaslabs\n", ms.len()));
        let mut table = Table::new(&[
            ("METASLAB", Align::Right),
            ("OFFSET", Align::Right),
            ("SIZE", Align::Right),
            ("ALLOC", Align::Right),
            ("FREE", Align::Right),
            ("DEFER", Align::Right),
            ("MAXFREE", Align::Right),
            ("FRAG", Align::Right),
            ("WEIGHT", Align::Right),
            ("SPACEMAP", Align::Right),
            ("SMLEN", Align::Right),
        ]);
        for m in ms {
            let frag = num(&m["fragmentation"]);
            table.row(vec![
                num(&m["index"]).to_string(),
                format!("{:#x}", num(&m["offset"])),
                size_cell(&m["size"], parsable, false),
                size_cell(&m["allocated"], parsable, false),
                size_cell(&m["free"], parsable, false),
                size_cell(&m["deferred"], parsable, false),
                size_cell(&m["max_free"], parsable, false),
                if parsable {
                    frag.to_string()
                } else {
                    format!("{frag}%")
                },
                format!("{:#x}", num(&m["weight"])),
                num(&m["spacemap"]).to_string(),
                size_cell(&m["spacemap_length"], parsable, false),
            ]);
        }
        for line in table.render(false).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `inspect spacemap`: the header and every record, in log order (zdb -mmm).
pub fn space_map(v: &Value, parsable: bool) -> String {
    let mut out = String::new();
    let dev = num(&v["device"]);
    let what = match v["metaslab"].as_u64() {
        Some(ms) => format!("metaslab {dev}:{ms}"),
        None => format!("checkpoint space map of device {dev}"),
    };
    let object = num(&v["object"]);
    if object == 0 {
        out.push_str(&format!("{what}: no space map (nothing recorded)\n"));
        return out;
    }
    let start = num(&v["region_start"]);
    let size = num(&v["region_size"]);
    out.push_str(&format!(
        "{what}: space map object {object}, region [{start:#x}, {:#x}), ashift {}, block size {}\n",
        start + size,
        num(&v["ashift"]),
        num(&v["block_size"])
    ));
    let alloc = v["allocated"].as_i64().unwrap_or(0);
    out.push_str(&format!("  smp_length = {:#x}\n", num(&v["length"])));
    // Net allocated: negative for a checkpoint map, which only records frees.
    let sign = if alloc < 0 { "-" } else { "" };
    let abs = alloc.unsigned_abs();
    out.push_str(&format!(
        "  smp_alloc = {sign}{abs:#x} ({sign}{})\n",
        if parsable {
            abs.to_string()
        } else {
            nicenum(abs)
        }
    ));
    let ashift = num(&v["ashift"]);
    let hist: Vec<String> = v["histogram"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, n)| num(n) > 0)
        .map(|(i, n)| {
            let bucket = u32::try_from(i as u64 + ashift).unwrap_or(63).min(63);
            format!(
                "[{}, {}): {}",
                nicenum(1u64 << bucket),
                nicenum(1u64 << (bucket + 1).min(63)),
                num(n)
            )
        })
        .collect();
    if !hist.is_empty() {
        out.push_str(&format!("  free segments: {}\n", hist.join(", ")));
    }
    let mut entries = 0u64;
    for (i, r) in v["records"].as_array().into_iter().flatten().enumerate() {
        let action = match r["action"].as_str() {
            Some("alloc") => "A",
            Some("free") => "F",
            _ => "?",
        };
        match r["type"].as_str() {
            Some("debug") => out.push_str(&format!(
                "    [{i:6}]    {}: txg {}, pass {}\n",
                if action == "A" { "ALLOC" } else { "FREE" },
                num(&r["txg"]),
                num(&r["pass"])
            )),
            Some("padding") => out.push_str(&format!("    [{i:6}]    PADDING\n")),
            _ => {
                entries += 1;
                let s = num(&r["start"]);
                let l = num(&r["length"]);
                out.push_str(&format!(
                    "    [{i:6}] {action}  range: {s:010x}-{:010x}  size: {}\n",
                    s + l,
                    if parsable {
                        l.to_string()
                    } else {
                        format!("{l:06x}")
                    }
                ));
            }
        }
    }
    out.push_str(&format!("  {entries} entries\n"));
    out
}

/// `get`: NAME PROPERTY VALUE.
pub fn get(rows: &[Value], scripted: bool, parsable: bool) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("PROPERTY", Align::Left),
        ("VALUE", Align::Left),
    ]);
    for r in rows {
        let prop = r["property"].as_str().unwrap_or("?");
        let value = match &r["value"] {
            Value::Number(n)
                if !parsable && matches!(prop, "size" | "allocated" | "free" | "checkpoint") =>
            {
                let n = n.as_u64().unwrap_or(0);
                if prop == "checkpoint" && n == 0 {
                    "-".to_string()
                } else {
                    nicenum(n)
                }
            }
            Value::Number(n) if !parsable && matches!(prop, "fragmentation" | "capacity") => {
                format!("{n}%")
            }
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        table.row(vec![
            r["name"].as_str().unwrap_or("?").to_string(),
            prop.to_string(),
            value,
        ]);
    }
    table.render(scripted)
}

/// `volume list`.
pub fn volumes(vols: &[Value], scripted: bool, parsable: bool) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("SIZE", Align::Right),
        ("BLOCKSIZE", Align::Right),
    ]);
    for v in vols {
        table.row(vec![
            v["name"].as_str().unwrap_or("?").to_string(),
            size_cell(&v["size"], parsable, false),
            size_cell(&v["block_size"], parsable, false),
        ]);
    }
    table.render(scripted)
}

/// `history`.
pub fn history(pool: &str, rows: &[Value]) -> String {
    let mut out = format!("History for '{pool}':\n");
    for r in rows {
        out.push_str(&format!(
            "{} [txg {}] {}\n",
            format_time(num(&r["time"])),
            num(&r["txg"]),
            r["text"].as_str().unwrap_or("")
        ));
    }
    out
}

/// `verify`: a one-line verdict with what was checked, then every problem found.
pub fn verify(pool: &str, v: &Value) -> String {
    let blocks = v["blocks"].as_u64().unwrap_or(0);
    let objects = v["objects"].as_u64().unwrap_or(0);
    let referenced = nicenum(v["referenced_bytes"].as_u64().unwrap_or(0));
    let mut out = String::new();
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if errors.is_empty() {
        out.push_str(&format!(
            "verify of '{pool}': no errors ({blocks} blocks of {objects} objects, {referenced} \
             referenced, every checksum checked and every space map reconciled at txg {})\n",
            v["txg"]
        ));
    } else {
        out.push_str(&format!(
            "verify of '{pool}' found {} problem(s) in {blocks} blocks of {objects} objects:\n",
            errors.len()
        ));
        for e in errors {
            out.push_str(&format!("  {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_795_219_200), "2026-11-21 00:00:00 UTC");
    }
}
