#!/usr/bin/env python3
"""Hold N watch streams open and check that one event reaches every one of them.

  watch.py --target URL|TOKEN|CAFILE [--target ...] [--targets-file F] -n N --expect NAME
           --ready-file F --trigger-file T --result-file R [--timeout S] [--deliver-timeout S]

--targets-file holds more targets, one URL|TOKEN|CAFILE a line (thousands do
not fit on a command line). Streams are spread round-robin over the targets (several local proxies when one
proxy's tunnel cannot carry them all). Once every stream has its response head
(or --timeout passed) it writes {"established", "failed", "seconds", "errors" (each
kind of failure with its count), "not_established_in_time"} to the ready file; the caller then measures memory, creates an object named NAME and touches
the trigger file (containing the time.time() of the create); the result file gets {"delivered", "of", "seconds"}, where
seconds runs from the trigger to the last delivery.
"""
import argparse
import asyncio
import collections
import json
import os
import ssl
import time
import urllib.parse


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, path)


class Watch:
    def __init__(self):
        self.established = False
        self.delivered_at = None
        self.error = None


async def run_watch(target, expect, sem, w, writers):
    url, token, cafile = target
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
    path = u.path + (f"?{u.query}" if u.query else "")
    async with sem:
        reader, writer = await asyncio.open_connection(u.hostname, u.port, ssl=ctx, server_hostname=u.hostname)
        writers.append(writer)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n{auth}Accept: application/json\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"status {status}")
        w.established = True
    marker = expect.encode()
    tail = b""
    while True:
        data = await reader.read(65536)
        if not data:
            raise RuntimeError("stream ended")
        # Keep a tail so a name split across two reads is still found.
        window = tail + data
        if marker in window:
            w.delivered_at = time.time()
            return
        tail = window[-len(marker):]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", default=[])
    ap.add_argument("--targets-file")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--expect", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--trigger-file", required=True)
    ap.add_argument("--result-file", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--deliver-timeout", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=128)
    a = ap.parse_args()

    lines = list(a.target)
    if a.targets_file:
        lines += [line.strip() for line in open(a.targets_file) if line.strip()]
    if not lines:
        ap.error("give --target or --targets-file")
    targets = [tuple((t.split("|") + ["", ""])[:3]) for t in lines]
    sem = asyncio.Semaphore(a.concurrency)
    watches = [Watch() for _ in range(a.n)]
    writers = []
    start = time.monotonic()
    tasks = [asyncio.ensure_future(run_watch(targets[i % len(targets)], a.expect, sem, watches[i], writers))
             for i in range(a.n)]

    deadline = start + a.timeout
    while time.monotonic() < deadline:
        pending = [w for w, t in zip(watches, tasks) if not w.established and not t.done()]
        if not pending:
            break
        await asyncio.sleep(0.1)
    established = sum(1 for w in watches if w.established)
    # Each kind of failure with how many watches it ended (most first).
    kinds = collections.Counter(repr(t.exception())[:120] for t in tasks
                                if t.done() and not t.cancelled() and t.exception())
    not_yet = sum(1 for w, t in zip(watches, tasks) if not w.established and not t.done())
    write_json(a.ready_file, {"established": established, "failed": a.n - established,
                              "seconds": round(time.monotonic() - start, 2),
                              "errors": [f"{n} {kind}" for kind, n in kinds.most_common(6)],
                              "not_established_in_time": not_yet})

    # Wait for the caller to create the object (bounded by the timeouts).
    wait_until = time.monotonic() + a.timeout
    while not os.path.exists(a.trigger_file) and time.monotonic() < wait_until:
        await asyncio.sleep(0.05)
    try:
        triggered = float(open(a.trigger_file).read())  # wall clock, written by the caller
    except (OSError, ValueError):
        triggered = time.time()
    deliver_until = time.monotonic() + a.deliver_timeout
    while time.monotonic() < deliver_until:
        if all(w.delivered_at or not w.established for w in watches):
            break
        await asyncio.sleep(0.05)
    delivered = [w.delivered_at for w in watches if w.delivered_at]
    last = max(delivered) - triggered if delivered else None
    # Streams still being set up after the ready file count once established.
    write_json(a.result_file, {"delivered": len(delivered), "of": sum(1 for w in watches if w.established),
                               "seconds": round(last, 3) if last is not None else None})
    for t in tasks:
        t.cancel()
    for wr in writers:
        wr.close()


if __name__ == "__main__":
    asyncio.run(main())
