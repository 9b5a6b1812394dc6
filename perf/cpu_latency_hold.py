#!/usr/bin/env python3
"""Hold a CPU wake-up latency bound of US microseconds until killed.

Usage: perf/cpu_latency_hold.py US &

Writes US to /dev/cpu_dma_latency (the kernel's PM QoS interface, root only) and keeps the
file open: the kernel keeps every CPU out of idle states slower to leave than US (0: an idle
CPU polls instead of halting) and drops the request when this process exits. The benchmark
scripts start it for a whole run, so that every target they measure sees the same machine.
"""
import os
import signal
import struct
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    os.write(fd, struct.pack("i", int(sys.argv[1])))
    signal.pause()


if __name__ == "__main__":
    main()
