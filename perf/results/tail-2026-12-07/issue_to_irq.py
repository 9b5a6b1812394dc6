import sys, re, collections
pat = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
iss=None; irq=None; out=[]; running={}
for line in open(sys.argv[1]):
    m = pat.match(line)
    if not m: continue
    comm, tid, cpu, t, e, rest = m.groups(); t=float(t)*1e6; cpu=int(cpu)
    if e=='sched:sched_switch':
        running[cpu]=re.search(r'next_comm=(\S+)', rest).group(1)
    if e=='block:block_rq_issue' and ' R' in rest: iss=(t,cpu,comm); irq=None
    elif e=='irq:irq_handler_entry' and 'virtio1-req' in rest and iss: irq=(t,cpu,comm)
    elif e=='block:block_rq_complete' and iss and irq:
        out.append((irq[0]-iss[0], t-irq[0], iss[1], irq[1], irq[2])); iss=None
def pct(v,q): v=sorted(v); return v[min(len(v)-1,int(len(v)*q))]
print(len(out), 'issue->irq p50 %.0f p99 %.0f; irq->complete p50 %.0f' % (pct([o[0] for o in out],.5), pct([o[0] for o in out],.99), pct([o[1] for o in out],.5)))
for k,n in collections.Counter((o[2],o[3],o[4]) for o in out).most_common(5):
    v=[o[0] for o in out if (o[2],o[3],o[4])==k]
    print('  issue cpu, irq cpu, interrupted task', k, n, 'issue->irq p50 %.0f p99 %.0f' % (pct(v,.5), pct(v,.99)))
