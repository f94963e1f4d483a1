"""The adapter contract: what a room may ask of its chat session, and what a session may ask of a room;
and ``SessionBase``, what every adapter shares (reconnects, drop reporting, close with drain).

A *session* is one connection to a chat server (an IRC connection, an XMPP stream). Several rooms may
share one session (same server and identity); each room keeps its own greenlet and queue. The room
greenlet calls the session (``ChatSession``, the type of ``Room.session``); the session's own
greenlets (reader, writer) call back into the room through ``RoomLink``, whose methods never block.

``SpeakGate`` says whether the rooms' lines may go out at all (several frontends: a frontend that is
not sure it still holds its rooms must not speak for them). Protocol lines (PONG, JOIN, PART, QUIT,
registration) are never held by it.
"""

from __future__ import annotations

import abc
import logging
import time
from typing import Any, Callable, ClassVar, Iterable, Optional, Protocol

import gevent
import gevent.event

from ..config import Settings
from ..counters import Counters
from ..flood_memory import FloodMemory, Learned, effective
from ..pacing import Backoff, TokenBucket
from ..protocol import Command, Flood, Spec
from .sendqueue import OutLine, SendQueue, report_drop

log = logging.getLogger(__name__)


class RoomLink(Protocol):
    """What a session may use of a room."""

    id: str
    spec: Spec
    #: the session the room's commands go to: a session may hand the room to another session of the
    #: pool (``IrcSession.move_room``: past a server's channel limit)
    session: Any

    def emit(self, type: str, **fields: Any) -> None:
        """Queue an event of this room for Redis (adds room, protocol, tenant, ts, event_id)."""

    def set_state(self, state: str, *, error: str | None = None) -> None:
        """Report a lifecycle state: connecting, joining, joined, backoff, failed, parted."""

    def ack(self, command: Command) -> None:
        """The command reached the chat server (or was dropped with an error event): forget it."""


class EventsBuffer(Protocol):
    """Where the rooms' events wait for Redis (``outgoing.Outbox``), as chat readers see it: past
    its high-water mark they stop reading and leave the rest with the chat server."""

    def full(self) -> bool:
        """True while readers should not read (never blocks)."""

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when no longer ``full()`` (the readers are in the hub and must not block)."""


class Seat:
    """A room's place on a session: its membership of one channel or MUC (``place``).

    The send queue, acknowledgements and drop reports are keyed by seat, not by room: a room that
    moves to another channel on the same connection (a ``join`` with a new spec) has its old seat,
    with the lines queued before its PART, and its new seat side by side until the PART went out.
    ``tenant`` is the room's at attach time; ``live`` turns False when the seat is given up.
    """

    __slots__ = ("room", "place", "tenant", "live")

    def __init__(self, room: "RoomLink", place: Any) -> None:
        self.room = room
        self.place = place
        self.tenant = room.spec.tenant
        self.live = True

    def __repr__(self) -> str:
        return f"<Seat {self.room.id} {getattr(self.place, 'name', None) or getattr(self.place, 'jid', '')}>"


class SpeakGate:
    """Open: sessions send the rooms' lines. Closed: they hold them (queued, not acked, not dropped
    for it) and send only protocol lines. ``opened`` is set while open: a writer holding lines waits
    on it. The default gate is always open; the core closes and opens one shared gate."""

    __slots__ = ("opened",)

    def __init__(self, open: bool = True) -> None:
        self.opened = gevent.event.Event()
        if open:
            self.opened.set()

    @property
    def open(self) -> bool:
        return self.opened.is_set()

    def set_open(self, value: bool) -> None:
        """Open (wakes every writer holding lines) or close the gate."""
        if value:
            self.opened.set()
        else:
            self.opened.clear()


class ChatSession(abc.ABC):
    """One chat connection, shared by the rooms attached to it. The core uses exactly these."""

    __slots__ = ()
    protocol: ClassVar[str]

    @property
    @abc.abstractmethod
    def room_count(self) -> int:
        """How many rooms are attached."""

    @property
    @abc.abstractmethod
    def closing(self) -> bool:
        """True once the session is ending: the pool never hands it a new room."""

    @abc.abstractmethod
    def accepts(self, spec: Spec) -> bool:
        """True when a room with ``spec`` (same connection key) may be attached here; False sends
        the pool on to the next session of the key (IRC: ``channels_per_connection``)."""

    @abc.abstractmethod
    def attach(self, room: RoomLink) -> None:
        """Join the room's channel (now, or once connected) and deliver its events to it."""

    @abc.abstractmethod
    def detach(self, room: RoomLink, reason: str, *, silent: bool = False) -> None:
        """Leave the room's channel, after the lines it already submitted were sent; their commands
        are acked, unsent ones reported (``not_sent``), then ``parted``.

        ``silent``: the room moves to another frontend. Leave at once without speaking (a bare PART,
        no reason), send none of its queued lines, and neither ack nor report them (they stay in
        the in-flight ledger for the next holder); no ``parted`` event, no state. Lines already
        written are still acked when the server confirms them (they were sent).
        """

    @abc.abstractmethod
    def submit(self, room: RoomLink, command: Command) -> None:
        """Queue a ``say``, ``action`` or ``topic`` of the room; acked via ``room.ack`` once sent."""

    @abc.abstractmethod
    def close(self, reason: str, timeout: float = 2.0) -> None:
        """Send what joined rooms queued (within ``timeout``), say goodbye, and stop for good."""

    @abc.abstractmethod
    def nick_for(self, room: RoomLink) -> str:
        """The nick the bot has in this room."""

    @abc.abstractmethod
    def depth(self, room: RoomLink) -> int:
        """Lines of this room waiting to be sent."""

    @abc.abstractmethod
    def wait_sent(self, room: RoomLink, timeout: float) -> bool:
        """Block the calling greenlet until no line of this room waits to be sent (``depth`` 0), or
        ``timeout`` seconds; True when none waits."""

    @abc.abstractmethod
    def apply_settings(self, settings: Settings) -> None:
        """A reload: use the new Settings from now on (limits, flood defaults, timers)."""


