#!/usr/bin/env bash
# Where the CPU of one fio nbd job goes, per I/O: every thread of `ringpool serve` (grouped by
# thread name) and fio itself (all its processes), against the machine's CPUs. Answers "how
# many I/O per second would fit if both sides' CPU were the only limit".
#
# Usage: DIR=/tmp/ab-wb perf/nbd-cpu-split.sh      (DIR/A: a pool made by perf/nbd-ab.sh)
# Knobs: BIN [<repo>/target/release/ringpool] SIDE [A] SPEC ["--rw=write --bs=128k
#   --iodepth=8"] RUNTIME [5] ROUNDS [3] ENVW [""] (VAR=value words for the server)
# Prints per round: I/O per second, then CPU us per I/O of each server thread group and of fio,
# their sum, and the ceiling 1e6 * CPUS / sum (I/O per second with every CPU busy on them);
# then context switches per I/O of the reactor threads and of fio.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BIN=${BIN:-$REPO/target/release/ringpool}
DIR=${DIR:-/tmp/nbdab}
SIDE=${SIDE:-A}
SPEC=${SPEC:-"--rw=write --bs=128k --iodepth=8"}
RUNTIME=${RUNTIME:-5}
ROUNDS=${ROUNDS:-3}
ENVW=${ENVW:-}
CPUS=$(nproc)
HZ=$(getconf CLK_TCK)
D=$DIR/$SIDE
[[ -f $D/ready ]] || { echo "no pool in $D (run perf/nbd-ab.sh with DIR=$DIR first)" >&2; exit 1; }

export RINGPOOL_STATE_DIR=$D/state
rm -f "$D/sock"
# shellcheck disable=SC2086  # $ENVW is a list of VAR=value words on purpose
setsid env $ENVW "$BIN" serve --listen 127.0.0.1:0 --socket "$D/sock" >"$D/split.log" 2>&1 </dev/null &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 1 150); do
  grep -q '^ready' "$D/split.log" && break
  sleep 0.2
done
URI="nbd+unix:///ab$SIDE/vol0?socket=$D/sock"

# "name ticks" for every thread of the server (numbered names folded: reactor-0 -> reactor).
threads() {
  local t
  for t in /proc/"$PID"/task/*; do
    echo "$(sed 's/-[0-9]*$//' "$t/comm" 2>/dev/null) $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null)" \
      "$(awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n}' "$t/status" 2>/dev/null)"
  done | awk '{s[$1] += $2; c[$1] += $3} END {for (k in s) print k, s[k], c[k]}' | sort
}

OUT=$(mktemp -d)
for r in $(seq 1 "$ROUNDS"); do
  threads >"$OUT/t0"
  # perf stat counts fio's task-clock, its job process included (children are inherited).
  # shellcheck disable=SC2086
  perf stat -x, -e task-clock,context-switches -o "$OUT/fio.stat" fio --name=split --ioengine=nbd --uri="$URI" \
    $SPEC --time_based --runtime="$RUNTIME" --output-format=json --output="$OUT/fio.json" \
    >/dev/null 2>&1
  threads >"$OUT/t1"
  python3 - "$OUT" "$HZ" "$CPUS" "$RUNTIME" <<'EOF'
import json, sys
out, hz, cpus, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
j = json.load(open(out + "/fio.json"))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
ios = d["total_ios"]
def load(p):
    return {l.split()[0]: (int(l.split()[1]), int(l.split()[2])) for l in open(p) if l.strip()}
t0, t1 = load(out + "/t0"), load(out + "/t1")
stat = {l.split(",")[2]: float(l.split(",")[0]) for l in open(out + "/fio.stat") if l.count(",") > 2}
parts = {k: (t1[k][0] - t0.get(k, (0, 0))[0]) / hz * 1e6 / ios for k in t1
         if t1[k][0] - t0.get(k, (0, 0))[0] > 0}
cs = {k: (t1[k][1] - t0.get(k, (0, 0))[1]) / ios for k in parts}
parts["fio"] = stat["task-clock"] * 1e3 / ios
cs["fio"] = stat["context-switches"] / ios
total = sum(parts.values())
print("IOPS %.0f  per I/O (us): %s  total %.1f  ceiling %.0f IOPS on %d CPUs" % (
    ios / run, "  ".join("%s %.1f" % kv for kv in sorted(parts.items())), total,
    1e6 * cpus / total, cpus))
print("    context switches per I/O: %s" % "  ".join(
    "%s %.2f" % (k, cs[k]) for k in sorted(cs) if k in ("fio",) or k.startswith("ringpool")))
EOF
done
rm -rf "$OUT"
