"""Fault-injection tests (issue 4): the delivery guarantees against real redis-server and ngircd.

Shared helpers live here so every test file stays about its fault:

- ``Observer``: a raw IRC client that records every line with its arrival time (monotonic), answers
  PING, and counts/filters what the bot sent; one observer can sit in many channels.
- ``Drain``: a greenlet that pops a Redis list (``messages``) into memory for as long as the test
  runs, reconnecting by itself when Redis is killed, frozen or cut off.
- small helpers: unique names, a bounded ``wait_until``, Redis URLs with another port.

Every loop here is bounded in time; nothing here leaves a socket or greenlet behind once closed.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
import uuid
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit, urlunsplit

import gevent
import gevent.event
import redis
import ujson

_seq = itertools.count()
RUN = uuid.uuid4().hex[:5]

_LINE_RE = re.compile(r"^(?::(?P<prefix>\S+) +)?(?P<cmd>\S+)(?: +(?P<args>.*))?$")


def uniq(stem: str) -> str:
    """A name unique in this test run (short enough for nicks and channels)."""
    return f"{stem}{RUN}{next(_seq)}"


def wait_until(pred: Callable[[], Any], timeout: float, step: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` (cooperatively) until it is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        gevent.sleep(step)


def with_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    """The Redis URL ``url`` pointing at ``host:port`` instead (keeps scheme, password, db)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    creds = netloc.rpartition("@")[0]
    netloc = f"{creds}@{host}:{port}" if creds else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class IrcLine:
    """One parsed line from the server: arrival time, prefix nick, command, params, raw text."""

    __slots__ = ("t", "nick", "cmd", "params", "raw")

    def __init__(self, t: float, raw: str) -> None:
        self.t = t
        self.raw = raw
        m = _LINE_RE.match(raw)
        if m is None:
            self.nick, self.cmd, self.params = "", "", []
            return
        prefix = m.group("prefix") or ""
        self.nick = prefix.split("!", 1)[0]
        self.cmd = m.group("cmd").upper()
        params: list[str] = []
        rest = m.group("args") or ""
        while rest:
            if rest.startswith(":"):
                params.append(rest[1:])
                break
            head, _, rest = rest.partition(" ")
            if head:
                params.append(head)
            rest = rest.lstrip(" ")
        self.params = params

    @property
    def target(self) -> str:
        return self.params[0] if self.params else ""

    @property
    def text(self) -> str:
        return self.params[-1] if len(self.params) > 1 else ""

    def __repr__(self) -> str:
        return f"<{self.t:.3f} {self.raw!r}>"


class Observer:
    """A raw IRC client for watching what the bot does, with arrival times.

    ``lines`` holds every line from the server (``IrcLine``), in order. The reader greenlet answers
    PING itself. ``from_nick(nick)`` filters lines whose prefix is that nick (case-insensitive).
    """

    def __init__(self, host: str, port: int, nick: str, channels: Iterable[str] = (),
                 timeout: float = 15.0) -> None:
        self.host, self.port, self.nick = host, port, nick
        self.lines: list[IrcLine] = []
        self.closed = False
        self._buf = b""
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.settimeout(None)
        self._reader = gevent.spawn(self._read)
        self.send_raw(f"NICK {nick}")
        self.send_raw(f"USER {nick[:10]} 0 * :observer")
        self.wait(lambda ln: ln.cmd == "001", timeout, what=f"{nick} registered")
        chans = list(channels)
        for start in range(0, len(chans), 20):
            self.join(*chans[start:start + 20], timeout=timeout)

    # ------------------------------------------------------------------------------- sending
    def send_raw(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self._sock.sendall(data + b"\r\n")

    def send_many(self, lines: list[bytes]) -> None:
        self._sock.sendall(b"".join(line + b"\r\n" for line in lines))

    def privmsg(self, target: str, text: str) -> None:
        self.send_raw(f"PRIVMSG {target} :{text}")

    def join(self, *channels: str, timeout: float = 15.0) -> None:
        self.send_raw("JOIN " + ",".join(channels))
        want = {c.lower() for c in channels}
        done: set[str] = set()

        def joined(ln: IrcLine) -> bool:
            if ln.cmd == "366" and len(ln.params) > 1 and ln.params[1].lower() in want:
                done.add(ln.params[1].lower())
            return done >= want
        self.wait(joined, timeout, what=f"{self.nick} joined {channels}", from_start=True)

    # ------------------------------------------------------------------------------- reading
    def _read(self) -> None:
        sock = self._sock
        while True:
            try:
                data = sock.recv(262144)
            except OSError:
                break
            if not data:
                break
            now = time.monotonic()
            buf = self._buf + data
            *complete, self._buf = buf.split(b"\r\n")
            pongs = []
            for raw in complete:
                if not raw:
                    continue
                line = IrcLine(now, raw.decode("utf-8", "replace"))
                if line.cmd == "PING":
                    pongs.append(b"PONG :" + (line.params[0].encode() if line.params else b"x"))
                self.lines.append(line)
            if pongs:
                try:
                    self.send_many(pongs)
                except OSError:
                    break
        self.closed = True

    def wait(self, pred: Callable[[IrcLine], bool], timeout: float = 10.0, *, what: str = "a line",
             from_start: bool = False, start: int | None = None) -> IrcLine:
        """The first line (from ``start``, default: any) matching ``pred``, waiting up to ``timeout``."""
        index = 0 if (from_start or start is None) else start
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines
            while index < len(lines):
                if pred(lines[index]):
                    return lines[index]
                index += 1
            if time.monotonic() >= deadline:
                tail = [ln.raw for ln in self.lines[-8:]]
                raise AssertionError(f"{self.nick}: no line for {what} within {timeout}s; last: {tail}")
            if self.closed:
                raise AssertionError(f"{self.nick}: connection closed while waiting for {what}")
            gevent.sleep(0.02)

    def from_nick(self, nick: str) -> list[IrcLine]:
        n = nick.lower()
        return [ln for ln in self.lines if ln.nick.lower() == n]

    def privmsgs(self, channel: str | None = None, sender: str | None = None) -> list[IrcLine]:
        c = channel.lower() if channel else None
        s = sender.lower() if sender else None
        return [ln for ln in self.lines if ln.cmd == "PRIVMSG"
                and (c is None or ln.target.lower() == c) and (s is None or ln.nick.lower() == s)]

    def close(self) -> None:
        if not self.closed:
            try:
                self.send_raw("QUIT :observer done")
            except OSError:
                pass
        self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass
        self._reader.kill(block=True, timeout=2)


class Drain:
    """Pops a Redis list into memory from a greenlet until stopped; survives Redis going away.

    ``events`` is every item popped (decoded JSON), in order; ``errors`` counts failed round trips.
    Popping is at-least-once by nature of LPOP: an item popped from Redis is kept here.
    """

    def __init__(self, url: str, key: str = "messages", batch: int = 1000) -> None:
        self.url, self.key, self.batch = url, key, batch
        self.events: list[dict] = []
        self.errors = 0
        self.last_ok = 0.0
        self._stop = gevent.event.Event()
        self._greenlet = gevent.spawn(self._run)

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=3.0, socket_connect_timeout=2.0)

    def _run(self) -> None:
        client = self._client()
        while not self._stop.is_set():
            try:
                items = client.lpop(self.key, self.batch)
                if not items:
                    got = client.blpop([self.key], timeout=0.2)
                    items = [got[1]] if got else []
                for item in items:
                    self.events.append(ujson.loads(item))
                self.last_ok = time.monotonic()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self.errors += 1
                try:
                    client.close()
                except Exception:
                    pass
                self._stop.wait(0.1)
                client = self._client()
        client.close()

    def of(self, **match: Any) -> list[dict]:
        return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, pred: Callable[[list[dict]], Any], timeout: float, what: str = "events") -> Any:
        return wait_until(lambda: pred(self.events), timeout, what=what)

    def stop(self) -> None:
        self._stop.set()
        self._greenlet.join(timeout=5)
        if not self._greenlet.dead:
            self._greenlet.kill(block=True, timeout=2)


