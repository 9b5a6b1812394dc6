#!/usr/bin/env python3
"""Reads `perf script -F comm,tid,cpu,time,event,trace` output of a trace taken while fio drives
an NBD server, and prints either

  inflight PREFIX   time-weighted device requests in flight that threads named PREFIX* issued
                    (block_rq_issue matched to block_rq_complete by device and sector; a
                    requeued request's second issue is not counted again), and the
                    share of the time with none / at most 4 of them at the device;
  batches PREFIX    the device's completion batches (needs irq:irq_handler_entry too): reads
                    per interrupt of the disk (virtio*-req*), and for the reads PREFIX* issued:
                    how long one batch took to issue (first to last), the interrupt after its
                    last and its first issue, and the gap from an interrupt to the first issue
                    of the next batch (the time the device waits for the server and client);
  timeline [N]      N (default 80) events from the middle of the trace, consecutive events of
                    one kind merged: CPL (device completions), ISS (device reads issued by
                    ringpool-r*), SEND/SENDMSG/RECV (the reactor's socket ops), fio-req (fio's
                    request sends), >reactor / >fio / *-sleep (context switches), with us
                    since the first one printed.

Record with (system-wide, while fio runs; add the events the view needs):
  perf record -a -e block:block_rq_issue -e block:block_rq_complete \
      -e io_uring:io_uring_submit_req -e sched:sched_switch -e syscalls:sys_enter_sendto \
      -o trace.data -- sleep 1
  perf script -i trace.data -F comm,tid,cpu,time,event,trace | perf/nbd_trace.py inflight ringpool-r
(add `-e irq:irq_handler_entry` for `batches`).
"""
import re
import sys

LINE = re.compile(r'\s*(.+?)\s+\d+\s+\[(\d+)\]\s+([\d.]+):\s+(\S+)(.*)')
# An issue this old without its completion lost the completion (perf dropped events).
STALE_S = 0.05
BLOCK = re.compile(r'\s+(\d+,\d+)\s+\S+\s+(?:\d+\s+)?\(\)\s+(\d+)\s+\+\s+(\d+)')


def events(stream):
    for line in stream:
        m = LINE.match(line)
        if m:
            comm, cpu, ts, ev, rest = m.groups()
            yield comm, int(cpu), float(ts), ev.rstrip(':'), rest


def inflight(stream, prefix):
    # Matched (issue, complete) pairs only: perf may lose events under load, and an issue
    # without its completion would otherwise count as in flight for the rest of the trace.
    issued = {}
    pairs = []
    first = last = None
    for comm, _cpu, ts, ev, rest in events(stream):
        if ev not in ('block:block_rq_issue', 'block:block_rq_complete'):
            continue
        b = BLOCK.match(rest)
        if not b:
            continue
        first = ts if first is None else first
        last = ts
        key = (b.group(1), b.group(2))
        if ev == 'block:block_rq_issue':
            # A request the driver requeued (queue full) is issued again: keep the first
            # issue, unless it is so old that its completion must have been lost.
            old = issued.get(key)
            if comm.startswith(prefix) and (old is None or ts - old > STALE_S):
                issued[key] = ts
        elif key in issued:
            pairs.append((issued.pop(key), ts))
    if not pairs:
        print('no matching block events')
        return
    steps = sorted([(a, 1) for a, _ in pairs] + [(b, -1) for _, b in pairs])
    cur, area, prev = 0, 0.0, first
    at = {}
    for ts, d in steps:
        at[cur] = at.get(cur, 0.0) + ts - prev
        area += cur * (ts - prev)
        prev = ts
        cur += d
    at[cur] = at.get(cur, 0.0) + last - prev
    total = last - first
    print('%d device requests completed in %.3f s (%d issues unmatched), mean in flight %.1f, '
          'none in flight %.0f%% of the time, at most 4 %.0f%%'
          % (len(pairs), total, len(issued), area / total, 100 * at.get(0, 0) / total,
             100 * sum(v for k, v in at.items() if k <= 4) / total))


def quantiles(v):
    v = sorted(v)
    if not v:
        return 'none'
    return 'p10 %.0f p50 %.0f p90 %.0f' % tuple(v[min(len(v) - 1, int(len(v) * q))]
                                                for q in (0.1, 0.5, 0.9))


