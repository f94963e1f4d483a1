"""Typed events (PROTOCOL.md, "Events"): one frozen, slotted dataclass per event type.

``Event.from_json(raw)`` builds the right class; unknown types become a plain ``Event`` (their fields
stay in ``event.data``) so a newer frontend never breaks an older backend. Events delivered by a
backend are bound to it, so handlers can answer with ``event.reply(...)``.

Every item is hostile until decoded here: a field of the wrong type (``"text": 5``, ``"room": [1]``)
or an id longer than the protocol allows is a ``DecodeError`` (the consumer dead-letters the item),
and a lone surrogate (JSON can carry ``\\ud800``, UTF-8 cannot) becomes U+FFFD anywhere in the item,
so what a handler reads it can also send.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import ujson

from frontend.protocol import MAX_ID_LEN

from .errors import DecodeError, NotBoundError

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}
#: the longest bare JID (RFC 7622: 1023 bytes for each of the local part and the domain)
MAX_JID_LEN = 2047


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
        if not isinstance(raw, (bytes, bytearray)) or _SURROGATE_ESCAPE.search(raw):
            _scrub(obj)
        cls = EVENT_TYPES.get(obj["type"], Event)
        kwargs: dict[str, Any] = {"data": obj, "backend": backend}
        for name, key, allowed in _fields_of(cls):
            if key in obj:
                value = obj[key]
                if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                    raise DecodeError(f"event field {key!r} must be {_describe(allowed)}, "
                                      f"not {type(value).__name__}")
                kwargs[name] = value
        for key in ("type", "room", "event_id"):
            if len(obj.get(key) or "") > MAX_ID_LEN:
                raise DecodeError(f"event field {key!r} is longer than {MAX_ID_LEN} characters")
        for key, limit in (("account", MAX_ID_LEN), ("msgid", MAX_ID_LEN), ("jid", MAX_JID_LEN)):
            if key in kwargs and len(kwargs[key] or "") > limit:  # (type-checked above)
                raise DecodeError(f"event field {key!r} is longer than {limit} characters")
        try:
            kwargs["ts"] = float(kwargs.get("ts") or 0.0)
        except (TypeError, ValueError, OverflowError):
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

    Who sent it, where the chat server says (PROTOCOL.md): ``account`` is the sender's services
    account on IRC (IRCv3; ``None`` when not logged in or unknown: a nick alone is no identity),
    ``jid`` the sender's real bare JID on XMPP where the room shows it; ``msgid`` and ``server_ts``
    (unix seconds) are the server's id and time of the line, where it gives them.
    """

    TYPE: ClassVar[str] = "message"
    sender: str = field(default="", metadata={"json": "from"})
    text: str = ""
    private: bool = False
    account: str | None = None
    jid: str | None = None
    msgid: str | None = None
    server_ts: float | None = None
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
    #: their services account (IRC, IRCv3) or real bare JID (XMPP), where the server says
    account: str | None = None
    jid: str | None = None


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

# ------------------------------------------------------------------------------------- validation
#: what a field's annotation allows in JSON (``ts`` is converted with ``float()`` instead)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "str | None": (str, type(None)), "bool": (bool,),
    "str | int | None": (str, int, type(None)), "float": (int, float, str, type(None)),
    "float | None": (int, float, type(None)),
}
_FIELDS: dict[type, tuple[tuple[str, str, tuple[type, ...]], ...]] = {}
#: filled by routing, never by the item
_ROUTING_FIELDS = frozenset({"command", "args", "arg_text", "match"})
# a \\uD800-\\uDFFF escape: only then can the decoded item hold a lone surrogate
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _fields_of(cls: type) -> tuple[tuple[str, str, tuple[type, ...]], ...]:
    """``(attribute, JSON key, allowed types)`` of each field an item may set."""
    found = _FIELDS.get(cls)
    if found is None:
        found = tuple((f.name, f.metadata.get("json", f.name), _JSON_TYPES[str(f.type)])
                      for f in dataclasses.fields(cls)
                      if str(f.type) in _JSON_TYPES and f.name not in _ROUTING_FIELDS)
        _FIELDS[cls] = found
    return found


def _describe(allowed: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in allowed)


def _clean(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def _scrub(obj: Any) -> None:
    """Replace lone surrogates by U+FFFD in every string of ``obj`` (in place, no recursion)."""
    stack = [obj]
    while stack:
        node = stack.pop()
        pairs = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, value in pairs:
            if isinstance(key, str) and _LONE_SURROGATE.search(key):
                del node[key]
                key = _clean(key)
            if isinstance(value, str):
                value = _clean(value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
            node[key] = value
