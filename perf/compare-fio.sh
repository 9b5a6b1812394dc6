#!/usr/bin/env bash
# ringperf vs fio (io_uring engine, O_DIRECT) on the same prefilled file, alternating runs.
#
# Usage: perf/compare-fio.sh [FILE]          (default /tmp/ringperf-vs-fio.img, must be on a
#                                             real file system such as ext4, not tmpfs)
# Environment: ROUNDS (3), RUNTIME seconds (10), SIZE (1G), CPU to pin both tools to (0),
#              RINGPERF (path to the binary; default: build it with cargo --release),
#              FIO_EXTRA (extra fio options, e.g. "--fixedbufs --registerfiles"),
#              SCENARIOS (default "randread:1 randread:32 randwrite:1 randwrite:32"),
#              RT_PRIO (unset: both tools run at chrt -f RT_PRIO, so that on a machine busy with
#              other work they run as soon as they are woken),
#              VARIANTS (several ringperf settings in the same rounds, as NAME=OPTIONS words,
#              options comma separated, e.g. "batched=--submit-batch=0 each=--submit-batch=1";
#              default: one variant "ringperf" with ringperf's defaults).
# Prints one line per run and a table: mean IOPS, median p50 and p99 over the rounds, the
# ratios ringperf/fio paired by round (the two runs of a round are back to back; the order
# flips every round). Goal (issue 8): IOPS within 5 % and p50 within 10 % of fio's.
# Latency is compared like for like: fio's total latency (lat_ns, --lat_percentiles=1:
# submission to completion) against ringperf's (taken just before the op is submitted, to
# when its completion is seen).
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=${1:-/tmp/ringperf-vs-fio.img}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1G}
CPU=${CPU:-0}
SCENARIOS=${SCENARIOS:-"randread:1 randread:32 randwrite:1 randwrite:32"}
VARIANTS=${VARIANTS:-"ringperf="}
declare -A VOPTS=()
VNAMES=()
for v in $VARIANTS; do
  VNAMES+=("${v%%=*}")
  VOPTS[${v%%=*}]=${v#*=}
done
FIO_EXTRA=${FIO_EXTRA:-}
RT=()
if [ -n "${RT_PRIO:-}" ]; then RT=(chrt -f "$RT_PRIO"); fi

command -v fio >/dev/null || { echo "compare-fio: fio not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "compare-fio: python3 needed to parse JSON" >&2; exit 1; }
if [ -z "${RINGPERF:-}" ]; then
  cargo build --release -q -p ringpool-perf
  RINGPERF=target/release/ringperf
fi

fstype=$(stat -f -c %T "$(dirname "$FILE")")
if [ "$fstype" = tmpfs ]; then
  echo "compare-fio: $FILE is on tmpfs (no real O_DIRECT); use a file on ext4/xfs" >&2
  exit 1
fi

# Prefill once with real data (reading holes measures nothing): ringperf's prefill writes the
# whole region when it has holes.
"$RINGPERF" --target "$FILE" --size "$SIZE" --prefill auto --rw randread --runtime 0.1 --quiet >/dev/null
echo "compare-fio: file $FILE ($fstype, $(stat -c %s "$FILE") bytes, $(( $(stat -c %b "$FILE") * 512 )) allocated), $ROUNDS rounds x ${RUNTIME}s, pinned to CPU $CPU"
echo "compare-fio: $(fio --version), ringperf $("$RINGPERF" --version | awk '{print $2}'), kernel $(uname -r)"

results=$(mktemp)
run_json=$(mktemp)
trap 'rm -f "$results" "$run_json"' EXIT

# A new seed for every ringperf run, as fio's --randrepeat=0 draws one per run, so neither tool
# re-reads in later rounds the offsets it read before (a cache below the file, such as the
# virtual disk's host page cache, would favour the one that repeats).
fresh_seed() { od -An -N8 -tu8 /dev/urandom | tr -d ' '; }
run_ringperf() { # RW QD ROUND VARIANT
    local extra=()
    if [ -n "${VOPTS[$4]}" ]; then IFS=, read -r -a extra <<<"${VOPTS[$4]}"; fi
    # A variant may fix its own seed (e.g. "fixed=--seed=7" to see what repeating costs).
    case " ${extra[*]} " in *" --seed"*) ;; *) extra+=(--seed "$(fresh_seed)") ;; esac
    "${RT[@]}" "$RINGPERF" --target "$FILE" --size "$SIZE" --prefill never --rw "$1" --bs 4k --qd "$2" \
        --jobs 1 --cpus "$CPU" --runtime "$RUNTIME" --json --quiet "${extra[@]}" >"$run_json"
    python3 - "$1" "$2" "$3" "$4" "$run_json" >>"$results" <<'PY'
import json, sys
rw, qd, rnd, tool, path = sys.argv[1:]
d = json.load(open(path))
t = d["total"]
print(json.dumps({"rw": rw, "qd": int(qd), "round": int(rnd), "tool": tool,
                  "iops": t["iops"], "p50": t["lat"]["p50_us"], "p99": t["lat"]["p99_us"],
                  "cpu": t["cpu_us_per_io"], "spe": d["ring"]["sqes_per_enter"]}))
PY
}
run_fio() { # RW QD ROUND
    # shellcheck disable=SC2086
    "${RT[@]}" fio --name=cmp --filename="$FILE" --size="$SIZE" --ioengine=io_uring --direct=1 \
        --rw="$1" --bs=4k --iodepth="$2" --numjobs=1 --cpus_allowed="$CPU" \
        --runtime="$RUNTIME" --time_based --norandommap --randrepeat=0 --lat_percentiles=1 \
        --output-format=json $FIO_EXTRA >"$run_json"
    python3 - "$1" "$2" "$3" fio "$run_json" >>"$results" <<'PY'
import json, sys
rw, qd, rnd, tool, path = sys.argv[1:]
d = json.load(open(path))
j = d["jobs"][0]
side = j["read"] if "read" in rw else j["write"]
pct = side["lat_ns"]["percentile"]
ios = side["total_ios"]
cpu_s = (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * j["job_runtime"] / 1000.0
print(json.dumps({"rw": rw, "qd": int(qd), "round": int(rnd), "tool": tool,
                  "iops": side["iops"], "p50": pct["50.000000"] / 1000.0,
                  "p99": pct["99.000000"] / 1000.0,
                  "cpu": cpu_s * 1e6 / ios if ios else 0.0, "spe": 0.0}))
PY
}

echo "compare-fio: load $(uptime | sed 's/.*load average: //')${RT_PRIO:+, both tools at SCHED_FIFO $RT_PRIO}"
for sc in $SCENARIOS; do
  rw=${sc%%:*}; qd=${sc##*:}
  for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order every round (fio first in even rounds) so no tool always runs first.
    tools=("${VNAMES[@]}" fio)
    n=${#tools[@]}
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${tools[$(( (i + round - 1) % n ))]}"); done
    for tool in "${order[@]}"; do
      if [ "$tool" = fio ]; then run_fio "$rw" "$qd" "$round"; else run_ringperf "$rw" "$qd" "$round" "$tool"; fi
    done
    tail -n "$n" "$results" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    spe = ("  %5.2f SQE/enter" % r["spe"]) if r["spe"] else ""
    print("  %-9s qd%-3d round %d %-10s %10.0f IOPS  p50 %8.1f us  p99 %8.1f us  cpu %6.2f us/IO%s"
          % (r["rw"], r["qd"], r["round"], r["tool"], r["iops"], r["p50"], r["p99"], r["cpu"], spe))'
  done
done
echo "compare-fio: load after $(uptime | sed 's/.*load average: //')"

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys, variants = [], []
for r in rows:
    k = (r["rw"], r["qd"])
    if k not in keys:
        keys.append(k)
    if r["tool"] != "fio" and r["tool"] not in variants:
        variants.append(r["tool"])
print()
print("%-14s %-10s %9s %9s %7s %9s %9s %7s %9s %9s %7s %8s %8s  %s" % (
    "workload", "ringperf", "ringperf", "fio", "IOPS x", "ringperf", "fio", "p50 x", "ringperf",
    "fio", "p99 x", "cpu/IO", "cpu/IO", "goal"))
print("%-14s %-10s %9s %9s %7s %9s %9s %7s %9s %9s %7s %8s %8s" % (
    "", "variant", "IOPS", "IOPS", "paired", "p50 us", "p50 us", "paired", "p99 us", "p99 us",
    "paired", "ringperf", "fio"))
for k in keys:
    for v in variants:
        sel = [r for r in rows if (r["rw"], r["qd"]) == k]
        def agg(tool):
            rs = [r for r in sel if r["tool"] == tool]
            return (statistics.mean(r["iops"] for r in rs), statistics.median(r["p50"] for r in rs),
                    statistics.median(r["p99"] for r in rs), statistics.mean(r["cpu"] for r in rs))
        ri, r50, r99, rc = agg(v)
        fi, f50, f99, fc = agg("fio")
        pi, pp, p9 = [], [], []
        for rnd in sorted({r["round"] for r in sel}):
            a = [r for r in sel if r["round"] == rnd and r["tool"] == v]
            b = [r for r in sel if r["round"] == rnd and r["tool"] == "fio"]
            if a and b and b[0]["iops"] and b[0]["p50"] and b[0]["p99"]:
                pi.append(a[0]["iops"] / b[0]["iops"])
                pp.append(a[0]["p50"] / b[0]["p50"])
                p9.append(a[0]["p99"] / b[0]["p99"])
        mi = statistics.median(pi) if pi else 0.0
        mp = statistics.median(pp) if pp else 0.0
        m9 = statistics.median(p9) if p9 else 0.0
        ok = abs(mi - 1) <= 0.05 and abs(mp - 1) <= 0.10
        print("%-14s %-10s %9.0f %9.0f %7.3f %9.1f %9.1f %7.3f %9.1f %9.1f %7.3f %8.2f %8.2f  %s" % (
            "%s qd%d" % k, v, ri, fi, mi, r50, f50, mp, r99, f99, m9, rc, fc,
            "ok" if ok else "MISSED"))
        print("%-14s %-10s per-round IOPS x: %s" % ("", "", " ".join("%.3f" % x for x in pi)))
print("IOPS: mean over rounds; p50, p99: median over rounds; paired: median over rounds of the")
print("ratio of the runs of a round (back to back, order rotated every round); goal: IOPS within")
print("5 %, p50 within 10 %")
PY
