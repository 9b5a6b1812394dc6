#!/usr/bin/env bash
# ringperf's NBD client vs fio's nbd engine (libnbd) against the SAME NBD server, alternating.
#
# Usage: perf/compare-nbd-fio.sh            (run from anywhere)
# Environment (defaults in brackets):
#   SERVERS ["qemu-nbd ringpool"]  qemu-nbd: qemu-nbd -f raw --cache=none --aio=io_uring -t -e 8
#                                  on a prefilled file; ringpool: `ringpool serve` on a fresh pool
#                                  (create --size POOL_SIZE, volume SIZE, prefilled through NBD)
#                                  nbdkit-memory: nbdkit's memory plugin (RAM, no disk: the
#                                  client and the server's CPU path only), prefilled through NBD
#   TRANSPORT [unix]     unix (nbd+unix:// sockets) or tcp (nbd://127.0.0.1:PORT)
#   RT_PRIO [unset]      run servers and clients with chrt -f RT_PRIO (root): on a machine busy
#                        with other work they then run as soon as they are woken, so the
#                        comparison measures them rather than the scheduler
#   SCENARIOS ["randread:1 randread:32 randwrite:32"]   4k, RW:QD
#   ROUNDS [3]  RUNTIME seconds [5]  SIZE [1G]  POOL_SIZE [2 x SIZE]
#   CPU [1]   core both clients are pinned to (`ringpool serve --reactors 1` pins its reactor to
#             core 0; a client sharing that core measures the scheduler, not the client)
#   WORKDIR [/tmp/ringperf-nbd-fio]  (a real file system: the servers use O_DIRECT)
#   POOL_DEV [unset]     ringpool's pool on this block device instead of WORKDIR/pool.img (it is
#                        overwritten), e.g. a loop device over a file in /dev/shm: a server on
#                        RAM compares the clients without the disk's noise
#   RINGPERF, RINGPOOL (binaries; default: cargo build --release)
# Each round runs three clients back to back on one scenario, one connection and the same
# queue depth each, against the same export, in an order that rotates every round: ringperf
# (its default batched client), ringperf --client-mode libnbd (one request per send and one
# reply per recv, the traffic fio's nbd engine sends) and fio. The table gives mean IOPS,
# median p50 / p99 over the rounds, the ratios to fio's run of the same round, and each
# client's CPU (busy: percent of one core). Goal (issue 8): IOPS within 5 % and p50 within
# 10 % of fio's. Latency is like for like: fio's total latency (lat_ns with
# --lat_percentiles=1: submission to completion) against ringperf's (taken right before the
# request is queued on its connection, to when the worker sees the reply).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SERVERS=${SERVERS:-"qemu-nbd ringpool"}
TRANSPORT=${TRANSPORT:-unix}
SCENARIOS=${SCENARIOS:-"randread:1 randread:32 randwrite:32"}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-1G}
CPU=${CPU:-1}
WORKDIR=${WORKDIR:-/tmp/ringperf-nbd-fio}

die() { echo "compare-nbd-fio: $*" >&2; exit 1; }
say() { echo "compare-nbd-fio: $*"; }
command -v fio >/dev/null || die "fio not installed"
command -v python3 >/dev/null || die "python3 needed to parse JSON"
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine (libnbd)"
if [ -z "${RINGPERF:-}" ] || [ -z "${RINGPOOL:-}" ]; then
  (cd "$REPO" && cargo build --release -q -p ringpool-perf -p ringpool-tools) || die "build failed"
fi
RINGPERF=${RINGPERF:-$REPO/target/release/ringperf}
RINGPOOL=${RINGPOOL:-$REPO/target/release/ringpool}
size_b=$(numfmt --from=iec "${SIZE^^}")
POOL_SIZE=${POOL_SIZE:-$((size_b * 2))}

mkdir -p "$WORKDIR" || die "cannot create $WORKDIR"
[ "$(stat -f -c %T "$WORKDIR")" != tmpfs ] || die "$WORKDIR is tmpfs (no O_DIRECT); use ext4/xfs"
declare -A PID URI
cleanup() {
  for s in "${!PID[@]}"; do
    kill -TERM "${PID[$s]}" 2>/dev/null
  done
  for s in "${!PID[@]}"; do
    # ringpool serve syncs and exports on SIGTERM: give it time, then insist.
    for _ in $(seq 1 100); do kill -0 "${PID[$s]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${PID[$s]}" 2>/dev/null
  done
  rm -rf "$WORKDIR"
}
trap cleanup EXIT

