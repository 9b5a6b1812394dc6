#!/usr/bin/env bash
# `ringpool serve` with its reactors submitting once per loop turn (RINGPOOL_REACTOR_SUBMIT_BATCH=0,
# the reactor default) against submitting every operation at once (=1) or as soon as N wait
# (=N), measured with ringperf's NBD client, alternating round by round.
#
# Usage: perf/compare-serve-submit.sh [DIR]   (default /tmp; a real file system such as ext4)
# Environment: ROUNDS (6), RUNTIME seconds (2), QD (32), SCENARIOS (default "randread randwrite"),
#              CPU for ringperf (0), RT_PRIO (unset: server and ringperf at chrt -f RT_PRIO),
#              RINGPERF / RINGPOOL (binaries; default: cargo build --release),
#              KEEP=1 keeps the pool file for the next run,
#              A and B: the two values of RINGPOOL_REACTOR_SUBMIT_BATCH compared (0 and 1).
# Files: DIR/serve-submit.img (a 2 GiB pool "subtank" with a 1 GiB volume, written once over NBD)
# and a state directory DIR/serve-submit.state. Each round starts the server twice (order
# alternating), runs ringperf for RUNTIME seconds against it and stops it with SIGTERM.
# Prints every run and per scenario the per-round IOPS ratios B / A and their median.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-/tmp}
ROUNDS=${ROUNDS:-6}
RUNTIME=${RUNTIME:-2}
QD=${QD:-32}
CPU=${CPU:-0}
SCENARIOS=${SCENARIOS:-"randread randwrite"}
PORT=${PORT:-10979}
A=${A:-0}
B=${B:-1}
RT=()
if [ -n "${RT_PRIO:-}" ]; then RT=(chrt -f "$RT_PRIO"); fi
command -v python3 >/dev/null || { echo "compare-serve-submit: python3 needed" >&2; exit 1; }
if [ -z "${RINGPERF:-}" ] || [ -z "${RINGPOOL:-}" ]; then
  cargo build --release -q -p ringpool-perf -p ringpool-tools
  RINGPERF=${RINGPERF:-target/release/ringperf}
  RINGPOOL=${RINGPOOL:-target/release/ringpool}
fi
IMG=$DIR/serve-submit.img
export RINGPOOL_STATE_DIR=$DIR/serve-submit.state
URL=nbd://127.0.0.1:$PORT/subtank/vol0
spid=
cleanup() {
  if [ -n "$spid" ]; then kill -TERM "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$IMG" "$RINGPOOL_STATE_DIR"
  rm -f "${out:-}" "${slog:-}" "${elog:-}" "${jout:-}"
}
trap cleanup EXIT
slog=$(mktemp)
elog=$(mktemp)
jout=$(mktemp)
out=$(mktemp)

start_server() { # BATCH
  RINGPOOL_REACTOR_SUBMIT_BATCH=$1 "${RT[@]}" "$RINGPOOL" serve --listen "127.0.0.1:$PORT" subtank \
      >"$slog" 2>&1 &
  spid=$!
  for _ in $(seq 1 100); do
    # "ready" is printed once the listener is bound; the port is probed as well, since a
    # start right after the previous server's exit has been refused once in ~30 starts.
    if grep -q '^ready' "$slog" && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      return 0
    fi
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  echo "compare-serve-submit: the server did not start:" >&2
  cat "$slog" >&2
  exit 1
}
stop_server() {
  kill -TERM "$spid"
  wait "$spid" || true
  spid=
}

if [ ! -f "$IMG" ] || ! "$RINGPOOL" list 2>/dev/null | grep -q '^subtank '; then
  rm -rf "$IMG" "$RINGPOOL_STATE_DIR"
  mkdir -p "$RINGPOOL_STATE_DIR"
  echo "compare-serve-submit: creating a 2 GiB pool on $IMG with a 1 GiB volume, written once over NBD"
  dd if=/dev/zero of="$IMG" bs=1M count=2048 oflag=direct status=none
  "$RINGPOOL" create subtank "$IMG" >/dev/null
  "$RINGPOOL" volume create -s 1G subtank/vol0 >/dev/null
  start_server 0
  "$RINGPERF" --target "$URL" --rw write --bs 128k --qd 8 --size 1G --io-limit 1G --runtime 600 \
      --quiet >/dev/null
  stop_server
fi
echo "compare-serve-submit: $URL, bs 4k, qd $QD, $ROUNDS rounds x ${RUNTIME}s, load $(uptime | sed 's/.*load average: //')${RT_PRIO:+, server and ringperf at SCHED_FIFO $RT_PRIO}"

for rw in $SCENARIOS; do
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="$A $B"; else order="$B $A"; fi
    for m in $order; do
      start_server "$m"
      set +e
      "${RT[@]}" "$RINGPERF" --target "$URL" --rw "$rw" --bs 4k --qd "$QD" --size 1G \
          --runtime "$RUNTIME" --cpus "$CPU" --json --quiet 2>"$elog" >"$jout"
      st=$?
      set -e
      if [ ! -s "$jout" ]; then
        echo "compare-serve-submit: ringperf exited $st without a result:" >&2
        cat "$elog" "$slog" >&2
        exit 1
      fi
      [ "$st" = 0 ] || echo "compare-serve-submit: ringperf exited $st (I/O errors): $(head -c 300 "$elog")" >&2
      python3 -c '
import json, sys
rw, r, m = sys.argv[1:]
t = json.load(sys.stdin)["total"]
print(json.dumps({"rw": rw, "round": int(r), "batch": int(m), "iops": t["iops"],
                  "p50": t["lat"]["p50_us"], "p99": t["lat"]["p99_us"]}))' "$rw" "$r" "$m" <"$jout" \
        | tee -a "$out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print("  %-9s round %d server batch %d %9.0f IOPS  p50 %8.1f us  p99 %8.1f us"
      % (d["rw"], d["round"], d["batch"], d["iops"], d["p50"], d["p99"]))'
      stop_server
    done
  done
done
echo "compare-serve-submit: load after $(uptime | sed 's/.*load average: //')"
python3 - "$out" "$A" "$B" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
A, B = int(sys.argv[2]), int(sys.argv[3])
for rw in dict.fromkeys(r["rw"] for r in rows):
    ratios = []
    for rnd in sorted({r["round"] for r in rows if r["rw"] == rw}):
        a = [r for r in rows if r["rw"] == rw and r["round"] == rnd and r["batch"] == B]
        b = [r for r in rows if r["rw"] == rw and r["round"] == rnd and r["batch"] == A]
        if a and b and b[0]["iops"]:
            ratios.append(a[0]["iops"] / b[0]["iops"])
    print("%-9s IOPS batch %d / batch %d per round: %s; median %.3f" % (
        rw, B, A, " ".join("%.3f" % x for x in ratios),
        statistics.median(ratios) if ratios else 0.0))
PY
