#!/usr/bin/env bash
# What the NBD transport alone costs on this machine: fio's nbd engine against a server that
# does no storage work at all (nbdkit's null plugin: reads return zeroes, writes are dropped),
# next to fio straight on a file (the side by side's baseline) and, optionally, ringpool.
#
# Why: the side by side's goals compare an NBD server with the raw file. A server cannot be
# faster than the same client talking to a server that does nothing, so the null server's
# numbers bound what any NBD server can reach here:
#   * throughput: null MiB/s is a ceiling; if it is below the raw file's, ">= 1.0x raw" is out
#     of reach for every server on this client and socket;
#   * QD1 latency: null p50 is the transport's round trip; a server that also reads the disk
#     adds at least the device's time, so its p50 over the raw file's is at least about the
#     null p50 minus fio's own submission cost in the raw case.
#
# Usage: perf/nbd-floor.sh            (RINGPOOL=<binary> adds ringpool; TARGETS to choose)
# Knobs (environment, defaults in brackets):
#   TARGETS ["baseline null ringpool"]  JOBS ["randread4k_qd1 seqwrite128k_qd8"]
#             (randread4k_qd32, randwrite4k_qd32, seqread128k_qd8 known too)
#   ROUNDS [5]  RUNTIME [4] measured seconds per call  RAMP [1]  NICE [-10]
#   DIR [/tmp/nbdfloor] on a real file system (O_DIRECT)  SIZE [2G] file and volume size
#   VOL_BS [128K] ringpool's volume block size  RINGPOOL [<repo>/target/release/ringpool]
#   KEEP [0] keep DIR's files for the next run
#   GUEST_HALT_POLL_NS [unset] set the guest's idle polling for the run and restore it after
#                  (see perf/nbd-lib.sh; the kernel's default is 200000, this VM boots with 0)
#   CPU_LATENCY_US [unset] hold a CPU wake-up latency bound of this many us for the whole run,
#             every target alike (/dev/cpu_dma_latency, root only; 0: idle CPUs poll)
# Prints every call and, per job and target, the median over the rounds (the order of the
# targets rotates every round).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=perf/nbd-lib.sh
source "$HERE/nbd-lib.sh"
TARGETS=${TARGETS:-"baseline null ringpool"}
JOBS=${JOBS:-"randread4k_qd1 seqwrite128k_qd8"}
ROUNDS=${ROUNDS:-5}
RUNTIME=${RUNTIME:-4}
RAMP=${RAMP:-1}
NICE=${NICE:--10}
DIR=${DIR:-/tmp/nbdfloor}
SIZE=${SIZE:-2G}
VOL_BS=${VOL_BS:-128K}
RINGPOOL=${RINGPOOL:-$REPO/target/release/ringpool}
KEEP=${KEEP:-0}
CPU_LATENCY_US=${CPU_LATENCY_US:-}

say() { echo "nbd-floor: $*" >&2; }
die() { say "$*"; exit 1; }


command -v nbdkit >/dev/null || die "nbdkit is not installed"
mkdir -p "$DIR" || die "cannot create $DIR"
OUT=$(mktemp -d)
declare -A PID URI

