"""A room: one greenlet and one gevent queue per room id, the only place the room's commands are handled.

``Room(id, spec, spec_json, ctx)`` gets what it uses in a ``RoomContext``: the session pool to find its
chat session, the outgoing dispatcher for its events and states, the ledger to acknowledge commands,
the counters and the current settings. Lifecycle: ``start()`` spawns the greenlet (in the registry's
``gevent.pool.Group``), which attaches the room to a chat session (shared or its own) and then blocks
on its queue (parked in the hub while the queue is empty; ``submit`` wakes it with one hub callback, the
queued commands then handled in that one wake-up). Commands are handled strictly in order, one at a
time; a command whose handling fails
unexpectedly is answered with an ``error`` event and acknowledged, and the room goes on. ``part``
detaches the room and ends the greenlet (what was queued behind it gets ``not_sent``);
``shutdown()`` ends it without parting (the room stays in the registry so a restart rejoins it).
States (connecting, joining, joined, backoff, failed, parted) are reported by the session through
``set_state`` and written to ``rooms:state``. Inbound chat lines are limited per room
(``room_event_rate``/``room_event_burst``): past it they are dropped and counted, so one flooded room
cannot fill Redis.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import gevent
import gevent.queue

from . import protocol
from .chat.base import ChatSession
from .config import Settings
from .counters import Counters
from .inflight import InflightLedger
from .keys import Keys
from .logs import Throttle
from .pacing import TokenBucket
from .protocol import Command, Spec

if TYPE_CHECKING:
    from .outgoing import OutgoingDispatcher
    from .sessions import SessionPool
    from .tenants import TenantTable

log = logging.getLogger(__name__)

_SHUTDOWN = object()
#: events that carry what people say: the ones the per-room inbound limit applies to
_CHAT_EVENTS = frozenset({"message", "action"})


class Wakes:
    """How the rooms' parked greenlets are woken: one hub callback each, at once (``wake``); or, while
    a hand-over holds them (``held()``: the incoming dispatcher handing a batch to the rooms), together
    when it ends, so that a hand-over that yields to the hub now and then (for the other connections'
    reads) still gives each room its commands of the whole batch in one wake-up."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[gevent.Greenlet] | None = None

    def wake(self, parked: gevent.Greenlet) -> None:
        held = self._held
        if held is None:
            gevent.get_hub().loop.run_callback(_resume, parked)
        else:
            held.append(parked)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._held is not None:  # held already (nested): the outer one wakes them
            yield
            return
        self._held = []
        try:
            yield
        finally:
            parked, self._held = self._held, None
            run = gevent.get_hub().loop.run_callback
            for greenlet in parked:
                run(_resume, greenlet)


@dataclass
class RoomContext:
    """What a room uses, and nothing else."""

    outbox: "OutgoingDispatcher"
    ledger: InflightLedger
    sessions: "SessionPool"
    counters: Counters
    keys: Keys
    frontend_id: str
    #: the current Settings (a reload swaps them)
    settings: Callable[[], Settings]
    throttle: Throttle
    #: the tenant registry (where a scoped tenant's rooms write their events)
    tenants: "TenantTable | None" = None
    #: the registry's: a room ended without a ``part`` (``"moved"``); set by the registry
    left: Callable[["Room", str], None] | None = None
    #: ``room_event_rate`` (0: no inbound limit), kept here so a chat line costs an attribute read
    inbound_rate: float = 0.0
    #: how parked room greenlets are woken (the incoming dispatcher holds them during a hand-over)
    wakes: Wakes = field(default_factory=Wakes)

    def apply_settings(self, new: Settings) -> None:
        self.inbound_rate = new.room_event_rate


class RoomQueue(gevent.queue.UnboundQueue):
    """A room's queue: gevent's ``Queue`` with no bound (the intake's in-flight limits bound it) that
    holds a deque only while it has commands: ``put`` makes one for an empty queue, and ``idle()``
    (the room's greenlet, before it parks) lets it go. Most rooms are idle most of the time, and an
    empty deque is 0.76 KB. Nothing waits in ``get``: the room's greenlet takes with ``get_nowait``
    and parks in the hub (``Room.run``), so ``put`` has no getter to wake."""

    __slots__ = ()

    def _create_queue(self, items: Iterable[Any] = ()) -> Any:
        return collections.deque(items) if items else ()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        queue = self.queue
        if queue:
            queue.append(item)
        else:
            self.queue = collections.deque((item,))

    def idle(self) -> None:
        """The queue is empty and its greenlet parks: no deque until the next ``put``."""
        self.queue = ()


class RoomGreenlet(gevent.Greenlet):
    """A room's greenlet: gevent's, with a slot for its room, so that the registry links one method to
    every room's greenlet (``RoomRegistry._crashed`` finds the room in the slot). A closure per room,
    and the deeper C stack that calling a bound method ``room.run`` leaves saved, were 0.4 KB a room
    more (``tests/bench/memory_probe``)."""

    __slots__ = ("room",)


