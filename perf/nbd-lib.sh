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

# Starts a process that holds a CPU wake-up latency bound of $1 us for as long as it lives
# (perf/cpu_latency_hold.py: every target of a run then sees the same machine) and sets
# QOS_PID to it; the caller kills it when the run ends. Root only.
hold_cpu_latency() {
  python3 "$NBD_LIB_DIR/cpu_latency_hold.py" "$1" &
  QOS_PID=$!
  sleep 0.5
  kill -0 "$QOS_PID" 2>/dev/null || die "cannot hold a CPU latency bound of $1 us (root only)"
}

# The guest's idle polling: cpuidle-haltpoll polls an idle vCPU for up to guest_halt_poll_ns
# before it halts (the kernel's default is 200000; this VM boots with 0, so every idle vCPU
# halts at once and a wake-up waits for the host to run it again). set_guest_halt_poll N sets it
# for a run, every target alike, and remembers the old value in HALTPOLL_OLD for
# restore_guest_halt_poll (call it from the caller's exit trap). Root only.
HALTPOLL_PARAM=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALTPOLL_OLD=""
set_guest_halt_poll() {
  [[ -w $HALTPOLL_PARAM ]] || die "cannot set $HALTPOLL_PARAM (no cpuidle-haltpoll, or not root)"
  HALTPOLL_OLD=$(cat "$HALTPOLL_PARAM")
  echo "$1" >"$HALTPOLL_PARAM" || die "cannot write $1 to $HALTPOLL_PARAM"
}
restore_guest_halt_poll() {
  if [[ -n $HALTPOLL_OLD ]]; then
    echo "$HALTPOLL_OLD" >"$HALTPOLL_PARAM" 2>/dev/null
    HALTPOLL_OLD=""
  fi
}