def batches(stream, prefix):
    # A batch: the reads (issued by PREFIX*) whose completions one disk interrupt delivered.
    issued = {}
    rows = []
    cur = None
    for comm, _cpu, ts, ev, rest in events(stream):
        if ev == 'irq:irq_handler_entry':
            if re.search(r'name=virtio\S*-req', rest):
                if cur and cur['n']:
                    rows.append(cur)
                cur = {'irq': ts, 'n': 0, 'first': None, 'last': None}
            continue
        if ev not in ('block:block_rq_issue', 'block:block_rq_complete'):
            continue
        b = BLOCK.match(rest)
        if not b or 'R' not in rest.split()[1]:
            continue
        key = (b.group(1), b.group(2))
        if ev == 'block:block_rq_issue':
            if comm.startswith(prefix):
                issued[key] = ts
        elif key in issued and cur is not None:
            t = issued.pop(key)
            cur['n'] += 1
            cur['first'] = t if cur['first'] is None else min(cur['first'], t)
            cur['last'] = t if cur['last'] is None else max(cur['last'], t)
    if not rows:
        print('no interrupt with matching reads (record irq:irq_handler_entry and block events)')
        return
    us = 1e6
    sizes = [r['n'] for r in rows]
    hist = {}
    for n in sizes:
        hist[n // 4 * 4] = hist.get(n // 4 * 4, 0) + 1
    print('%d interrupts delivered %d reads: reads per interrupt %s, histogram (by 4) %s'
          % (len(rows), sum(sizes), quantiles(sizes), sorted(hist.items())))
    print('issue span of a batch (first to last issue), us: %s'
          % quantiles([(r['last'] - r['first']) * us for r in rows]))
    print('interrupt after the last issue, us: %s'
          % quantiles([(r['irq'] - r['last']) * us for r in rows]))
    print('interrupt after the first issue, us: %s'
          % quantiles([(r['irq'] - r['first']) * us for r in rows]))
    print('interrupt to the next batch\'s first issue, us: %s'
          % quantiles([(b['first'] - a['irq']) * us for a, b in zip(rows, rows[1:])]))
    print('interrupt interval, us: %s' % quantiles([(b['irq'] - a['irq']) * us
                                                    for a, b in zip(rows, rows[1:])]))


def kind_of(comm, ev, rest):
    if ev == 'block:block_rq_complete':
        return 'CPL'
    if ev == 'block:block_rq_issue':
        return 'ISS' if comm.startswith('ringpool-r') else None
    if ev == 'io_uring:io_uring_submit_req':
        op = re.search(r'opcode (\w+)', rest)
        return op.group(1) if op and not op.group(1).startswith('READ') else None
    if ev == 'syscalls:sys_enter_sendto':
        return 'fio-req' if comm == 'fio' else None
    if ev == 'sched:sched_switch' and '==>' in rest:
        before, after = rest.split('==>', 1)
        if 'ringpool-r' in after:
            return '>reactor'
        if 'next_comm=fio' in after:
            return '>fio'
        if 'prev_comm=fio' in before:
            return 'fio-sleep'
        if 'prev_comm=ringpool-r' in before:
            return 'reactor-sleep'
    return None


def timeline(stream, n):
    groups = []
    for comm, _cpu, ts, ev, rest in events(stream):
        k = kind_of(comm, ev, rest)
        if k is None:
            continue
        if groups and groups[-1][1] == k:
            groups[-1][2] += 1
        else:
            groups.append([ts, k, 1])
    if not groups:
        print('no events')
        return
    start = len(groups) // 2
    t0 = groups[start][0]
    for ts, k, count in groups[start:start + n]:
        print('%8.0f %-14s x%d' % ((ts - t0) * 1e6, k, count))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == 'inflight':
        inflight(sys.stdin, sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == 'batches':
        batches(sys.stdin, sys.argv[2])
    elif len(sys.argv) >= 2 and sys.argv[1] == 'timeline':
        timeline(sys.stdin, int(sys.argv[2]) if len(sys.argv) > 2 else 80)
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
