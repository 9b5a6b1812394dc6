#!/usr/bin/env bash
# A/B of two `ringpool serve` variants (two binaries, or one binary with two environments)
# measured by fio's nbd engine (libnbd, the client of perf/nbd-side-by-side.sh), alternating
# A and B in many short rounds so that load drifts on a shared machine hit both alike.
#
# Usage: A_BIN=old/ringpool B_BIN=new/ringpool perf/nbd-ab.sh
#        A_ENV="RINGPOOL_REACTOR_SPIN_US=0" B_ENV="RINGPOOL_REACTOR_SPIN_US=50" perf/nbd-ab.sh
# Knobs (environment, defaults in brackets):
#   A_BIN, B_BIN [$RINGPOOL or <repo>/target/release/ringpool]   A_ENV, B_ENV [""] (VAR=value ...)
#   JOBS ["randread4k_qd32 randread4k_qd1"] (randwrite4k_qd32, seqread128k_qd8, seqwrite128k_qd8
#             known too)
#   ROUNDS [6]  RUNTIME [3] measured seconds per call  RAMP [1]  NICE [0] (fio and servers)
#   DIR [/tmp/nbdab]  on a real file system (O_DIRECT); POOL_SIZE [2G] VOL_SIZE [1G]
#   VOL_BS [4K] block size of the volumes (a new DIR, or KEEP=0 first, to change it)
#   RT_PRIO [unset]  run servers and fio at chrt -f RT_PRIO (takes CPU contention from builds
#             out of the comparison, not the disk's)
#   KEEP [1]  keep the two prefilled pools in DIR for the next run (0: delete at the end)
# Each side has its own pool file (written through once, then a volume prefilled through NBD)
# and its own server; the servers stay up for the whole run, the order A/B flips every round.
# Prints every call (IOPS, p50, p99 in us, the server's CPU us per I/O over the call, ramp
# and the FLUSH that commits what the call left dirty included, the txg sync thread's share
# of it, and how long that FLUSH took) and per job the per-round ratios B/A and their median,
# with the load average at the start and the end.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=perf/nbd-lib.sh
source "$HERE/nbd-lib.sh"
DEF_BIN=${RINGPOOL:-$REPO/target/release/ringpool}
A_BIN=${A_BIN:-$DEF_BIN}
B_BIN=${B_BIN:-$DEF_BIN}
A_ENV=${A_ENV:-}
B_ENV=${B_ENV:-}
JOBS=${JOBS:-"randread4k_qd32 randread4k_qd1"}
ROUNDS=${ROUNDS:-6}
RUNTIME=${RUNTIME:-3}
RAMP=${RAMP:-1}
NICE=${NICE:-0}
DIR=${DIR:-/tmp/nbdab}
POOL_SIZE=${POOL_SIZE:-2G}
VOL_SIZE=${VOL_SIZE:-1G}
VOL_BS=${VOL_BS:-4K}
KEEP=${KEEP:-1}
FIO=${FIO:-fio}
RT=()
if [[ -n ${RT_PRIO:-} ]]; then RT=(chrt -f "$RT_PRIO"); fi

say() { echo "nbd-ab: $*" >&2; }
die() { say "$*"; exit 1; }

declare -A PID URI
mkdir -p "$DIR" || die "cannot create $DIR"
OUT=$(mktemp -d)

cleanup() {
  local s
  for s in A B; do
    if [[ -n ${PID[$s]:-} ]]; then kill -TERM "${PID[$s]}" 2>/dev/null; wait "${PID[$s]}" 2>/dev/null; fi
  done
  [[ $KEEP == 1 ]] || rm -rf "$DIR/A" "$DIR/B"
  rm -rf "$OUT"
}
trap cleanup EXIT

# Creates (once) and serves side $1 with binary $2 and environment words $3.
start_side() {
  local s=$1 bin=$2 envw=$3 d=$DIR/$1 i
  [[ -x $bin ]] || die "no binary $bin"
  mkdir -p "$d"
  export RINGPOOL_STATE_DIR=$d/state
  local fresh=0
  if [[ ! -f $d/ready ]]; then
    rm -rf "$d/state" "$d/pool.img"
    "$FIO" --name=prewrite --filename="$d/pool.img" --size="$POOL_SIZE" --rw=write --bs=1M \
      --iodepth=16 --ioengine=io_uring --direct=1 --end_fsync=1 >/dev/null 2>&1 || die "prewrite $s"
    "$bin" create --size "$POOL_SIZE" "ab$s" "$d/pool.img" >"$d/setup.log" 2>&1 || die "create $s"
    "$bin" volume create -s "$VOL_SIZE" -b "$VOL_BS" "ab$s/vol0" >>"$d/setup.log" 2>&1 || die "volume $s"
    fresh=1
  fi
  rm -f "$d/sock"
  # shellcheck disable=SC2086  # $envw is a list of VAR=value words on purpose
  setsid env $envw nice -n "$NICE" "${RT[@]}" "$bin" serve --listen "127.0.0.1:0" --socket "$d/sock" \
    >"$d/serve.log" 2>&1 </dev/null &
  PID[$s]=$!
  for i in $(seq 1 150); do
    grep -q '^ready' "$d/serve.log" && break
    kill -0 "${PID[$s]}" 2>/dev/null || die "server $s exited (see $d/serve.log)"
    sleep 0.2
  done
  URI[$s]="nbd+unix:///ab$s/vol0?socket=$d/sock"
  if ((fresh)); then
    "$FIO" --name=prefill --ioengine=nbd --uri="${URI[$s]}" --rw=write --bs=1M --iodepth=8 \
      --size="$VOL_SIZE" >/dev/null 2>&1 || die "prefill $s"
    touch "$d/ready"
  fi
}

