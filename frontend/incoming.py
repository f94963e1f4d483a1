"""The incoming dispatcher: pop commands from ``control``, validate them, route each to its room's queue.

Each item is moved atomically (BLMOVE) into this frontend's in-flight list, so a crash between the pop
and the chat server never loses it: the item leaves the in-flight list only when its room wrote it
to the chat socket or it was rejected (``Outbox.ack``). The blocking pop is sent together with a
script that moves what else is waiting (up to ``control_drain`` items), and both replies come back in
one round trip, so a burst costs one round trip per few hundred commands and a lone command one.
Bad input is dead-lettered with its reason; nothing a client sends can stop this loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from .errors import ProtocolError
from .pacing import Backoff
from .protocol import Command, decode, dead_letter, parse_command
from .redis_conn import REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP, REDIS_ANY, DirectLink

if TYPE_CHECKING:
    from .app import Frontend

log = logging.getLogger(__name__)

# Moves up to ARGV[1] items from the head of KEYS[1] to the tail of KEYS[2] and returns them: one
# command and one reply per burst instead of one LMOVE each (the per-command cost is in the client).
_DRAIN = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
"""


class IncomingDispatcher:
    """Moves commands from ``control`` to the rooms."""

    def __init__(self, frontend: "Frontend") -> None:
        self.frontend = frontend
        settings = frontend.settings
        self._control = frontend.keys.control
        self._inflight = frontend.keys.inflight(settings.frontend_id)
        self._block = settings.control_block_timeout
        # the socket timeout outlasts the block: redis-py raises TimeoutError otherwise
        self._link = DirectLink(settings, socket_timeout=self._block + 5.0)
        self._stopping = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._backoff = Backoff(REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP)

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)
        self._greenlet.name = "incoming-dispatcher"
        self._greenlet.link_exception(self._crashed)

    def _crashed(self, greenlet: gevent.Greenlet) -> None:
        """Supervision: whatever killed the loop is logged and the loop starts again."""
        log.error("incoming dispatcher died: %r; restarting it", greenlet.exception,
                  exc_info=greenlet.exc_info if greenlet.exc_info and greenlet.exc_info[0] else None)
        if not self._stopping.is_set():
            gevent.sleep(0.1)
            self.start()

    def stop(self) -> None:
        """Stop taking commands now. An item popped but not handled stays in the in-flight list."""
        self._stopping.set()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
        self._link.close()

    # ----------------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = self._pop_batch()
                self._backoff.reset()
                if not batch:
                    continue
            except REDIS_ANY as exc:
                self.frontend.counters["redis_reconnects:incoming"] += 1
                delay = self._backoff.next()
                log.warning("reading %s failed (%s); retrying in %.2fs", self._control, exc, delay)
                self._stopping.wait(delay)
                continue
            inflight = self.frontend.inflight
            for raw in batch:
                inflight[raw] += 1
            for raw in batch:
                self.handle(raw)

    def _pop_batch(self) -> list[bytes]:
        """Block for the next command, and take what else is waiting with it, in one round trip.

        BLMOVE and the drain script go out in one write. Redis runs a blocked client's next command
        only after the blocking one returns, so the script sees everything that arrived with the
        first item.
        """
        first, rest = self._link.round_trip([
            ("BLMOVE", self._control, self._inflight, "LEFT", "RIGHT", self._block),
            ("EVAL", _DRAIN, 2, self._control, self._inflight, self.frontend.settings.control_drain),
        ])
        return rest if first is None else [first, *rest]

    # -------------------------------------------------------------------------------- routing
    def handle(self, raw: bytes) -> None:
        """Validate and route one item; a bad one is dead-lettered, never raised."""
        frontend = self.frontend
        frontend.stats["commands_received"] += 1
        try:
            command = parse_command(raw, max_text_bytes=frontend.settings.max_text_bytes)
        except ProtocolError as exc:
            self.reject(raw, exc.code, exc.detail)
            return
        except Exception as exc:  # a validator bug must never stop the dispatcher: dead-letter the item
            log.exception("validating a command failed unexpectedly")
            self.reject(raw, "bad_command", f"could not be validated: {exc!r}")
            return
        room = frontend.rooms.get(command.room)
        if command.type == "join":
            if room is None:
                frontend.add_room(command.room, command.spec, command.spec_json)
                frontend.outbox.registry(command.room, command.spec_json)
                frontend.outbox.ack(raw)
            else:
                if command.spec_json != room.spec_json:
                    frontend.outbox.registry(command.room, command.spec_json)
                room.submit(command)
        elif room is None:
            self.reject(raw, "unknown_room", f"no room {command.room!r} on this frontend", command)
            return
        elif command.type == "part":
            frontend.outbox.registry(command.room, None)
            frontend.forget_room(command.room)
            room.submit(command)
        else:
            room.submit(command)
        frontend.stats["commands_applied"] += 1

    def reject(self, raw: bytes, code: str, detail: str, command: Command | None = None) -> None:
        """Dead-letter ``raw`` with its reason, and tell the room when it is one of ours."""
        frontend = self.frontend
        frontend.stats["commands_dead"] += 1
        frontend.stats["commands_dead:" + code] += 1
        frontend.outbox.dead_letter(dead_letter(raw, code, detail, frontend.settings.frontend_id), raw)
        room_id, cmd_id = _best_effort_ids(raw, command)
        room = frontend.rooms.get(room_id) if isinstance(room_id, str) else None
        log.warning("rejected a command%s: %s: %s", f" for room {room_id}" if room_id else "", code, detail)
        if room is not None:
            room.emit("error", code=code, detail=detail, cmd_id=cmd_id)


def _best_effort_ids(raw: bytes, command: Command | None) -> tuple[Any, Any]:
    if command is not None:
        return command.room, command.cmd_id
    try:
        obj = decode(raw)
    except ProtocolError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    cmd_id = obj.get("cmd_id")
    return obj.get("room"), cmd_id if isinstance(cmd_id, (str, int)) else None
