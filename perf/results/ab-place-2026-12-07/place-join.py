#!/usr/bin/env python3
# Joins nbd-ab's per-call results with where the job connection was served (serve.log, debug)
# and where fio's job process ran (the wrapper's psr log). Usage: place-join.py DIR AB.txt PSR.log
import re, sys
d, abtxt, psr = sys.argv[1:4]
ansi = re.compile(r'\x1b\[[0-9;]*m')
conns = {}
for s in "AB":
    conns[s] = []
    for line in open(f"{d}/{s}/serve.log"):
        line = ansi.sub('', line)
        m = re.search(r'conn=(\d+) reactor=(\d+) client_cpu=(\S+)', line)
        if m and 'accepted' in line:
            conns[s].append((int(m[1]), int(m[2]), m[3]))
fio = {"A": [], "B": []}
for line in open(psr):
    m = re.search(r'(randread\S+|randwrite\S+|seq\S+) nbd\+unix:///ab(\w) job-psr:(.*)', line)
    if m:
        h = dict((k, int(v)) for k, v in re.findall(r'cpu(\d+)=(\d+)', m[3]))
        tot = sum(h.values()) or 1
        fio[m[2]].append((m[1], "cpu0 %3d%%" % (100 * h.get('0', 0) // tot)))
res = {"A": [], "B": []}
for line in open(abtxt):
    m = re.match(r'round (\d+) (\S+)\s+(\w)\s+IOPS\s+(\d+)\s+p50\s+(\S+)\s+p99\s+(\S+)', line)
    if m:
        res[m[3]].append((int(m[1]), m[2], m[4], m[5], m[6]))
for s in "AB":
    # Connections per side: 2 for the prefill (if any), then per call: setup, job, flush.
    base = len(conns[s]) - 3 * len(res[s])
    for c, r in enumerate(res[s]):
        job = conns[s][base + 3 * c + 1] if base + 3 * c + 1 < len(conns[s]) else None
        f = fio[s][-len(res[s]) + c] if len(fio[s]) >= len(res[s]) else ("?", "?")
        print(s, "round %d %-16s IOPS %6s p50 %6s p99 %7s" % r, "| job conn", job, "| fio", f[1], f[0] == r[1] or "MISMATCH")
