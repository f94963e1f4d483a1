"""The adapter contract: what a room may ask of its chat session, and what a session may ask of a room.

A *session* is one connection to a chat server (an IRC connection, an XMPP stream). Several rooms may
share one session (same server and identity); each room keeps its own greenlet and queue. The room
greenlet calls the session (``ChatSession``, the type of ``Room.session``); the session's own
greenlets (reader, writer) call back into the room through ``RoomLink``, whose methods never block.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Protocol

from ..protocol import Command, Spec


class RoomLink(Protocol):
    """What a session may use of a room."""

    id: str
    spec: Spec

    def emit(self, type: str, **fields: Any) -> None:
        """Queue an event of this room for Redis (adds room, protocol, tenant, ts, event_id)."""

    def set_state(self, state: str, *, error: str | None = None) -> None:
        """Report a lifecycle state: connecting, joining, joined, backoff, failed, parted."""

    def ack(self, command: Command) -> None:
        """The command reached the chat server (or was dropped with an error event): forget it."""


class ChatSession(abc.ABC):
    """One chat connection, shared by the rooms attached to it. The core uses exactly these."""

    protocol: ClassVar[str]

    @property
    @abc.abstractmethod
    def room_count(self) -> int:
        """How many rooms are attached (the pool opens another session past a server's limit)."""

    @property
    @abc.abstractmethod
    def closing(self) -> bool:
        """True once the session is ending: the pool never hands it a new room."""

    @abc.abstractmethod
    def attach(self, room: RoomLink) -> None:
        """Join the room's channel (now, or once connected) and deliver its events to it."""

    @abc.abstractmethod
    def detach(self, room: RoomLink, reason: str) -> None:
        """Leave the room's channel, after the lines it already submitted were sent."""

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
    def apply_settings(self, settings: Any) -> None:
        """A reload: use the new Settings from now on (limits, flood defaults, timers)."""