cleanup() {
  local t
  for t in "${!PID[@]}"; do kill -TERM "${PID[$t]}" 2>/dev/null; wait "${PID[$t]}" 2>/dev/null; done
  undo_machine_conditions
  [[ $KEEP == 1 ]] || rm -rf "$DIR/raw.img" "$DIR/pool.img" "$DIR/state" "$DIR"/*.sock "$DIR/ready"
  rm -rf "$OUT"
}
trap cleanup EXIT

# CPU_LATENCY_US and GUEST_HALT_POLL_NS (perf/nbd-lib.sh), undone by cleanup.
apply_machine_conditions

wait_ready() { # $1 target, $2 what to wait for (a socket path, or a log line prefix in a file)
  local i
  for i in $(seq 1 150); do
    case $1 in
      null) [[ -S $2 ]] && return 0 ;;
      ringpool) grep -q '^ready' "$2" && return 0 ;;
    esac
    kill -0 "${PID[$1]}" 2>/dev/null || die "$1 exited"
    sleep 0.2
  done
  die "$1 did not come up"
}

for t in $TARGETS; do
  case $t in
    baseline)
      if [[ ! -f $DIR/raw.img ]]; then
        fio --name=prewrite --filename="$DIR/raw.img" --size="$SIZE" --rw=write --bs=1M \
          --iodepth=16 --ioengine=io_uring --direct=1 --end_fsync=1 >/dev/null 2>&1 || die "prewrite"
      fi ;;
    null)
      rm -f "$DIR/null.sock"
      setsid nice -n "$NICE" nbdkit -f -U "$DIR/null.sock" null size="$SIZE" >/dev/null 2>&1 </dev/null &
      PID[null]=$!
      wait_ready null "$DIR/null.sock"
      URI[null]="nbd+unix:///?socket=$DIR/null.sock" ;;
    ringpool)
      [[ -x $RINGPOOL ]] || die "no binary $RINGPOOL (cargo build --release --bin ringpool)"
      export RINGPOOL_STATE_DIR=$DIR/state
      fresh=0
      if [[ ! -f $DIR/ready ]]; then
        rm -rf "$DIR/state" "$DIR/pool.img"
        fio --name=prewrite --filename="$DIR/pool.img" --size=$(( $(numfmt --from=iec "$SIZE") * 2 )) \
          --rw=write --bs=1M --iodepth=16 --ioengine=io_uring --direct=1 --end_fsync=1 >/dev/null 2>&1 \
          || die "prewrite pool"
        "$RINGPOOL" create floor "$DIR/pool.img" >"$DIR/setup.log" 2>&1 || die "create (see $DIR/setup.log)"
        "$RINGPOOL" volume create -s "$SIZE" -b "$VOL_BS" floor/vol0 >>"$DIR/setup.log" 2>&1 \
          || die "volume (see $DIR/setup.log)"
        fresh=1
      fi
      rm -f "$DIR/ringpool.sock"
      setsid nice -n "$NICE" "$RINGPOOL" serve --listen 127.0.0.1:0 --socket "$DIR/ringpool.sock" \
        >"$DIR/serve.log" 2>&1 </dev/null &
      PID[ringpool]=$!
      wait_ready ringpool "$DIR/serve.log"
      URI[ringpool]="nbd+unix:///floor/vol0?socket=$DIR/ringpool.sock"
      if ((fresh)); then
        fio --name=prefill --ioengine=nbd --uri="${URI[ringpool]}" --rw=write --bs=1M --iodepth=8 \
          --size="$SIZE" >/dev/null 2>&1 || die "prefill"
        touch "$DIR/ready"
      fi ;;
    *) die "unknown target $t" ;;
  esac
done
say "targets: $TARGETS; jobs: $JOBS; $(machine_conditions); load at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# One call: prints "MiBs IOPS P50 P99" (latencies in us, fio's total latency).
measure() {
  local t=$1 job=$2 spec eng f=$OUT/$1.$2.json
  spec=$(job_spec "$job") || die "unknown job $job"
  if [[ $t == baseline ]]; then
    eng="--ioengine=io_uring --direct=1 --filename=$DIR/raw.img --size=$SIZE"
  else
    eng="--ioengine=nbd --uri=${URI[$t]}"
  fi
  # shellcheck disable=SC2086  # $eng and $spec are lists of options on purpose
  nice -n "$NICE" fio --name="$job" $eng $spec --numjobs=1 --time_based --runtime="$RUNTIME" \
    --ramp_time="$RAMP" --lat_percentiles=1 --percentile_list=50:99 --output-format=json \
    --output="$f" >/dev/null 2>&1 || { echo "0 0 0 0"; return; }
  python3 - "$f" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
p = d["lat_ns"]["percentile"]
print("%.0f %.0f %.1f %.1f" % (d["bw"] / 1024, d["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3))
EOF
}

declare -A RES
read -r -a order <<<"$TARGETS"
for r in $(seq 1 "$ROUNDS"); do
  for job in $JOBS; do
    for t in "${order[@]}"; do
      RES[$r.$job.$t]=$(measure "$t" "$job")
      printf 'round %d %-16s %-9s MiB/s %6s  IOPS %7s  p50 %7s  p99 %8s\n' "$r" "$job" "$t" ${RES[$r.$job.$t]}
    done
  done
  order=("${order[@]:1}" "${order[0]}")
done
say "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"

median() { sort -g | awk '{v[NR]=$1} END {if (NR % 2) print v[(NR+1)/2]; else printf "%.1f\n", (v[NR/2] + v[NR/2+1]) / 2}'; }
echo
echo "| job | target | MiB/s | IOPS | p50 us | p99 us | MiB/s x baseline (per round) |"
echo "|---|---|---|---|---|---|---|"
for job in $JOBS; do
  for t in $TARGETS; do
    cols=()
    for c in 1 2 3 4; do
      cols+=("$(for r in $(seq 1 "$ROUNDS"); do echo "${RES[$r.$job.$t]}" | cut -d' ' -f$c; done | median)")
    done
    ratios=()
    if [[ " $TARGETS " == *" baseline "* ]]; then
      for r in $(seq 1 "$ROUNDS"); do
        a=$(echo "${RES[$r.$job.baseline]}" | cut -d' ' -f1)
        b=$(echo "${RES[$r.$job.$t]}" | cut -d' ' -f1)
        ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "nan" }')")
      done
    fi
    echo "| $job | $t | ${cols[0]} | ${cols[1]} | ${cols[2]} | ${cols[3]} | ${ratios[*]:-} |"
  done
done