def stop_process(proc: Any, timeout: float = 10.0) -> None:
    """Stop a ``FrontendProcess`` (or None) that may still run: SIGTERM, then SIGKILL if that fails."""
    if proc is not None and proc_alive(proc.proc):
        try:
            proc.terminate(timeout=timeout)
        except Exception:
            proc.kill()


def proc_alive(proc: Any) -> bool:
    return proc is not None and proc.poll() is None


def log_tail(path: str, n: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-n:])
    except OSError:
        return "(no log)"


def count_dups(texts: Iterable[str]) -> tuple[dict[str, int], int]:
    """Occurrences per text and the number of extra copies (sum of count-1)."""
    counts: dict[str, int] = {}
    for t in texts:
        counts[t] = counts.get(t, 0) + 1
    return counts, sum(c - 1 for c in counts.values() if c > 1)


def report(name: str, **figures: Any) -> None:
    """Print a test's measured figures (shown with pytest -s, and kept in the faults report file)."""
    line = f"[faults] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    path = os.environ.get("GREENROOM_FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")



class EventLog:
    """Pops events from a Redis list into ``seen``; waits look at everything seen so far.

    Unlike a cursor, waiting for one event never hides another: ``wait`` returns the first matching
    event not returned by an earlier ``wait``. The client's socket timeout outlasts every BLPOP
    (redis-py 8 defaults to a 5 s socket timeout, shorter than a long BLPOP).
    """

    def __init__(self, url: str, key: str = "messages") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self.key = key
        self.seen: list[dict] = []
        self._taken: set[int] = set()

    def pump(self, timeout: float) -> int:
        got = self.client.blpop([self.key], timeout=max(0.01, min(timeout, 1.0)))
        if got is None:
            return 0
        items = [got[1]] + (self.client.lpop(self.key, 1000) or [])
        self.seen.extend(ujson.loads(item) for item in items)
        return len(items)

    def find(self, **match: Any) -> list[dict]:
        return [e for e in self.seen if all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, pred: Callable[[list[dict]], Any], timeout: float, what: str = "events") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = pred(self.seen)
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last events: "
                                     f"{self.seen[-5:]}")
            self.pump(left)

    def wait(self, timeout: float = 10.0, **match: Any) -> dict:
        def pick(seen: list[dict]) -> Optional[dict]:
            for i, e in enumerate(seen):
                if i not in self._taken and all(e.get(k) == v for k, v in match.items()):
                    self._taken.add(i)
                    return e
            return None
        return self.wait_for(pick, timeout, what=f"an event {match}")

    def close(self) -> None:
        self.client.close()
