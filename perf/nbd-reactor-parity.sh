#!/usr/bin/env bash
# 4k randread QD1 over NBD (fio's nbd engine) against one `ringpool serve`, with the client's
# connection on each reactor in turn: during every second call an idle connection held open
# takes the reactor a lone client gets (or shifts a round-robin placement by one). Prints per call the reactor that did the work (most CPU),
# IOPS, p50/p99 (us), fio's and the server's CPU per I/O (us). Shows what the reactor of a
# connection costs, e.g. its distance from the CPU that takes the disk's interrupts
# (perf/results/README-nbd.md). Needs RUNTIME + ramp + fio's start-up under the server's 10 s
# handshake limit.
#
# Usage: BIN=target/release/ringpool ROUNDS=6 PRIO="setsid -w perf/autogroup-nice.sh" \
#          perf/nbd-reactor-parity.sh
# Knobs: BIN, ROUNDS [4], RUNTIME [3], JOB [fio args], PRIO [chrt -f 10] (wraps server and
#   fio), FIOSET (e.g. "taskset -c 1": pin fio), EXTRA_ENV (server environment words),
#   D [/tmp/nbd-parity] (pool file 5G, volume 3G prefilled through NBD once, kept)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$HERE/../target/release/ringpool}
ROUNDS=${ROUNDS:-4}; RUNTIME=${RUNTIME:-3}; JOB=${JOB:-"--rw=randread --bs=4k --iodepth=1"}
PRIO=${PRIO:-"chrt -f 10"}
D=${D:-/tmp/nbd-parity}; mkdir -p "$D"; export RINGPOOL_STATE_DIR=$D/state
if [[ ! -f $D/ready ]]; then
  rm -rf $D/state
  fio --name=prewrite --filename=$D/pool.img --size=5G --rw=write --bs=1M --iodepth=16 --ioengine=io_uring --direct=1 --end_fsync=1 >/dev/null 2>&1
  "$BIN" create -f --size 5G pq $D/pool.img >$D/setup.log 2>&1 || exit 1
  "$BIN" volume create -s 3G pq/vol0 >>$D/setup.log 2>&1 || exit 1
fi
rm -f $D/rp.sock
setsid env ${EXTRA_ENV:-} $PRIO "$BIN" serve --listen 127.0.0.1:0 --socket $D/rp.sock >$D/serve.log 2>&1 </dev/null &
RP=$!
SRV=
trap 'kill $SRV $RP 2>/dev/null; wait $RP 2>/dev/null' EXIT
for i in $(seq 1 100); do grep -q '^ready' $D/serve.log && break; sleep 0.2; done
URI="nbd+unix:///pq/vol0?socket=$D/rp.sock"
if [[ ! -f $D/ready ]]; then
  fio --name=prefill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=3G >/dev/null 2>&1 || { echo prefill failed; exit 1; }
  touch $D/ready
fi
SRV=$RP
for p in $(pgrep -f "socket $D/rp.sock"); do [[ $(cat /proc/$p/comm) == ringpool* ]] && SRV=$p; done
cpu() { for t in /proc/$SRV/task/*; do n=$(cat $t/comm); [[ $n == ringpool-r* ]] && echo "$n $(awk '{print $14+$15}' $t/stat)"; done; }
m() {
  local f=$D/m.json
  $PRIO ${FIOSET:-} fio --name=j --ioengine=nbd --uri="$URI" $JOB --time_based --runtime=$RUNTIME --ramp_time=1 --lat_percentiles=1 --percentile_list=50:99 --output-format=json --output=$f >/dev/null 2>&1
  python3 - "$f" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
p = d["lat_ns"]["percentile"]
n = d["total_ios"]
print("IOPS %7.0f p50 %7.1f p99 %8.1f fioCPU/IO %5.1f" % (d["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3, (j["usr_cpu"] + j["sys_cpu"]) / 100 * j["elapsed"] * 1e6 / max(n, 1) if False else (j["usr_cpu"] + j["sys_cpu"]) / 100 * (j["job_runtime"] / 1e3) * 1e6 / max(n, 1)))
PY
}
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 $ROUNDS); do
  for flip in 0 1; do
    H=
    if ((flip)); then
      # A connection held open (no handshake; the server's handshake limit is 10 s) takes the
      # reactor a lone client would get (least connections), or shifts a round robin by one.
      python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(float(sys.argv[2]))' \
        "$D/rp.sock" "$((RUNTIME + 4))" &
      H=$!
      sleep 0.3
    fi
    a=$(cpu); res=$(m); b=$(cpu)
    [[ -n $H ]] && { kill "$H" 2>/dev/null; wait "$H" 2>/dev/null; }
    busy=$(paste <(echo "$a") <(echo "$b") | awk '{d=$4-$2; t+=d; if (d>m){m=d; n=$1}} END{print n, t}')
    set -- $busy $res
    srv=$(python3 -c "print('%.1f' % ($2 * 1e4 / max($4 * ($RUNTIME + 1), 1)))")
    printf 'r%d flip%d busiest %-12s %s srvCPU/IO %s load %s\n' $r $flip "$1" "${res}" "$srv" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