class Room:
    """One chat room (an IRC channel or an XMPP MUC) as seen by its greenlet."""

    __slots__ = ("id", "spec", "spec_text", "queue", "state", "state_since", "attempts", "last_error",
                 "_ctx", "session", "_events_key", "_head", "greenlet", "parted", "_inbound", "_parked",
                 "__weakref__")

    def __init__(self, room_id: str, spec: Spec, spec_json: dict, ctx: RoomContext) -> None:
        self.id = room_id
        self.spec = spec
        self.spec_text = protocol.spec_text(spec_json)  # what ``has_spec`` compares a join's spec with
        self.queue = RoomQueue()
        self.state = "new"
        self.state_since = time.time()
        self.attempts = 0
        self.last_error: str | None = None
        self._ctx = ctx
        self.session: ChatSession | None = None
        self._events_key = self._events_key_for(spec)
        self._head = protocol.event_head(room_id, spec.protocol, spec.tenant)
        self.greenlet: gevent.Greenlet | None = None
        self.parted = False
        self._inbound: TokenBucket | None = None  # made on the first chat line: most rooms are quiet
        #: the room's greenlet while it is parked on its empty queue (``run``), else None
        self._parked: gevent.Greenlet | None = None

    def __repr__(self) -> str:
        return f"<Room {self.id} {self.state}>"

    def has_spec(self, spec_json: dict) -> bool:
        """Whether a join's spec is the one this room runs (the same JSON, keys in any order)."""
        return protocol.spec_text(spec_json) == self.spec_text

    def _events_key_for(self, spec: Spec) -> str:
        tenants = self._ctx.tenants
        if tenants is not None:
            return tenants.events_key(spec.tenant, spec.events)
        return self._ctx.keys.key(spec.events) if spec.events else self._ctx.keys.messages

    # ------------------------------------------------------------------------- for the dispatcher
    def submit(self, command: Command) -> None:
        self.queue.put(command)
        parked = self._parked
        if parked is not None:
            self._wake(parked)

    def shutdown(self) -> None:
        """Handle what is queued, then end without parting."""
        self.submit(_SHUTDOWN)  # type: ignore[arg-type]

    def _wake(self, parked: gevent.Greenlet) -> None:
        """The parked greenlet has commands again: one hub callback switches back into it (``Wakes``;
        gevent's ``Queue.get`` would make a Waiter, a getters entry and an unlock callback for each
        wake-up: a hand-off cost 7.6 µs against 5.0 here, 1.8 of both the dispatcher's own yield,
        ``tests/bench/floor.py``; at a paced load a room wakes up for nearly every line)."""
        self._parked = None
        self._ctx.wakes.wake(parked)

    # ------------------------------------------------------------------------- RoomLink (sessions)
    def emit(self, type: str, **fields: Any) -> None:
        self._emit(type, protocol.encode_event, fields)

    def emit_body(self, type: str, body: str) -> None:
        """``emit`` with the fields already encoded (``protocol.encode_fields``): what a session
        hands every room of a channel, encoded once."""
        self._emit(type, protocol.encode_event_body, body)

    def _emit(self, type: str, encode: Callable[[str, str, Any], tuple[bytes, float]], what: Any) -> None:
        """The room's inbound limit for chat events, then ``encode(type, head, what)`` to the outbox
        (an event that cannot be encoded is counted and logged there, never raised)."""
        if type in _CHAT_EVENTS and self._ctx.inbound_rate and not self._inbound_allowed():
            return
        try:
            payload, ts = encode(type, self._head, what)
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
            self._ctx.outbox.unencodable(self.id, type, exc)
            return
        self._ctx.outbox.event_bytes(self._events_key, payload, ts)

    def _inbound_allowed(self) -> bool:
        bucket = self._inbound
        rate = self._ctx.inbound_rate
        if bucket is None or bucket.rate != rate:  # made on the first chat line; again after a reload
            bucket = self._inbound = TokenBucket(rate, self._ctx.settings().room_event_burst)
        if bucket.take() == 0.0:
            return True
        self._ctx.counters["events_rate_dropped"] += 1
        self._ctx.throttle.warning("inbound:" + self.id, "room %s: more than %g lines/s from the chat "
                                   "server: dropped (counted in greenroom_events_rate_dropped_total)",
                                   self.id, bucket.rate)
        return False

    def set_state(self, state: str, *, error: str | None = None) -> None:
        if state == self.state and error == self.last_error:
            return
        if state in ("connecting", "joining") and self.state in ("backoff", "connecting", "joining"):
            self.attempts += 1 if state == "connecting" else 0
        elif state == "joined":
            self.attempts = 0
        self.state, self.state_since = state, time.time()
        if error is not None:
            self.last_error = error
        log.info("room %s: %s%s", self.id, state, f" ({error})" if error else "")
        self._ctx.outbox.state(self.id, {
            "state": state, "since": self.state_since, "attempts": self.attempts,
            "error": self.last_error, "frontend": self._ctx.frontend_id, "protocol": self.spec.protocol,
        })

    def ack(self, command: Command) -> None:
        if command.received:
            self._ctx.counters.command_latency.observe(time.time() - command.received)
        self._ctx.ledger.ack(command.seq)

    # ----------------------------------------------------------------------------------- greenlet
    def run(self) -> None:
        """The room's greenlet (the registry spawns it, and again after a crash)."""
        if self.session is None:
            self._attach()
        queue = self.queue
        hub = gevent.get_hub()
        while True:
            if not queue.qsize():
                queue.idle()
                # parked until ``submit`` switches back (``_resume``); a kill still ends it here
                self._parked = gevent.getcurrent()  # type: ignore[assignment]
                try:
                    hub.switch()
                finally:
                    self._parked = None
                continue
            command = queue.get_nowait()
            if command is _SHUTDOWN:
                return
            try:
                handler = _HANDLERS.get(command.type)
                if handler is None:
                    getattr(self, "_on_" + command.type)(command)
                else:
                    handler(self, command)
            except gevent.GreenletExit:
                raise
            except Exception as exc:  # one command must never stop the room: answer it, go on
                log.exception("room %s: handling a %s command failed", self.id, command.type)
                self._ctx.counters["room_command_errors"] += 1
                self.emit("error", code="internal_error", detail=f"could not handle the command: {exc!r}"[:300],
                          cmd_id=command.cmd_id)
                self.ack(command)
            if self.parted:
                self._not_sent_after_part()
                return

    def _attach(self) -> None:
        session = self._ctx.sessions.session_for(self.id, self.spec)
        session.attach(self)
        self.session = session

    def _not_sent_after_part(self) -> None:
        """Commands queued behind the ``part`` never run: each is answered and acknowledged."""
        while True:
            try:
                command = self.queue.get_nowait()
            except gevent.queue.Empty:
                return
            if command is _SHUTDOWN:
                continue
            self.emit("error", code="not_sent", detail="the room was parted before this was handled",
                      cmd_id=command.cmd_id)
            self.ack(command)

    def _on_join(self, command: Command) -> None:
        assert self.session is not None
        assert command.spec is not None and command.spec_json is not None
        text = protocol.spec_text(command.spec_json)
        if text == self.spec_text:
            if self.state == "joined":
                self.emit("joined", nick=self.session.nick_for(self),
                          channel=getattr(self.spec, "channel", None) or getattr(self.spec, "muc", None))
        else:
            log.info("room %s: moving to a new spec", self.id)
            self.session.detach(self, "moving")
            self.spec, self.spec_text = command.spec, text
            self._events_key = self._events_key_for(self.spec)
            self._head = protocol.event_head(self.id, self.spec.protocol, self.spec.tenant)
            self._attach()
        self.ack(command)

    def _on_part(self, command: Command) -> None:
        assert self.session is not None
        self.parted = True
        self.session.detach(self, command.reason or "bye")
        self.ack(command)

    def _on__release(self, command: Command) -> None:
        """The room moves to another frontend (``greenroom rebalance``): its earlier commands were
        handled; once their lines are out it leaves, and the registry hands it over."""
        assert self.session is not None
        self.wait_sent(self._ctx.settings().shutdown_timeout * 2)
        self.parted = True
        self.session.detach(self, "moving to another frontend", silent=True)
        self.ack(command)
        if self._ctx.left is not None:
            self._ctx.left(self, "moved")

    def leave_silently(self) -> None:
        """Another frontend holds this room now: leave the channel, send nothing more (what it had
        queued stays in the ledger, which the other frontend took over)."""
        if self.session is not None:
            self.session.detach(self, "moved", silent=True)

    def wait_sent(self, timeout: float) -> None:
        """Until the room's queued lines went out (or ``timeout``): before it leaves for a peer."""
        if self.session is not None:
            self.session.wait_sent(self, timeout)

    def _on_ping(self, command: Command) -> None:
        self.emit("pong", cmd_id=command.cmd_id)
        self.ack(command)

    def _on_say(self, command: Command) -> None:
        assert self.session is not None
        if command.expires is not None and command.expires < time.time():
            self.emit("error", code="stale", detail="expired before it was handled", cmd_id=command.cmd_id)
            self.ack(command)
            return
        self.session.submit(self, command)

    _on_action = _on_say
    _on_topic = _on_say

    def queue_depth(self) -> int:
        depth = self.queue.qsize()
        if self.session is not None:
            depth += self.session.depth(self)
        return depth


def _resume(parked: gevent.Greenlet) -> None:
    """In the hub: back into a room's parked greenlet (unless it ended meanwhile: killed)."""
    if not parked.dead:
        parked.switch()


#: the command handlers by command type (one dict lookup per command on the hot path)
_HANDLERS: dict[str, Callable[[Room, Command], None]] = {
    name[len("_on_"):]: handler for name, handler in vars(Room).items() if name.startswith("_on_")}
