#!/usr/bin/env python3
"""Open N HTTPS connections, make one keep-alive GET on each, then hold them open.

  hold.py --url https://127.0.0.1:P/path -n 1000 [--token T] [--cafile F]
          --ready-file F [--hold SECONDS] [--timeout SECONDS]

Writes {"ok": k, "failed": f, "seconds": s} to the ready file once every
connection has its response (or the timeout passed), then keeps them open until
--hold seconds have passed or it is killed. One request per connection makes
every intermediary set up its upstream side too (a stream, a channel, a backend
connection), which is what an idle kubectl connection costs in practice.
"""
import argparse
import asyncio
import json
import os
import ssl
import time
import urllib.parse


async def one(host, port, path, headers, ctx, sem, conns):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None)
        conns.append(writer)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"status {status}")
        return reader


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--token")
    ap.add_argument("--cafile")
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--hold", type=float, default=60)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--concurrency", type=int, default=64)
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.url)
    ctx = ssl.create_default_context(cafile=a.cafile) if a.cafile else ssl._create_unverified_context()
    headers = "Connection: keep-alive\r\n"
    if a.token:
        headers += f"Authorization: Bearer {a.token}\r\n"
    path = u.path + (f"?{u.query}" if u.query else "")
    sem = asyncio.Semaphore(a.concurrency)
    conns = []
    start = time.monotonic()
    tasks = [asyncio.ensure_future(one(u.hostname, u.port, path, headers, ctx, sem, conns)) for _ in range(a.n)]
    done, pending = await asyncio.wait(tasks, timeout=a.timeout)
    for t in pending:
        t.cancel()
    ok = sum(1 for t in done if not t.cancelled() and t.exception() is None)
    errors = sorted({repr(t.exception())[:120] for t in done if t.exception() is not None})
    result = {"ok": ok, "failed": a.n - ok, "seconds": round(time.monotonic() - start, 2), "errors": errors[:3]}
    tmp = a.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.rename(tmp, a.ready_file)
    await asyncio.sleep(max(0.0, a.hold - (time.monotonic() - start)))
    for w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
