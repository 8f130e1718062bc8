#!/usr/bin/env python3
"""User and system CPU per request of each process on a path, one request at a time.

  cpu_split.py [--rounds N] [--duration S] --path LABEL URL TOKEN NAME=PID[,NAME=PID...] [--path ...]

For each round and each path in turn (interleaved, so that a machine that
drifts affects every path alike), runs `wrk -t1 -c1 -dS` against URL (with
`Authorization: Bearer TOKEN` unless TOKEN is empty) and reads each process's
utime and stime (/proc/PID/stat: all its threads) before and after. Prints a
markdown table: per process the median over the rounds of the user and the
system CPU µs per request, with the path's median p50 and its total. Where a
path's processes run the same kind of work (a hop that terminates TLS and
HTTP, a relay that splices), the rows compare that work directly.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        # The command name is in parentheses and may hold spaces: split after it.
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]), int(rest[12])  # utime, stime (fields 14 and 15)


def wrk(url, token, duration):
    cmd = ["wrk", "-t1", "-c1", f"-d{duration}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    n = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    ms = None
    if p50:
        ms = float(p50.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return (int(n.group(1)) if n else 0), ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--path", nargs=4, action="append", required=True, metavar=("LABEL", "URL", "TOKEN", "PROCS"))
    args = ap.parse_args()
    paths = []
    for label, url, token, procs in args.path:
        named = [p.split("=", 1) for p in procs.split(",") if p]
        paths.append((label, url, token, [(n, int(pid)) for n, pid in named]))
    per = {}  # (label, name) -> ([user µs/req], [system µs/req])
    p50s = {}
    for _ in range(args.rounds):
        for label, url, token, procs in paths:
            before = {pid: cpu_ticks(pid) for _, pid in procs}
            n, p50 = wrk(url, token, args.duration)
            after = {pid: cpu_ticks(pid) for _, pid in procs}
            if n == 0:
                sys.exit(f"cpu_split: no request through {label} ({url})")
            if p50 is not None:
                p50s.setdefault(label, []).append(p50)
            for name, pid in procs:
                u = (after[pid][0] - before[pid][0]) * 1e6 / TICK / n
                s = (after[pid][1] - before[pid][1]) * 1e6 / TICK / n
                us, ss = per.setdefault((label, name), ([], []))
                us.append(u)
                ss.append(s)
    print("| path | process | user µs / request | system µs / request | total µs / request |")
    print("|---|---|---|---|---|")
    for label, _, _, procs in paths:
        tu = ts = 0.0
        for name, _ in procs:
            us, ss = per[(label, name)]
            u, s = statistics.median(us), statistics.median(ss)
            tu, ts = tu + u, ts + s
            print(f"| {label} | {name} | {u:.1f} | {s:.1f} | {u + s:.1f} |")
        what = f"all (p50 {statistics.median(p50s[label]):.3f} ms)" if label in p50s else "all"
        print(f"| {label} | {what} | {tu:.1f} | {ts:.1f} | {tu + ts:.1f} |")
    print(f"\n{args.rounds} interleaved round(s) of {args.duration} s `wrk -t1 -c1` per path; medians of the rounds; "
          f"utime and stime from /proc at {TICK} ticks per second.")


if __name__ == "__main__":
    main()
