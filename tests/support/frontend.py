"""Running a frontend in tests: in-process (fast, inspectable) or as a real `greenroom run` process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import redis
import ujson

from frontend.app import Frontend
from frontend.config import load_settings

#: settings that make tests fast: no connect pacing, short backoffs, no flood control by default,
#: no inbound limit per room (the tests that flood a room on purpose set one)
FAST = {
    "connect_rate": 0, "reconnect_min": 0.2, "reconnect_max": 2.0, "rejoin_delay": 0.5,
    "shutdown_timeout": 4.0, "flood_rate": 0, "control_block_timeout": 0.5, "metrics_addr": "",
    "room_event_rate": 0,
}


@contextlib.contextmanager
def running_frontend(redis_url: str, frontend_id: str = "test-fe", **overrides: Any) -> Iterator[Frontend]:
    """A Frontend started in this process (gevent-patched by conftest) and always stopped."""
    settings = load_settings(env={}, overrides={"redis_url": redis_url, "frontend_id": frontend_id,
                                                **FAST, **overrides})
    frontend = Frontend(settings)
    frontend.start()
    try:
        yield frontend
    finally:
        frontend.stop()


class FrontendProcess:
    """`greenroom run` as a child process, its log in a file."""

    def __init__(self, redis_url: str, log_path: str, frontend_id: str = "test-proc", **env: Any) -> None:
        self.redis_url = redis_url
        self.log_path = log_path
        self.env = {**os.environ, "GREENROOM_REDIS_URL": redis_url, "GREENROOM_FRONTEND_ID": frontend_id,
                    **{f"GREENROOM_{k.upper()}": str(v) for k, v in {**FAST, **env}.items()}}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FrontendProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "frontend.cli", "run"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


def stop_process(proc: Any, timeout: float = 10.0) -> None:
    """Stop a ``FrontendProcess`` (or None) that may still run: SIGTERM, then SIGKILL if that fails."""
    if proc is not None and proc_alive(proc.proc):
        try:
            proc.terminate(timeout=timeout)
        except Exception:
            proc.kill()


def proc_alive(proc: Any) -> bool:
    """A ``subprocess.Popen`` (or None) still running."""
    return proc is not None and proc.poll() is None


def irc_spec(server: Any, channel: str, nick: str = "bot", **extra: Any) -> dict:
    """A join spec for the ngircd test server."""
    return {"protocol": "irc", "server": server.host, "port": server.port, "tls": False, "nick": nick,
            "channel": channel, "flood": False, **extra}


def push(client: redis.Redis, *commands: dict | bytes | str, key: str = "control") -> None:
    client.rpush(key, *[c if isinstance(c, (bytes, str)) else ujson.dumps(c) for c in commands])


def held_items(client: redis.Redis, frontend_id: str, prefix: str = "") -> list[bytes]:
    """What a frontend holds in flight (its ledger, its landing list, a legacy in-flight list)."""
    ledger = client.hgetall(f"{prefix}control:ledger:{frontend_id}")
    items = [ledger[seq] for seq in sorted(ledger, key=lambda s: int(s) if s.isdigit() else 0)]
    items += client.lrange(f"{prefix}control:landing:{frontend_id}", 0, -1)
    items += client.lrange(f"{prefix}control:inflight:{frontend_id}", 0, -1)
    return items


def held(client: redis.Redis, frontend_id: str, prefix: str = "") -> int:
    """How many commands a frontend holds in flight (see ``held_items``), read in one transaction."""
    pipe = client.pipeline(transaction=True)
    pipe.hlen(f"{prefix}control:ledger:{frontend_id}")
    pipe.llen(f"{prefix}control:landing:{frontend_id}")
    pipe.llen(f"{prefix}control:inflight:{frontend_id}")
    return sum(pipe.execute())


def dead_letters(client: redis.Redis, key: str = "control:dead") -> list[dict]:
    """The entries of a dead-letter list (``control:dead`` by default), decoded."""
    return [ujson.loads(x) for x in client.lrange(key, 0, -1)]


def redis_now_ms(client: redis.Redis) -> int:
    """The Redis server's clock (TIME) in milliseconds: what leases and heartbeats are measured by."""
    sec, usec = client.time()
    return sec * 1000 + usec // 1000
