#!/usr/bin/env bash
# ringpool's NBD export next to qemu-nbd, nbdkit and nbd-server, and next to fio straight on a
# file (io_uring, O_DIRECT: the ceiling of the storage path), all measured by the same client:
# fio's libnbd engine (`--ioengine=nbd --uri=...`) over a Unix socket.
#
# Usage: perf/nbd-side-by-side.sh            (run from anywhere; needs root for drop_caches)
#
# How it keeps the comparison fair on a small, shared machine:
# * Every server is started once, before the first measurement, and stays up (idle servers cost
#   nothing); the measurements then ALTERNATE: for each round, for each job, every target runs
#   back to back, and the target order is reversed on every other round so a drift in
#   background load hits everyone alike. Ratios are computed inside each round (side by side)
#   and reported per round, so the spread between rounds states the noise.
# * The peers and the baseline share one backing file on the same file system as ringpool's
#   pool device file (ext4 on /tmp by default); both are prefilled with data before any read
#   (reading holes measures nothing): the peers' file by fio directly, the ringpool volume
#   through the NBD export itself.
# * The page cache is dropped before every job (nbd-server and nbdkit's file plugin go through
#   it; ringpool, qemu-nbd --cache=none and the baseline use O_DIRECT). Its `sync` writes out
#   what a peer left dirty in the page cache; ringpool keeps acknowledged writes in its own
#   memory (write-back) until a txg commits them, so every ringpool job ends with an NBD FLUSH,
#   counted in its server CPU: no job starts with another target's writes still going to disk.
#
# Targets (TARGETS, default all): ringpool ringpool-128k qemu-nbd nbdkit nbd-server baseline
#   ringpool  `ringpool serve` on a fresh pool: create --size $POOL_SIZE, volume -s $VOL_SIZE
#             with the default 4 KiB blocks
#   ringpool-128k  a second volume of the same size in the same pool and server, with 128 KiB
#             blocks (what a user would pick for sequential work; small random I/O on it
#             reads or rewrites whole 128 KiB blocks)
#   qemu-nbd  qemu-nbd -f raw --cache=none --aio=io_uring -t -e 8 (O_DIRECT, like ringpool)
#   nbdkit    nbdkit file plugin, cache=none (buffered pread/pwrite + fadvise)
#   nbd-server nbd-server 3.x (buffered I/O, forks per connection)
#   baseline  fio --ioengine=io_uring --direct=1 on the backing file (no NBD at all)
#
# Knobs (environment, defaults in brackets):
#   RINGPOOL [<repo>/target/release/ringpool]  built with `cargo build --release -p ringpool-tools`
#   WORKDIR [/tmp/ringpool-nbdbench]   must be on a real file system (O_DIRECT), not tmpfs
#   VOL_SIZE [3G]  size of the exported volume and of the peers' backing file
#   POOL_SIZE [4G, or 10G with ringpool-128k] size of ringpool's pool device file (keep the
#                  volumes under ~65 % of it: random overwrites need room for copy-on-write)
#   POOL_PREWRITE [1] write the whole pool file once before `ringpool create` (0: sparse file)
#   RUNTIME [10] measured seconds per job;  RAMP [2] unmeasured seconds before it
#   ROUNDS [2]     alternating rounds
#   JOBS ["randread4k_qd1 randread4k_qd32 randwrite4k_qd32 seqread128k_qd8 seqwrite128k_qd8"]
#        (also known: randrw4k_qd16, seqread128k_qd1)
#   TARGETS ["ringpool ringpool-128k qemu-nbd nbdkit nbd-server baseline"]
#   DROP_CACHES [1]  sync + drop the page cache before each job (root only)
#   RINGPOOL_PORT [10899] TCP port of ringpool's server (another run on the machine holds it)
#   NICE [0]         run servers and fio at this nice level (e.g. -10 on a machine busy with
#                    builds, so the benchmark is not starved; the level is written to env.txt).
#                    With autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled = 1)
#                    nice only ranks threads inside their session's group, and every server
#                    runs in a session of its own; so the level is also set as the autogroup
#                    nice of each server's session and of a session per fio call.
#   CPU_LATENCY_US [unset]  hold a CPU wake-up latency bound of this many us for the whole
#                    run, for every target alike (/dev/cpu_dma_latency, root only, as tuned's
#                    latency-performance profile does; 0: idle CPUs poll instead of halting, so
#                    a wake-up does not wait for a halted vCPU). Written to env.txt.
#   GUEST_HALT_POLL_NS [unset]  set the guest's idle polling (cpuidle-haltpoll's
#                    guest_halt_poll_ns; the kernel's default is 200000, this VM boots with 0)
#                    for the whole run, every target alike, and restore it at the end. Root
#                    only; written to env.txt.
#   PERF_RECORD [0]  1: `perf record -g` ringpool during its jobs of the last round
#                    (perf.<job>.data in its result directory)
#   KEEP [0]         1: keep the backing file and pool after the run
#   OUTDIR [$WORKDIR/results/<UTC timestamp>]   FIO [fio]
#   The ringpool server inherits the environment: RINGPOOL_NBD_GATHER=0 turns write gathering
#   off, RINGPOOL_REACTOR_SPIN_US=N polls the ring N us before sleeping (for A/B runs).
# Output: $OUTDIR/r<round>/<target>/<job>.json (fio), .cpu (wall and server CPU seconds),
#         ringpool's per-thread CPU per job (.threads), server logs, env.txt, and the markdown
#         summary (also printed) made by perf/nbd_bench_summary.py: $OUTDIR/summary.md.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=perf/nbd-lib.sh
source "$HERE/nbd-lib.sh"
RINGPOOL=${RINGPOOL:-$REPO/target/release/ringpool}
WORKDIR=${WORKDIR:-/tmp/ringpool-nbdbench}
VOL_SIZE=${VOL_SIZE:-3G}
TARGETS=${TARGETS:-"ringpool ringpool-128k qemu-nbd nbdkit nbd-server baseline"}
if [[ " $TARGETS " == *" ringpool-128k "* ]]; then POOL_SIZE=${POOL_SIZE:-10G}; else POOL_SIZE=${POOL_SIZE:-4G}; fi
POOL_PREWRITE=${POOL_PREWRITE:-1}
RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-2}
ROUNDS=${ROUNDS:-2}
JOBS=${JOBS:-"randread4k_qd1 randread4k_qd32 randwrite4k_qd32 seqread128k_qd8 seqwrite128k_qd8"}
DROP_CACHES=${DROP_CACHES:-1}
NICE=${NICE:-0}
PERF_RECORD=${PERF_RECORD:-0}
KEEP=${KEEP:-0}
FIO=${FIO:-fio}
OUTDIR=${OUTDIR:-$WORKDIR/results/$(date -u +%Y%m%dT%H%M%SZ)}

