"""Collecting the frontend's events from a Redis list (``messages`` by default).

- ``EventLog``: pops events as a test waits for them; ``wait(**match)`` hands out the oldest matching
  event not handed out by an earlier ``wait``, so a test may wait for events in any order and waiting
  for one never hides another; ``seen`` keeps everything popped, ``find``/``wait_for`` look at it.
- ``Drain``: a greenlet popping a list into memory for as long as the test runs, stamping each event
  with its arrival (monotonic), reconnecting by itself when Redis is killed, frozen or cut off.
- ``Pinger``: pushes a ``ping`` for a room at a steady pace and measures each pong's latency from
  what a ``Drain`` received.

Every loop here is bounded in time; nothing here leaves a socket or greenlet behind once closed.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Union

import gevent
import gevent.event
import redis
import ujson

from tests.support.waiting import wait_until


class EventLog:
    """Pops events from a Redis list into ``seen``; waits look at everything seen so far.

    ``source`` is a Redis URL (the log opens, and ``close()`` closes, a client of its own, whose socket
    timeout outlasts every BLPOP) or a client of the test's (left open). BLPOP blocks at most 1 s at a
    time, below any client's socket timeout (redis-py 8 defaults to 5 s).
    """

    def __init__(self, source: Union[str, redis.Redis], key: str = "messages") -> None:
        if isinstance(source, str):
            self.client = redis.Redis.from_url(source, socket_timeout=30, socket_connect_timeout=5)
            self._own_client = True
        else:
            self.client, self._own_client = source, False
        self.key = key
        self.seen: list[dict] = []
        self._taken: set[int] = set()

    def pump(self, timeout: float) -> int:
        """Pop what is there (waiting up to ``timeout``, at most 1 s) into ``seen``; how many."""
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
        """The oldest event not handed out yet whose fields equal ``match``."""
        def pick(seen: list[dict]) -> Optional[dict]:
            for i, e in enumerate(seen):
                if i not in self._taken and all(e.get(k) == v for k, v in match.items()):
                    self._taken.add(i)
                    return e
            return None
        return self.wait_for(pick, timeout, what=f"an event {match}")

    def wait_many(self, n: int, timeout: float = 30.0, **match: Any) -> list[dict]:
        return [self.wait(timeout, **match) for _ in range(n)]

    def close(self) -> None:
        if self._own_client:
            self.client.close()


class Drain:
    """Pops a Redis list into memory from a greenlet until stopped; survives Redis going away.

    ``events`` is every item popped (decoded JSON), in order, ``arrivals`` the monotonic time each
    arrived (``stamped()``: the pairs); ``errors`` counts failed round trips. Popping is at-least-once
    by nature of LPOP: an item popped from Redis is kept here.
    """

    def __init__(self, url: str, key: str = "messages", batch: int = 1000) -> None:
        self.url, self.key, self.batch = url, key, batch
        self.events: list[dict] = []
        self.arrivals: list[float] = []
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
                now = time.monotonic()
                decoded = [ujson.loads(item) for item in items]
                self.arrivals.extend(now for _ in decoded)
                self.events.extend(decoded)
                self.last_ok = now
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

    find = of

    def stamped(self) -> list[tuple[float, dict]]:
        """(arrival, event) for every event so far."""
        return list(zip(self.arrivals, self.events))

    def wait(self, timeout: float, **match: Any) -> dict:
        """The first event whose fields equal ``match``, waiting up to ``timeout``."""
        return wait_until(lambda: self.of(**match), timeout, what=f"an event {match}")[0]

    def wait_for(self, pred: Callable[[list[dict]], Any], timeout: float, what: str = "events") -> Any:
        return wait_until(lambda: pred(self.events), timeout, what=what)

    def stop(self) -> None:
        self._stop.set()
        self._greenlet.join(timeout=5)
        if not self._greenlet.dead:
            self._greenlet.kill(block=True, timeout=2)


class Pinger:
    """Pushes a ``ping`` for a room every ``every`` seconds and measures each pong's latency."""

    def __init__(self, client: redis.Redis, drain: Drain, room: str, every: float = 0.2) -> None:
        self.client, self.drain, self.room, self.every = client, drain, room, every
        self.sent: dict[str, float] = {}
        self._stop = gevent.event.Event()
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            cmd_id = f"lat{n}"
            self.sent[cmd_id] = time.monotonic()
            try:
                self.client.rpush("control", ujson.dumps({"type": "ping", "room": self.room, "cmd_id": cmd_id}))
            except redis.RedisError:
                self.sent.pop(cmd_id)
            self._stop.wait(self.every)

    def stop(self) -> dict:
        # between two pushes, never inside one: a ping killed half-sent would count as missing
        self._stop.set()
        self._greenlet.join(timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len(self._latencies()) == len(self.sent):
                break
            gevent.sleep(0.1)
        lat = self._latencies()
        missing = len(self.sent) - len(lat)
        return {"pings": len(self.sent), "missing": missing,
                "max_s": round(max(lat.values()), 3) if lat else None}

    def _latencies(self) -> dict[str, float]:
        out = {}
        for t, event in self.drain.stamped():
            if event.get("type") == "pong" and event.get("room") == self.room and event.get("cmd_id") in self.sent:
                out[event["cmd_id"]] = t - self.sent[event["cmd_id"]]
        return out
