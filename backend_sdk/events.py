"""Typed events (PROTOCOL.md, "Events"): one frozen, slotted dataclass per event type.

``Event.from_json(raw)`` builds the right class; unknown types become a plain ``Event`` (their fields
stay in ``event.data``) so a newer frontend never breaks an older backend. Events delivered by a
backend are bound to it, so handlers can answer with ``event.reply(...)``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import ujson

from .errors import DecodeError, NotBoundError

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class Event:
    """Fields common to every event. ``data`` is the whole decoded JSON object."""

    type: str
    room: str = ""
    ts: float = 0.0
    protocol: str = ""
    event_id: str = ""
    tenant: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: the Backend/AsyncBackend that delivered this event (``None`` for a hand-made event)
    backend: Any = field(default=None, repr=False, compare=False)

    TYPE: ClassVar[str] = ""

    @staticmethod
    def from_json(raw: bytes | str | Mapping[str, Any], backend: Any = None) -> "Event":
        """Decode one list item (bytes, str or an already decoded dict) into its typed event."""
        if isinstance(raw, Mapping):
            obj: Any = raw
        else:
            try:
                obj = ujson.loads(raw)
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                raise DecodeError(f"event is not JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise DecodeError("event must be a JSON object with a string 'type'")
        cls = EVENT_TYPES.get(obj["type"], Event)
        kwargs: dict[str, Any] = {"data": obj, "backend": backend}
        for f in dataclasses.fields(cls):
            key = f.metadata.get("json", f.name)
            if f.init and key in obj and f.name not in ("data", "backend"):
                kwargs[f.name] = obj[key]
        try:
            kwargs["ts"] = float(kwargs.get("ts") or 0.0)
        except (TypeError, ValueError):
            raise DecodeError(f"event field 'ts' is not a number: {kwargs['ts']!r}") from None
        return cls(**kwargs)

    # ------------------------------------------------------------------------------------- replies
    def _bound(self) -> Any:
        if self.backend is None:
            raise NotBoundError("this event was not delivered by a backend; use bot.say(room, text)")
        return self.backend

    def reply(self, text: str, **options: Any) -> Any:
        """Answer in the same room; privately (``to`` = the sender) when the event was private.

        Returns what ``bot.say`` returns (an awaitable with ``AsyncBackend``).
        """
        if getattr(self, "private", False):
            options.setdefault("to", self.sender_nick)
        return self._bound().say(self.room, text, **options)

    def reply_private(self, text: str, **options: Any) -> Any:
        """Answer the sender with a private message through this room's connection."""
        return self._bound().say(self.room, text, to=self.sender_nick, **options)

    def action(self, text: str, **options: Any) -> Any:
        """``/me text`` in the same room (privately when the event was private)."""
        if getattr(self, "private", False):
            options.setdefault("to", self.sender_nick)
        return self._bound().action(self.room, text, **options)

    @property
    def sender_nick(self) -> str:
        """The nick this event is about (``from`` of a message, ``nick`` of a user event)."""
        nick = getattr(self, "sender", None) or getattr(self, "nick", None)
        if not nick:
            raise ValueError(f"a {self.type!r} event has no sender to answer privately")
        return nick


@dataclass(**_FROZEN)
class Message(Event):
    """``message``: a line in the room, or a private message to the bot (``private``).

    Routing fills ``command``/``args``/``arg_text`` for ``@bot.command`` handlers (``!deploy web prod``
    gives ``command="deploy"``, ``args=("web", "prod")``, ``arg_text="web prod"``) and ``match`` for
    ``@bot.match`` handlers.
    """

    TYPE: ClassVar[str] = "message"
    sender: str = field(default="", metadata={"json": "from"})
    text: str = ""
    private: bool = False
    command: str | None = None
    args: tuple[str, ...] = ()
    arg_text: str = ""
    match: re.Match[str] | None = field(default=None, repr=False, compare=False)


@dataclass(**_FROZEN)
class Action(Message):
    """``action``: ``/me text``."""

    TYPE: ClassVar[str] = "action"


@dataclass(**_FROZEN)
class Joined(Event):
    """``joined``: the bot is in the channel, as ``nick``."""

    TYPE: ClassVar[str] = "joined"
    nick: str = ""
    channel: str = ""


@dataclass(**_FROZEN)
class Parted(Event):
    """``parted``: the bot left the room."""

    TYPE: ClassVar[str] = "parted"
    reason: str | None = None


@dataclass(**_FROZEN)
class UserJoined(Event):
    """``user_joined``: someone else joined."""

    TYPE: ClassVar[str] = "user_joined"
    nick: str = ""


@dataclass(**_FROZEN)
class UserLeft(Event):
    """``user_left``: someone left; ``how`` is ``part``, ``quit`` or ``kick``."""

    TYPE: ClassVar[str] = "user_left"
    nick: str = ""
    reason: str | None = None
    how: str = ""


@dataclass(**_FROZEN)
class Topic(Event):
    """``topic``: the topic, set ``by`` a nick (``None`` when only reported at join)."""

    TYPE: ClassVar[str] = "topic"
    text: str = ""
    by: str | None = None


@dataclass(**_FROZEN)
class Kicked(Event):
    """``kicked``: the bot was kicked (the frontend rejoins by itself)."""

    TYPE: ClassVar[str] = "kicked"
    by: str | None = None
    reason: str | None = None


@dataclass(**_FROZEN)
class ErrorEvent(Event):
    """``error``: a command failed (``cmd_id`` when one caused it)."""

    TYPE: ClassVar[str] = "error"
    code: str = ""
    detail: str = ""
    cmd_id: str | int | None = None


@dataclass(**_FROZEN)
class Pong(Event):
    """``pong``: the answer to ``bot.ping(room)``."""

    TYPE: ClassVar[str] = "pong"
    cmd_id: str | int | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (Message, Action, Joined, Parted, UserJoined, UserLeft, Topic, Kicked, ErrorEvent, Pong)
}
