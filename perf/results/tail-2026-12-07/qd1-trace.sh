#!/bin/bash
# side run with tracing: binary $1; records 2 s system-wide of sched + io_uring + block + net syscalls during fio QD1
B=$1; TAG=${2:-t}
cd /tmp/tail-side; export RINGPOOL_STATE_DIR=/tmp/tail-side/state
rm -f sock
setsid nice -n -10 $B serve --listen 127.0.0.1:0 --socket /tmp/tail-side/sock >serve.log 2>&1 </dev/null &
P=$!
for i in $(seq 1 100); do grep -q '^ready' serve.log && break; sleep 0.2; done
URI="nbd+unix:///tailp/vol0?socket=/tmp/tail-side/sock"
nice -n -10 fio --name=qd1 --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=1 --time_based --runtime=6 --ramp_time=1 --lat_percentiles=1 --percentile_list=50:90:99:99.5:99.9 --output-format=json --output=tr-$TAG.json --write_lat_log=tr-$TAG --log_avg_msec=0 >/dev/null 2>&1 &
F=$!
sleep 2.5
perf record -a -o perf-$TAG.data -e sched:sched_switch -e sched:sched_waking -e sched:sched_migrate_task \
  -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -e io_uring:io_uring_task_add \
  -e block:block_rq_issue -e block:block_rq_complete -e irq:irq_handler_entry \
  -e syscalls:sys_enter_sendto \
  -e syscalls:sys_exit_poll \
  -- sleep 2 2>perf-$TAG.err
wait $F
echo serve pid $P fio pid $F
python3 -c "
import json; j=json.load(open('tr-$TAG.json'))['jobs'][0]['read']; p=j['lat_ns']['percentile']
print('iops %.0f'%j['iops'], ' '.join('%s:%.1f'%(k[:4],v/1e3) for k,v in p.items()))"
kill -TERM $P; wait $P
