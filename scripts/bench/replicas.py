#!/usr/bin/env python3
"""What bench.sh's replicated scale run reads from the relay replicas and proxies.

  replicas.py channels PREFIX METRICS_PORT...   {"per_replica": [n...], "clusters": k, "owner": {path: replica index}}
                                                 for the hybrid connections starting with PREFIX
  replicas.py writes METRICS_PORT...            clusterconnect_relay_store_writes_total summed over the replicas
  replicas.py targets KUBECONFIG_JSON CA_OUT [PATH]
                                                one line per cluster of a proxy's kubeconfig
                                                (`kubectl config view --raw -o json`): URL+PATH|TOKEN|CA_OUT

Metrics come from each replica's --metrics-listen (plain HTTP on loopback).
"""
import base64
import json
import re
import sys
import urllib.request

LISTENERS = re.compile(r'^clusterconnect_relay_listeners\{hybrid_connection="([^"]*)"\} (\d+)$')


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode().splitlines()


def channels(prefix, ports):
    per, owner = [], {}
    for i, port in enumerate(ports):
        n = 0
        for line in metrics(port):
            m = LISTENERS.match(line)
            if m and m.group(1).startswith(prefix) and int(m.group(2)) > 0:
                n += int(m.group(2))
                owner.setdefault(m.group(1), i)
        per.append(n)
    return {"per_replica": per, "clusters": len(owner), "owner": owner}


def writes(ports):
    total = 0
    for port in ports:
        for line in metrics(port):
            if line.startswith("clusterconnect_relay_store_writes_total "):
                total += int(float(line.split()[-1]))
    return total


def targets(kubeconfig, ca_out, path=""):
    kc = json.load(open(kubeconfig))
    users = {u["name"]: u["user"] for u in kc.get("users", [])}
    clusters = {c["name"]: c["cluster"] for c in kc.get("clusters", [])}
    ca_written = False
    for ctx in kc.get("contexts", []):
        c = clusters[ctx["context"]["cluster"]]
        u = users[ctx["context"]["user"]]
        if not ca_written:
            with open(ca_out, "wb") as f:
                f.write(base64.b64decode(c["certificate-authority-data"]))
            ca_written = True
        print(f"{c['server'].rstrip('/')}{path}|{u['token']}|{ca_out}")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "channels":
        print(json.dumps(channels(sys.argv[2], sys.argv[3:])))
    elif cmd == "writes":
        print(writes(sys.argv[2:]))
    elif cmd == "targets":
        targets(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
