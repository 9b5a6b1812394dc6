#!/usr/bin/env bash
# run.sh NAME A_ENV B_ENV JOBS [ROUNDS]
cd /work/wt/place
LOGENV="RINGPOOL_LOG=info,ringpool_driver::nbd::server=debug"
PSR_LOG=/tmp/ab-place/psr-$1.log flock -o /tmp/ringpool-bench.lock env NICE=-10 DIR=/tmp/ab-place ROUNDS=${5:-6} RUNTIME=3 \
  FIO=${FIOW:-/tmp/place-fio.sh} A_BIN=/tmp/place-bin/ringpool B_BIN=/tmp/place-bin/ringpool \
  A_ENV="$2 $LOGENV" B_ENV="$3 $LOGENV" JOBS="$4" perf/nbd-ab.sh > /tmp/ab-place/$1.txt 2>&1
python3 /tmp/place-join.py /tmp/ab-place /tmp/ab-place/$1.txt /tmp/ab-place/psr-$1.log > /tmp/ab-place/$1.join.txt
