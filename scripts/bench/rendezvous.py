#!/usr/bin/env python3
"""What the relay costs per byte of a rendezvous: one clusterconnect-relay with
--rendezvous-listen, an agent control channel, a POST connect, both legs at the
rendezvous port running TLS end to end (Python's ssl; the proxy's leg is the
TLS server, the agent's the client), then bulk bytes through it each way. The
relay's CPU (utime+stime from /proc) and peak RSS are read around the transfer.

  scripts/bench/rendezvous.py STAGE_DIR [--gib N] [--rounds N]

Prints one JSON line per round and a summary; everything on loopback."""

import argparse, base64, hashlib, hmac, http.client, json, os, socket, ssl, struct, subprocess, tempfile, threading, time
import urllib.parse

PATH = "clusters/00000000-0000-0000-0000-000000000000/bench/rv"
CHUNK = 256 * 1024


def sas(resource, key_name, key, ttl=3600):
    sr = urllib.parse.quote(resource, safe="")
    se = str(int(time.time()) + ttl)
    sig = base64.b64encode(hmac.new(key.encode(), (sr + "\n" + se).encode(), hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={se}&skn={key_name}"


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid, key="VmHWM"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class ControlChannel:
    """A Hybrid Connections listener: WebSocket handshake by hand, text frames."""

    def __init__(self, host, port, ca, token):
        ctx = ssl.create_default_context(cafile=ca)
        self.s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /$hc/{PATH}?sb-hc-action=listen HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"ServiceBusAuthorization: {token}\r\n\r\n")
        self.s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.s.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit("control channel refused: " + head.decode(errors="replace"))

    def _exact(self, n):
        out = b""
        while len(out) < n:
            got = self.s.recv(n - len(out))
            if not got:
                raise SystemExit("control channel closed")
            out += got
        return out

    def next_text(self):
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(n)
            if b0 & 0x0F == 1:
                return payload.decode()
            if b0 & 0x0F == 9:  # ping: answer with a masked pong
                mask = os.urandom(4)
                self.s.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask +
                               bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))


def transfer(src, dst, total, block):
    """Sends `total` bytes from src while a thread reads them at dst."""
    def drain():
        got = 0
        while got < total:
            got += len(dst.recv(1 << 20))

    reader = threading.Thread(target=drain)
    reader.start()
    sent = 0
    while sent < total:
        src.sendall(block)
        sent += len(block)
    reader.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage")
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="rv-bench-")
    for name, secret in (("listen", "bench-listen"), ("connect", "bench-connect")):
        with open(os.path.join(work, name + ".key"), "w") as f:
            f.write(secret + "\n")
    cfg = {"clusters": [{"subscription": "00000000-0000-0000-0000-000000000000", "resource_group": "bench", "name": "rv",
                         "hybrid_connection": PATH,
                         "keys": [{"name": "listen", "rights": ["listen"], "secret_file": "listen.key"},
                                  {"name": "connect", "rights": ["connect"], "secret_file": "connect.key"}]}]}
    with open(os.path.join(work, "relay.json"), "w") as f:
        json.dump(cfg, f)
    # The proxy leg's TLS server certificate (ephemeral, as the proxy's is).
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                    "-subj", "/CN=proxy", "-keyout", os.path.join(work, "proxy.key"), "-out", os.path.join(work, "proxy.crt")],
                   check=True, capture_output=True)
    ready = os.path.join(work, "ready.json")
    relay = subprocess.Popen([os.path.join(a.stage, "bin", "clusterconnect-relay"), "--config", os.path.join(work, "relay.json"),
                              "--dev-tls", os.path.join(work, "tls"), "--listen", "127.0.0.1:0", "--ready-file", ready,
                              "--rendezvous-listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists(ready):
                break
            time.sleep(0.05)
        info = json.load(open(ready))
        host, port, rv_port, ca = "127.0.0.1", info["port"], info["rendezvous_port"], info["ca_file"]
        resource = f"http://{host}:{port}/{PATH}"
        control = ControlChannel(host, port, ca, sas(resource, "listen", "bench-listen"))
        results = []
        total = int(a.gib * (1 << 30))
        block = os.urandom(CHUNK)
        for rnd in range(a.rounds):
            # The relay files a control channel just after its 101: a first
            # connect may find no listener yet.
            for attempt in range(100):
                conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca))
                conn.request("POST", f"/$hc/{PATH}?sb-hc-action=connect",
                             headers={"ServiceBusAuthorization": sas(resource, "connect", "bench-connect")})
                resp = conn.getresponse()
                body = json.loads(resp.read())
                if resp.status != 404 or attempt == 99:
                    break
                time.sleep(0.02)
            if resp.status != 200:
                raise SystemExit(f"connect refused: {resp.status} {body}")
            ticket = body["rendezvous"]["ticket"]
            accept = json.loads(control.next_text())["accept"]
            assert accept["id"] == ticket
            # Proxy leg: preamble, answer, then TLS server. Agent leg: TLS client, ticket in SNI.
            p = socket.create_connection((host, rv_port))
            p.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            p.sendall(f"CLUSTERCONNECT-RENDEZVOUS/1 {ticket}\r\n".encode())
            g = socket.create_connection((host, rv_port))
            g.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            cctx.check_hostname = False
            cctx.verify_mode = ssl.CERT_NONE
            agent = cctx.wrap_socket(g, server_hostname=f"{ticket}.{host}", do_handshake_on_connect=False)
            hs = threading.Thread(target=agent.do_handshake)
            hs.start()
            line = b""
            while not line.endswith(b"\n"):
                line += p.recv(1)
            assert b" 200 " in line, line
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            sctx.load_cert_chain(os.path.join(work, "proxy.crt"), os.path.join(work, "proxy.key"))
            proxy = sctx.wrap_socket(p, server_side=True)
            hs.join()
            cpu0, t0 = proc_cpu(relay.pid), time.monotonic()

            transfer(proxy, agent, total, block)
            transfer(agent, proxy, total, block)
            cpu1, t1 = proc_cpu(relay.pid), time.monotonic()
            proxy.close()
            agent.close()
            moved = 2 * total / (1 << 30)
            res = {"round": rnd + 1, "gib_moved": moved, "seconds": round(t1 - t0, 3),
                   "relay_cpu_s_per_gib": round((cpu1 - cpu0) / moved, 4),
                   "mb_per_s": round(2 * total / (t1 - t0) / 1e6, 1), "relay_peak_rss_kb": proc_rss_kb(relay.pid)}
            results.append(res)
            print(json.dumps(res), flush=True)
        cpu = sorted(r["relay_cpu_s_per_gib"] for r in results)[len(results) // 2]
        mbs = sorted(r["mb_per_s"] for r in results)[len(results) // 2]
        print(json.dumps({"median_relay_cpu_s_per_gib": cpu, "median_mb_per_s": mbs,
                          "relay_peak_rss_kb": results[-1]["relay_peak_rss_kb"]}))
    finally:
        relay.terminate()
        relay.wait(timeout=30)


if __name__ == "__main__":
    main()
