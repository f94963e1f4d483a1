"""Helpers for the operating tests: free ports, HTTP probes, waiting, the CLI, a notify socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from tests.support.servers import RedisServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, step: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def greenroom(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run the `greenroom` CLI; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "frontend.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


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
