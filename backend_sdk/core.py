"""The SDK's core: every decision a consumer makes, and no I/O.

``Backend`` (gevent or threads, ``backend.py``) and ``AsyncBackend`` (asyncio, ``aio.py``) are thin
shells around it, and ``backend_sdk.testing`` runs it without Redis. The core never touches a socket:
what it decides comes out of generators as *steps*, small frozen dataclasses (``steps.py``): ``Run`` a
handler, ``Sleep`` (a backoff), ``Ack``, ``DeadLetter`` (with its entry), ``GiveBack``, ``Push`` a
command, ``Once``, ``Read``; and plain Redis operations, ``Command`` and ``Script``. A shell runs a
generator with ``drive``/``adrive`` and a ``perform(step)`` of its own; the reply of a step is sent
back in, a ``redis.RedisError`` thrown back in, so what to do about a failure is decided here as well.

One event: ``pop`` (BLMOVE ``<events>`` -> ``<events>:processing:<consumer>``, then a drain),
``receive`` (bounded, decoded and validated, or refused), ``handle`` (each matching handler, attempts
with backoff, a dead letter after the last; then the ack, or the give-back when the consumer stops
during a backoff). Around it: ``begin``/``finish`` (heartbeat, own leftovers), ``beat`` (the heartbeat,
on its own timer, never tied to popping) and ``recovery_pass`` (on its own timer: under a lock, the
lists of consumers whose heartbeat expired go back to the events list).

Beside it: ``ledger.py`` (the consumer's keys, and the events it holds), ``dead.py`` (the bounded
dead-letter entry), ``events.py`` (decoding and validating an item), ``routing.py`` (which handlers).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import ujson

from frontend.keys import EVENTS_NAME_RE
from frontend.keys import Keys as FrontendKeys
from frontend.tenants import TENANT_NAME_RE
from frontend.logs import Throttle
from frontend.redis_conn import REDIS_ANY

from . import commands
from .dead import DEAD_EVENT_LIMIT, dead_entry, describe
from .errors import BackendError, DecodeError
from .events import Event, Joined
from .ledger import ConsumerKeys, Ledger, text_of
from .routing import Handler, Router
from .steps import (Ack, Command, DeadLetter, GiveBack, Once, Push, Read, Run, Script, Sleep, Steps,
                    adrive, drive)

__all__ = ["BaseBackend", "ConsumerKeys", "DEAD_EVENT_LIMIT", "Delivery", "Ledger", "SCRIPTS", "adrive",
           "default_consumer", "drive", "rooms_view"]

log = logging.getLogger(__name__)
_throttled = Throttle(log, 10.0)

#: the Lua scripts (``frontend/lua/<name>.lua``) the shells register
SCRIPTS = ("consumer_beat", "drain", "give_back", "recover_dead", "requeue_all", "unlock")
#: the most consumers one recovery pass looks at (the rest wait for the next pass)
RECOVERY_BATCH = 100
#: how long the recovery lock lives when its holder dies in the middle of a pass
RECOVERY_LOCK_MS = 10_000
#: the most events a consumer holds at once (the drain script returns them in one reply)
MAX_PREFETCH = 1000
#: the most rooms whose nick the consumer remembers (from ``joined`` events)
MAX_ROOM_NICKS = 100_000


def default_consumer() -> str:
    """``<hostname>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"





@dataclass(frozen=True)
class Delivery:
    """One popped item: its event, or why it was refused (``error``)."""

    raw: bytes = field(repr=False)
    event: Event | None = None
    error: str = ""

    @property
    def key(self) -> str:
        """What orders it: events of one room are handled one at a time (refused items: "")."""
        return self.event.room if self.event is not None else ""


