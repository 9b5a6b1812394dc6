# Shared by the NBD benchmark scripts (sourced: perf/nbd-side-by-side.sh, perf/nbd-ab.sh,
# perf/nbd-floor.sh), so that a job name means the same fio arguments everywhere.
# The sourcing script defines `die`.

NBD_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Which fio arguments a job name stands for.
job_spec() {
  case $1 in
    randread4k_qd1)   echo "--rw=randread --bs=4k --iodepth=1" ;;
    randread4k_qd32)  echo "--rw=randread --bs=4k --iodepth=32" ;;
    randwrite4k_qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    randrw4k_qd16)    echo "--rw=randrw --rwmixread=70 --bs=4k --iodepth=16" ;;
    seqread128k_qd1)  echo "--rw=read --bs=128k --iodepth=1" ;;
    seqread128k_qd8)  echo "--rw=read --bs=128k --iodepth=8" ;;
    seqwrite128k_qd8) echo "--rw=write --bs=128k --iodepth=8" ;;
    *) return 1 ;;
  esac
}

# The machine conditions a run may ask for, applied to every target alike (root only):
#   CPU_LATENCY_US=N      a CPU wake-up latency bound held for the run by a process that keeps
#                         /dev/cpu_dma_latency open (perf/cpu_latency_hold.py; the kernel drops
#                         the request when it exits; 0: idle CPUs poll instead of halting)
#   GUEST_HALT_POLL_NS=N  the guest's idle polling: cpuidle-haltpoll polls an idle vCPU for up
#                         to guest_halt_poll_ns before it halts (the kernel's default is 200000;
#                         the test VM boots with 0, so every idle vCPU halts at once and a
#                         wake-up waits for the host to run it again)
# apply_machine_conditions sets what is asked; undo_machine_conditions (call it from the
# caller's exit trap, set before applying) stops the holder and restores the boot value.
HALTPOLL_PARAM=/sys/module/haltpoll/parameters/guest_halt_poll_ns
QOS_PID=""
HALTPOLL_OLD=""
apply_machine_conditions() {
  if [[ -n ${CPU_LATENCY_US:-} ]]; then
    python3 "$NBD_LIB_DIR/cpu_latency_hold.py" "$CPU_LATENCY_US" &
    QOS_PID=$!
    sleep 0.5
    kill -0 "$QOS_PID" 2>/dev/null || die "cannot hold a CPU latency bound of $CPU_LATENCY_US us (root only)"
  fi
  if [[ -n ${GUEST_HALT_POLL_NS:-} ]]; then
    [[ -w $HALTPOLL_PARAM ]] || die "cannot set $HALTPOLL_PARAM (no cpuidle-haltpoll, or not root)"
    HALTPOLL_OLD=$(cat "$HALTPOLL_PARAM")
    echo "$GUEST_HALT_POLL_NS" >"$HALTPOLL_PARAM" || die "cannot write $GUEST_HALT_POLL_NS to $HALTPOLL_PARAM"
  fi
}
undo_machine_conditions() {
  if [[ -n $QOS_PID ]]; then
    kill "$QOS_PID" 2>/dev/null
    wait "$QOS_PID" 2>/dev/null
    QOS_PID=""
  fi
  if [[ -n $HALTPOLL_OLD ]]; then
    echo "$HALTPOLL_OLD" >"$HALTPOLL_PARAM" 2>/dev/null
    HALTPOLL_OLD=""
  fi
}
# "cpu_latency_us=.. guest_halt_poll_ns=..": the conditions in force, for a run's header.
machine_conditions() {
  echo "cpu_latency_us=${CPU_LATENCY_US:-none} guest_halt_poll_ns=$(cat "$HALTPOLL_PARAM" 2>/dev/null || echo none)"
}
