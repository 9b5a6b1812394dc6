#!/usr/bin/env bash
# The pool target against the raw target on the same file system, alternating (issue 4's goals).
#
# Usage: perf/compare-pool.sh [DIR]        (default /tmp; must be a real file system such as
#                                           ext4, not tmpfs: both targets use O_DIRECT)
# Environment: ROUNDS (3), RUNTIME seconds (10), SIZE of the region (1G), POOL_SIZE of the pool
#              file (2 x SIZE), CPU to pin the job to (0), QD (32),
#              SCENARIOS (default "randwrite randread"), RINGPERF (binary; default: cargo build),
#              KEEP=1 keeps the files for the next run (the pool is then imported, not created),
#              EXTRA (more ringperf options for both targets, e.g. "--submit-batch 0"),
#              RT_PRIO (unset: ringperf runs at chrt -f RT_PRIO, so that on a machine busy with
#              other work its reactor runs as soon as a completion wakes it).
#
# Files: DIR/ringperf-cmp-raw.img (SIZE, prefilled with data by ringperf) and
# DIR/ringperf-cmp-pool.img (POOL_SIZE, zero-filled once so ext4 has written extents like the
# raw file, then a fresh pool with a SIZE volume prefilled through the pool).
# Each scenario is one `ringperf compare RAW POOL` run: the two targets alternate round by round
# in one process. Prints the table of issue 4's goals: 4k randwrite QD32 >= 0.8x raw IOPS,
# 4k randread QD32 >= 0.9x raw IOPS, p99 <= 1.5x raw.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-/tmp}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1G}
CPU=${CPU:-0}
QD=${QD:-32}
SCENARIOS=${SCENARIOS:-"randwrite randread"}
RT=()
if [ -n "${RT_PRIO:-}" ]; then RT=(chrt -f "$RT_PRIO"); fi

command -v python3 >/dev/null || { echo "compare-pool: python3 needed to parse JSON" >&2; exit 1; }
if [ -z "${RINGPERF:-}" ]; then
  cargo build --release -q -p ringpool-perf
  RINGPERF=target/release/ringperf
fi
fstype=$(stat -f -c %T "$DIR")
if [ "$fstype" = tmpfs ]; then
  echo "compare-pool: $DIR is tmpfs (no real O_DIRECT); use a directory on ext4/xfs" >&2
  exit 1
fi
bytes() { numfmt --from=iec "${1^^}"; }
size_b=$(bytes "$SIZE")
POOL_SIZE=${POOL_SIZE:-$((size_b * 2))}
pool_b=$(bytes "$POOL_SIZE")
RAW=$DIR/ringperf-cmp-raw.img
POOLF=$DIR/ringperf-cmp-pool.img
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -f "$RAW" "$POOLF"; }
trap 'cleanup; rm -f "${out:-}"' EXIT

# The raw file: prefilled with data by ringperf (auto: it has holes).
"$RINGPERF" --target "$RAW" --size "$size_b" --prefill auto --runtime 0.1 --quiet >/dev/null
# The pool: created once, its volume prefilled through the pool, exported at the end.
if [ ! -f "$POOLF" ] || [ "$(stat -c %s "$POOLF")" != "$pool_b" ] \
   || ! "$RINGPERF" --target "pool:$POOLF" --size "$size_b" --prefill auto --runtime 0.1 --quiet >/dev/null 2>&1; then
  echo "compare-pool: zero-filling $POOLF ($pool_b bytes) and creating a pool on it"
  dd if=/dev/zero of="$POOLF" bs=1M count=$((pool_b >> 20)) oflag=direct status=none
  "$RINGPERF" --target "pool:$POOLF?create&volsize=$size_b" --size "$size_b" --prefill auto \
      --runtime 0.1 --quiet >/dev/null
fi
echo "compare-pool: raw $RAW vs pool:$POOLF ($fstype), region $size_b bytes, bs 4k, qd $QD, $ROUNDS rounds x ${RUNTIME}s, job pinned to CPU $CPU"
echo "compare-pool: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), kernel $(uname -r), load $(uptime | sed 's/.*load average: //')${RT_PRIO:+, ringperf at SCHED_FIFO $RT_PRIO}"

out=$(mktemp)
for rw in $SCENARIOS; do
  echo "compare-pool: ringperf compare $RAW pool:$POOLF --rw $rw --bs 4k --qd $QD --size $size_b --rounds $ROUNDS --runtime $RUNTIME --cpus $CPU --prefill never ${EXTRA:-}"
  set +e
  # shellcheck disable=SC2086 # EXTRA is a list of words
  "${RT[@]}" "$RINGPERF" compare "$RAW" "pool:$POOLF" --rw "$rw" --bs 4k --qd "$QD" --size "$size_b" \
      --rounds "$ROUNDS" --runtime "$RUNTIME" --cpus "$CPU" --prefill never --json ${EXTRA:-} \
      2> >(grep -E '^(round|pool)' >&2) | python3 -c '
import json, sys
d = json.load(sys.stdin)
d["rw"] = sys.argv[1]
print(json.dumps(d))' "$rw" >>"$out"
  st=${PIPESTATUS[0]}
  set -e
  [ "$st" = 0 ] || echo "compare-pool: ringperf compare exited $st (I/O errors or an unhealthy pool)" >&2
done

python3 - "$out" "$QD" <<'PY'
import json, statistics, sys
qd = int(sys.argv[2])
goals = {"randwrite": 0.8, "randread": 0.9}
print()
print("%-16s %10s %10s %7s %7s %6s %10s %10s %7s %6s %9s %9s" % (
    "workload", "raw", "pool", "IOPS x", "IOPS x", "goal", "raw", "pool", "p99 x", "goal",
    "cpu/IO", "cpu/IO"))
print("%-16s %10s %10s %7s %7s %6s %10s %10s %7s %6s %9s %9s" % (
    "", "IOPS", "IOPS", "means", "paired", "", "p99 us", "p99 us", "", "", "raw", "pool"))
for line in open(sys.argv[1]):
    d = json.loads(line)
    raw, pool = d["targets"][0], d["targets"][1]
    g = goals.get(d["rw"], 0.0)
    ix, px = pool["iops_ratio"], pool["p99_ratio"]
    # Each round runs raw then pool back to back: the median of the per-round ratios is
    # robust against the rounds in which the shared disk stalled.
    per = [p / r for r, p in zip(raw["rounds_iops"], pool["rounds_iops"]) if r > 0]
    mx = statistics.median(per) if per else 0.0
    print("%-16s %10.0f %10.0f %7.3f %7.3f %6s %10.1f %10.1f %7.3f %6s %9.2f %9.2f%s" % (
        "4k %s qd%d" % (d["rw"], qd), raw["iops_mean"], pool["iops_mean"], ix, mx,
        ("ok" if mx >= g else "MISSED") if g else "-", raw["lat"]["p99_us"], pool["lat"]["p99_us"], px,
        "ok" if px <= 1.5 else "MISSED", raw["cpu_us_per_io"], pool["cpu_us_per_io"],
        "" if raw["errors"] + pool["errors"] == 0 else "  errors %d/%d" % (raw["errors"], pool["errors"])))
    print("%-16s per-round IOPS x: %s" % ("", " ".join("%.3f" % x for x in per)))
print("IOPS: mean over rounds (alternating raw, pool); paired: median of the per-round ratios")
print("(the goal column); p99: over all rounds' merged histograms;")
print("goals (issue 4): randwrite IOPS x >= 0.8, randread IOPS x >= 0.9, p99 x <= 1.5")
PY
