"""Helpers of the SDK tests: events as a frontend pushes them, replies, a recorder, a running bot."""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from typing import Any, Iterator

import ujson

from backend_sdk import Backend

_ids = itertools.count(1)


def event(type: str = "message", room: str = "r1", **fields: Any) -> dict[str, Any]:
    """An event as a frontend would push it (unique event_id)."""
    base: dict[str, Any] = {"type": type, "room": room, "protocol": "irc", "ts": time.time(),
                            "event_id": f"ev-{next(_ids)}"}
    if type in ("message", "action"):
        base.update({"from": "alice", "text": "", "private": False})
    base.update(fields)
    return base


def message(text: str, room: str = "r1", sender: str = "alice", **fields: Any) -> dict[str, Any]:
    return event("message", room, **{"from": sender, "text": text, **fields})


def push(client: Any, *events: dict[str, Any], key: str = "messages") -> None:
    if events:
        client.rpush(key, *[ujson.dumps(e) for e in events])


def replies(client: Any, count: int, timeout: float = 10.0, key: str = "control") -> list[dict[str, Any]]:
    """Pop ``count`` commands from ``control`` (blocking), decoded."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        item = client.blpop(key, timeout=max(0.01, left)) if left > 0 else None
        if item is None:
            raise AssertionError(f"only {len(out)} of {count} commands arrived: {out}")
        out.append(ujson.loads(item[1]))
    return out


class Recorder:
    """Thread/greenlet-safe record of what handlers saw; ``wait(n)`` blocks until n records."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 15.0) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout):
                raise AssertionError(f"only {len(self.items)} of {count} records: {self.items[-5:]}")
            return list(self.items)


@contextlib.contextmanager
def running(bot: Backend, timeout: float = 20.0) -> Iterator[Backend]:
    """``bot.run()`` in a thread (a greenlet when gevent-patched); stopped and joined on exit."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            bot.run()
        except BaseException as exc:  # surfaced in the test
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield bot
    finally:
        bot.stop()
        thread.join(timeout)
        assert not thread.is_alive(), "run() did not return after stop()"
        if failure:
            raise failure[0]


PYTHON = sys.executable
