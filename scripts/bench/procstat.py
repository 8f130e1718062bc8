#!/usr/bin/env python3
"""Memory and CPU of process trees, read from /proc.

  procstat.py rss PID...   sum of VmRSS in KiB over each PID and its descendants
  procstat.py pss PID...   sum of Pss in KiB over the same (shared pages divided among their users:
                           what many copies of one program cost together)
  procstat.py cpu PID...   sum of utime+stime in seconds over the same processes
  procstat.py csw PID...   sum of context switches (voluntary and not) over their threads:
                           how often they slept and woke, the cost that follows write sizes

Descendants count because sshd forks a child per connection and that child holds
the tunnel's buffers; a figure for sshd alone would flatter it.
"""
import os
import sys

TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # The command name may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(")") + 2:].split()


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pids):
    kids = children_map()
    seen, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(kids.get(p, []))
    return seen


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat (utime, stime); the slice starts at field 3.
    return (int(fields[11]) + int(fields[12])) / TICKS


def context_switches(pid):
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("rss", "pss", "cpu", "csw"):
        sys.exit("usage: procstat.py rss|pss|cpu|csw PID...")
    pids = tree(int(p) for p in sys.argv[2:])
    if sys.argv[1] == "rss":
        print(sum(rss_kib(p) for p in pids))
    elif sys.argv[1] == "pss":
        print(sum(pss_kib(p) for p in pids))
    elif sys.argv[1] == "csw":
        print(sum(context_switches(p) for p in pids))
    else:
        print(f"{sum(cpu_seconds(p) for p in pids):.2f}")


if __name__ == "__main__":
    main()
