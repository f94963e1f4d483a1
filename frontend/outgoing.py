"""The outgoing dispatcher: everything rooms hand to Redis, written in pipelined batches by one greenlet.

Rooms never talk to Redis. They put events, command acknowledgements and state changes here, which
costs an append and an Event.set(); the dispatcher wakes, takes a batch and writes it in one round trip:
RPUSH per events list, LREM per acknowledged command, HSET of the room states. While Redis is down
the items stay in memory (events up to ``event_buffer``, then the oldest are dropped and counted) and
the dispatcher retries with backoff, resuming by itself when Redis returns.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from typing import Any, Callable

import gevent
import gevent.event

from .config import Settings
from .keys import Keys
from .counters import Counters
from .pacing import Backoff
from .protocol import encode
from .redis_conn import REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP, REDIS_ANY, DirectLink

log = logging.getLogger(__name__)

_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


# Removes one occurrence of each ARGV item from the in-flight list KEYS[1]: one command per batch.
_ACK = """
for i = 1, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return #ARGV
"""


def new_event_id() -> str:
    """Unique across processes and restarts: a random per-process prefix and a counter."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


class Outbox:
    """Buffers what rooms hand over and writes it to Redis from its own greenlet."""

    def __init__(self, link: DirectLink, settings: Settings, keys: Keys, counters: Counters,
                 on_acked: Callable[[list[bytes]], None] | None = None) -> None:
        self._link = link
        self._counters = counters
        self._on_acked = on_acked
        self._settings = settings
        self._keys = keys
        self._inflight = keys.inflight(settings.frontend_id)
        self._events: deque[tuple[str, bytes, float]] = deque()  # list, payload, time queued
        self._acks: list[bytes] = []
        self._dead: list[bytes] = []
        self._states: dict[str, bytes | None] = {}
        self._registry: dict[str, bytes | None] = {}
        self._wake = gevent.event.Event()
        self._stopping = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._backoff = Backoff(REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP)
        self.pushed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.redis_ok_at = 0.0
        #: readers pause while this many events wait and Redis is answering (backpressure)
        self.high_water = max(settings.event_batch * 4, settings.event_buffer // 4)
        self._space = gevent.event.Event()
        self._space.set()
        self._failing = False

    # ---------------------------------------------------------------- called by rooms and dispatchers
    def event(self, list_key: str, event: dict[str, Any]) -> None:
        """Queue one event (a dict; ``event_id`` and ``ts`` are added here when missing)."""
        event.setdefault("event_id", new_event_id())
        event.setdefault("ts", time.time())
        if len(self._events) >= self._settings.event_buffer:
            self._events.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("event buffer full (%d): dropped the oldest event (%d dropped so far)",
                          self._settings.event_buffer, self.dropped)
        self._events.append((list_key, encode(event), time.time()))
        self._wake.set()

    def wait_for_room(self) -> None:
        """Backpressure for chat readers: while Redis is answering but the buffer is past its
        high-water mark, wait for it to drain (the chat server holds what we do not read). While
        Redis is down nothing waits here: events go to the bounded buffer instead."""
        while len(self._events) >= self.high_water and not self._failing and not self._stopping.is_set():
            self._space.clear()
            self._wake.set()
            self._space.wait(1.0)

    def ack(self, raw: bytes) -> None:
        """The command ``raw`` was applied (or rejected): remove it from the in-flight list."""
        if raw is not None:  # b"" too: an empty item was popped and must leave the in-flight list
            self._acks.append(raw)
            self._wake.set()

    def dead_letter(self, item: bytes, raw: bytes) -> None:
        """Move a rejected command to ``control:dead`` (and out of the in-flight list)."""
        self._dead.append(item)
        self.ack(raw)

    def state(self, room_id: str, state: dict[str, Any] | None) -> None:
        """Record a room's state in ``rooms:state`` (None removes it). Only the latest one is written."""
        self._states[room_id] = None if state is None else encode(state)
        self._wake.set()

    def registry(self, room_id: str, spec: dict[str, Any] | None) -> None:
        """Record the desired state of a room in ``rooms`` (None removes it); written before acks."""
        self._registry[room_id] = None if spec is None else encode(spec)
        self._wake.set()

    @property
    def pending(self) -> int:
        return (len(self._events) + len(self._acks) + len(self._dead) + len(self._states)
                + len(self._registry))

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)
        self._greenlet.name = "outgoing-dispatcher"

    def stop(self, timeout: float) -> bool:
        """Flush what is buffered (for at most ``timeout`` s); True when nothing was left behind."""
        self._stopping.set()
        self._wake.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout)
            if not self._greenlet.dead:
                self._greenlet.kill(block=False)
        self._link.close()
        left = self.pending
        if left:
            log.warning("outgoing dispatcher stopped with %d items unwritten", left)
        return left == 0

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                while self.pending:
                    self._flush_once()
                    if len(self._events) < self.high_water:
                        self._space.set()
                    gevent.sleep(0)  # a turn for the readers between batches
                self._backoff.reset()
                self._failing = False
            except REDIS_ANY as exc:
                self._counters["redis_reconnects:outgoing"] += 1
                self.last_error = str(exc)
                self._failing = True
                self._space.set()  # Redis is down: readers go on, the bounded buffer takes it
                delay = self._backoff.next()
                log.warning("Redis write failed (%s); %d items kept, retrying in %.2fs",
                            exc, self.pending, delay)
                if self._stopping.wait(delay) and self._backoff.failures > 3:
                    return  # stopping and Redis stays down: give up, the caller logs what is left
                self._wake.set()
                continue
            if self._stopping.is_set() and not self.pending:
                return

    def _flush_once(self) -> None:
        batch = [self._events.popleft() for _ in range(min(len(self._events), self._settings.event_batch))]
        acks, self._acks = self._acks, []
        dead, self._dead = self._dead, []
        states, self._states = self._states, {}
        registry, self._registry = self._registry, {}
        try:
            commands: list[tuple[Any, ...]] = []
            by_list: dict[str, list[bytes]] = {}
            for key, payload, _ in batch:
                by_list.setdefault(key, []).append(payload)
            for key, payloads in by_list.items():
                commands.append(("RPUSH", key, *payloads))
            if dead:
                commands.append(("RPUSH", self._keys.dead, *dead))
            _write_hash(commands, self._keys.rooms, registry)
            if acks:  # EVAL, not EVALSHA: nothing to reload after a Redis restart
                commands.append(("EVAL", _ACK, 1, self._inflight, *acks))
            _write_hash(commands, self._keys.states, states)
            if commands:
                self._link.round_trip(commands)
        except BaseException:
            # Put everything back in front, in order: a retry may duplicate (consumers de-duplicate
            # by event_id) but never loses an item.
            self._events.extendleft(reversed(batch))
            self._acks[:0] = acks
            self._dead[:0] = dead
            for room, value in states.items():
                self._states.setdefault(room, value)
            for room, value in registry.items():
                self._registry.setdefault(room, value)
            raise
        self.pushed += len(batch)
        if batch:
            self._counters.event_latency.observe_since(time.time(), (t for _, _, t in batch))
        if acks and self._on_acked is not None:
            self._on_acked(acks)
        self.redis_ok_at = time.monotonic()


def _write_hash(commands: list[tuple[Any, ...]], key: str, values: dict[str, bytes | None]) -> None:
    """HDEL the fields mapped to None, HSET the others."""
    gone = [field for field, value in values.items() if value is None]
    if gone:
        commands.append(("HDEL", key, *gone))
    pairs = [item for field, value in values.items() if value is not None for item in (field, value)]
    if pairs:
        commands.append(("HSET", key, *pairs))
