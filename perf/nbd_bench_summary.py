#!/usr/bin/env python3
"""Markdown summary of a perf/nbd-side-by-side.sh result directory.

    nbd_bench_summary.py OUTDIR            full report on stdout
    nbd_bench_summary.py --one FIO.json    one line (used by the script's progress log)

OUTDIR holds r<round>/<target>/<job>.json (fio JSON), <job>.cpu ("wall_s=.. server_cpu_s=..")
and, for ringpool, <job>.threads (tid, thread name, CPU seconds). Targets named "baseline"
(fio straight on the file) and SUBJECT (default "ringpool", env SUBJECT) are special, and so
are variants of the subject named SUBJECT-<something> (e.g. ringpool-128k: another volume
configuration); every other target is a peer.

Ratios are taken inside a round (the targets of one round ran back to back), then summarised
over rounds as "median (min..max)": the spread is the noise of the run.
"""
import json
import os
import re
import statistics
import sys

JOB_ORDER = ["randread4k_qd1", "randread4k_qd32", "randwrite4k_qd32", "randrw4k_qd16",
             "seqread128k_qd1", "seqread128k_qd8", "seqwrite128k_qd8"]
SUBJECT = os.environ.get("SUBJECT", "ringpool")
BASELINE = "baseline"
# Peers that use O_DIRECT like ringpool (the others acknowledge from the page cache).
DIRECT_PEERS = {"qemu-nbd"}


