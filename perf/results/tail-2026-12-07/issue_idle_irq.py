import sys, re
pat = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
iss=None; g=[]; 
for line in open(sys.argv[1]):
    m = pat.match(line)
    if not m: continue
    comm, tid, cpu, t, e, rest = m.groups(); t=float(t)*1e6
    if e=='block:block_rq_issue' and ' R' in rest: iss=(t,int(cpu),comm); sw=None
    elif e=='sched:sched_switch' and iss and int(cpu)==iss[1] and 'prev_comm='+iss[2][:15] in rest and 'next_comm=swapper' in rest and sw is None:
        sw=t
    elif e=='irq:irq_handler_entry' and 'virtio1-req' in rest and iss and sw:
        g.append((sw-iss[0], t-sw)); iss=None
def pct(v,q): v=sorted(v); return v[min(len(v)-1,int(len(v)*q))]
print(sys.argv[1], len(g), 'issue->idle p50 %.1f p99 %.0f; idle->irq p50 %.1f p99 %.0f' % (pct([a for a,b in g],.5),pct([a for a,b in g],.99),pct([b for a,b in g],.5),pct([b for a,b in g],.99)))