port=10940
uri_of() { # NAME EXPORT SOCKET
  if [ "$TRANSPORT" = tcp ]; then
    port=$((port + 1)); echo "nbd://127.0.0.1:$port/$2"
  else
    echo "nbd+unix:///$2?socket=$3"
  fi
}
listen_args() { # URI SOCKET -> server listen options (qemu-nbd style or ringpool style)
  local kind=$1 uri=$2 sock=$3
  local p=${uri#nbd://127.0.0.1:}; p=${p%%/*}
  case $kind/$TRANSPORT in
    qemu/tcp) echo "-b 127.0.0.1 -p $p" ;;
    qemu/unix) echo "-k $sock" ;;
    nbdkit/tcp) echo "-i 127.0.0.1 -p $p" ;;
    nbdkit/unix) echo "-U $sock" ;;
    ringpool/tcp) echo "--listen 127.0.0.1:$p --socket $WORKDIR/unused.sock" ;;
    ringpool/unix) echo "--listen 127.0.0.1:0 --socket $sock" ;;
  esac
}
await() { # URI PID
  for _ in $(seq 1 200); do
    kill -0 "$2" 2>/dev/null || return 1
    "$RINGPERF" --target "$1" --runtime 0.05 --qd 1 --prefill never --quiet >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# Optional real-time priority for every server and client (see RT_PRIO above).
RT=()
if [ -n "${RT_PRIO:-}" ]; then
  command -v chrt >/dev/null || die "RT_PRIO needs chrt"
  RT=(chrt -f "$RT_PRIO")
fi

for s in $SERVERS; do
  case $s in
    nbdkit-memory)
      command -v nbdkit >/dev/null || die "nbdkit not installed"
      URI[$s]=$(uri_of nbdkit "" "$WORKDIR/nbdkit.sock")
      # shellcheck disable=SC2046
      "${RT[@]}" nbdkit --foreground $(listen_args nbdkit "${URI[$s]}" "$WORKDIR/nbdkit.sock") \
        memory "$size_b" >"$WORKDIR/nbdkit.log" 2>&1 &
      PID[$s]=$!
      ;;
    qemu-nbd)
      command -v qemu-nbd >/dev/null || die "qemu-nbd not installed"
      file=$WORKDIR/qemu.img
      "$RINGPERF" --target "$file" --size "$size_b" --prefill auto --runtime 0.05 --quiet >/dev/null ||
        die "prefilling $file failed"
      URI[$s]=$(uri_of qemu vol0 "$WORKDIR/qemu.sock")
      # shellcheck disable=SC2046
      "${RT[@]}" qemu-nbd -f raw --cache=none --aio=io_uring -t -e 8 -x vol0 \
        $(listen_args qemu "${URI[$s]}" "$WORKDIR/qemu.sock") "$file" \
        >"$WORKDIR/qemu.log" 2>&1 &
      PID[$s]=$!
      ;;
    ringpool)
      [ -x "$RINGPOOL" ] || die "no ringpool binary at $RINGPOOL"
      export RINGPOOL_STATE_DIR=$WORKDIR/state RINGPOOL_LOG=warn
      dev=${POOL_DEV:-$WORKDIR/pool.img}
      if [ -z "${POOL_DEV:-}" ]; then
        # Written once so ext4 holds real extents, like the prefilled qemu-nbd file.
        dd if=/dev/zero of="$dev" bs=1M count=$((POOL_SIZE >> 20)) oflag=direct status=none ||
          die "writing $dev failed"
      fi
      "$RINGPOOL" create -f --size "$POOL_SIZE" bench "$dev" >"$WORKDIR/ringpool.setup" 2>&1 &&
        "$RINGPOOL" volume create -s "$size_b" bench/vol0 >>"$WORKDIR/ringpool.setup" 2>&1 ||
        die "ringpool create failed: $(cat "$WORKDIR/ringpool.setup")"
      URI[$s]=$(uri_of ringpool bench/vol0 "$WORKDIR/ringpool.sock")
      # shellcheck disable=SC2046
      "${RT[@]}" "$RINGPOOL" serve --reactors 1 $(listen_args ringpool "${URI[$s]}" "$WORKDIR/ringpool.sock") \
        >"$WORKDIR/ringpool.log" 2>&1 &
      PID[$s]=$!
      ;;
    *) die "unknown server '$s' (qemu-nbd, ringpool, nbdkit-memory)" ;;
  esac
  await "${URI[$s]}" "${PID[$s]}" || die "$s does not answer at ${URI[$s]} (see $WORKDIR/*.log)"
  if [ "$s" != qemu-nbd ]; then
    # Thin volume or sparse memory: reading holes measures nothing. Fill it through the export.
    "$RINGPERF" --target "${URI[$s]}" --rw write --bs 1M --qd 8 --io-limit "$size_b" \
      --runtime 600 --prefill never --quiet >/dev/null || die "prefill through ${URI[$s]} failed"
  fi
  say "$s serving ${URI[$s]}"