def parse_fio(path):
    """The measurements of one fio JSON file, or None when it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
        # fio's nbd engine prints a line before the JSON document.
        job = json.loads(text[text.index("{"):])["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    out = dict(iops=0.0, mib=0.0, ios=0, p50=None, p99=None, p999=None,
               fio_cpu=job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0),
               errors=job.get("error", 0), runtime_s=job.get("job_runtime", 0) / 1000.0)
    for ddir in ("read", "write"):
        d = job.get(ddir, {})
        if not d.get("total_ios"):
            continue
        out["iops"] += d["iops"]
        out["mib"] += d["bw_bytes"] / 2**20
        out["ios"] += d["total_ios"]
        if out["p50"] is None:
            # Total latency (submission to completion) when fio recorded its percentiles: on a
            # loaded machine io_uring often completes a request while fio is still inside the
            # submit call, which fio books as submission latency, making clat alone misleading.
            pct = d.get("lat_ns", {}).get("percentile") or d.get("clat_ns", {}).get("percentile", {})
            out["p50"] = pct.get("50.000000", 0) / 1000.0
            out["p99"] = pct.get("99.000000", 0) / 1000.0
            out["p999"] = pct.get("99.900000", 0) / 1000.0
    return out


def parse_cpu(path):
    vals = {}
    try:
        with open(path) as f:
            for word in f.read().split():
                k, _, v = word.partition("=")
                vals[k] = float(v)
    except (OSError, ValueError):
        pass
    return vals


def load(outdir):
    """{(round, target, job): measurement dict}"""
    runs = {}
    for rdir in sorted(os.listdir(outdir)):
        m = re.fullmatch(r"r(\d+)", rdir)
        if not m:
            continue
        rnd = int(m.group(1))
        for target in sorted(os.listdir(os.path.join(outdir, rdir))):
            tdir = os.path.join(outdir, rdir, target)
            for fn in sorted(os.listdir(tdir)):
                if not fn.endswith(".json"):
                    continue
                job = fn[:-5]
                res = parse_fio(os.path.join(tdir, fn))
                if res is None:
                    continue
                cpu = parse_cpu(os.path.join(tdir, job + ".cpu"))
                wall, scpu = cpu.get("wall_s", 0.0), cpu.get("server_cpu_s", 0.0)
                res["server_pct"] = 100.0 * scpu / wall if wall else None
                # Server CPU over the whole fio call, divided by the I/Os it would have done at
                # the measured rate over that time (the ramp runs at about the same rate).
                res["us_per_io"] = (1e6 * scpu / (res["iops"] * wall)
                                    if wall and res["iops"] and target != BASELINE else None)
                res["threads"] = os.path.join(tdir, job + ".threads")
                runs[(rnd, target, job)] = res
    return runs


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs, fmt="%.2f"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt % xs[0]
    return (fmt + " (" + fmt + ".." + fmt + ")") % (statistics.median(xs), min(xs), max(xs))


def num(x, fmt):
    return "-" if x is None else fmt % x


def job_key(j):
    return (JOB_ORDER.index(j) if j in JOB_ORDER else len(JOB_ORDER), j)


def target_key(t):
    if t == SUBJECT or t.startswith(SUBJECT + "-"):
        return (0, t)
    if t == BASELINE:
        return (2, t)
    return (1, t)


def metric_of(job):
    """Throughput jobs are compared by MiB/s, small-block jobs by IOPS (same ratio)."""
    return "mib" if "128k" in job else "iops"


def report(outdir):
    runs = load(outdir)
    if not runs:
        print("no results in %s" % outdir)
        return 1
    rounds = sorted({r for r, _, _ in runs})
    targets = sorted({t for _, t, _ in runs}, key=target_key)
    jobs = sorted({j for _, _, j in runs}, key=job_key)
    subjects = [t for t in targets if t == SUBJECT or t.startswith(SUBJECT + "-")]
    peers = [t for t in targets if t not in subjects and t != BASELINE]

    print("# NBD side by side: %s\n" % os.path.basename(os.path.normpath(outdir)))
    env = os.path.join(outdir, "env.txt")
    if os.path.exists(env):
        with open(env) as f:
            print("```\n%s\n```\n" % f.read().strip())

    def cell(rnd, t, j):
        return runs.get((rnd, t, j))

    def best_peer(rnd, j, pool=None):
        cands = [(cell(rnd, p, j)[metric_of(j)], p) for p in (pool or peers) if cell(rnd, p, j)]
        return max(cands) if cands else (None, None)

    # ---- main table: medians over rounds
    print("## Results (median over %d round(s); per-round values in brackets)\n" % len(rounds))
    hdr = ["job", "target", "IOPS", "MiB/s", "p50 us", "p99 us", "p99.9 us", "fio CPU %",
           "server CPU %", "server CPU us/IO", "x baseline", "x best peer"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for j in jobs:
        first = True
        for t in targets:
            cells = [cell(r, t, j) for r in rounds]
            cells_ok = [c for c in cells if c]
            if not cells_ok:
                continue
            metric = metric_of(j)
            vs_base, vs_peer = [], []
            for r in rounds:
                c, b = cell(r, t, j), cell(r, BASELINE, j)
                if c and b and b[metric]:
                    vs_base.append(c[metric] / b[metric])
                bp, bp_name = best_peer(r, j)
                if c and bp and t not in peers:
                    vs_peer.append(c[metric] / bp)
            per_round = " / ".join("%.0f" % c["iops"] if c else "-" for c in cells)
            row = [j if first else "", "**%s**" % t if t in subjects else t,
                   "%.0f [%s]" % (med(c["iops"] for c in cells_ok), per_round),
                   num(med(c["mib"] for c in cells_ok), "%.1f"),
                   num(med(c["p50"] for c in cells_ok), "%.1f"),
                   num(med(c["p99"] for c in cells_ok), "%.1f"),
                   num(med(c["p999"] for c in cells_ok), "%.1f"),
                   num(med(c["fio_cpu"] for c in cells_ok), "%.0f"),
                   num(med(c["server_pct"] for c in cells_ok), "%.0f") if t != BASELINE else "-",
                   num(med(c["us_per_io"] for c in cells_ok), "%.1f"),
                   spread(vs_base) if t != BASELINE else "1",
                   spread(vs_peer) if vs_peer else "-"]
            if any(c["errors"] for c in cells_ok):
                row[1] += " (fio errors)"
            print("| " + " | ".join(row) + " |")
            first = False
    print("\nIOPS, MiB/s and latency percentiles are fio's, client side: total latency "
          "(submission to completion, --lat_percentiles=1). "
          "\"x baseline\" and \"x best peer\" compare IOPS (MiB/s for 128k jobs) inside each "
          "round, then give the median (min..max) over rounds. The best peer is picked per "
          "round among: %s. Server CPU %% is of one core over the whole fio call (ramp "
          "included); us/IO divides it by the I/Os done at the measured rate.\n"
          % ", ".join(peers))

    for subject in subjects:
        goals(rounds, jobs, peers, subject, cell, best_peer)
    for subject in subjects:
        threads(rounds, jobs, subject, cell)
    return 0


def goals(rounds, jobs, peers, subject, cell, best_peer):
    """The goal table of one subject target."""
    print("## Goals for %s\n" % subject)
    print("| goal | measured, per round | median | met? |")
    print("|---|---|---|---|")

    def ratio_goal(label, j, against, need):
        vals, names = [], []
        for r in rounds:
            c = cell(r, subject, j)
            if against == "peer":
                ref, name = best_peer(r, j)
            else:
                b = cell(r, BASELINE, j)
                ref, name = (b[metric_of(j)] if b else None), BASELINE
            if c and ref:
                vals.append(c[metric_of(j)] / ref)
                names.append("r%d %.2fx vs %s" % (r, vals[-1], name))
        if not vals:
            return
        m = statistics.median(vals)
        verdict = "yes" if min(vals) >= need else ("no" if max(vals) < need else "mixed")
        print("| %s | %s | %.2fx | %s |" % (label, "; ".join(names), m, verdict))

    ratio_goal("4k randread QD32 >= 1.3x best peer", "randread4k_qd32", "peer", 1.3)
    ratio_goal("4k randwrite QD32 >= 1.5x best peer", "randwrite4k_qd32", "peer", 1.5)
    ratio_goal("128k seq read QD8 >= 1.0x raw file", "seqread128k_qd8", "base", 1.0)
    ratio_goal("128k seq write QD8 >= 1.0x raw file", "seqwrite128k_qd8", "base", 1.0)
    j = "randread4k_qd1"
    gaps = []
    for r in rounds:
        c, b = cell(r, subject, j), cell(r, BASELINE, j)
        if c and b and c["p50"] is not None and b["p50"] is not None:
            gaps.append((r, c["p50"] - b["p50"], c["p50"], b["p50"]))
    if gaps:
        m = statistics.median(g for _, g, _, _ in gaps)
        ok = [g <= 40 for _, g, _, _ in gaps]
        print("| QD1 4k read p50 within 40 us of raw | %s | +%.1f us | %s |" % (
            "; ".join("r%d %.1f vs %.1f us (+%.1f)" % (r, a, b, g) for r, g, a, b in gaps), m,
            "yes" if all(ok) else ("no" if not any(ok) else "mixed")))
    for j in jobs:
        rows, ok = [], []
        for r in rounds:
            c = cell(r, subject, j)
            ps = [(cell(r, p, j)["p99"], p) for p in peers if cell(r, p, j)]
            if not c or not ps:
                continue
            low, name = min(ps)
            ok.append(c["p99"] < low)
            rows.append("r%d %.0f vs %.0f (%s)" % (r, c["p99"], low, name))
        if rows:
            print("| p99 below every peer: %s | %s | - | %s |" % (
                j, "; ".join(rows), "yes" if all(ok) else ("no" if not any(ok) else "mixed")))
    print("\n\"mixed\": met in some rounds only (within the noise).\n")


def threads(rounds, jobs, subject, cell):
    """Where the subject's CPU went, per thread, in the last round."""
    print("## %s CPU by thread (seconds over each fio call, last round)\n" % subject)
    last = rounds[-1]
    print("| job | thread CPU seconds |")
    print("|---|---|")
    for j in jobs:
        c = cell(last, subject, j)
        if not c or not os.path.exists(c["threads"]):
            continue
        per = {}
        with open(c["threads"]) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) == 3:
                    per[parts[1]] = per.get(parts[1], 0.0) + float(parts[2])
        busy = sorted(((v, k) for k, v in per.items() if v >= 0.01), reverse=True)
        print("| %s | %s |" % (j, ", ".join("%s %.2f" % (k, v) for v, k in busy) or "-"))
    print()


def one(path):
    r = parse_fio(path)
    if r is None:
        print("no result (%s)" % path)
        return 0
    print("%.0f IOPS %.1f MiB/s p50 %s p99 %s us" % (
        r["iops"], r["mib"], num(r["p50"], "%.0f"), num(r["p99"], "%.0f")))
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "--one":
        return one(argv[2])
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    return report(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
