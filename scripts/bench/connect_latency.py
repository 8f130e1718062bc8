#!/usr/bin/env python3
"""Rendezvous latency through the replica that holds a cluster's control channel
(the owner) and through one that does not (the relays forward the accept).

  connect_latency.py --replica PORT [--replica PORT ...] --public-host HOST:PORT --ca FILE
                     --key-file F [--key-name connect] --cluster PATH=OWNER [--cluster ...]
                     [--tries N] --result-file R

Each --replica is a replica's own TLS port (not the balancer's); OWNER is the
index of the replica holding PATH's control channel. One try is what a proxy
does to open its end-to-end session: POST connect (on a kept HTTPS connection
to that replica), the proxy's leg at the rendezvous address the answer names,
then TLS end to end with the agent (this side is the TLS server, the agent the
client). The time runs from the POST to the finished handshake. Tries alternate
owner / other over the clusters, so both see the same load. Writes
{"owner": {"p50_ms", "p99_ms", "n"}, "other": {...}, "failures", "errors"}.
"""
import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse


def sas(resource, key_name, key, ttl=3600):
    sr = urllib.parse.quote(resource, safe="")
    se = str(int(time.time()) + ttl)
    sig = base64.b64encode(hmac.new(key.encode(), (sr + "\n" + se).encode(), hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={se}&skn={key_name}"


def percentile(values, p):
    v = sorted(values)
    if not v:
        return None
    k = min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))
    return round(v[k], 3)


class Replica:
    def __init__(self, port, ca):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.conn = None

    def post(self, path, token, pin):
        for attempt in (0, 1):  # a kept connection the relay closed is opened once more
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
            try:
                self.conn.request("POST", f"/$hc/{path}?sb-hc-action=connect", body=b"",
                                  headers={"ServiceBusAuthorization": token, "Content-Length": "0",
                                           "x-clusterconnect-proxy-key-pin": pin})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def one_try(replica, path, token, server_ctx, pin):
    t0 = time.perf_counter()
    status, body = replica.post(path, token, pin)
    if status != 200:
        raise RuntimeError(f"connect answered {status}: {body[:120]!r}")
    rv = json.loads(body)["rendezvous"]
    addr = urllib.parse.urlsplit(rv["address"])
    s = socket.create_connection((addr.hostname, addr.port), timeout=10)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"CLUSTERCONNECT-RENDEZVOUS/1 {rv['ticket']}\r\n".encode())
        line = b""
        while not line.endswith(b"\n") and len(line) < 512:
            got = s.recv(1)
            if not got:
                raise RuntimeError("the rendezvous leg closed before pairing")
            line += got
        if b" 200 " not in line:
            raise RuntimeError(f"rendezvous answered {line.strip()[:120]!r}")
        tls = server_ctx.wrap_socket(s, server_side=True)
        elapsed = time.perf_counter() - t0
        tls.close()
        return elapsed * 1000
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replica", action="append", type=int, required=True)
    ap.add_argument("--public-host", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--key-name", default="connect")
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--cluster", action="append", required=True)
    ap.add_argument("--tries", type=int, default=50)
    ap.add_argument("--result-file", required=True)
    ap.add_argument("--deadline", type=float, default=120, help="seconds for all tries")
    a = ap.parse_args()
    key = open(a.key_file).read().strip()
    replicas = [Replica(p, a.ca) for p in a.replica]
    clusters = []
    for c in a.cluster:
        path, owner = c.rsplit("=", 1)
        clusters.append((path, int(owner)))
    # The proxy's leg is the TLS server with an ephemeral key, as the proxy's is.
    work = tempfile.mkdtemp(prefix="cc-connect-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                    "-subj", "/CN=proxy", "-keyout", os.path.join(work, "k.pem"), "-out", os.path.join(work, "c.pem")],
                   check=True, capture_output=True)
    # The agent answers an accept only with the pin of the key the proxy's leg
    # will show (SHA-256 of its SubjectPublicKeyInfo), as the proxy sends it.
    spki = subprocess.run(["openssl", "pkey", "-in", os.path.join(work, "k.pem"), "-pubout", "-outform", "DER"],
                          check=True, capture_output=True).stdout
    pin = hashlib.sha256(spki).hexdigest()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(os.path.join(work, "c.pem"), os.path.join(work, "k.pem"))
    times = {"owner": [], "other": []}
    errors, failures = [], 0
    deadline = time.monotonic() + a.deadline
    for i in range(2 * a.tries):
        if time.monotonic() > deadline:
            errors.append("deadline reached")
            break
        path, owner = clusters[(i // 2) % len(clusters)]
        which = "owner" if i % 2 == 0 else "other"
        # The non-owning replica rotates over the others.
        others = [r for r in range(len(replicas)) if r != owner]
        r = owner if which == "owner" else others[(i // 2) % len(others)]
        token = sas(f"http://{a.public_host}/{path}", a.key_name, key)
        try:
            times[which].append(one_try(replicas[r], path, token, server_ctx, pin))
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            failures += 1
            if len(errors) < 3:
                errors.append(f"{which} r{r} {path}: {e!r}"[:200])
    result = {w: {"p50_ms": percentile(t, 50), "p99_ms": percentile(t, 99), "n": len(t)} for w, t in times.items()}
    result.update({"failures": failures, "errors": errors})
    tmp = a.result_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.rename(tmp, a.result_file)


if __name__ == "__main__":
    main()
