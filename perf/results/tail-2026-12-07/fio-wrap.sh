#!/bin/bash
# fio pinned by side: side A's calls (socket under /A/) on CPU $CPU_A, side B's on CPU $CPU_B.
for a in "$@"; do
  case $a in
    *"/A/sock"*) exec taskset -c "$CPU_A" fio "$@" ;;
    *"/B/sock"*) exec taskset -c "$CPU_B" fio "$@" ;;
  esac
done
exec fio "$@"