class BaseBackend(Router):
    """Settings, routing, the command API and every consumer decision, shared by both shells.

    Options (all keyword-only): ``events`` (the list to consume: ``messages`` or ``messages.<name>``),
    ``control``, ``key_prefix``, ``consumer`` (default ``hostname:pid``), ``concurrency``, ``prefetch``
    (events held at once, default 2 x concurrency), ``retries``, ``retry_delay``, ``retry_delay_max``,
    ``block_timeout``, ``prefixes``, ``nick``, ``help_command``, ``max_text_bytes``, ``heartbeat_ttl``
    (the heartbeat key's lifetime; it is rewritten every third of it), ``recovery_interval`` (how
    often the lists of dead consumers are looked for; ``None`` turns that off), ``max_event_bytes``
    (a larger item is dead-lettered without being decoded), ``tenant`` (a scoped tenant's backend:
    its keys are the tenant's own, ``tenant:<name>:...`` under ``key_prefix``, the only ones the Redis
    user of ``greenroom tenant credentials`` may touch).
    """

    #: True for ``AsyncBackend``: its command methods return awaitables
    asynchronous = False

    def __init__(
        self,
        redis_url: str,
        *,
        events: str = "messages",
        control: str = "control",
        key_prefix: str = "",
        consumer: str | None = None,
        concurrency: int = 10,
        prefetch: int | None = None,
        retries: int = 2,
        retry_delay: float = 0.5,
        retry_delay_max: float = 30.0,
        block_timeout: float = 1.0,
        prefixes: Iterable[str] = ("!",),
        nick: str | None = None,
        help_command: str | None = "help",
        max_text_bytes: int = commands.MAX_TEXT_BYTES,
        heartbeat_ttl: float = 15.0,
        recovery_interval: float | None = 10.0,
        max_event_bytes: int = 1 << 20,
        tenant: str | None = None,
    ) -> None:
        super().__init__(prefixes=prefixes, nick=nick, help_command=help_command)
        if concurrency < 1 or retries < 0 or block_timeout <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and block_timeout > 0")
        if not isinstance(events, str) or not EVENTS_NAME_RE.match(events):
            raise ValueError(f"events must name an events list, 'messages' or 'messages.<name>' "
                             f"(letters, digits, '_', '-', '.'), not {events!r}")
        if heartbeat_ttl <= 0 or (recovery_interval is not None and recovery_interval <= 0):
            raise ValueError("heartbeat_ttl and recovery_interval must be > 0 (recovery_interval "
                             "None: no recovery)")
        if tenant is not None:
            if not isinstance(tenant, str) or not TENANT_NAME_RE.match(tenant):
                raise ValueError(f"tenant must be a registered tenant's name, not {tenant!r}")
            key_prefix = FrontendKeys(key_prefix).tenant(tenant)
        self.tenant = tenant
        self.redis_url = redis_url
        self.consumer = consumer or default_consumer()
        self.keys = ConsumerKeys(key_prefix, events, control, self.consumer)
        self.concurrency = concurrency
        self.prefetch = prefetch or 2 * concurrency
        if not 1 <= self.prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be between 1 and {MAX_PREFETCH}")
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_delay_max = retry_delay_max
        self.block_timeout = block_timeout
        self.max_text_bytes = max_text_bytes
        self.max_event_bytes = max_event_bytes
        self.heartbeat_ttl = heartbeat_ttl
        #: the heartbeat is rewritten this often: a third of its lifetime, so two writes may fail
        self.heartbeat_interval = heartbeat_ttl / 3
        self.recovery_interval = recovery_interval
        self.ledger = Ledger()
        self.running = False
        self._room_nicks: OrderedDict[str, str] = OrderedDict()
        #: runs the steps of the public calls (commands, ``once``, ``rooms``): set by the shell,
        #: replaced by ``backend_sdk.testing``
        self._run_steps: Callable[[Steps[Any]], Any] = self._no_shell
        #: counters, for logs and tests
        self.stats = {"handled": 0, "failed": 0, "retried": 0, "dead": 0, "requeued": 0, "refused": 0,
                      "recovery_passes": 0, "denied": 0}

    @staticmethod
    def _no_shell(steps: Steps[Any]) -> Any:
        raise BackendError("BaseBackend does no I/O: use Backend or AsyncBackend")

    # ------------------------------------------------------------------------------------- commands
    def say(self, room: str, text: str, *, to: str | None = None, expires: float | None = None,
            cmd_id: str | int | None = None) -> Any:
        """Say ``text`` in ``room`` (privately to the nick ``to`` when given). Multi-line text is
        sent line by line. ``expires``: unix time after which the frontend drops it instead."""
        return self._send("say", room, text=text, to=to, expires=expires, cmd_id=cmd_id)

    def action(self, room: str, text: str, *, to: str | None = None, expires: float | None = None,
               cmd_id: str | int | None = None) -> Any:
        """``/me text`` in ``room`` (or privately to ``to``)."""
        return self._send("action", room, text=text, to=to, expires=expires, cmd_id=cmd_id)

    def topic(self, room: str, text: str, *, cmd_id: str | int | None = None) -> Any:
        """Set the topic of ``room``."""
        return self._send("topic", room, text=text, cmd_id=cmd_id)

    def join(self, room: str, spec: Mapping[str, Any], *, cmd_id: str | int | None = None) -> Any:
        """Create (or move) room ``room`` with a room spec (PROTOCOL.md, "Room spec")."""
        return self._send("join", room, spec=spec, cmd_id=cmd_id)

    def part(self, room: str, reason: str | None = None, *, cmd_id: str | int | None = None) -> Any:
        """Leave ``room`` and remove it from the ``rooms`` registry."""
        return self._send("part", room, reason=reason, cmd_id=cmd_id)

    def ping(self, room: str, cmd_id: str | int | None = None) -> Any:
        """Ask ``room`` for a ``pong`` event; returns the ``cmd_id`` it will carry."""
        return self._send("ping", room, cmd_id=cmd_id or commands.new_cmd_id(), _result="cmd_id")

    def rooms(self) -> Any:
        """The room registry and live state: ``{room: {"spec": {...}, "state": {...} or None}}``."""
        return self._run_steps(self._read_rooms())

    def once(self, event: Event | str, ttl: int = 86400) -> Any:
        """True the first time it is called for this event (id) within ``ttl`` seconds, else False.

        Guard side effects that must not repeat when an event is delivered again::

            if bot.once(event): charge(card)
        """
        event_id = event if isinstance(event, str) else event.event_id
        if not event_id:
            raise ValueError("the event has no event_id")
        if not isinstance(ttl, int) or ttl < 1:
            raise ValueError("ttl is a whole number of seconds, at least 1")
        key = self.keys.once(event_id)
        return self._run_steps(self._once(key, ttl))

    def _send(self, type: str, room: str, _result: str | None = None, **fields: Any) -> Any:
        command = commands.build(type, room, max_text_bytes=self.max_text_bytes, **fields)
        return self._run_steps(self._push(commands.encode(command),
                                          command[_result] if _result else command))

    def _push(self, item: bytes, result: Any) -> Steps[Any]:
        yield Push(item, Command(("RPUSH", self.keys.control, item)))
        return result

    def _once(self, key: str, ttl: int) -> Steps[bool]:
        return bool((yield Once(key, ttl, Command(("SET", key, self.consumer, "NX", "EX", ttl)))))

    def _read_rooms(self) -> Steps[dict[str, dict[str, Any]]]:
        specs = yield Read(self.keys.rooms, Command(("HGETALL", self.keys.rooms)))
        states = yield Read(self.keys.states, Command(("HGETALL", self.keys.states)))
        return rooms_view(specs, states)

    # -------------------------------------------------------------------------------------- routing
    def _observe(self, event: Event) -> None:
        """Learn the bot's nick in a room from its ``joined`` events (the most recent rooms)."""
        if isinstance(event, Joined) and event.nick:
            self._room_nicks[event.room] = event.nick
            self._room_nicks.move_to_end(event.room)
            while len(self._room_nicks) > MAX_ROOM_NICKS:
                self._room_nicks.popitem(last=False)

    def nicks(self, room: str) -> set[str]:
        """The bot's own nicks in ``room``: ``nick=`` and the one its last ``joined`` reported."""
        return {n for n in (self.nick, self._room_nicks.get(room)) if n}

    def _attempts(self, handler: Handler) -> int:
        return 1 + (self.retries if handler.retries is None else handler.retries)

    def _backoff(self, attempt: int) -> float:
        """Exponential with full jitter in its upper half: base * 2**(attempt-1), capped."""
        delay = min(self.retry_delay_max, self.retry_delay * 2 ** (attempt - 1))
        return delay / 2 + random.random() * delay / 2

    # ------------------------------------------------------------------------------- one event
    def receive(self, raw: bytes) -> Delivery:
        """Decide what a popped item is: an event to handle, or refused (too large, not an event)."""
        if len(raw) > self.max_event_bytes:
            return Delivery(raw, error=f"DecodeError: the item is {len(raw)} bytes, the limit is "
                                       f"{self.max_event_bytes}")
        try:
            return Delivery(raw, Event.from_json(raw, backend=self))
        except DecodeError as exc:
            return Delivery(raw, error=describe(exc))

    def handle(self, delivery: Delivery) -> Steps[bool]:
        """Everything that happens to one popped item. Returns False when it was given back."""
        if delivery.event is None:
            yield from self.refuse(delivery)
            return True
        event, raw = delivery.event, delivery.raw
        self._observe(event)
        for handler, delivered in self.plan(event, self.nicks(event.room)):
            if handler.denial:  # a restricted command from a sender it does not admit: answered, not run
                self.stats["denied"] += 1
                log.info("room %s: refused %s to %r (account %r): not an allowed account", event.room,
                         getattr(delivered, "command", None), getattr(event, "sender", None),
                         getattr(event, "account", None) or getattr(event, "jid", None))
            attempts = self._attempts(handler)
            for attempt in range(1, attempts + 1):
                error = yield Run(handler, delivered, attempt, attempts)
                if error is None:
                    break
                self._log_failure(handler, event, attempt, attempts, error)
                if attempt == attempts:
                    if not (yield from self._dead_letter(raw, handler.name, error)):
                        return True  # stays un-acked: delivered again
                elif (yield Sleep(self._backoff(attempt))):
                    yield from self.give_back(raw)  # stopping: the next consumer retries it
                    return False
        self.stats["handled"] += 1
        yield from self.ack(raw)
        return True

    def refuse(self, delivery: Delivery) -> Steps[None]:
        """An item that is no event: dead-lettered and acked (it never reaches a handler)."""
        self.stats["refused"] += 1
        _throttled.warning("refused", "refused an item of %s (%d bytes): %s; dead-lettered to %s",
                           self.keys.events, len(delivery.raw), delivery.error[:200], self.keys.dead)
        if (yield from self._dead_letter(delivery.raw, "backend_sdk.decode", delivery.error)):
            yield from self.ack(delivery.raw)

    def ack(self, raw: bytes) -> Steps[None]:
        try:
            yield Ack(raw, Command(("LREM", self.keys.processing, 1, raw)))
        except REDIS_ANY as exc:
            log.error("could not ack an event (%r): it will be delivered again", exc)
        finally:
            self.ledger.untrack(raw)

    def give_back(self, raw: bytes) -> Steps[None]:
        """Put an event that was popped and not handled back at the head of the list."""
        try:
            yield GiveBack(raw, Script("give_back", (self.keys.processing, self.keys.events), (raw,)))
            self.stats["requeued"] += 1
        except REDIS_ANY as exc:
            log.error("could not give an event back (%r): it waits in %s", exc, self.keys.processing)
        finally:
            self.ledger.untrack(raw)

    def _dead_letter(self, raw: bytes, handler: str, error: BaseException | str) -> Steps[bool]:
        """Write the dead letter; False when Redis refused it (the event then stays un-acked)."""
        text = error if isinstance(error, str) else describe(error)
        entry = self.dead_entry(raw, handler, error)
        try:
            yield DeadLetter(raw, handler, text, entry, Command(("RPUSH", self.keys.dead, entry)))
            return True
        except REDIS_ANY as exc:
            log.error("could not write a dead letter (%r): the event stays un-acked in %s", exc,
                      self.keys.processing)
            self.ledger.untrack(raw)  # adopted again after the next failed pop
            return False

    def dead_entry(self, raw: bytes, handler: str, error: BaseException | str) -> bytes:
        """The ``<events>:dead`` item for ``raw`` (``dead.dead_entry``)."""
        return dead_entry(raw, handler, error, self.consumer)

    def _log_failure(self, handler: Handler, event: Event, attempt: int, attempts: int,
                     exc: BaseException) -> None:
        if attempt < attempts:
            self.stats["retried"] += 1
            log.warning("handler %s failed on %s %r (attempt %d of %d): %r; retrying", handler.name,
                        event.type, event.event_id, attempt, attempts, exc)
        else:
            self.stats["dead"] += 1
            log.error("handler %s failed on %s %r after %d attempts: %r; dead-lettered to %s",
                      handler.name, event.type, event.event_id, attempts, exc, self.keys.dead,
                      exc_info=exc)

    # ---------------------------------------------------------------------------------- consuming
    def pop(self, most: int) -> Steps[list[bytes]]:
        """BLMOVE one event (blocking at most ``block_timeout``), then drain up to ``most - 1`` more.

        After a Redis error: what a lost reply left in our processing list is adopted.
        """
        keys, raws = self.keys, []
        try:
            raw = yield Command(("BLMOVE", keys.events, keys.processing, "LEFT", "RIGHT",
                                 self.block_timeout), blocking=True)
            if raw is None:
                return []
            self.ledger.track(raw)
            raws.append(raw)
            if most > 1:
                more = yield Script("drain", (keys.events, keys.processing), (most - 1,), blocking=True)
                self.ledger.track(*more)
                raws.extend(more)
            return raws
        except REDIS_ANY as exc:
            log.warning("redis error while popping %s: %r; retrying", keys.events, exc)
            yield Sleep(1.0)
            return raws + (yield from self.adopt_stranded())

    def adopt_stranded(self) -> Steps[list[bytes]]:
        """The events in our processing list that we do not track (a BLMOVE or drain whose reply was
        lost moved them there): from now on ours to handle."""
        try:
            held = yield Command(("LRANGE", self.keys.processing, 0, -1))
        except REDIS_ANY as exc:
            log.warning("redis error: %r", exc)
            return []
        stranded = self.ledger.adopt(held)
        if stranded:
            log.warning("adopting %d event(s) stranded in %s by a lost reply", len(stranded),
                        self.keys.processing)
        return stranded

    def begin(self) -> Steps[None]:
        """Start consuming: the heartbeat first (a recovering consumer now sees us alive), then our
        own leftovers (what an earlier process with our name left) back to the list, then one
        recovery pass. A Redis error is logged: the loops retry."""
        if self.running:
            raise BackendError(f"consumer {self.consumer} is already running")
        self.running = True
        try:
            yield from self.beat()
            yield from self._requeue(self.consumer)
        except REDIS_ANY as exc:
            log.warning("redis error at start: %r", exc)
        if self.recovery_interval is not None:
            yield from self.recovery_pass()

    def finish(self) -> Steps[None]:
        """After the last ack (and after the heartbeat stopped): give back whatever is left, forget
        the heartbeat, leave the registry."""
        try:
            left = yield from self._requeue(self.consumer)
            yield Command(("DEL", self.keys.alive))
            yield Command(("ZREM", self.keys.consumers, self.consumer))
            log.info("stopped %s: %d handled, %d dead-lettered, %d given back", self.consumer,
                     self.stats["handled"], self.stats["dead"], left)
        except REDIS_ANY as exc:
            log.error("could not give back %s's un-acked events (%r): they wait in %s for the next "
                      "start or a recovery", self.consumer, exc, self.keys.processing)
        finally:
            self.ledger.clear()
            self.running = False

    def beat(self, now: float | None = None) -> Steps[None]:
        """The heartbeat: our key with its lifetime, and our deadline in the consumers registry."""
        ttl_ms = max(1, int(self.heartbeat_ttl * 1000))
        deadline = int((time.time() if now is None else now) * 1000) + ttl_ms
        yield Script("consumer_beat", (self.keys.alive, self.keys.consumers),
                     (os.getpid(), ttl_ms, deadline, self.consumer))

    def recovery_pass(self, now: float | None = None) -> Steps[int]:
        """One periodic pass: under the recovery lock (``SET NX PX``: one consumer at a time), every
        registered consumer whose deadline passed is checked, and when its heartbeat key is gone its
        processing list goes back to the head of the events list (in one script, with the check).
        Returns how many events moved."""
        keys, me = self.keys, self.consumer
        now_ms = int((time.time() if now is None else now) * 1000)
        try:
            if not (yield Command(("SET", keys.recovery_lock, me, "NX", "PX", RECOVERY_LOCK_MS))):
                return 0  # another consumer is at it
            self.stats["recovery_passes"] += 1
            names = yield Command(("ZRANGEBYSCORE", keys.consumers, "-inf", now_ms, "LIMIT", 0,
                                   RECOVERY_BATCH))
            moved = 0
            for name in names:
                moved += yield from self._requeue_dead(text_of(name))
            yield Script("unlock", (keys.recovery_lock,), (me,))
            return moved
        except REDIS_ANY as exc:
            log.warning("recovery pass skipped (%r): the next one tries again", exc)
            return 0

    def requeue(self, consumer: str | None = None) -> Steps[int]:
        """``recover()``: one named consumer's list (whatever its heartbeat says), or the list of
        every consumer whose heartbeat expired (a SCAN, so also lists no registry knows)."""
        keys = self.keys
        if consumer is not None:
            if consumer == self.consumer and self.running:
                raise BackendError("recover() of this running consumer: it still owns that list")
            moved = yield from self._requeue(consumer)
            if consumer != self.consumer:
                yield Command(("ZREM", keys.consumers, consumer))
            return moved
        names: set[str] = set()
        cursor: Any = 0
        while True:
            cursor, found = yield Command(("SCAN", cursor, "MATCH", keys.processing_pattern,
                                           "COUNT", 500))
            names.update(keys.consumer_of(key) for key in found)
            if int(cursor) == 0:
                break
        names.update(text_of(name) for name in (yield Command(("ZRANGE", keys.consumers, 0, -1))))
        moved = 0
        for name in sorted(names):
            moved += yield from self._requeue_dead(name)
        return moved

    def _requeue(self, consumer: str) -> Steps[int]:
        moved = int((yield Script("requeue_all", (self.keys.processing_of(consumer), self.keys.events))))
        if moved:
            self.stats["requeued"] += moved
            log.warning("re-queued %d un-acked event(s) of consumer %r to %s", moved, consumer,
                        self.keys.events)
        return moved

    def _requeue_dead(self, consumer: str) -> Steps[int]:
        """A consumer's list back to the events list, only when its heartbeat is gone."""
        if consumer == self.consumer:
            return 0
        keys = self.keys
        moved = int((yield Script("recover_dead", (keys.alive_of(consumer), keys.processing_of(consumer),
                                                   keys.events, keys.consumers), (consumer,))))
        if moved > 0:
            self.stats["requeued"] += moved
            log.warning("re-queued %d un-acked event(s) of consumer %r, whose heartbeat expired, to %s",
                        moved, consumer, keys.events)
        return max(moved, 0)

    # ------------------------------------------------------------------------------------ signals
    def on_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT: the first stops gracefully, a second exits at once."""
        if self.stopping():
            log.warning("second signal %d: exiting now", signum)
            os._exit(128 + signum)
        log.info("signal %d: finishing running handlers (again to exit at once)", signum)
        self.stop()

    def stop(self) -> None:
        raise NotImplementedError

    def stopping(self) -> bool:
        raise NotImplementedError


def rooms_view(specs: Mapping[bytes, bytes], states: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """``{room: {"spec": ..., "state": ...}}`` from the ``rooms`` and ``rooms:state`` hashes."""
    def load(value: bytes | None) -> Any:
        try:
            return ujson.loads(value) if value is not None else None
        except ValueError:
            return None

    return {text_of(room): {"spec": load(specs.get(room)), "state": load(states.get(room))}
            for room in sorted(set(specs) | set(states))}
