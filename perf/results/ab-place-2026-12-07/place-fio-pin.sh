#!/usr/bin/env bash
# fio wrapper for nbd-ab: samples the CPU (field 39 of /proc/<pid>/stat) of fio's job
# process every 50 ms and appends a histogram per call to $PSR_LOG.
LOG=${PSR_LOG:-/tmp/place-psr.log}
taskset -c "${FIO_PIN:-0}" fio "$@" &
pid=$!
declare -A H
name="" uri=""
for a in "$@"; do case $a in --name=*) name=${a#--name=};; --uri=*) uri=${a#--uri=};; esac; done
kids=""
while kill -0 $pid 2>/dev/null; do
  [[ -z $kids ]] && kids=$(pgrep -P $pid)
  for c in $kids; do
    if read -r line < /proc/$c/stat 2>/dev/null; then
      rest=${line##*) }; f=($rest); p=${f[36]}
      H[$p]=$(( ${H[$p]:-0} + 1 ))
    fi
  done
  sleep 0.05
done
wait $pid; rc=$?
out="$(date -u +%T) $name ${uri%%/vol0*} job-psr:"
for k in $(printf '%s\n' "${!H[@]}" | sort -n); do out+=" cpu$k=${H[$k]}"; done
echo "$out" >> "$LOG"
exit $rc
