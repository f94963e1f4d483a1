"""The small interface every chat protocol adapter implements, and what it may call back.

A *session* is one connection to a chat server (an IRC connection, an XMPP stream). Several rooms may
share one session (same server and identity); each room keeps its own greenlet and queue. The room
greenlet calls the session; the session's own greenlets (reader, writer) call back into the room
through ``RoomLink``, whose methods never block.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..protocol import Command, Spec


class RoomLink(Protocol):
    """What a session may use of a room."""

    id: str
    spec: Spec

    def emit(self, type: str, **fields: Any) -> None:
        """Queue an event of this room for Redis (adds room, protocol, tenant, ts, event_id)."""

    def set_state(self, state: str, *, error: str | None = None) -> None:
        """Report a lifecycle state: connecting, joined, backoff, failed, parted."""

    def ack(self, command: Command) -> None:
        """The command reached the chat server (or was dropped with an error event): forget it."""


class ChatSession(Protocol):
    """One chat connection, shared by the rooms attached to it."""

    protocol: str

    def attach(self, room: RoomLink) -> None:
        """Join the room's channel (now, or once connected) and deliver its events to it."""

    def detach(self, room: RoomLink, reason: str) -> None:
        """Leave the room's channel, after the lines it already submitted were sent."""

    def submit(self, room: RoomLink, command: Command) -> None:
        """Queue a ``say``, ``action`` or ``topic`` of the room; acked via ``room.ack`` once sent."""

    def close(self, reason: str) -> None:
        """Say goodbye to the server (flushing what is queued, briefly) and stop for good."""

    def nick_for(self, room: RoomLink) -> str:
        """The nick the bot has in this room."""

    def idle(self) -> bool:
        """True when no room is attached any more (the pool then closes it)."""
