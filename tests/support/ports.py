"""Ports for tests: a free one to listen on, and a Redis URL pointed at another port."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` (default 127.0.0.1) a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def with_port(url: str, port: int, host: str = LOOPBACK) -> str:
    """The Redis URL ``url`` pointing at ``host:port`` instead (keeps scheme, password, db)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    creds = netloc.rpartition("@")[0]
    netloc = f"{creds}@{host}:{port}" if creds else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