done

say "$ROUNDS rounds x ${RUNTIME}s, 4k, one connection, clients pinned to CPU $CPU, region $size_b bytes"
say "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $(fio --version), qemu-nbd $(qemu-nbd --version 2>/dev/null | head -1 | awk '{print $NF}'), kernel $(uname -r)"
say "load $(uptime | sed 's/.*load average: //')${RT_PRIO:+, servers and clients at SCHED_FIFO $RT_PRIO}"

results=$WORKDIR/results.jsonl
: >"$results"
# A new seed for every ringperf run, as fio's --randrepeat=0 draws one per run, so neither tool
# re-reads in later rounds the offsets it read before (a cache below the file, such as the
# virtual disk's host page cache, would favour the one that repeats).
fresh_seed() { od -An -N8 -tu8 /dev/urandom | tr -d ' '; }
run_ringperf() { # SERVER RW QD ROUND [CLIENT_MODE]
  local mode=${5:-batched} tool=ringperf
  [ "$mode" = batched ] || tool=ringperf-$mode
  "${RT[@]}" "$RINGPERF" --target "${URI[$1]}" --size "$size_b" --prefill never --rw "$2" --bs 4k --qd "$3" \
    --jobs 1 --nbd-conns 1 --cpus "$CPU" --runtime "$RUNTIME" --client-mode "$mode" --json --quiet \
    --seed "$(fresh_seed)" >"$WORKDIR/run.json" 2>"$WORKDIR/run.err"
  python3 - "$1" "$2" "$3" "$4" "$tool" "$WORKDIR/run.json" >>"$results" <<'PY'
import json, sys
srv, rw, qd, rnd, tool, path = sys.argv[1:]
d = json.load(open(path))
t = d["total"]
# The client's CPU: the whole process (its reactor runs the NBD connection; io_uring workers
# count too), in us per I/O and as the share of one core over the run (busy).
cpu = d["process_cpu_us_per_io"]
print(json.dumps({"srv": srv, "rw": rw, "qd": int(qd), "round": int(rnd), "tool": tool,
                  "iops": t["iops"], "p50": t["lat"]["p50_us"], "p99": t["lat"]["p99_us"],
                  "cpu": cpu, "busy": cpu * t["iops"] / 1e4,
                  "errors": d["io_errors"] + d["verify_errors"]}))
PY
}
run_fio() { # SERVER RW QD ROUND
  "${RT[@]}" fio --name=nbdcmp --ioengine=nbd --uri="${URI[$1]}" --size="$size_b" --rw="$2" --bs=4k \
    --iodepth="$3" --numjobs=1 --cpus_allowed="$CPU" --runtime="$RUNTIME" --time_based \
    --norandommap --randrepeat=0 --lat_percentiles=1 --output-format=json \
    --output="$WORKDIR/run.json" >"$WORKDIR/run.err" 2>&1
  python3 - "$1" "$2" "$3" "$4" fio "$WORKDIR/run.json" >>"$results" <<'PY'
import json, sys
srv, rw, qd, rnd, tool, path = sys.argv[1:]
d = json.load(open(path))
j = d["jobs"][0]
side = j["read"] if "read" in rw else j["write"]
pct = side["lat_ns"]["percentile"]
# fio's job thread (libnbd runs in it): usr_cpu + sys_cpu are percent of the job's runtime.
busy = j["usr_cpu"] + j["sys_cpu"]
ios = side["total_ios"]
cpu = busy / 100.0 * j["job_runtime"] * 1e3 / ios if ios else 0.0
print(json.dumps({"srv": srv, "rw": rw, "qd": int(qd), "round": int(rnd), "tool": tool,
                  "iops": side["iops"], "p50": pct["50.000000"] / 1000.0,
                  "p99": pct["99.000000"] / 1000.0, "cpu": cpu, "busy": busy,
                  "errors": j["error"]}))
PY
}