start_side A "$A_BIN" "$A_ENV"
start_side B "$B_BIN" "$B_ENV"
say "A: $A_BIN $A_ENV"
say "B: $B_BIN $B_ENV"
say "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# CPU ticks (user + system) the server of side $1 used so far.
server_ticks() {
  awk '{print $14 + $15}' "/proc/${PID[$1]}/stat" 2>/dev/null || echo 0
}

# CPU ticks the server's txg sync threads (named txg-<pool>) of side $1 used so far.
sync_ticks() {
  local t n=0 c
  for t in /proc/"${PID[$1]}"/task/*; do
    [[ $(cat "$t/comm" 2>/dev/null) == txg-* ]] || continue
    c=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) && n=$((n + c))
  done
  echo "$n"
}

# One call: prints "IOPS P50 P99 CPU SYNC FLUSH" (us; CPU: the server's CPU time per I/O over
# the whole call, ramp included; SYNC: the part of it in the txg sync thread; FLUSH: ms the
# NBD FLUSH after the job took).
measure() {
  local s=$1 job=$2 spec f t0 t1 s0 s1 f0 f1
  spec=$(job_spec "$job") || die "unknown job $job"
  f=$OUT/$s.$job.json
  t0=$(server_ticks "$s")
  s0=$(sync_ticks "$s")
  # shellcheck disable=SC2086
  nice -n "$NICE" "${RT[@]}" "$FIO" --name="$job" --ioengine=nbd --uri="${URI[$s]}" $spec --numjobs=1 \
    --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --lat_percentiles=1 \
    --percentile_list=50:99 --output-format=json --output="$f" >/dev/null 2>&1 || { echo "0 0 0 0 0 0"; return; }
  # What the job left dirty (write-back) is committed now with an NBD FLUSH, so its sync is
  # counted in this call's CPU and does not run during the other side's next call.
  # (qemu-io's start-up and connect are in the FLUSH time too: a few ms, the same for A and B.)
  f0=$(date +%s%N)
  qemu-io -f raw -c flush "${URI[$s]}" >/dev/null 2>&1 || echo "NBD FLUSH of side $s failed" >&2
  f1=$(date +%s%N)
  t1=$(server_ticks "$s")
  s1=$(sync_ticks "$s")
  python3 - "$f" "$((t1 - t0))" "$(getconf CLK_TCK)" "$RUNTIME" "$RAMP" "$((s1 - s0))" \
    "$(((f1 - f0) / 1000000))" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
p = d["lat_ns"]["percentile"]
ticks, hz, run, ramp = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
ios = d["iops"] * (run + ramp)
cpu = ticks / hz * 1e6 / ios if ios > 0 else 0
sync = int(sys.argv[6]) / hz * 1e6 / ios if ios > 0 else 0
print("%.0f %.1f %.1f %.1f %.2f %s" % (d["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3, cpu,
                                      sync, sys.argv[7]))
EOF
}

declare -A RES
for r in $(seq 1 "$ROUNDS"); do
  if ((r % 2)); then order="A B"; else order="B A"; fi
  for job in $JOBS; do
    for s in $order; do
      RES[$r.$job.$s]=$(measure "$s" "$job")
      printf 'round %d %-16s %s  IOPS %7s  p50 %7s  p99 %8s  cpu/IO %6s  sync/IO %5s  flush ms %5s  load %s\n' "$r" "$job" "$s" \
        ${RES[$r.$job.$s]} "$(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
say "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"

for job in $JOBS; do
  for col in 1 2 3 4 5 6; do
    name=$(case $col in 1) echo "IOPS";; 2) echo "p50";; 3) echo "p99";; 4) echo "cpu";; 5) echo "sync";;
      6) echo "flush";; esac)
    ratios=()
    for r in $(seq 1 "$ROUNDS"); do
      a=$(echo "${RES[$r.$job.A]}" | cut -d' ' -f$col)
      b=$(echo "${RES[$r.$job.B]}" | cut -d' ' -f$col)
      ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "nan" }')")
    done
    med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{v[NR]=$1} END {if (NR % 2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2] + v[NR/2+1]) / 2}')
    printf '%-16s %-4s B/A per round: %s; median %s\n' "$job" "$name" "${ratios[*]}" "$med"
  done
done
