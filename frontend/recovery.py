"""In-flight recovery: commands popped from ``control`` are never lost, even when a frontend dies.

Three cases, all moving items back to the head of ``control`` atomically (Lua):
- at start, our own in-flight list (what an earlier run of this frontend id left behind);
- periodically, items in our own list that no room holds in memory (a BLMOVE whose reply was lost put
  them there without us knowing): an item found untracked on two scans in a row is re-queued;
- periodically, the in-flight list of another frontend whose heartbeat key expired, under a
  ``SET NX PX`` lock so that only one live frontend takes it over.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import gevent
import gevent.event

from .redis_conn import REDIS_ANY

if TYPE_CHECKING:
    from .app import Frontend

log = logging.getLogger(__name__)

# KEYS[1] in-flight list, KEYS[2] control; ARGV[1] item. Moves one occurrence back to the head.
_MOVE_ONE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# Moves a whole list to the head of KEYS[2], keeping its order (oldest first).
_MOVE_ALL = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
return n
"""
TAKEOVER_LOCK_MS = 30_000


class Recovery:
    """Re-queues stranded and orphaned in-flight commands."""

    def __init__(self, frontend: "Frontend") -> None:
        self.frontend = frontend
        client = frontend.redis
        self._move_one = client.register_script(_MOVE_ONE)
        self._move_all = client.register_script(_MOVE_ALL)
        keys = frontend.keys
        self._own = keys.inflight(frontend.settings.frontend_id)
        self._pattern = keys.inflight("*")
        self._inflight_prefix = keys.inflight("")
        self._suspects: Counter[bytes] = Counter()
        self._stopping = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self.requeued = 0

    def requeue_own(self) -> int:
        """All of our own in-flight list back to ``control`` (start-up, before anything is popped)."""
        moved = int(self._move_all(keys=[self._own, self.frontend.keys.control]))
        if moved:
            log.warning("re-queued %d in-flight commands left by an earlier run", moved)
        self.requeued += moved
        return moved

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)
        self._greenlet.name = "recovery"

    def stop(self) -> None:
        self._stopping.set()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)

    def _run(self) -> None:
        interval = self.frontend.settings.recovery_interval
        while not self._stopping.wait(interval):
            try:
                self.scan_once()
            except REDIS_ANY as exc:
                log.warning("in-flight recovery skipped: %s", exc)

    def scan_once(self) -> int:
        """One pass over our own list and the lists of dead frontends; returns items re-queued."""
        return self._requeue_stranded() + self._take_over_dead()

    def _requeue_stranded(self) -> int:
        tracked = self.frontend.inflight
        items = Counter(self.frontend.redis.lrange(self._own, 0, -1))
        untracked = Counter({raw: n - tracked.get(raw, 0) for raw, n in items.items()
                             if n > tracked.get(raw, 0)})
        stranded = untracked & self._suspects
        self._suspects = untracked - stranded
        moved = 0
        control = self.frontend.keys.control
        for raw, n in stranded.items():
            for _ in range(n):
                moved += int(self._move_one(keys=[self._own, control], args=[raw]))
        if moved:
            log.warning("re-queued %d commands stranded in our in-flight list", moved)
        self.requeued += moved
        return moved

    def _take_over_dead(self) -> int:
        client = self.frontend.redis
        keys = self.frontend.keys
        me = self.frontend.settings.frontend_id
        moved = 0
        for key in client.scan_iter(match=self._pattern, count=200):
            owner = key.decode("utf-8", "replace")[len(self._inflight_prefix):]
            if owner == me or client.exists(keys.heartbeat(owner)):
                continue
            lock = keys.key(f"control:takeover:{owner}")
            if not client.set(lock, me, nx=True, px=TAKEOVER_LOCK_MS):
                continue  # another frontend is taking it over
            try:
                n = int(self._move_all(keys=[key, keys.control]))
            finally:
                client.delete(lock)
            if n:
                log.warning("took over %d in-flight commands of dead frontend %s", n, owner)
            moved += n
        self.requeued += moved
        return moved
