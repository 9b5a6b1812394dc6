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
                d["health"] = Value::String("ONLINE".into());
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

/// `status`: zpool status's shape.
pub fn status(pool: &Value, verbose: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "  pool: {}\n",
        pool["name"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        " state: {}\n",
        pool["health"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!("   txg: {}\n", num(&pool["synced_txg"])));
    let ck = &pool["checkpoint"];
    match ck["state"].as_str() {
        Some("exists") => out.push_str(&format!(
            "checkpoint: created {}, consumes {}\n",
            format_time(num(&ck["created"])),
            nicenum(num(&ck["space"]))
        )),
        Some("discarding") => out.push_str(&format!(
            "checkpoint: discarding, {} remaining\n",
            nicenum(num(&ck["space"]))
        )),
        _ => {}
    }
    out.push_str("config:\n\n");
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("SIZE", Align::Right),
        ("ALLOC", Align::Right),
        ("CKPOINT", Align::Right),
    ]);
    table.row(vec![
        pool["name"].as_str().unwrap_or("?").to_string(),
        "ONLINE".into(),
        nicenum(num(&pool["size"])),
        nicenum(num(&pool["allocated"])),
        size_cell(&pool["checkpoint"]["space"], false, true),
    ]);
    for dev in pool["devices"].as_array().into_iter().flatten() {
        table.row(vec![
            format!("  {}", dev["name"].as_str().unwrap_or("?")),
            "ONLINE".into(),
            nicenum(num(&dev["size"])),
            nicenum(num(&dev["allocated"])),
            size_cell(&dev["checkpoint"], false, true),
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
            nicenum(num(&pool["slop"])),
            num(&pool["open_txg"])
        ));
    }
    out.push_str("\nerrors: No known data errors\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_795_219_200), "2026-11-21 00:00:00 UTC");
    }
}
