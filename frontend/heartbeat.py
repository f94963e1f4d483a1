"""The heartbeat: every few seconds a hash ``frontends:<id>`` that expires after three intervals.

It is the one source for ``greenroom status``, the dashboard and the take-over of a dead frontend's
in-flight list (recovery.py): a frontend whose key expired is dead.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from . import __version__
from .protocol import encode
from .redis_conn import REDIS_ANY, REDIS_ERRORS

if TYPE_CHECKING:
    from .app import Frontend

log = logging.getLogger(__name__)


def snapshot(frontend: "Frontend") -> dict[str, Any]:
    """What the heartbeat publishes about a frontend."""
    by_state: Counter[str] = Counter()
    by_protocol: Counter[str] = Counter()
    deepest = 0
    for i, room in enumerate(list(frontend.rooms.values()), 1):
        by_state[room.state] += 1
        by_protocol[room.spec.protocol] += 1
        depth = room.queue_depth()
        if depth > deepest:
            deepest = depth
        if not i % 5000:
            gevent.sleep(0)  # 100,000 rooms take a while: never hold the hub for all of them
    return {
        "id": frontend.settings.frontend_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": __version__,
        "started": frontend.started_at,
        "rooms": len(frontend.rooms),
        "rooms_by_state": dict(by_state),
        "rooms_by_protocol": dict(by_protocol),
        "sessions": len(frontend.sessions),
        "inflight": sum(frontend.inflight.values()),
        "outbox": frontend.outbox.pending,
        "deepest_room_queue": deepest,
        "events_pushed": frontend.outbox.pushed,
        "events_dropped": frontend.outbox.dropped,
        "commands": {k: v for k, v in frontend.stats.items()},
        "last_error": frontend.outbox.last_error,
    }


class Heartbeat:
    """Writes the heartbeat hash from its own greenlet."""

    def __init__(self, frontend: "Frontend") -> None:
        self.frontend = frontend
        self.key = frontend.keys.heartbeat(frontend.settings.frontend_id)
        self.interval = frontend.settings.heartbeat_interval
        self._stopping = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

    def beat(self) -> None:
        data = {k: v if isinstance(v, str) else encode(v) if isinstance(v, dict) else str(v)
                for k, v in snapshot(self.frontend).items() if v is not None}
        pipe = self.frontend.redis.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping=data)
        pipe.pexpire(self.key, int(self.interval * 3000))
        pipe.execute()

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)
        self._greenlet.name = "heartbeat"

    def stop(self, *, remove: bool = True) -> None:
        self._stopping.set()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
        if remove:
            try:
                self.frontend.redis.delete(self.key)
            except REDIS_ERRORS:
                pass

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except REDIS_ANY as exc:
                log.warning("heartbeat not written: %s", exc)
            if self._stopping.wait(self.interval):
                return
