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
            # In chunks that overlap by a needle's length less one, so a needle
            # across a chunk boundary is counted once.
            chunk, overlap, tail, ok = 16 << 20, max(len(n) for n in needles) - 1, b"", False
            at = start
            while at < end:
                try:
                    mem.seek(at)
                    data = mem.read(min(chunk, end - at))
                except (OSError, OverflowError, ValueError):
                    break
                ok = True
                window = tail + data
                for n in needles:
                    counts[n] += window.count(n.encode()) - tail.count(n.encode())
                tail = window[-overlap:] if overlap else b""
                at += len(data)
                if not data:
                    break
            readable += ok
    if readable == 0:
        sys.exit(f"memory_scan: no mapping of process {pid} could be read")
    return counts


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(json.dumps(scan(int(sys.argv[1]), sys.argv[2:])))
