"""The outgoing dispatcher: everything rooms hand to Redis, written in pipelined batches by one greenlet.

Rooms never talk to Redis. They hand events, room states and registry changes to this service (an
append and an Event.set()); acknowledgements come from the in-flight ledger. The dispatcher wakes,
takes a batch and writes it in one round trip: RPUSH per events list and of dead letters, HSET/HDEL of
the registry (``rooms``, before the acknowledgements, so a crash never acks a join whose registry
entry was not written), HDEL of the acknowledged commands from the ledger, HSET of the room states.

One item never costs the others: an event that cannot be encoded is dropped where it is handed over
(counted, logged); a command of a batch that Redis refuses (a list of the wrong type: WRONGTYPE) is
retried alone, boundedly, while the rest of the batch counts as written and is never sent again. While
Redis is down everything stays in memory (events up to ``event_buffer``, then the oldest are dropped and
counted) and the dispatcher retries with backoff, resuming by itself when Redis returns.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable

import gevent
import gevent.event
import redis

from .config import Settings
from .counters import Counters
from .inflight import InflightLedger
from .keys import Keys
from .logs import Throttle
from .pacing import Backoff
from .protocol import encodable, encode
from .redis_conn import REDIS_ANY, REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP, DirectLink, PackError
from .service import Service

log = logging.getLogger(__name__)

#: a list whose RPUSH Redis keeps refusing holds at most this many items for another try ...
RETRY_PER_LIST = 1000
#: ... every this many seconds
REFUSED_RETRY = 2.0


class OutgoingDispatcher(Service):
    """Buffers what rooms hand over and writes it to Redis in batches."""

    name = "outgoing"

    def __init__(self, link: DirectLink, settings: Settings, keys: Keys, ledger: InflightLedger,
                 counters: Counters) -> None:
        super().__init__()
        self._link = link
        self._settings = settings
        self._keys = keys
        self._ledger = ledger
        self._counters = counters
        self._events: deque[tuple[str, bytes, float]] = deque()  # list, payload, time queued
        self._dead: list[tuple[str, bytes]] = []  # (dead-letter list, item)
        self._states: dict[str, bytes | None] = {}
        self._registry: dict[str, bytes | None] = {}
        #: items Redis refused (per list key): retried after a backoff, never with the whole batch
        self._refused: dict[str, deque[bytes]] = {}
        self._refused_at = 0.0
        self.wake = gevent.event.Event()
        self._backoff = Backoff(REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP)
        self._throttle = Throttle(log, counter=counters)
        self.last_error: str | None = None
        self.redis_ok_at = 0.0
        #: what readers held by a full buffer gave ``when_room``: called once it has room again
        self._room_waiters: list[Callable[[], None]] = []
        #: set while nothing waits to be written
        self._empty = gevent.event.Event()
        self._empty.set()
        self._failing = False
        self._gave_up = False
        self._retry_timer: gevent.Greenlet | None = None
        self._apply_limits(settings)

    def _apply_limits(self, settings: Settings) -> None:
        #: readers pause while this many events wait and Redis is answering (backpressure)
        self.high_water = max(settings.event_batch * 4, settings.event_buffer // 4)

    def apply_settings(self, new: Settings) -> None:
        self._settings = new
        self._apply_limits(new)

    # ---------------------------------------------------------------- called by rooms and dispatchers
    def event(self, list_key: str, event: dict[str, Any]) -> None:
        """Queue one event (built by ``protocol.event``). One that cannot be encoded is dropped here."""
        try:
            payload = encode(event)
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
            self.unencodable(event.get("room"), event.get("type"), exc)
            return
        self.event_bytes(list_key, payload, time.time())

    def unencodable(self, room: Any, type: Any, exc: Exception) -> None:
        """An event that cannot be encoded (only a bug can make one: validation refuses what UTF-8
        cannot carry) is dropped, counted and logged."""
        self._counters["events_unencodable"] += 1
        self._throttle.error("unencodable", "room %s: dropped a %s event that cannot be encoded (%s)",
                             _shown(room), _shown(type), exc)

    def event_bytes(self, list_key: str, payload: bytes, ts: float) -> None:
        """Queue one encoded event (``ts``: when it was made, for the latency histogram)."""
        if len(self._events) >= self._settings.event_buffer:
            self._events.popleft()
            self._counters["events_dropped"] += 1
            self._throttle.error("buffer-full", "event buffer full (%d): dropped the oldest event "
                                 "(%d dropped so far)", self._settings.event_buffer,
                                 self._counters["events_dropped"])
        self._events.append((list_key, payload, ts))
        self.wake.set()

    def full(self) -> bool:
        """Past the high-water mark while Redis answers: readers should stop (``when_room``)."""
        return len(self._events) >= self.high_water and not self._failing and not self.stopping.is_set()

    def when_room(self, callback: Callable[[], None]) -> None:
        """Backpressure for readers served from the hub (which must not block): ``callback`` is
        called once, from the outgoing greenlet, when the buffer is no longer ``full()``."""
        self._counters["reads_held"] += 1
        self._room_waiters.append(callback)
        self.wake.set()

    def _has_room(self) -> None:
        """The buffer has room (or Redis is down, or stopping): readers go on."""
        if not self._room_waiters:  # (after every batch: nothing to swap, nothing allocated)
            return
        waiters, self._room_waiters = self._room_waiters, []
        for callback in waiters:
            try:
                callback()
            except Exception:  # one reader must not keep the others waiting
                log.exception("a chat reader could not resume")

    def dead_letter(self, item: bytes, key: str | None = None) -> None:
        """Push a dead letter (``protocol.dead_letter``) to ``control:dead`` (or ``key``: a scoped
        tenant's own ``tenant:<name>:control:dead``)."""
        self._dead.append((key or self._keys.dead, item))
        self.wake.set()

    def state(self, room_id: str, state: dict[str, Any] | None) -> None:
        """Record a room's state in ``rooms:state`` (None removes it). Only the latest one is written."""
        self._states[room_id] = None if state is None else encode(state)
        self.wake.set()

    def registry(self, room_id: str, spec: dict[str, Any] | None) -> None:
        """Record the desired state of a room in ``rooms`` (None removes it); written before acks."""
        self._registry[room_id] = None if spec is None else encode(spec)
        self.wake.set()

    def flushed(self, timeout: float) -> bool:
        """Wait until everything handed over so far was written (or ``timeout``); True when it was."""
        if self._has_work():
            self._empty.clear()
            self.wake.set()
        return self._empty.wait(timeout)

    @property
    def pending(self) -> int:
        return (len(self._events) + self._ledger.pending_acks + len(self._dead) + len(self._states)
                + len(self._registry) + sum(len(q) for q in self._refused.values()))

    # -------------------------------------------------------------------------------- the loop
    def setup(self) -> None:
        self.wake.set()  # a restart after a crash: what was kept goes out at once

    def _run(self) -> None:
        self.setup()
        while not (self.stopping.is_set() and (not self._has_work() or self._gave_up)):
            self.step()

    def step(self) -> None:
        if not self.stopping.is_set():
            self.wake.wait()
            self.wake.clear()
        try:
            while self._has_work():
                self._flush_once()
                if len(self._events) < self.high_water:
                    self._has_room()
                gevent.sleep(0)  # a turn for the readers between batches
            self._failing = False
            self._empty.set()
        except REDIS_ANY as exc:
            self._counters["redis_reconnects:outgoing"] += 1
            self.last_error = str(exc)
            self._failing = True
            self._has_room()  # Redis is down: readers go on, the bounded buffer takes it
            delay = self._backoff.next()
            self._throttle.warning("redis", "Redis write failed (%s); %d items kept, retrying in %.2fs",
                                   exc, self.pending, delay)
            if self.stopping.wait(delay) and self._backoff.failures > 3:
                self._gave_up = True  # stopping and Redis stays down: stop() logs what is left
            self.wake.set()
            return
        if self._refused:
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        """Wake once when the items Redis refused are due for another try (one timer at a time)."""
        if self._retry_timer is None or self._retry_timer.dead:
            self._retry_timer = gevent.spawn_later(max(0.0, self._refused_at - time.monotonic()),
                                                   self.wake.set)

    def _has_work(self) -> bool:
        acks = self._ledger.acks_due or (self.stopping.is_set() and self._ledger.pending_acks)
        return bool(self._events or acks or self._dead or self._states
                    or self._registry or (self._refused and time.monotonic() >= self._refused_at))

    def stop(self, timeout: float = 1.0) -> bool:
        """Flush what is buffered (for at most ``timeout`` s); True when nothing was left behind."""
        self.stopping.set()
        self.wake.set()
        self._has_room()
        greenlet = self.greenlet
        if greenlet is not None and not greenlet.dead:
            greenlet.join(timeout)
            if not greenlet.dead:
                greenlet.kill(block=False)
        if self._retry_timer is not None:
            self._retry_timer.kill(block=False)
        self._link.close()
        self._throttle.flush()
        left = self.pending
        if left:
            log.warning("outgoing dispatcher stopped with %d items unwritten", left)
        return left == 0

    # ------------------------------------------------------------------------------- one batch
    def _flush_once(self) -> None:
        batch = [self._events.popleft() for _ in range(min(len(self._events), self._settings.event_batch))]
        acks = self._ledger.take_acks()
        dead, self._dead = self._dead, []
        states, self._states = self._states, {}
        registry, self._registry = self._registry, {}
        retry: dict[str, deque[bytes]] = {}
        if self._refused and time.monotonic() >= self._refused_at:
            retry, self._refused = self._refused, {}
        try:
            commands, plan = self._commands(batch, acks, dead, states, registry, retry)
            replies = self._link.round_trip(commands, raise_errors=False) if commands else []
        except BaseException as exc:
            # Put everything back in front, in order, whatever failed (Redis, or a bug here): a retry
            # may duplicate (consumers de-duplicate by event_id) but never loses an item.
            self._events.extendleft(reversed(batch))
            self._ledger.give_back_acks(acks)
            self._dead[:0] = dead
            for room, value in states.items():
                self._states.setdefault(room, value)
            for room, value in registry.items():
                self._registry.setdefault(room, value)
            for key, items in retry.items():
                self._refused.setdefault(key, deque(maxlen=RETRY_PER_LIST)).extendleft(reversed(items))
            if isinstance(exc, PackError):
                self._scrub(exc)  # nothing was sent: drop what cannot be sent, the rest goes next
                return
            raise
        if not commands:
            return
        self.redis_ok_at = time.monotonic()
        self._backoff.reset()
        for (what, key, payloads), reply in zip(plan, replies):
            if isinstance(reply, redis.ResponseError):
                self._refused_item(what, key, payloads, reply)
        self._counters["events_pushed"] += len(batch)
        if batch:
            self._counters.event_latency.observe_since(time.time(), [t for _, _, t in batch])
        if acks:
            self._ledger.written(acks)

    def _commands(self, batch: list[tuple[str, bytes, float]], acks: list[int], dead: list[tuple[str, bytes]],
                  states: dict[str, bytes | None], registry: dict[str, bytes | None],
                  retry: dict[str, deque[bytes]]) -> tuple[list[tuple[Any, ...]], list[tuple[str, str, list[bytes]]]]:
        """The batch's commands, each with what it carries (kind, key, list items), so a reply that
        is an error can be told apart from the others."""
        by_list: dict[str, list[bytes]] = {}
        for key, items in retry.items():
            by_list.setdefault(key, []).extend(items)
        for key, payload, _ in batch:  # (not ``setdefault(key, [])``: a new list for every event)
            payloads = by_list.get(key)
            if payloads is None:
                payloads = by_list[key] = []
            payloads.append(payload)
        for key, item in dead:
            by_list.setdefault(key, []).append(item)
        commands: list[tuple[Any, ...]] = []
        plan: list[tuple[str, str, list[bytes]]] = []
        for key, payloads in by_list.items():
            commands.append(("RPUSH", key, *payloads))
            plan.append(("list", key, payloads))
        _write_hash(commands, plan, "registry", self._keys.rooms, registry)
        if acks:
            commands.append(self._ledger.hdel_command(acks))
            plan.append(("acks", self._ledger.key, []))
        _write_hash(commands, plan, "states", self._keys.states, states)
        return commands, plan

    def _scrub(self, exc: PackError) -> None:
        """A batch could not be encoded. Validation refuses what Redis cannot carry, so only a bug
        gets here: drop the keys and fields that cannot be sent (counted, logged), keep the rest."""
        def ok(text: Any) -> bool:
            return not isinstance(text, str) or encodable(text)

        dropped = 0
        for table in (self._states, self._registry):
            for field in [f for f in table if not ok(f)]:
                del table[field]
                dropped += 1
        kept = deque(item for item in self._events if ok(item[0]))
        dropped += len(self._events) - len(kept)
        self._events = kept
        for key in [k for k in self._refused if not ok(k)]:
            dropped += len(self._refused.pop(key))
        self._counters["events_unencodable"] += dropped
        self._throttle.error("pack", "dropped %d items that cannot be sent to Redis: %s", dropped, exc)

    def _refused_item(self, what: str, key: str, payloads: list[bytes], error: redis.ResponseError) -> None:
        """Redis refused one command of the batch (the others were written): keep its items for a
        later try on their own, bounded, and say so."""
        self._counters["redis_refused:" + what] += 1
        self.last_error = f"{key}: {error}"
        if what == "list":
            kept = self._refused.setdefault(key, deque(maxlen=RETRY_PER_LIST))
            before = len(kept)
            kept.extend(payloads)
            lost = before + len(payloads) - len(kept)
            if lost:
                self._counters["events_dropped"] += lost
            self._refused_at = time.monotonic() + REFUSED_RETRY
            self._throttle.error("refused:" + key, "Redis refused a write to %s (%s): %d items kept for "
                                 "another try, %d dropped", key, error, len(kept), lost)
        else:
            self._throttle.error("refused:" + what, "Redis refused the %s write to %s (%s)", what, key, error)


def _write_hash(commands: list[tuple[Any, ...]], plan: list[tuple[str, str, list[bytes]]], what: str,
                key: str, values: dict[str, bytes | None]) -> None:
    """HDEL the fields mapped to None, HSET the others."""
    gone = [field for field, value in values.items() if value is None]
    if gone:
        commands.append(("HDEL", key, *gone))
        plan.append((what, key, []))
    pairs = [item for field, value in values.items() if value is not None for item in (field, value)]
    if pairs:
        commands.append(("HSET", key, *pairs))
        plan.append((what, key, []))


def _shown(value: Any) -> str:
    """A value for a log line: short, and printable whatever it holds."""
    return ascii(value)[:80] if not isinstance(value, str) else ascii(value)[1:-1][:80]