for s in $SERVERS; do
  for sc in $SCENARIOS; do
    rw=${sc%%:*}; qd=${sc##*:}
    for round in $(seq 1 "$ROUNDS"); do
      # Each client runs once per round; the order rotates so none always follows another.
      case $((round % 3)) in
        1) order="ringperf ringperf-libnbd fio" ;;
        2) order="fio ringperf ringperf-libnbd" ;;
        0) order="ringperf-libnbd fio ringperf" ;;
      esac
      for tool in $order; do
        case $tool in
          fio) run_fio "$s" "$rw" "$qd" "$round" ;;
          ringperf) run_ringperf "$s" "$rw" "$qd" "$round" batched ;;
          ringperf-libnbd) run_ringperf "$s" "$rw" "$qd" "$round" libnbd ;;
        esac || say "$tool $s $rw qd$qd failed: $(tail -3 "$WORKDIR/run.err")"
        tail -n 1 "$results" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("  %-9s %-9s qd%-3d round %d %-8s %9.0f IOPS  p50 %8.1f us  p99 %8.1f us  cpu %5.1f us/IO  busy %3.0f %%"
      % (r["srv"], r["rw"], r["qd"], r["round"], r["tool"], r["iops"], r["p50"], r["p99"],
         r["cpu"], r["busy"]))'
      done
    done
  done
done
say "load after: $(uptime | sed 's/.*load average: //')"

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = []
for r in rows:
    k = (r["srv"], r["rw"], r["qd"])
    if k not in keys:
        keys.append(k)
def agg(sel, tool):
    rs = [r for r in sel if r["tool"] == tool]
    if not rs:
        return (0.0, 0.0, 0.0, 0.0)
    return (statistics.mean(r["iops"] for r in rs), statistics.median(r["p50"] for r in rs),
            statistics.median(r["p99"] for r in rs), statistics.mean(r["busy"] for r in rs))
def paired(sel, tool):
    # The runs of a round are back to back: their ratio is immune to drift between rounds.
    pi, pp = [], []
    for rnd in sorted({r["round"] for r in sel}):
        a = [r for r in sel if r["round"] == rnd and r["tool"] == tool]
        b = [r for r in sel if r["round"] == rnd and r["tool"] == "fio"]
        if a and b and b[0]["iops"] and b[0]["p50"]:
            pi.append(a[0]["iops"] / b[0]["iops"])
            pp.append(a[0]["p50"] / b[0]["p50"])
    return (statistics.median(pi) if pi else 0.0, statistics.median(pp) if pp else 0.0)
print()
print("%-26s %-15s %9s %9s %7s %9s %9s %7s %9s %6s  %s" % (
    "server / workload", "client", "IOPS", "fio IOPS", "IOPS x", "p50 us", "fio p50", "p50 x",
    "p99 us", "busy%", "goal"))
for k in keys:
    sel = [r for r in rows if (r["srv"], r["rw"], r["qd"]) == k]
    fi, f50, f99, fb = agg(sel, "fio")
    for tool in ("ringperf", "ringperf-libnbd"):
        ti, t50, t99, tb = agg(sel, tool)
        if not ti:
            continue
        mi, mp = paired(sel, tool)
        ok = abs(mi - 1) <= 0.05 and abs(mp - 1) <= 0.10
        print("%-26s %-15s %9.0f %9.0f %7.3f %9.1f %9.1f %7.3f %9.1f %6.0f  %s" % (
            "%s %s qd%d" % k, tool.replace("ringperf-", "ringperf "), ti, fi, mi, t50, f50, mp,
            t99, tb, "ok" if ok else "MISSED"))
    print("%-26s %-15s %9.0f %9s %7s %9.1f %9s %7s %9.1f %6.0f" % (
        "", "fio", fi, "", "", f50, "", "", f99, fb))
print("IOPS: mean over rounds; p50, p99: median over rounds; IOPS x, p50 x: median over rounds of")
print("the ratio to fio's back-to-back run of the same round; goal: IOPS within 5 %, p50 within 10 %")
print("busy%: the client's CPU time over the run, percent of one core (mean over rounds)")
PY