BACKING=$WORKDIR/backing.img
POOL_FILE=$WORKDIR/pool.img
POOL=bench
STATE=$WORKDIR/rpstate
TICK=$(getconf CLK_TCK)

say() { printf '%s nbd-side-by-side: %s\n' "$(date -u +%T)" "$*" | tee -a "$OUTDIR/run.log" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$WORKDIR" "$OUTDIR" || exit 1
[[ $(stat -f -c %T "$WORKDIR") == tmpfs ]] && die "$WORKDIR is on tmpfs: O_DIRECT is not real there"
for tool in "$FIO" nbdinfo python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

AUTOGROUP=0
[[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]] && AUTOGROUP=1

# Runs a command at the requested nice level (negative levels need root). With autogroups the
# command gets a session (hence a group) of its own whose nice is set too: otherwise it would
# share the caller's group, weighted like any build job's group, whatever its nice.
niced() {
  if [[ $NICE == 0 ]]; then
    "$@"
  elif ((AUTOGROUP)); then
    setsid -w sh -c 'echo "$0" >/proc/self/autogroup; exec nice -n "$0" "$@"' "$NICE" "$@"
  else
    nice -n "$NICE" "$@"
  fi
}

# Sets the autogroup nice of the session of process $1 (servers run in sessions of their own).
group_nice() {
  [[ $NICE != 0 ]] && ((AUTOGROUP)) && echo "$NICE" >"/proc/$1/autogroup" 2>/dev/null
  return 0
}

# ------------------------------------------------------------------ targets
declare -A PID URI
wanted() { [[ " $TARGETS " == *" $1 "* ]]; }

# Waits until an NBD URI answers (at most ~30 s); $2 is the pid that must stay alive.
await_uri() {
  local uri=$1 pid=$2 i
  for i in $(seq 1 150); do
    nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
    [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null && return 1
    sleep 0.2
  done
  return 1
}

# Starts a foreground server in its own session; its pid goes to PID[$1].
launch() {
  local name=$1; shift
  say "start $name: $*"
  echo "$*" >"$OUTDIR/$name.cmd"
  setsid nice -n "$NICE" "$@" >"$OUTDIR/$name.log" 2>&1 </dev/null &
  PID[$name]=$!
  group_nice "${PID[$name]}"
}

start_ringpool() {
  [[ -x $RINGPOOL ]] || die "no ringpool binary at $RINGPOOL (cargo build --release -p ringpool-tools)"
  rm -rf "$STATE" "$POOL_FILE"
  export RINGPOOL_STATE_DIR=$STATE
  if [[ $POOL_PREWRITE == 1 ]]; then
    # Like the peers' backing file, the pool's device file is written through once: on a
    # sparse (or fallocated) file every first O_DIRECT write into a hole makes ext4 allocate
    # or convert extents, which io_uring cannot do without blocking and hands to io-wq worker
    # threads (iou-wrk). That is a property of the file, not of ringpool.
    say "prewrite the pool device file $POOL_FILE ($POOL_SIZE)"
    niced "$FIO" --name=prewrite --filename="$POOL_FILE" --size="$POOL_SIZE" --rw=write --bs=1M \
      --iodepth=16 --ioengine=io_uring --direct=1 --end_fsync=1 \
      --output="$OUTDIR/pool.prewrite.txt" >/dev/null 2>&1 || die "prewrite of $POOL_FILE failed"
  fi
  "$RINGPOOL" create --size "$POOL_SIZE" "$POOL" "$POOL_FILE" >>"$OUTDIR/ringpool.setup.log" 2>&1 ||
    die "ringpool create failed (see $OUTDIR/ringpool.setup.log)"
  "$RINGPOOL" volume create -s "$VOL_SIZE" "$POOL/vol0" >>"$OUTDIR/ringpool.setup.log" 2>&1 ||
    die "ringpool volume create failed (see $OUTDIR/ringpool.setup.log)"
  if wanted ringpool-128k; then
    "$RINGPOOL" volume create -s "$VOL_SIZE" -b 128K "$POOL/vol128k" >>"$OUTDIR/ringpool.setup.log" 2>&1 ||
      die "ringpool volume create (128K blocks) failed (see $OUTDIR/ringpool.setup.log)"
  fi
  local sock=$WORKDIR/ringpool.sock
  rm -f "$sock"
  launch ringpool "$RINGPOOL" serve --listen "127.0.0.1:${RINGPOOL_PORT:-10899}" --socket "$sock"
  URI[ringpool]="nbd+unix:///$POOL/vol0?socket=$sock"
  if wanted ringpool-128k; then
    URI[ringpool-128k]="nbd+unix:///$POOL/vol128k?socket=$sock"
    PID[ringpool-128k]=${PID[ringpool]}
  fi
  local i
  for i in $(seq 1 150); do
    grep -q '^ready:' "$OUTDIR/ringpool.log" && break
    kill -0 "${PID[ringpool]}" 2>/dev/null || die "ringpool serve exited (see $OUTDIR/ringpool.log)"
    sleep 0.2
  done
  await_uri "${URI[ringpool]}" "${PID[ringpool]}" || die "ringpool export does not answer"
  # Prefill the whole volume through the export: until then it is one big hole.
  local t filled
  for t in ringpool ringpool-128k; do
    [[ -n ${URI[$t]:-} ]] || continue
    say "prefill $t volume ($VOL_SIZE) through NBD"
    niced "$FIO" --name=prefill --ioengine=nbd --uri="${URI[$t]}" --rw=write --bs=1M \
      --iodepth=8 --output="$OUTDIR/$t.prefill.txt" >/dev/null 2>&1 ||
      die "prefill of the $t volume failed (see $OUTDIR/$t.prefill.txt)"
    filled=$(nbdinfo --map "${URI[$t]}" 2>/dev/null | awk '$3 == 0 {s += $2} END {printf "%.0f", s}')
    say "$t volume: $filled bytes allocated after prefill"
  done
}

start_peers() {
  if wanted qemu-nbd; then
    rm -f "$WORKDIR/qemu.sock"
    launch qemu-nbd qemu-nbd -f raw --cache=none --aio=io_uring -t -e 8 -k "$WORKDIR/qemu.sock" "$BACKING"
    URI[qemu-nbd]="nbd+unix:///?socket=$WORKDIR/qemu.sock"
  fi
  if wanted nbdkit; then
    rm -f "$WORKDIR/nbdkit.sock"
    launch nbdkit nbdkit -f -U "$WORKDIR/nbdkit.sock" file "$BACKING" cache=none
    URI[nbdkit]="nbd+unix:///?socket=$WORKDIR/nbdkit.sock"
  fi
  if wanted nbd-server; then
    # nbd-server serves one connection in the foreground (-d), so it runs as a daemon and
    # reports its pid through a pid file.
    rm -f "$WORKDIR/nbd-server.sock" "$WORKDIR/nbd-server.pid"
    cat >"$WORKDIR/nbd-server.conf" <<EOF
[generic]
    listenaddr = 127.0.0.1
    port = 10898
    unixsock = $WORKDIR/nbd-server.sock
    allowlist = true
[bench]
    exportname = $BACKING
    flush = true
    fua = true
    trim = true
EOF
    say "start nbd-server: nbd-server -C $WORKDIR/nbd-server.conf -p $WORKDIR/nbd-server.pid"
    niced nbd-server -C "$WORKDIR/nbd-server.conf" -p "$WORKDIR/nbd-server.pid" >"$OUTDIR/nbd-server.log" 2>&1
    URI[nbd-server]="nbd+unix:///bench?socket=$WORKDIR/nbd-server.sock"
  fi
  local t
  for t in qemu-nbd nbdkit nbd-server; do
    wanted "$t" || continue
    if [[ $t == nbd-server ]]; then
      await_uri "${URI[$t]}" "" || die "$t does not answer"
      PID[$t]=$(cat "$WORKDIR/nbd-server.pid")
      # It daemonized into a session of its own (and forks one child per connection there).
      group_nice "${PID[$t]}"
    else
      await_uri "${URI[$t]}" "${PID[$t]}" || die "$t does not answer (see $OUTDIR/$t.log)"
    fi
    say "$t ready, pid ${PID[$t]}"
  done
}

stop_all() {
  local t p i
  for t in "${!PID[@]}"; do
    p=${PID[$t]}
    [[ -n $p ]] && kill -TERM "$p" 2>/dev/null
  done
  for t in "${!PID[@]}"; do
    p=${PID[$t]}
    [[ -z $p ]] && continue
    # ringpool syncs and exports on SIGTERM: give it time.
    for i in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then
      say "$t (pid $p) ignored SIGTERM for 30 s: SIGKILL"
      kill -KILL "$p" 2>/dev/null
    fi
    PID[$t]=""
  done
  if [[ $KEEP == 0 ]]; then
    rm -f "$BACKING" "$POOL_FILE"
    rm -rf "$STATE"
  fi
  undo_machine_conditions
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# CPU_LATENCY_US and GUEST_HALT_POLL_NS (perf/nbd-lib.sh), set after the trap so that every
# exit undoes them.
apply_machine_conditions

# ------------------------------------------------------------------ accounting
# CPU ticks of a server: its own threads plus children it reaped (nbd-server forks one per
# connection) plus children still alive.
server_ticks() {
  local pid=$1 sum=0 kid v
  [[ -z $pid || ! -r /proc/$pid/stat ]] && { echo 0; return; }
  # Fields after the ')' of the command name: utime is 12th, stime 13th, cutime 14th, cstime 15th.
  v=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13 + $14 + $15}')
  sum=${v:-0}
  for kid in $(pgrep -P "$pid" 2>/dev/null); do
    v=$(sed 's/^.*) //' "/proc/$kid/stat" 2>/dev/null | awk '{print $12 + $13}')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# "tid name ticks" for every thread of a process.
thread_ticks() {
  local pid=$1 f
  for f in /proc/"$pid"/task/*/stat; do
    awk -v f="$f" '{
      line = $0; name = line; sub(/^[^(]*\(/, "", name); sub(/\).*$/, "", name)
      rest = line; sub(/^.*\) /, "", rest); split(rest, a, " ")
      gsub(/ /, "_", name); n = split(f, p, "/"); print p[n - 1], name, a[12] + a[13]
    }' "$f" 2>/dev/null
  done
}

# Commits everything an NBD export acknowledged (one FLUSH; for ringpool it commits the whole pool).
flush_export() {
  qemu-io -f raw -c flush "$1" >/dev/null 2>&1 || say "NBD FLUSH of $1 failed"
}

drop_caches() {
  [[ $DROP_CACHES == 1 ]] || return 0
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || say "cannot drop the page cache (not root?)"
}

# One measured fio run of job $2 against target $1 in round $3.
measure() {
  local target=$1 job=$2 round=$3 spec dir eng c0 c1 w0 w1 pid perfpid=""
  spec=$(job_spec "$job") || die "unknown job $job"
  dir=$OUTDIR/r$round/$target
  mkdir -p "$dir"
  if [[ $target == baseline ]]; then
    eng="--ioengine=io_uring --direct=1 --filename=$BACKING"
    pid=""
  else
    eng="--ioengine=nbd --uri=${URI[$target]}"
    pid=${PID[$target]}
  fi
  drop_caches
  local rp=0
  [[ $target == ringpool* ]] && rp=1
  ((rp)) && thread_ticks "$pid" >"$dir/$job.threads0"
  if ((rp)) && [[ $PERF_RECORD == 1 && $round == "$ROUNDS" ]] && command -v perf >/dev/null; then
    perf record -g -o "$dir/perf.$job.data" -p "$pid" -- sleep $((RAMP + RUNTIME)) \
      >/dev/null 2>"$dir/perf.$job.log" &
    perfpid=$!
  fi
  c0=$(server_ticks "$pid"); w0=$(date +%s.%N)
  # shellcheck disable=SC2086  # $eng and $spec are word lists on purpose
  niced "$FIO" --name="$job" $eng $spec --numjobs=1 --time_based --runtime="$RUNTIME" \
    --ramp_time="$RAMP" --lat_percentiles=1 --percentile_list=50:99:99.9 --output-format=json \
    --output="$dir/$job.json" >"$dir/$job.stderr" 2>&1 || say "fio $target/$job failed (see $dir/$job.stderr)"
  # ringpool acknowledges writes from memory (write-back) and syncs them in transaction groups:
  # what the job left dirty is committed now, with an NBD FLUSH (its `sync`, which drop_caches
  # gives the peers' page cache), so it is counted in this job's server CPU and is not written
  # during the next target's job.
  ((rp)) && flush_export "${URI[$target]}"
  w1=$(date +%s.%N)
  sleep 0.3  # let a forked per-connection child exit and be reaped into cutime
  c1=$(server_ticks "$pid")
  [[ -n $perfpid ]] && wait "$perfpid"
  if ((rp)); then
    thread_ticks "$pid" >"$dir/$job.threads1"
    join <(sort "$dir/$job.threads0") <(sort "$dir/$job.threads1") |
      awk -v hz="$TICK" '{printf "%s\t%s\t%.2f\n", $1, $2, ($5 - $3) / hz}' >"$dir/$job.threads"
    rm -f "$dir/$job.threads0" "$dir/$job.threads1"
  fi
  awk -v w0="$w0" -v w1="$w1" -v c0="$c0" -v c1="$c1" -v hz="$TICK" \
    'BEGIN {printf "wall_s=%.3f server_cpu_s=%.3f\n", w1 - w0, (c1 - c0) / hz}' >"$dir/$job.cpu"
  say "r$round $job $target: $(python3 "$HERE/nbd_bench_summary.py" --one "$dir/$job.json")"
  # A pool whose sync failed refuses every later write (ENOSPC): its numbers would be void.
  if ((rp)) && grep -q 'pool suspended' "$OUTDIR/ringpool.log"; then
    say "WARNING: the ringpool pool is suspended (see $OUTDIR/ringpool.log); its later results are void"
  fi
}

# ------------------------------------------------------------------ main
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -r), $(nproc) cpus, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "fio: $($FIO --version)"
  echo "ringpool: $RINGPOOL ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo "qemu-nbd: $(qemu-nbd --version 2>/dev/null | head -1)"
  echo "nbdkit: $(nbdkit --version 2>/dev/null | head -1)"
  echo "nbd-server: $(nbd-server -V 2>&1 | head -1)"
  echo "backing: $WORKDIR ($(df --output=fstype "$WORKDIR" | tail -1), $(df --output=source "$WORKDIR" | tail -1)); volume/file $VOL_SIZE, pool file $POOL_SIZE"
  echo "rounds=$ROUNDS runtime=${RUNTIME}s ramp=${RAMP}s drop_caches=$DROP_CACHES nice=$NICE autogroup=$AUTOGROUP pool_prewrite=$POOL_PREWRITE $(machine_conditions)"
  echo "targets: $TARGETS"
  echo "jobs: $JOBS"
} >"$OUTDIR/env.txt"
say "results in $OUTDIR"

need_backing=0
for t in qemu-nbd nbdkit nbd-server baseline; do wanted "$t" && need_backing=1; done
if ((need_backing)); then
  say "prefill $BACKING ($VOL_SIZE) with fio"
  rm -f "$BACKING"
  niced "$FIO" --name=prefill --filename="$BACKING" --size="$VOL_SIZE" --rw=write --bs=1M \
    --iodepth=16 --ioengine=io_uring --direct=1 --end_fsync=1 \
    --output="$OUTDIR/backing.prefill.txt" >/dev/null 2>&1 || die "prefill of $BACKING failed"
fi
{ wanted ringpool || wanted ringpool-128k; } && start_ringpool
start_peers

order=()
for t in $TARGETS; do order+=("$t"); done
for round in $(seq 1 "$ROUNDS"); do
  # Reverse the order on even rounds: a target that ran first runs last next time.
  seq_targets=("${order[@]}")
  if ((round % 2 == 0)); then
    seq_targets=()
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do seq_targets+=("${order[i]}"); done
  fi
  for job in $JOBS; do
    for t in "${seq_targets[@]}"; do
      if [[ $t != baseline && -z ${PID[$t]:-} ]]; then continue; fi
      if [[ $t != baseline ]] && ! kill -0 "${PID[$t]}" 2>/dev/null; then
        say "$t died; see $OUTDIR/$t.log"; PID[$t]=""; continue
      fi
      measure "$t" "$job" "$round"
    done
  done
done

python3 "$HERE/nbd_bench_summary.py" "$OUTDIR" >"$OUTDIR/summary.md" || say "summary failed"
cat "$OUTDIR/summary.md"
