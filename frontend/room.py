"""A room: one greenlet and one gevent queue per room id, the only place the room's commands are handled.

Lifecycle: ``start()`` spawns the greenlet, which attaches the room to a chat session (shared or its
own) and then blocks on its queue. Commands are handled strictly in order. ``part`` detaches the
room and ends the greenlet; ``shutdown()`` ends it without parting (the room stays in the registry so
a restart rejoins it). States (connecting, joining, joined, backoff, failed, parted) are reported by the
session through ``set_state`` and written to ``rooms:state``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.queue

from .protocol import Command, Spec

if TYPE_CHECKING:
    from .app import Frontend

log = logging.getLogger(__name__)

_SHUTDOWN = object()


class Room:
    """One chat room (an IRC channel or an XMPP MUC) as seen by its greenlet."""

    def __init__(self, room_id: str, spec: Spec, spec_json: dict, frontend: "Frontend") -> None:
        self.id = room_id
        self.spec = spec
        self.spec_json = spec_json
        self.queue: gevent.queue.Queue = gevent.queue.Queue()
        self.state = "new"
        self.state_since = time.time()
        self.attempts = 0
        self.last_error: str | None = None
        self._frontend = frontend
        self._session: Any = None
        self._events_key = frontend.keys.key(spec.events) if spec.events else frontend.keys.messages
        self.greenlet: gevent.Greenlet | None = None
        self.parted = False

    def __repr__(self) -> str:
        return f"<Room {self.id} {self.state}>"

    # ------------------------------------------------------------------------- for the dispatcher
    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)
        self.greenlet.name = f"room {self.id}"

    def submit(self, command: Command) -> None:
        self.queue.put(command)

    def shutdown(self) -> None:
        """Handle what is queued, then end without parting."""
        self.queue.put(_SHUTDOWN)

    # ------------------------------------------------------------------------- RoomLink (sessions)
    def emit(self, type: str, **fields: Any) -> None:
        event = {"type": type, "room": self.id, "protocol": self.spec.protocol}
        if self.spec.tenant is not None:
            event["tenant"] = self.spec.tenant
        if fields.get("cmd_id", 0) is None:
            del fields["cmd_id"]
        event.update(fields)
        self._frontend.outbox.event(self._events_key, event)

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
        self._frontend.outbox.state(self.id, {
            "state": state, "since": self.state_since, "attempts": self.attempts,
            "error": self.last_error, "frontend": self._frontend.settings.frontend_id,
            "protocol": self.spec.protocol,
        })

    def ack(self, command: Command) -> None:
        if command.received:
            self._frontend.counters.command_latency.observe(time.time() - command.received)
        self._frontend.outbox.ack(command.raw)

    # ----------------------------------------------------------------------------------- greenlet
    def _run(self) -> None:
        self._attach()
        while True:
            command = self.queue.get()
            if command is _SHUTDOWN:
                return
            handler = getattr(self, "_on_" + command.type)
            handler(command)
            if self.parted:
                return

    def _attach(self) -> None:
        self._session = self._frontend.sessions.session_for(self.id, self.spec)
        self._session.attach(self)

    def _on_join(self, command: Command) -> None:
        if command.spec_json == self.spec_json:
            if self.state == "joined":
                self.emit("joined", nick=self._session.nick_for(self),
                          channel=getattr(self.spec, "channel", None) or getattr(self.spec, "muc", None))
        else:
            log.info("room %s: moving to a new spec", self.id)
            self._session.detach(self, "moving")
            assert command.spec is not None and command.spec_json is not None
            self.spec, self.spec_json = command.spec, command.spec_json
            self._events_key = (self._frontend.keys.key(self.spec.events) if self.spec.events
                                else self._frontend.keys.messages)
            self._attach()
        self.ack(command)

    def _on_part(self, command: Command) -> None:
        self.parted = True
        self._session.detach(self, command.reason or "bye")
        self.ack(command)

    def _on_ping(self, command: Command) -> None:
        self.emit("pong", cmd_id=command.cmd_id)
        self.ack(command)

    def _on_say(self, command: Command) -> None:
        if command.expires is not None and command.expires < time.time():
            self.emit("error", code="stale", detail="expired before it was handled", cmd_id=command.cmd_id)
            self.ack(command)
            return
        self._session.submit(self, command)

    _on_action = _on_say
    _on_topic = _on_say

    def queue_depth(self) -> int:
        depth = self.queue.qsize()
        if self._session is not None and hasattr(self._session, "depth"):
            depth += self._session.depth(self)
        return depth