class ConnectionLost(Exception):
    """The connection ended; the message says why (shown in room states and ``join_failed`` events,
    never with secrets). ``permanent``: retrying soon cannot help (credentials, certificates, TLS
    settings), so the session waits as after several failures (``PERMANENT_SKIP``)."""

    permanent: bool = False

    def __init__(self, reason: str = "", *, permanent: Optional[bool] = None) -> None:
        super().__init__(reason)
        if permanent is not None:
            self.permanent = permanent


class LoginFailed(ConnectionLost):
    """The server refused us (credentials, no free nick, ...)."""

    permanent = True


SessionFactory = Callable[..., ChatSession]


class SessionBase(ChatSession):
    """What IRC and XMPP sessions share: the send queue, the reconnect loop with backoff, drop
    reporting, close with drain, the speak gate and settings reloads.

    An attempt that ends before the connection was usable (``connected_at`` still 0.0: not
    registered, no XMPP session) failed to join: every room hears ``join_failed`` with the reason,
    once per distinct reason until an attempt connects, and its state says the same (``backoff``).
    A permanent failure (``ConnectionLost.permanent``) backs off longer.

    A subclass provides ``_rooms()``, ``_session_once()`` (connect and serve until the connection
    ends, raising ``ConnectionLost``/``LoginFailed``/``OSError`` to say why; or connect and return
    True, leaving the connection to hub callbacks, which call ``_served_ended(exc)`` when it ends:
    the main greenlet lives only while connecting and backing off), ``_can_drain()`` and
    ``_goodbye()``, and may hook ``_prepare()``, ``_disconnected()``, ``_closed()`` and
    ``_wake_writer()``. Its ``__init__`` calls ``SessionBase.__init__`` and then ``_start()``.
    """

    __slots__ = ("spec", "settings", "counters", "label", "gate", "queue", "connected_at", "flood_memory",
                 "_pace_connect", "_closing", "_drained", "_main", "_retry_soon", "_failure", "_told",
                 "_backoff", "_on_finish", "__weakref__")
    #: whether the configured flood control (``flood_rate``/``flood_burst``) applies to a spec
    #: without ``flood`` (IRC) or only a spec's own ``flood`` does (XMPP)
    flood_by_default: ClassVar[bool] = True

    def __init__(self, spec: Spec, *, settings: Settings, counters: Counters,
                 pace_connect: Callable[[str], None], label: str, gate: SpeakGate | None = None,
                 on_wake: Callable[[], None] | None = None, flood_memory: FloodMemory | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.counters = counters
        self.label = label  # for logs: server:port/identity, never a secret
        self.gate = gate if gate is not None else OPEN
        #: the flood limits learned of each server (None: none are learned or applied, e.g. XMPP)
        self.flood_memory = flood_memory if settings.flood_learn else None
        #: set by a subclass when the connection that ended had made progress although the server
        #: dropped it (a flood disconnect it learned from): the next connect comes after the shortest delay
        self._retry_soon = False
        bucket = self._make_bucket(spec.flood, self._server(), default_on=self.flood_by_default)
        self.queue = SendQueue(bucket, settings.room_queue_max, self._dropped, on_wake=on_wake)
        self.connected_at = 0.0  # when the current connection became usable (0.0: it is not)
        self._pace_connect = pace_connect
        self._closing = gevent.event.Event()
        self._drained = gevent.event.Event()
        #: the greenlet that connects and backs off; while a connection is served from the hub
        #: (``_session_once`` returned True) there is none: the subclass calls ``_served_ended``
        self._main: gevent.Greenlet | None = None
        self._backoff: Backoff | None = None  # the reconnect delays, across the main greenlets
        self._on_finish: list[Callable[[], None]] | None = None  # see ``when_finished``
        #: why the last attempt failed to join, while the session waits to try again (else None)
        self._failure: Optional[str] = None
        #: the join failures each room heard in the current series of failed attempts
        self._told: dict[RoomLink, list[str]] = {}

    def _start(self) -> None:
        self._spawn_main(None)

    def _spawn_main(self, ended: BaseException | None) -> None:
        main = self._main = gevent.spawn(self._run, ended)
        main.name = f"{self.protocol} {self.label}"

    def when_finished(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the session is over for good (closed, or its main greenlet died);
        not when a connection ends and it reconnects (the pool's connection budget frees its place)."""
        if self._on_finish is None:
            self._on_finish = []
        self._on_finish.append(callback)

    def _finish(self) -> None:
        callbacks, self._on_finish = self._on_finish, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                log.exception("%s %s: a callback at its end failed", self.protocol, self.label)

    def _served_ended(self, exc: BaseException) -> None:
        """For a subclass, from the hub: the connection it served there (``_session_once`` returned
        True) ended with ``exc``; a main greenlet starts again to clean up, back off and reconnect."""
        self._spawn_main(exc)

    # ------------------------------------------------------------------ ChatSession (shared part)
    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def depth(self, room: RoomLink) -> int:
        queue = self.queue
        if not queue.has_lines():
            return 0
        seat = self._seat(room)
        return queue.depth(seat) if seat is not None else 0

    def wait_sent(self, room: RoomLink, timeout: float) -> bool:
        seat = self._seat(room)
        return seat is None or self.queue.wait_empty(seat, timeout)

    def apply_settings(self, settings: Settings) -> None:
        """The new limits and timers from now on; a configured flood default that changed replaces
        the bucket (one set by the spec stays)."""
        old, self.settings = self.settings, settings
        self.queue.max_per_room = settings.room_queue_max
        if self.spec.flood is not None or not self.flood_by_default:
            return
        server = self._server()
        names = ("flood_rate", "flood_burst")
        if [settings.for_server(server, n) for n in names] != [old.for_server(server, n) for n in names]:
            self._rebuild_bucket()

    def connection_wait(self, reason: str | None) -> None:
        """The pool's word on this session's next connect (``sessions.ConnectLine``): ``reason``, it
        waits for one of the server's connections (``max_connections``): every room is ``waiting``
        and hears why once, an ``error`` ``max_connections``; None: the wait is over (``connecting``)."""
        if reason is None:
            self._rooms_state("connecting")
            return
        for room in self._rooms():
            self._room_state(room, "waiting", reason)
            room.emit("error", code="max_connections", detail=reason)

    def close(self, reason: str, timeout: float = 2.0) -> None:
        """Send what joined rooms queued (within ``timeout``), say goodbye, stop the main greenlet."""
        deadline = time.monotonic() + timeout
        self._closing.set()
        self._drain(deadline)
        try:
            self._goodbye(reason, deadline)
        finally:
            if self._main is not None:
                self._main.kill(block=True, timeout=1)
            self._closed()
            self._finish()

    # ------------------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _seat(self, room: RoomLink) -> Seat | None:
        """The room's current seat (None when it is not attached)."""

    @abc.abstractmethod
    def _rooms(self) -> Iterable[RoomLink]:
        """Every attached room (a snapshot: callers may attach or detach while iterating)."""

    @abc.abstractmethod
    def _session_once(self) -> bool:
        """Connect and serve until the connection ends; raise to say why it ended. Or connect and
        return True: hub callbacks serve the connection from then on (no greenlet waits on it), and
        the subclass calls ``_served_ended(exc)`` when it ends."""

    @abc.abstractmethod
    def _can_drain(self) -> bool:
        """True while queued lines can still be written (connected and registered)."""

    @abc.abstractmethod
    def _goodbye(self, reason: str, deadline: float) -> None:
        """After the drain: leave politely (IRC QUIT, XMPP stream close) before ``deadline``."""

    def _prepare(self) -> None:
        """Once, in the main greenlet, before the first connect."""

    def _disconnected(self) -> None:
        """After every connection ended, however."""

    def _closed(self) -> None:
        """After ``close()`` stopped the main greenlet (a connection served from the hub may still
        be open: ending it is the subclass's)."""

    def _wake_writer(self) -> None:
        self.queue.wake.set()

    def _room_state(self, room: RoomLink, state: str, error: str | None) -> None:
        room.set_state(state, error=error)

    # ------------------------------------------------------------------------------------- shared
    def _rooms_state(self, state: str, error: str | None = None) -> None:
        for room in self._rooms():
            self._room_state(room, state, error)

    def _dropped(self, seat: Seat, line: OutLine, code: str) -> None:
        """The send queue dropped a line (``stale`` or ``flood_dropped``): count it, tell the room."""
        self.counters["line_drops:" + code] += 1
        report_drop(seat.room, line, code, self.queue.max_per_room)

    def _drain(self, deadline: float) -> None:
        """Let the writer send what the rooms already accepted, until ``deadline``."""
        queue = self.queue
        while (queue.has_ready() and self._can_drain() and self.gate.open
               and time.monotonic() < deadline):
            self._drained.clear()
            self._wake_writer()
            self._drained.wait(max(0.0, deadline - time.monotonic()))

    def _own_flood(self, flood: Flood | bool | None, server: str, *, default_on: bool) -> tuple[float, float] | None:
        """``(rate, burst)`` of a spec's ``flood``: its own, none, or the configured default."""
        if flood is False or (flood is None and not default_on):
            return None
        if isinstance(flood, Flood):
            return flood.rate, float(flood.burst)
        rate = self.settings.for_server(server, "flood_rate")
        burst = self.settings.for_server(server, "flood_burst")
        return (rate, float(burst)) if rate > 0 else None

    def _make_bucket(self, flood: Flood | bool | None, server: str, *, default_on: bool,
                     load: bool = False) -> TokenBucket | None:
        """The token bucket for a spec's ``flood`` (its own, none, or the configured default), lowered
        by what was learned of the server (``flood_memory``), which also applies where there is none.
        ``load``: the memory may read Redis first (at connect time, never on a room's call)."""
        own = self._own_flood(flood, server, default_on=default_on)
        memory = self.flood_memory
        limits = effective(own, memory.get(server, load=load)) if memory is not None else own
        return TokenBucket(limits[0], limits[1]) if limits is not None else None

    def _rebuild_bucket(self, *, load: bool = False, fresh: bool = False) -> None:
        """The bucket again from the spec, the settings and what was learned of the server; the
        tokens left carry over (never more than the new burst), so a change never adds a burst
        (``fresh``: a new connection, a full bucket)."""
        old = self.queue.bucket
        bucket = self._make_bucket(self.spec.flood, self._server(), default_on=self.flood_by_default, load=load)
        if bucket is not None and old is not None and not fresh:
            bucket._tokens = min(bucket.burst, float(old.available))
        self.queue.bucket = bucket
        if self.queue.has_ready():
            self._wake_writer()

    def flood_changed(self, learned: Learned) -> None:
        """``flood_memory``: what was learned of this session's server changed (here or elsewhere)."""
        self._rebuild_bucket()

    def _run(self, ended: BaseException | None = None) -> None:
        """The main greenlet: connect, serve, and after any failure back off and connect again.
        ``ended``: started again after a connection served from the hub ended with it."""
        served = False
        try:
            served = self._serve(ended)
        finally:
            if not served:
                self._finish()

    def _serve(self, ended: BaseException | None) -> bool:
        """``_run``'s loop; True when it returns with the connection served from the hub."""
        protocol = self.protocol
        if ended is None:
            try:
                self._prepare()
            except Exception:
                log.exception("%s %s: could not start", protocol, self.label)
                raise
        if self._backoff is None:
            self._backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        backoff = self._backoff
        while not self._closing.is_set():
            if ended is None:
                outcome = self._attempt()
                if outcome is None:
                    return True  # served from the hub: ``_served_ended`` starts a main greenlet again
            else:
                try:
                    outcome = self._why_ended(ended)
                finally:
                    ended = None
                    self._disconnected()
            reason, permanent = outcome
            if self._closing.is_set():
                break
            if self.connected_at:  # it was usable: a lost connection, not a failed join
                self._told.clear()
            else:
                self._tell_join_failed(reason)
            if self._retry_soon or (self.connected_at and
                                    time.monotonic() - self.connected_at > self.settings.reconnect_reset_after):
                backoff.reset()  # a flood kill retries soon, at the learned (slower) rate
                self._retry_soon = False
            delay = _next_delay(backoff, permanent)
            self.counters["chat_reconnects:" + protocol] += 1
            log.warning("%s %s: %s; reconnecting in %.1fs", protocol, self.label, reason, delay)
            self._rooms_state("backoff", reason)
            self._failure = None if self.connected_at else reason
            self._closing.wait(delay)
            self._failure = None
        log.info("%s %s: closed", protocol, self.label)
        return False

    def _attempt(self) -> tuple[str, bool] | None:
        """One connect: why it ended and whether that is permanent, once it did; None when it is
        served from the hub from now on."""
        self._rooms_state("connecting")
        self.connected_at = 0.0
        served = False
        try:
            self._pace_connect(self._server())
            if self._closing.is_set():
                return "closing", False
            served = bool(self._session_once())
            return None if served else ("connection closed", False)
        except Exception as exc:
            return self._why_ended(exc)
        finally:
            if not served:
                self._disconnected()

    def _why_ended(self, exc: BaseException) -> tuple[str, bool]:
        if isinstance(exc, (OSError, ConnectionLost)):
            return self._lost_reason_for(exc), getattr(exc, "permanent", False)
        # the top of the greenlet (or of a hub callback): log, then reconnect like any failure
        log.error("%s %s: unexpected error", self.protocol, self.label, exc_info=exc)
        return f"internal error: {exc!r}", False

    def _tell_join_failed(self, reason: str) -> None:
        """The attempt failed before the connection was usable: every room hears ``join_failed``
        with the reason, once per distinct reason in a series of attempts (until one connects)."""
        rooms = list(self._rooms())
        told = self._told
        if len(told) > len(rooms):
            present = set(rooms)
            for gone in [room for room in told if room not in present]:
                del told[gone]
        for room in rooms:
            self._tell(room, reason)

    def _tell_attached(self, room: RoomLink) -> None:
        """For ``attach``: a room that joins a session whose attempts fail hears why at once, not
        after the backoff (which may be minutes for a permanent failure)."""
        if self._failure is not None:
            self._tell(room, self._failure)

    def _tell(self, room: RoomLink, reason: str) -> None:
        heard = self._told.setdefault(room, [])
        if reason in heard:
            return
        heard.append(reason)
        del heard[:-TOLD_REASONS]
        room.emit("error", code="join_failed", detail=reason)
        self._room_state(room, "backoff", reason)

    def _server(self) -> str:
        """The host connects to are paced by."""
        return getattr(self.spec, "server", "")

    def _lost_reason_for(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__


#: the gate of sessions made without one: always open
OPEN = SpeakGate()
#: a permanent failure waits as after this many failures in a row: with the defaults (1 s, 300 s)
#: 16-32 s, then 32-64 s, ... up to 150-300 s; transient ones start at 0.5-1 s
PERMANENT_SKIP = 5
#: the distinct join failures remembered per room and series (a server that varies its refusal
#: gets one event per attempt, paced by the backoff, never more)
TOLD_REASONS = 8


def _next_delay(backoff: Backoff, permanent: bool) -> float:
    """The wait before the next attempt: the backoff's, or for a permanent failure at least half of
    the ceiling of ``PERMANENT_SKIP`` failures (so it never retries at once)."""
    if not permanent:
        return backoff.next()
    failures = max(backoff.failures, PERMANENT_SKIP)
    ceiling = min(backoff.cap, backoff.base * 2 ** failures)
    delay = max(backoff.compute(failures), ceiling / 2)
    backoff.failures = failures + 1
    return delay


#: how long ``give_turn`` sleeps: long enough to be a timer, so the hub polls I/O and runs timers
TURN_PAUSE = 0.0001


def give_turn() -> None:
    """Let every other greenlet, and the hub's I/O and timers, run before going on: what a reader
    that could go on reading (a server that floods) calls every so often.

    Not ``gevent.sleep(0)``: that only queues a callback, and the hub runs up to 50 callbacks before
    it looks at I/O and timers again, so a greenlet yielding that way keeps them waiting for up to 50
    of its own turns (measured: a presence flood held a 10 ms timer for 0.5 s)."""
    gevent.sleep(TURN_PAUSE)


def single_tenant(seats: Iterable[Seat]) -> bool:
    """True when every seat given belongs to one tenant (rooms without a tenant are one tenant):
    what reaches any of them cannot cross a tenant boundary."""
    tenants = {seat.tenant for seat in seats}
    return len(tenants) <= 1
