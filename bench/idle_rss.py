#!/usr/bin/env python3
"""Measures the server's resident memory per idle authenticated session.

Starts `meerkat serve` (release build) with a loopback config, provisions N
accounts with `meerkat user bulk-add`, opens N client connections (plain TCP on a
`tls.mode = "none"` listener, or direct TLS with --tls), each authenticating with
SASL PLAIN, binding a resource, fetching the roster and sending initial presence,
then idles. Prints RSS at several session counts and the slope (bytes/session).

    bench/idle_rss.py --sessions 10000 [--tls]

This is a measurement tool, not a test: the benchmark tool (meerkat-bench) will
supersede it.
"""
import argparse
import asyncio
import base64
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MEERKAT_BIN", os.path.join(ROOT, "target/release/meerkat"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def session(host, port, i, tls, ready, hold):
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    src = f"127.0.0.{2 + i % 200}"
    r, w = await asyncio.open_connection(host, port, ssl=ctx, local_addr=(src, 0),
                                         server_hostname="localhost" if tls else None)

    async def until(marker):
        buf = b""
        while marker not in buf:
            chunk = await r.read(4096)
            if not chunk:
                raise ConnectionError(f"closed waiting for {marker!r}: {buf[-200:]!r}")
            buf += chunk
        return buf

    header = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
    w.write(header)
    await until(b"</stream:features>")
    cred = base64.b64encode(f"\0user{i + 1}\0secret".encode())
    w.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + cred + b"</auth>")
    await until(b"<success")
    w.write(header)
    await until(b"</stream:features>")
    w.write(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
            b"<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq><presence/>")
    await until(b"id='r'")
    ready.append(1)
    await hold.wait()
    w.close()


async def run(args):
    tmp = tempfile.mkdtemp(prefix="meerkat-rss-")
    port = free_port()
    cfg = f"""
[general]
hosts = ["localhost"]
loglevel = "warning"
data_dir = "{tmp}"
[[listen.c2s]]
port = {port}
ip_address = "127.0.0.1"
tls.mode = "{'tls' if args.tls else 'none'}"
state_timeout = 120
[storage]
url = "sqlite://{tmp}/meerkat.db"
[modules.mod_roster]
[modules.mod_disco]
[modules.mod_ping]
ping_interval = 3600
[modules.mod_offline]
[modules.mod_blocking]
[modules.mod_stanza_id]
"""
    path = os.path.join(tmp, "meerkat.toml")
    open(path, "w").write(cfg)
    subprocess.run([BIN, "--config", path, "user", "bulk-add", "--count", str(args.sessions),
                    "--domain", "localhost", "--password", "secret"], check=True)
    log = open(os.path.join(tmp, "server.log"), "w")
    print(f"server log: {tmp}/server.log")
    proc = subprocess.Popen([BIN, "--config", path, "serve"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MEERKAT_LOG": os.environ.get("MEERKAT_LOG", "warn")})
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        base = rss_kib(proc.pid)
        ready, hold, tasks, points = [], asyncio.Event(), [], []
        step = max(1, args.sessions // 5)
        t0 = time.time()
        for i in range(args.sessions):
            tasks.append(asyncio.create_task(session("127.0.0.1", port, i, args.tls, ready, hold)))
            if (i + 1) % 200 == 0:
                while len(ready) < i + 1 - 400:
                    await asyncio.sleep(0.01)
            if (i + 1) % step == 0:
                while len(ready) < i + 1:
                    await asyncio.sleep(0.05)
                    for t in tasks:
                        if t.done() and t.exception():
                            raise t.exception()
                await asyncio.sleep(1.0)
                points.append((i + 1, rss_kib(proc.pid)))
                print(f"{i + 1:6d} sessions  RSS {points[-1][1] / 1024:8.1f} MiB", flush=True)
        elapsed = time.time() - t0
        (n0, r0), (n1, r1) = points[0], points[-1]
        slope = (r1 - r0) * 1024 / (n1 - n0)
        print(f"baseline RSS {base / 1024:.1f} MiB; {args.sessions} sessions in {elapsed:.1f} s")
        print(f"RSS slope: {slope / 1024:.2f} KiB per idle authenticated session "
              f"({'TLS' if args.tls else 'plain TCP'})")
        hold.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        proc.terminate()
        proc.wait(10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--tls", action="store_true")
    args = ap.parse_args()
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
