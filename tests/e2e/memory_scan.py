#!/usr/bin/env python3
"""Counts where byte strings occur in a live process's memory.

Usage: memory_scan.py PID NEEDLE...   (prints one JSON object: needle -> count)

Reads every readable mapping listed in /proc/PID/maps through /proc/PID/mem.
A mapping that cannot be read is skipped only when the kernel refuses it
alone ([vvar], device mappings); if no mapping at all can be read the scan
fails, so a scan that proves nothing cannot pass."""
import json
import re
import sys


def scan(pid, needles):
    counts = {n: 0 for n in needles}
    readable = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            if not m or m.group(3)[0] != "r":
                continue
            if line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            readable += 1
            for n in needles:
                counts[n] += data.count(n.encode())
    if readable == 0:
        sys.exit(f"memory_scan: no mapping of process {pid} could be read")
    return counts


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(json.dumps(scan(int(sys.argv[1]), sys.argv[2:])))
