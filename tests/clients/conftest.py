"""Fixtures for the real-client suite: a Meerkat server process on free loopback
ports (STARTTLS and direct TLS listeners, SQLite in a temporary directory, every
module enabled), accounts created with the `meerkat user add` CLI."""

import asyncio
import os
import re
import socket
import ssl
import subprocess
import time

import pytest
import slixmpp

BIN = os.environ.get("MEERKAT_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/meerkat"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp):
        self.dir = tmp
        self.starttls_port = free_port()
        self.tls_port = free_port()
        example = subprocess.run([BIN, "config", "example"], check=True, capture_output=True, text=True).stdout
        cfg = example.replace("port = 5222", f"port = {self.starttls_port}")
        cfg = cfg.replace("port = 5223", f"port = {self.tls_port}")
        self.http_port = free_port()
        cfg = cfg.replace("port = 5280", f"port = {self.http_port}")
        cfg = cfg.replace('ip_address = "0.0.0.0"', 'ip_address = "127.0.0.1"')
        cfg = cfg.replace('data_dir = "data"', f'data_dir = "{tmp}"')
        cfg = cfg.replace('url = "sqlite://data/meerkat.db"', f'url = "sqlite://{tmp}/meerkat.db"')
        # Fast server pings so the dead-connection test runs quickly.
        cfg = cfg.replace("ping_interval = 60", "ping_interval = 2").replace("ping_req_timeout = 32", "ping_req_timeout = 2")
        assert f"port = {self.starttls_port}" in cfg and f"{tmp}/meerkat.db" in cfg
        self.config = os.path.join(tmp, "meerkat.toml")
        with open(self.config, "w") as f:
            f.write(cfg)
        self.proc = None

    def cli(self, *args, check=True):
        return subprocess.run([BIN, "--config", self.config, *args], capture_output=True, text=True, check=check)

    def start(self):
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen([BIN, "--config", self.config, "serve"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, "server exited: " + open(os.path.join(self.dir, "server.log")).read()
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(str(tmp_path_factory.mktemp("meerkat")))
    for u in ["alice", "bob", "carol", "dave", "erin"]:
        s.cli("user", "add", f"{u}@localhost", f"{u}-secret")
    s.start()
    yield s
    s.stop()


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that trusts the test server's self-signed certificate and
    records what it receives."""

    def __init__(self, jid, password, direct_tls=False, mech=None):
        super().__init__(jid, password, sasl_mech=mech)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ssl_context = ctx
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.messages = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_auth", self._on_failed)
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence", lambda p: self.presences.put_nowait(p))

    async def _on_start(self, _):
        if not self.started.done():
            self.started.set_result(True)

    def _on_failed(self, *_):
        if not self.started.done():
            self.started.set_result(False)

    async def login(self, server, timeout=10, presence=True, roster=True):
        port = server.tls_port if self.enable_direct_tls else server.starttls_port
        self.connect("127.0.0.1", port)
        ok = await asyncio.wait_for(self.started, timeout)
        if ok and roster:
            await self.get_roster()
        if ok and presence:
            self.send_presence()
        return ok

    async def next_message(self, timeout=5, pred=lambda m: True):
        deadline = time.monotonic() + timeout
        while True:
            m = await asyncio.wait_for(self.messages.get(), max(0.01, deadline - time.monotonic()))
            if pred(m):
                return m

    async def next_presence(self, timeout=5, pred=lambda p: True):
        deadline = time.monotonic() + timeout
        while True:
            p = await asyncio.wait_for(self.presences.get(), max(0.01, deadline - time.monotonic()))
            if pred(p):
                return p

    async def close(self):
        self.disconnect()
        await asyncio.sleep(0.05)


def mechanisms_offered(server):
    """The mechanisms the STARTTLS listener offers before TLS (raw socket)."""
    s = socket.create_connection(("127.0.0.1", server.starttls_port))
    s.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
    data = b""
    while b"</stream:features>" not in data:
        data += s.recv(4096)
    s.close()
    return re.findall(r"<mechanism>([^<]+)</mechanism>", data.decode())
