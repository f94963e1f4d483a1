"""The heartbeat: every few seconds a hash ``frontends:<id>`` that expires after three intervals.

It is the one source for ``greenroom status``, the dashboard and the take-over of a dead frontend's
in-flight ledger (recovery.py): a frontend whose key expired is dead. What it says comes from a
``snapshot()`` callable the wiring gives it; the heartbeat itself knows nothing of rooms.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import redis

from .logs import Throttle
from .protocol import encode
from .redis_conn import REDIS_ANY, REDIS_ERRORS
from .service import Service

log = logging.getLogger(__name__)


class Heartbeat(Service):
    """Writes the heartbeat hash every ``interval`` seconds."""

    name = "heartbeat"

    def __init__(self, client: redis.Redis, key: str, interval: float,
                 snapshot: Callable[[], dict[str, Any]], *, after_beat: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._client = client
        self.key = key
        self.interval = interval
        self._snapshot = snapshot
        self._after_beat = after_beat
        self._throttle = Throttle(log)

    def beat(self) -> None:
        data = {k: v if isinstance(v, str) else encode(v) if isinstance(v, dict) else str(v)
                for k, v in self._snapshot().items() if v is not None}
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping=data)
        pipe.pexpire(self.key, int(self.interval * 3000))
        pipe.execute()

    def step(self) -> None:
        try:
            self.beat()
        except REDIS_ANY as exc:
            self._throttle.warning("beat", "heartbeat not written: %s", exc)
        self._after_beat()
        self.stopping.wait(self.interval)

    def remove(self) -> None:
        """Forget the heartbeat (a graceful stop: we are not dead, we are gone)."""
        try:
            self._client.delete(self.key)
        except REDIS_ERRORS:
            pass
