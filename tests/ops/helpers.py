"""Helpers for the operating tests: HTTP probes, the CLI, a notify socket, a Redis with a password, the
dashboard served in this process (free ports and waiting: tests/support/ports.py, waiting.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

from tests.support.ports import free_port
from tests.support.servers import RedisServer


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers too; (0, b"") when nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return 0, b""


def http_json(url: str) -> tuple[int, Any]:
    code, body = http_get(url)
    return code, json.loads(body) if body else None


def greenroom(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run the `greenroom` CLI; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "frontend.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def cli(*args: str) -> subprocess.CompletedProcess:
    """The `greenroom` CLI's ``main`` run in this process (faster than a new interpreter), its
    output captured as ``greenroom()`` does. Use ``greenroom()`` where the terminal's encoding matters."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from frontend.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["greenroom", *args], code, out.getvalue(), err.getvalue())


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET; records every message."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, message: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while message not in self.messages:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {message!r} on the notify socket; got {self.messages}")
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self) -> None:
        self.sock.close()



class PasswordRedis(RedisServer):
    """A private redis-server (tests/support/servers.py) that requires a password."""

    def __init__(self, workdir: str, password: str) -> None:
        super().__init__(workdir)
        self.password = password

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        return super()._argv() + ["--requirepass", self.password]

    def _ready(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
            return b"+PONG" in sock.recv(64)


class Answer:
    """One HTTP answer: status, headers (lower-case names), body, and the cookies it set."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, cookies: dict[str, str]) -> None:
        self.status, self.headers, self.body, self.cookies = status, headers, body, cookies

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http(base: str, method: str, path: str, *, host: str | None = None, cookie: str | None = None,
         form: dict[str, str] | None = None, headers: dict[str, str] | None = None,
         source: str | None = None) -> Answer:
    """One request without following redirects; ``host`` overrides the Host header, ``cookie`` is
    sent as the dashboard's session cookie, ``source`` is the local address to connect from."""
    import http.client
    from urllib.parse import urlencode, urlsplit

    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10,
                                      source_address=(source, 0) if source else None)
    sent = dict(headers or {})
    if host is not None:
        sent["Host"] = host
    if cookie is not None:
        sent["Cookie"] = f"greenroom_session={cookie}"
    body = None
    if form is not None:
        body = urlencode(form)
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        cookies = {}
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                cookies[key] = rest.split(";", 1)[0]
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), cookies)
    finally:
        conn.close()


@contextlib.contextmanager
def dashboard(redis_url: str, host: str = "127.0.0.1", **overrides: Any) -> Iterator[tuple[str, Any]]:
    """The real dashboard app (``create_app``) served by gevent's WSGI server on a free port of
    ``host``, in this process; yields (base URL, settings)."""
    from gevent.pywsgi import WSGIServer

    from frontend.config import load_settings
    from frontend.web.dashboard import create_app

    port = free_port(host)
    settings = load_settings(env={}, overrides={"redis_url": redis_url, "web_addr": f"{host}:{port}",
                                                **overrides})
    server = WSGIServer((host, port), create_app(settings), log=None)
    server.start()
    try:
        yield f"http://{host}:{port}", settings
    finally:
        server.stop(timeout=2)


def own_address() -> str | None:
    """A non-loopback IPv4 address of this machine (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, it only picks a route
            addr = sock.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr
