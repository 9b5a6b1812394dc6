#!/bin/bash
# side run: serve with binary $1, prefill once, then QD1 fio for $2 seconds while sampling per-thread ctx switches
B=$1; T=${2:-5}
cd /tmp/tail-side; export RINGPOOL_STATE_DIR=/tmp/tail-side/state
rm -f sock
setsid nice -n -10 $B serve --listen 127.0.0.1:0 --socket /tmp/tail-side/sock >serve.log 2>&1 </dev/null &
P=$!
for i in $(seq 1 100); do grep -q '^ready' serve.log && break; sleep 0.2; done
URI="nbd+unix:///tailp/vol0?socket=/tmp/tail-side/sock"
if [ ! -f ready ]; then fio --name=prefill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1; qemu-io -f raw -c flush "$URI" >/dev/null 2>&1; touch ready; fi
snap() { for t in /proc/$P/task/*; do echo "$(basename $t) $(cat $t/comm) $(awk '/^voluntary_ctxt/{v=$2}/^nonvoluntary/{n=$2}END{print v, n}' $t/status)"; done; }
sleep 1
snap > s0; sleep 2; snap > s1   # idle 2s
nice -n -10 fio --name=qd1 --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=1 --time_based --runtime=$T --ramp_time=1 --lat_percentiles=1 --percentile_list=50:90:99:99.5:99.9 --output-format=json --output=fio.json >/dev/null 2>&1 &
F=$!
sleep 1.5; snap > s2; sleep 3; snap > s3
wait $F
echo "idle 2s (vol, invol):"; join s0 s1 | awk '{printf "%-8s %-18s %6d %6d\n", $1,$2,$6-$3,$7-$4}'
echo "fio 3s:"; join s2 s3 | awk '{printf "%-8s %-18s %6d %6d\n", $1,$2,$6-$3,$7-$4}'
python3 -c "
import json; j=json.load(open('fio.json'))['jobs'][0]['read']; p=j['lat_ns']['percentile']
print('iops %.0f'%j['iops'], ' '.join('%s:%.1f'%(k,v/1e3) for k,v in p.items()))"
kill -TERM $P; wait $P
