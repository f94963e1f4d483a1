"""The incoming dispatcher: take the commands routed to this frontend, validate them, hand each to its
room's queue.

Commands reach the ledger two ways: this frontend's router takes what it routed to itself
(``router.py``), and this loop takes what other frontends' routers put in its inbox: each step waits
until the ledger has room, then sends a blocking BLMOVE of the inbox's head into the landing list and
the intake script (which moves it, and what else waits, into the ledger) in one write. Both hand
their replies to ``deliver``, which takes them from the ledger in sequence order, one caller at a
time, so a room's commands keep their order. The ledger holds a command until its room wrote it to
the chat server or it was rejected, so a crash anywhere between the pop and the chat server loses
nothing; a reply lost on the way back is found in the ledger.

Internal markers come the same way: ``take`` (this frontend now holds a room: start it from the
registry) and ``release`` (the room moves to another frontend: it leaves, in order with its commands).

Nothing an item holds can stop this loop: an item larger than ``max_item_bytes`` is refused before it
is decoded, a malformed one is dead-lettered with its reason (one log line per interval, with a count),
and an unexpected error handling one item dead-letters that item and goes on.
"""

from __future__ import annotations

import logging
import dataclasses
from typing import Any

import gevent
import gevent.lock

from . import placement, protocol
from .config import Settings
from .counters import Counters
from .errors import GreenroomError, ProtocolError
from .inflight import GAP_TIMEOUT, InflightLedger
from .logs import Throttle
from .outgoing import OutgoingDispatcher
from .pacing import Backoff
from .protocol import Command, decode, parse_command
from .redis_conn import REDIS_ANY, REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP, DirectLink
from .keys import Keys
from .registry import RoomRegistry
from .room import Wakes
from .tenants import TenantTable
from .service import Service

log = logging.getLogger(__name__)

#: a hand-over yields to the hub after this many commands (about 7 ms of work: BENCHMARKS.md, "Hot
#: path, session 8")
HANDOVER_SLICE = 1000


