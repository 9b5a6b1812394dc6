import sys, re, collections
pat = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
SERVER = ('nbd-server', 'pool')
reqs=[]; cur=None
for line in open(sys.argv[1]):
    m = pat.match(line)
    if not m: continue
    comm, tid, cpu, t, e, rest = m.groups(); t=float(t)*1e6; cpu=int(cpu)
    if comm == 'fio' and e == 'syscalls:sys_enter_sendto' and 'len: 0x0000001c' in rest:
        cur = dict(t0=t, fio_cpu=cpu, others=[]); reqs.append(cur); continue
    if cur is None: continue
    if e == 'sched:sched_switch':
        nc = re.search(r'next_comm=(\S+)', rest).group(1)
        if nc in SERVER and 's_in' not in cur: cur['s_in']=t; cur['s_cpu']=cpu
        elif nc in SERVER and 'dev' in cur and 's_in2' not in cur: cur['s_in2']=t; cur['s2_cpu']=cpu
        if nc == 'fio' and 'dev' in cur and 'fio_in' not in cur: cur['fio_in']=t
        if not (nc.startswith('swapper') or nc in SERVER or nc == 'fio'): cur['others'].append(nc)
    elif e == 'block:block_rq_issue' and 'iss' not in cur: cur['iss']=t; cur['iss_cpu']=cpu; cur['sz']=rest.split()[2]
    elif e == 'block:block_rq_complete' and 'dev' not in cur: cur['dev']=t
    elif comm == 'fio' and e == 'syscalls:sys_exit_poll' and 'end' not in cur: cur['end']=t
def pct(v,q): v=sorted(v); return v[min(len(v)-1,int(len(v)*q))]
keys=['t0','s_in','iss','dev','s_in2','fio_in','end']
full=[r for r in reqs if all(k in r for k in keys)]
nodev=[r for r in reqs if 'end' in r and 'iss' not in r]
print('requests', len(reqs), 'with a device read', len(full), 'served without one (page cache):', len(nodev))
phases=[('wake_s','t0','s_in'),('s_to_issue','s_in','iss'),('device','iss','dev'),('wake_s2','dev','s_in2'),('s2_to_fio','s_in2','fio_in'),('fio_tail','fio_in','end')]
tot=[r['end']-r['t0'] for r in full]
print('total p50 %.0f p99 %.0f' % (pct(tot,.5), pct(tot,.99)))
for name,a,b in phases:
    v=[r[b]-r[a] for r in full]; print('  %-11s p50 %5.0f p99 %5.0f' % (name,pct(v,.5),pct(v,.99)))
print('placement (fio cpu, server cpu at wake, issuing cpu, server cpu after device):')
for k,n in collections.Counter((r['fio_cpu'], r['s_cpu'], r['iss_cpu'], r['s2_cpu']) for r in full).most_common(6):
    v=[r['end']-r['t0'] for r in full if (r['fio_cpu'], r['s_cpu'], r['iss_cpu'], r['s2_cpu'])==k]
    print('  ', k, n, 'p50 %.0f p99 %.0f' % (pct(v,.5), pct(v,.99)))
print('device read sizes', collections.Counter(r['sz'] for r in full).most_common(4))
