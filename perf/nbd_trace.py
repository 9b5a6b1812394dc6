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
                    since the first one printed;
  qd1               one fio job at queue depth 1 against ringpool: each request cut into its
                    phases (fio's send -> reactor on CPU -> device read submitted -> device
                    completion -> reactor on CPU again -> reply's SEND submitted -> fio on CPU
                    -> fio's poll returns), their p50/p90/p99 over all requests and per
                    placement (fio's CPU, the reactor's), and for the slowest 1 %: the phase
                    that exceeded its median the most, and which other tasks ran meanwhile.

Record with (system-wide, while fio runs; add the events the view needs):
  perf record -a -e block:block_rq_issue -e block:block_rq_complete \
      -e io_uring:io_uring_submit_req -e sched:sched_switch -e syscalls:sys_enter_sendto \
      -o trace.data -- sleep 1
  perf script -i trace.data -F comm,tid,cpu,time,event,trace | perf/nbd_trace.py inflight ringpool-r
(add `-e irq:irq_handler_entry` for `batches`; `qd1` needs -e sched:sched_switch
-e io_uring:io_uring_submit_req -e block:block_rq_complete -e syscalls:sys_enter_sendto
-e syscalls:sys_exit_poll).
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

# The phases of one QD1 request, as (name, from mark, to mark); see `qd1`.
QD1_PHASES = (('wake_reactor', 'sent', 'r_on'), ('to_submit', 'r_on', 'submit'),
              ('device', 'submit', 'dev'), ('wake_reactor2', 'dev', 'r_on2'),
              ('to_send', 'r_on2', 'send'), ('wake_fio', 'send', 'fio_on'),
              ('fio_reads', 'fio_on', 'done'))


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


def qd1(stream):
    reqs = []
    cur = None
    for comm, cpu, ts, ev, rest in events(stream):
        us = ts * 1e6
        # libnbd sends each 28-byte request header with send(); at QD1 the next one starts
        # the next request.
        if comm == 'fio' and ev == 'syscalls:sys_enter_sendto' and 'len: 0x0000001c' in rest:
            cur = {'sent': us, 'fio_cpu': cpu, 'others': []}
            reqs.append(cur)
            continue
        if cur is None:
            continue
        if ev == 'sched:sched_switch':
            nxt = re.search(r'next_comm=(\S+)', rest).group(1)
            if nxt.startswith('ringpool-r'):
                if 'r_on' not in cur:
                    cur['r_on'], cur['r_cpu'] = us, cpu
                elif 'dev' in cur and 'r_on2' not in cur:
                    cur['r_on2'] = us
            elif nxt == 'fio':
                if 'send' in cur and 'fio_on' not in cur:
                    cur['fio_on'] = us
            elif not nxt.startswith('swapper'):
                cur['others'].append(nxt)
        elif ev == 'io_uring:io_uring_submit_req':
            if 'READ' in rest and 'submit' not in cur:
                cur['submit'] = us
            elif 'SEND' in rest and 'dev' in cur and 'send' not in cur:
                cur['send'] = us
        elif ev == 'block:block_rq_complete' and 'submit' in cur and 'dev' not in cur:
            cur['dev'] = us
        elif comm == 'fio' and ev == 'syscalls:sys_exit_poll' and 'send' in cur \
                and 'done' not in cur:
            cur['done'] = us
    marks = {m for _, a, b in QD1_PHASES for m in (a, b)}
    full = [r for r in reqs if marks <= r.keys()]
    if not full:
        print('no complete request (one device read and one SEND each) in the trace')
        return
    total = [r['done'] - r['sent'] for r in full]
    p99 = pct(total, 0.99)
    print('%d requests (%d incomplete at the trace edges or not of this shape); '
          'send to poll return: p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f us'
          % (len(full), len(reqs) - len(full), pct(total, .5), pct(total, .9), p99,
             pct(total, .999)))
    groups = {}
    for r in full:
        groups.setdefault((r['fio_cpu'], r['r_cpu']), []).append(r)
    med = {}
    print('%-14s %-14s %6s %6s %6s' % ('placement', 'phase', 'p50', 'p90', 'p99'))
    for key in [None] + sorted(groups):
        rs = full if key is None else groups[key]
        label = 'all' if key is None else 'fio %d, r %d' % key
        t = [r['done'] - r['sent'] for r in rs]
        print('%-14s %-14s %6.0f %6.0f %6.0f   (%d requests)'
              % (label, 'total', pct(t, .5), pct(t, .9), pct(t, .99), len(rs)))
        for name, a, b in QD1_PHASES:
            v = [r[b] - r[a] for r in rs]
            if key is not None:
                med[(key, name)] = pct(v, .5)
            print('%-14s %-14s %6.0f %6.0f %6.0f' % ('', name, pct(v, .5), pct(v, .9),
                                                     pct(v, .99)))
    slow = [r for r in full if r['done'] - r['sent'] >= p99]
    cause = {}
    excess = {name: 0.0 for name, _, _ in QD1_PHASES}
    for r in slow:
        key = (r['fio_cpu'], r['r_cpu'])
        ex = {name: r[b] - r[a] - med[(key, name)] for name, a, b in QD1_PHASES}
        top = max(ex, key=ex.get) + (' (another task ran)' if r['others'] else '')
        cause[top] = cause.get(top, 0) + 1
        for name, v in ex.items():
            excess[name] += max(v, 0.0)
    print('slowest 1 %% (>= %.0f us, %d requests), by placement: %s'
          % (p99, len(slow), ', '.join('fio %d r %d: %d' % (k + (sum(
              1 for r in slow if (r['fio_cpu'], r['r_cpu']) == k),)) for k in sorted(groups))))
    print('  phase furthest above its median (same placement): ' + ', '.join(
        '%s %d' % kv for kv in sorted(cause.items(), key=lambda kv: -kv[1])))
    total_ex = sum(excess.values()) or 1.0
    print('  share of their time above the medians: ' + ', '.join(
        '%s %.0f %%' % (n, 100 * v / total_ex) for n, v in
        sorted(excess.items(), key=lambda kv: -kv[1])))
    others = {}
    for r in slow:
        for o in r['others']:
            others[o] = others.get(o, 0) + 1
    print('  other tasks that ran during them: ' + (', '.join(
        '%s %d' % kv for kv in sorted(others.items(), key=lambda kv: -kv[1])[:8]) or 'none'))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == 'inflight':
        inflight(sys.stdin, sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == 'batches':
        batches(sys.stdin, sys.argv[2])
    elif len(sys.argv) >= 2 and sys.argv[1] == 'timeline':
        timeline(sys.stdin, int(sys.argv[2]) if len(sys.argv) > 2 else 80)
    elif len(sys.argv) >= 2 and sys.argv[1] == 'qd1':
        qd1(sys.stdin)
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