class IncomingDispatcher(Service):
    """Moves the commands routed to this frontend to its rooms."""

    name = "incoming"

    def __init__(self, *, link: DirectLink, ledger: InflightLedger, registry: RoomRegistry,
                 outbox: OutgoingDispatcher, counters: Counters, settings: Settings, frontend_id: str,
                 keys: Keys, tenants: TenantTable, wakes: Wakes) -> None:
        super().__init__()
        #: the rooms' wake-ups (their ``RoomContext``'s), held while a batch is handed over (``deliver``)
        self._wakes = wakes
        self._link = link
        self._keys = keys
        self._tenants = tenants
        self._ledger = ledger
        self._registry = registry
        self._outbox = outbox
        self._counters = counters
        self._settings = settings
        self._frontend_id = frontend_id
        self._backoff = Backoff(REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP)
        self._throttle = Throttle(log, counter=counters)
        self._adopt_needed = True  # at every (re)start: what a lost reply left in our ledger
        self._turn = gevent.lock.Semaphore()  # one caller of deliver() at a time: sequence order
        self._gap_timer: gevent.Greenlet | None = None

    def apply_settings(self, new: Settings) -> None:
        self._settings = new

    def setup(self) -> None:
        self._adopt_needed = True

    def on_stop(self) -> None:
        self._link.close()  # ends a blocked pop; what it popped stays in the ledger

    # ----------------------------------------------------------------------------------- the loop
    def step(self) -> None:
        if self._adopt_needed:
            try:
                self.adopt()
            except REDIS_ANY as exc:
                self._redis_failed(exc)
                return
            self._adopt_needed = False
        if not self._ledger.wait_for_room(self.stopping):
            return
        settings = self._settings
        most, budget = self._ledger.room()
        commands = self._ledger.intake_commands(settings.control_block_timeout, min(most, settings.control_drain),
                                                min(budget, settings.control_drain_bytes))
        try:
            _, taken = self._link.round_trip(commands)
        except REDIS_ANY as exc:
            self._adopt_needed = True  # the intake may have run with its reply lost
            self._redis_failed(exc)
            return
        self._backoff.reset()
        if self._ledger.is_full(taken):
            self._ledger.wait_for_ack(self.stopping)
        elif taken:
            self.deliver(taken)

    def _redis_failed(self, exc: Exception) -> None:
        if self.stopping.is_set():
            return
        self._counters["redis_reconnects:incoming"] += 1
        delay = self._backoff.next()
        self._throttle.warning("redis", "reading %s failed (%s); retrying in %.2fs", self._ledger.inbox, exc,
                               delay)
        self.stopping.wait(delay)

    def deliver(self, reply: list[Any]) -> None:
        """A reply of the router's or the intake's script: its items, and any that waited for them,
        to the rooms in sequence order."""
        with self._turn, self._wakes.held():
            self._handle_all(self._ledger.accept(reply))
            self._watch_gap()

    def adopt(self) -> None:
        """After a Redis error: what a lost reply left in our ledger."""
        with self._turn:
            self._handle_all(self._ledger.adopt_unknown())
            self._watch_gap()

    def _watch_gap(self) -> None:
        """Items wait for an earlier seq: look it up if no reply brings it soon."""
        if self._ledger.gap_age() == 0.0 or (self._gap_timer is not None and not self._gap_timer.dead):
            return

        def fill() -> None:
            with self._turn:
                if self._ledger.gap_age() >= GAP_TIMEOUT * 0.9:
                    try:
                        self._handle_all(self._ledger.fill_gaps())
                    except REDIS_ANY as exc:
                        self._throttle.warning("gap", "could not look up the commands a lost reply carried: %s", exc)
            self._gap_timer = None
            self._watch_gap()

        self._gap_timer = gevent.spawn_later(GAP_TIMEOUT, fill)

    def _handle_all(self, taken: list[tuple[int, bytes]]) -> None:
        """Each item to its room, in order. A large batch (a backlog: ``control_batch``) yields to the
        hub after every ``HANDOVER_SLICE`` items, so other connections are read meanwhile; the rooms'
        wake-ups wait for the end of the hand-over (``deliver`` holds them)."""
        for i, (seq, stored) in enumerate(taken):
            if i and not i % HANDOVER_SLICE:
                gevent.sleep(0)
            kind, payload, tenant = placement.decode_stored(stored)
            if kind == placement.PUBLIC:
                self.handle(payload, seq, tenant)
            else:
                self._marker(kind, payload.decode("utf-8", "replace"), seq)

    def _marker(self, kind: str, room_id: str, seq: int) -> None:
        """An internal marker a script put in our inbox."""
        try:
            if kind == placement.TAKE:
                self._registry.take(room_id)
            elif kind == placement.RELEASE:
                room = self._registry.get(room_id)
                if room is not None:
                    room.submit(Command(type="_release", room=room_id, seq=seq))
                    return  # acknowledged by the room once it left
                self._registry.finish_move(room_id)
            else:
                log.error("room %s: unknown internal marker %r: ignored", room_id, kind)
        except REDIS_ANY as exc:  # the marker stays in the ledger: adopted again after a restart
            log.error("room %s: could not handle %s (%s); it waits in our ledger", room_id, kind, exc)
            return
        self._ledger.ack(seq)

    # -------------------------------------------------------------------------------- routing
    def handle(self, raw: bytes, seq: int = 0, source: str | None = None) -> None:
        """Validate and route one item; a bad one is dead-lettered, never raised. ``source``: the
        scoped tenant whose own intake it came through (its tag is written only by scripts)."""
        self._counters["commands_received"] += 1
        settings = self._settings
        if len(raw) > settings.max_item_bytes:
            self.reject(raw, seq, "bad_command",
                        f"the item is {len(raw)} bytes, the limit is {settings.max_item_bytes}", source=source)
            return
        try:
            command = parse_command(raw, max_text_bytes=settings.max_text_bytes)
        except ProtocolError as exc:
            self.reject(raw, seq, exc.code, exc.detail, source=source)
            return
        except Exception as exc:  # a validator bug must never stop the dispatcher: dead-letter the item
            log.exception("validating a command failed unexpectedly")
            self.reject(raw, seq, "bad_command", f"could not be validated: {exc!r}"[:300], source=source)
            return
        command.seq, command.source = seq, source
        try:
            self._route(command)
        except ProtocolError as exc:
            self.reject(command.raw, seq, exc.code, exc.detail, command)
        except Exception as exc:  # a routing bug: the item is set aside, the loop goes on
            log.exception("room %s: routing a %s command failed unexpectedly", command.room, command.type)
            self.reject(raw, seq, "bad_command", f"could not be routed: {exc!r}"[:300], command)
        command.raw = b""  # the ledger holds the item; the room needs only its seq (a command without
        # ``cmd_id`` keeps it as ``id_of`` until its automatic id is read: bounded by inflight_max_bytes)

    def _route(self, command: Command) -> None:
        registry = self._registry
        room = registry.get(command.room)
        source = command.source
        if room is not None and source is not None and room.spec.tenant != source:
            raise ProtocolError("forbidden", f"room {command.room!r} is not a room of tenant {source!r}")
        if command.type == "join":
            assert command.spec is not None and command.spec_json is not None
            try:
                command.spec, command.spec_json = registry.plain(command.spec, command.spec_json)
            except GreenroomError as exc:
                raise ProtocolError("bad_command", f"spec: {exc}"[:300]) from None
            tenant = self._tenants.check_join(command.spec.tenant, source=source,
                                              require=self._settings.require_tenants)
            if tenant != command.spec.tenant:
                command.spec = dataclasses.replace(command.spec, tenant=tenant)
                command.spec_json = {**command.spec_json, "tenant": tenant}
            if room is None:
                if not registry.count_new_room(command.room, tenant):
                    registry.parted.add(command.room)  # the router placed it here: drop that again
                    raise ProtocolError("quota_exceeded", f"tenant {tenant!r} has its max_rooms "
                                                          f"({self._tenants.get(tenant).max_rooms}) already")
                registry.add(command.room, command.spec, command.spec_json)
                self._ledger.ack(command.seq)  # written after the registry entry, in the same batch
            else:
                if not room.has_spec(command.spec_json):
                    registry.record(command.room, command.spec_json)
                room.submit(command)
        elif room is None:
            raise ProtocolError("unknown_room", f"no room {command.room!r} is held here")
        elif command.type == "part":
            registry.forget(command.room)
            room.submit(command)
        else:
            room.submit(command)
        self._counters["commands_applied"] += 1

    def reject(self, raw: bytes, seq: int, code: str, detail: str, command: Command | None = None, *,
               source: str | None = None) -> None:
        """Dead-letter the item with its reason, acknowledge it, and say so where its sender reads: the
        room's events when the room is ours (and its sender's), else a scoped tenant's own lists."""
        source = command.source if command is not None else source
        self._counters["commands_dead"] += 1
        self._counters["commands_dead:" + code] += 1
        item = protocol.dead_letter(raw, code, detail, self._frontend_id)
        self._outbox.dead_letter(item, self._keys.tenant_dead(source) if source else None)
        self._ledger.ack(seq)
        room_id, cmd_id = _best_effort_ids(raw, command, self._settings.max_item_bytes)
        room = self._registry.get(room_id) if isinstance(room_id, str) else None
        self._throttle.warning(code, "rejected a command%s%s: %s: %s",
                               f" for room {room_id}" if isinstance(room_id, str) else "",
                               f" from tenant {source}" if source else "", code, detail)
        if room is not None and (source is None or room.spec.tenant == source):
            room.emit("error", code=code, detail=detail, cmd_id=cmd_id)
        elif isinstance(room_id, str) and protocol.encodable(room_id) and (source or code == "quota_exceeded"):
            spec = command.spec if command is not None else None
            tenant = source or (spec.tenant if spec is not None else None)
            key = self._tenants.events_key(tenant, spec.events if spec is not None else None)
            self._outbox.event(key, protocol.event("error", room_id, spec.protocol if spec else "", tenant,
                                                   code=code, detail=detail, cmd_id=cmd_id))


def _best_effort_ids(raw: bytes, command: Command | None, limit: int) -> tuple[Any, Any]:
    """The room id and a ``cmd_id`` fit to echo, of an item that may be anything."""
    if command is not None:
        return command.room, command.cmd_id
    if len(raw) > limit:
        return None, None
    try:
        obj = decode(raw)
    except ProtocolError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    try:
        cmd_id = protocol.validate_cmd_id(obj.get("cmd_id"))
    except ProtocolError:
        cmd_id = None
    return obj.get("room"), cmd_id
