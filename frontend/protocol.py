"""The wire contract in code (PROTOCOL.md): decode, validate and encode commands, specs and events.

Pure: no gevent, no Redis. ``backend_sdk`` validates with the same functions before it pushes, so a
command the SDK accepts is a command the frontend accepts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import ujson

from . import cafile
from .errors import ProtocolError
from .keys import EVENTS_NAME_RE

COMMAND_TYPES = frozenset({"join", "part", "say", "action", "topic", "ping"})
TEXT_COMMANDS = frozenset({"say", "action", "topic"})
EVENT_TYPES = frozenset(
    {
        "message", "action", "joined", "parted", "user_joined", "user_left",
        "topic", "kicked", "error", "pong",
    }
)
PROTOCOLS = ("irc", "xmpp")

#: default limit of a command's ``text`` in UTF-8 bytes
MAX_TEXT_BYTES = 16384
MAX_ID_LEN = 200
#: an integer ``cmd_id`` fits a signed 64-bit integer (what every JSON reader handles)
MAX_INT_ID = 2 ** 63
#: a dead letter keeps at most this many bytes of the item (and its length and digest)
DEAD_RAW_LIMIT = 4096
#: spec fields whose values are secrets: masked in dead letters, sealed at rest, never shown
SECRET_FIELDS = ("password", "key", "room_password")

_ROOM_ID_BAD = re.compile(r"[\s\x00-\x1f\x7f]")
# C0 controls and DEL; C1 controls too (terminals act on them): never in an id, a name or a spec field
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# a room id: no white space, no control character (one search on the hot path)
_ID_BAD = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# A nick starts with a letter or one of RFC 2812's specials; never with a channel, STATUSMSG (@%~&+)
# or mask ($) prefix, so a target can only ever be one person. Later characters: no separators.
_NICK_RE = re.compile(r"^(?:[^\W\d]|[\[\]\\`^{|}])[^\s,*?!@:\x00-\x1f\x7f]*$")
_CHANNEL_RE = re.compile(r"^[#&+!][^\s,\x00-\x1f\x7f-\x9f]{1,199}$")
_JID_RE = re.compile(r"^[^@/\s]+@[^@/\s]+$")


def spec_text(spec_json: Mapping[str, Any]) -> str:
    """A spec as canonical JSON text (keys sorted, compact): what a room keeps to tell whether a later
    join carries the same spec. The text is 0.15 KB where the decoded dict held 0.5 KB beyond the
    strings its ``Spec`` shares (``tests/bench/memory_probe --trace``), for the room's whole life. The
    standard ``json`` (only at a join): it writes any string a decoded spec can hold, a lone surrogate
    too."""
    return json.dumps(spec_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> str:
    """``ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)``: compact JSON text, UTF-8
    as it is, ``/`` not escaped.

    The options go by position (ujson 6: ``ensure_ascii``, ``encode_html_chars``,
    ``escape_forward_slashes``): ujson matches keyword arguments by name on every call (0.4-1.1 µs an
    event here, ``python -m tests.bench.line_costs``). ``tests/unit/test_json_text.py`` pins that both forms write the same
    text, so a ujson that orders them otherwise fails there (older ujson had ``double_precision``
    second; setup.cfg pins ujson 6)."""
    return _ujson_dumps(obj, False, False, False)


_ujson_dumps = ujson.dumps


def encode(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, the encoding of every list item.

    Raises ``UnicodeEncodeError`` for a string with a lone surrogate: validation refuses those at the
    edge, so only a bug can get one here, and the writers catch it per item.
    """
    return _ujson_dumps(obj, False, False, False).encode("utf-8")


def encodable(text: str) -> bool:
    """True when ``text`` can be written as UTF-8 (Redis, IRC and XML all need that): no lone
    surrogates, which JSON can carry as ``\\ud800`` escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_string(value: str, what: str) -> str:
    if not encodable(value):
        raise ProtocolError("bad_command", f"{what} is not valid Unicode (it has a lone surrogate)")
    return value


def decode(raw: bytes | str) -> Any:
    """Decode one list item; raises ProtocolError(``bad_command``) when it is not JSON.

    Bytes go to ujson as they are (it checks UTF-8 while it parses: no second pass); only a failure
    is decoded again, for the precise reason. A lone surrogate (CESU bytes or a ``\\ud800`` escape)
    can come through: the checks of every field a command keeps refuse those."""
    try:
        return ujson.loads(raw)
    except (ValueError, TypeError):
        pass
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        return ujson.loads(text)
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_command", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, TypeError) as exc:
        raise ProtocolError("bad_command", f"not JSON: {exc}") from None


# --------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Flood:
    """Token bucket settings: ``burst`` lines at once, then ``rate`` lines per second."""

    burst: int
    rate: float


@dataclass(frozen=True)
class IrcSpec:
    """Where and how an IRC room joins. Secrets are kept out of ``repr``."""

    server: str
    port: int
    tls: bool
    nick: str
    channel: str
    key: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    tls_verify: bool = True
    tls_ca: str | None = None  # a CA bundle (PEM) trusted instead of the system's
    #: ``to`` may name network services (NickServ, ChanServ, ...) even on a connection that rooms of
    #: other tenants share (without it: only where every room on the connection is of one tenant)
    allow_services: bool = False
    share: bool = True
    flood: Flood | bool | None = None  # None: the configured default; False: off
    tenant: str | None = None
    events: str | None = None
    protocol: str = "irc"

    def connection_key(self) -> tuple:
        """Rooms whose keys are equal may share one connection."""
        return ("irc", self.server.lower(), self.port, self.tls, self.nick, self.password,
                self.sasl_username, self.sasl_password, self.tls_verify, self.tls_ca)


@dataclass(frozen=True)
class XmppSpec:
    """Where and how an XMPP multi-user chat room joins. Secrets are kept out of ``repr``."""

    jid: str
    password: str = field(repr=False)
    muc: str
    nick: str
    host: str | None = None
    port: int = 5222
    tls: bool = True
    room_password: str | None = field(default=None, repr=False)
    tls_verify: bool = True
    tls_ca: str | None = None
    share: bool = True
    flood: Flood | bool | None = None
    tenant: str | None = None
    events: str | None = None
    protocol: str = "xmpp"

    def connection_key(self) -> tuple:
        return ("xmpp", self.jid.lower(), self.password, self.host, self.port, self.tls, self.tls_verify,
                self.tls_ca)


Spec = Union[IrcSpec, XmppSpec]

_COMMON_SPEC_KEYS = {"protocol", "tenant", "events", "flood", "share"}
_IRC_KEYS = _COMMON_SPEC_KEYS | {"server", "port", "tls", "tls_verify", "tls_ca", "nick", "channel", "key",
                                 "password", "sasl", "allow_services"}
_XMPP_KEYS = _COMMON_SPEC_KEYS | {"jid", "password", "muc", "nick", "host", "port", "tls", "tls_verify",
                                  "tls_ca", "room_password"}


def _opt_str(spec: Mapping[str, Any], name: str, *, limit: int = 400) -> str | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError("bad_command", f"spec field {name!r} must be a string or null")
    if len(value) > limit or _CONTROL.search(value):
        raise ProtocolError("bad_command",
                            f"spec field {name!r} is too long or has CR/LF/NUL or other control characters")
    return _check_string(value, f"spec field {name!r}")


def _req_str(spec: Mapping[str, Any], name: str) -> str:
    value = _opt_str(spec, name)
    if not value:
        raise ProtocolError("bad_command", f"spec field {name!r} is required")
    return value


def _bool(spec: Mapping[str, Any], name: str, default: bool) -> bool:
    value = spec.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ProtocolError("bad_command", f"spec field {name!r} must be true or false")
    return value


def _port(spec: Mapping[str, Any], default: int) -> int:
    value = spec.get("port")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ProtocolError("bad_command", "spec field 'port' must be an integer 1-65535")
    return value


def _tls_ca(spec: Mapping[str, Any]) -> str | None:
    """``tls_ca``: the syntax of its path here (``cafile.check_path``); the file is checked by the
    frontend that pops the join (``parse_command``), on whose host it must be."""
    value = _opt_str(spec, "tls_ca", limit=cafile.MAX_PATH)
    try:
        return None if value is None else cafile.check_path(value)
    except cafile.CaFileError as exc:
        raise ProtocolError("bad_command", f"spec field {exc}") from None


def _flood(spec: Mapping[str, Any]) -> Flood | bool | None:
    value = spec.get("flood")
    if value is None or value is False:
        return value
    if value is True:
        return None
    if isinstance(value, dict) and set(value) <= {"burst", "rate"}:
        burst, rate = value.get("burst", 5), value.get("rate", 0.5)
        if (isinstance(burst, int) and not isinstance(burst, bool) and burst >= 1
                and isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0):
            return Flood(burst=burst, rate=float(rate))
    raise ProtocolError(
        "bad_command", "spec field 'flood' must be false or {\"burst\": int >= 1, \"rate\": > 0}")


def _common(spec: Mapping[str, Any]) -> dict[str, Any]:
    events = _opt_str(spec, "events", limit=MAX_ID_LEN)
    if events is not None and not EVENTS_NAME_RE.match(events):
        raise ProtocolError(
            "bad_command", "spec field 'events' must be 'messages' or 'messages.<name>' (letters, digits, "
                           f"'.', '_', '-'), not {events[:40]!r}: rooms may only write to events lists")
    return {
        "tenant": _opt_str(spec, "tenant", limit=MAX_ID_LEN),
        "events": events,
        "flood": _flood(spec),
        "share": _bool(spec, "share", True),
    }


def parse_spec(spec: Any) -> Spec:
    """Validate a room spec (the ``spec`` of a ``join``) and return it typed."""
    if not isinstance(spec, dict):
        raise ProtocolError("bad_command", "'spec' must be an object")
    protocol = spec.get("protocol")
    if protocol not in PROTOCOLS:
        raise ProtocolError("bad_command", f"spec 'protocol' must be one of {', '.join(PROTOCOLS)}")
    allowed = _IRC_KEYS if protocol == "irc" else _XMPP_KEYS
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ProtocolError("bad_command", f"unknown spec key {unknown[0]!r} for {protocol}")
    return _parse_irc(spec) if protocol == "irc" else _parse_xmpp(spec)


def _parse_irc(spec: Mapping[str, Any]) -> IrcSpec:
    tls = _bool(spec, "tls", False)
    nick = _req_str(spec, "nick")
    if not _NICK_RE.match(nick) or len(nick.encode()) > 64:
        raise ProtocolError("bad_command", f"spec field 'nick' is not a valid nick: {nick!r}")
    channel = spec.get("channel")
    if isinstance(channel, str) and channel and not _CHANNEL_RE.match(channel):
        raise ProtocolError("bad_command", f"spec field 'channel' is not a channel name: {channel[:60]!r}")
    channel = _req_str(spec, "channel")
    key = _opt_str(spec, "key", limit=100)
    if key is not None and (" " in key or "," in key or key.startswith(":") or not key):
        raise ProtocolError("bad_command", "spec field 'key' must not be empty, contain spaces or commas, "
                                           "or start with ':'")
    password = _opt_str(spec, "password")
    if password is not None and " " in password:
        raise ProtocolError("bad_command", "spec field 'password' must not contain spaces")
    sasl = spec.get("sasl")
    sasl_user = sasl_pass = None
    if sasl is not None:
        if not isinstance(sasl, dict) or set(sasl) != {"username", "password"}:
            raise ProtocolError("bad_command", "spec field 'sasl' must be {\"username\", \"password\"}")
        sasl_user = _req_str(sasl, "username")
        sasl_pass = _req_str(sasl, "password")
    server = _req_str(spec, "server")
    if " " in server:
        raise ProtocolError("bad_command", "spec field 'server' must not contain spaces")
    return IrcSpec(
        server=server, port=_port(spec, 6697 if tls else 6667), tls=tls, nick=nick,
        channel=channel, key=key, password=password, sasl_username=sasl_user,
        sasl_password=sasl_pass, tls_verify=_bool(spec, "tls_verify", True), tls_ca=_tls_ca(spec),
        allow_services=_bool(spec, "allow_services", False), **_common(spec),
    )


def _parse_xmpp(spec: Mapping[str, Any]) -> XmppSpec:
    jid = _req_str(spec, "jid")
    if not _JID_RE.match(jid):
        raise ProtocolError("bad_command", f"spec field 'jid' must be a bare JID user@host: {jid!r}")
    muc = _req_str(spec, "muc")
    if not _JID_RE.match(muc):
        raise ProtocolError("bad_command", f"spec field 'muc' must be a room JID room@host: {muc!r}")
    nick = _req_str(spec, "nick")
    if _ROOM_ID_BAD.sub("", nick) != nick.replace(" ", "") or len(nick.encode()) > 256:
        raise ProtocolError("bad_command", "spec field 'nick' has control characters or is too long")
    return XmppSpec(
        jid=jid, password=_req_str(spec, "password"), muc=muc, nick=nick,
        host=_opt_str(spec, "host"), port=_port(spec, 5222), tls=_bool(spec, "tls", True),
        room_password=_opt_str(spec, "room_password"), tls_verify=_bool(spec, "tls_verify", True),
        tls_ca=_tls_ca(spec), **_common(spec),
    )


# ------------------------------------------------------------------------------------------ commands


def auto_cmd_id(raw: bytes) -> str:
    """The ``cmd_id`` of a command that came without one: derived from its bytes, so the same item
    delivered again after a crash has the same id (duplicates are visible in the events)."""
    return "auto-" + hashlib.blake2b(raw, digest_size=8).hexdigest()


class Command:
    """One validated command. ``raw`` is the item as popped (the in-flight list holds it).

    Slotted and not frozen: one is built per command on the hot path (treat it as read-only). A
    command that came without a ``cmd_id`` gets ``auto_cmd_id(item)``, made when something first
    reads ``cmd_id`` (an event that echoes it): a ``say`` that is simply sent never needs it (the hash
    is 1.5 µs of a line's 37, ``python -m tests.bench.line_costs``). Until then the command keeps a reference to its item (``id_of``)."""

    __slots__ = ("type", "room", "_cmd_id", "text", "to", "reason", "spec", "spec_json", "expires", "received",
                 "raw", "seq", "source", "_id_of")

    def __init__(self, type: str, room: str, cmd_id: str | int | None = None, text: str | None = None,
                 to: str | None = None, reason: str | None = None, spec: Spec | None = None,
                 spec_json: dict | None = None, expires: float | None = None, received: float = 0.0,
                 raw: bytes = b"", seq: int = 0, source: str | None = None, *,
                 id_of: bytes | None = None) -> None:
        self.type = type
        self.room = room
        self._cmd_id = cmd_id
        self.text = text
        self.to = to
        self.reason = reason
        self.spec = spec
        self.spec_json = spec_json
        self.expires = expires
        self.received = received
        self.raw = raw
        #: its entry in the frontend's in-flight ledger (0: not taken from Redis)
        self.seq = seq
        #: the scoped tenant whose own intake it came through (None: the public ``control``)
        self.source = source
        #: the item an automatic ``cmd_id`` is made of (None: it has its own, or none)
        self._id_of = id_of if cmd_id is None else None

    @property
    def cmd_id(self) -> str | int | None:
        cmd_id = self._cmd_id
        if cmd_id is None and self._id_of is not None:
            cmd_id = self._cmd_id = auto_cmd_id(self._id_of)
            self._id_of = None
        return cmd_id

    def __repr__(self) -> str:
        return (f"Command(type={self.type!r}, room={self.room!r}, cmd_id={self.cmd_id!r}, text={self.text!r}, "
                f"to={self.to!r}, reason={self.reason!r}, spec={self.spec!r}, expires={self.expires!r}, "
                f"received={self.received!r}, seq={self.seq!r}, source={self.source!r})")


def _check_id(obj: Mapping[str, Any]) -> str:
    room = obj.get("room")
    if not isinstance(room, str) or not room:
        raise ProtocolError("bad_command", "missing field 'room' (a non-empty string)")
    if len(room) > MAX_ID_LEN or _ID_BAD.search(room):
        raise ProtocolError("bad_command", "field 'room' is too long or has spaces/control characters")
    return room if room.isascii() else _check_string(room, "field 'room'")


def validate_cmd_id(cmd_id: Any) -> str | int | None:
    """A ``cmd_id`` as commands may carry it (None when absent); raises ProtocolError otherwise."""
    if cmd_id is None:
        return None
    if isinstance(cmd_id, int) and not isinstance(cmd_id, bool) and -MAX_INT_ID <= cmd_id < MAX_INT_ID:
        return cmd_id
    if isinstance(cmd_id, str) and len(cmd_id) <= MAX_ID_LEN:
        return cmd_id if cmd_id.isascii() else _check_string(cmd_id, "field 'cmd_id'")
    raise ProtocolError("bad_command",
                        "field 'cmd_id' must be a string (<= 200 chars) or a 64-bit integer")


def _timestamp(value: Any, name: str) -> float:
    """A finite unix timestamp (JSON numbers can be 1e400 or a 400-digit integer)."""
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            stamp = float(value)
        except OverflowError:
            stamp = math.inf
        if math.isfinite(stamp):
            return stamp
    raise ProtocolError("bad_command", f"field {name!r} must be a unix timestamp")


def check_text(text: Any, max_bytes: int = MAX_TEXT_BYTES, *, name: str = "text") -> str:
    """A command's text: a string of at most ``max_bytes`` UTF-8 bytes."""
    if not isinstance(text, str):
        raise ProtocolError("bad_command", f"missing field {name!r} (a string)")
    if text.isascii():  # one byte a character, and nothing UTF-8 cannot carry
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ProtocolError("bad_command", f"{name} is not valid Unicode (it has a lone surrogate)") from None
    if size > max_bytes:
        raise ProtocolError("bad_command", f"{name} is {size} bytes, the limit is {max_bytes}")
    return text


def check_target(to: Any) -> str:
    """A private message target: one plain nick, so it can never smuggle protocol syntax."""
    if not isinstance(to, str) or not to:
        raise ProtocolError("bad_command", "field 'to' must be a non-empty string")
    if not _NICK_RE.match(to) or len(_check_string(to, "field 'to'").encode()) > 64:
        raise ProtocolError("bad_command", f"field 'to' is not a plain nick: {to!r}")
    return to


def validate_command(obj: Any, *, max_text_bytes: int = MAX_TEXT_BYTES, raw: bytes = b"",
                     now: float | None = None, auto_id: bool = False) -> Command:
    """Validate a decoded command object; raises ProtocolError with a precise detail.

    With ``auto_id``, a command without ``cmd_id`` gets one derived from ``raw``.
    """
    if not isinstance(obj, dict):
        raise ProtocolError("bad_command", f"a command must be a JSON object, not {type(obj).__name__}")
    ctype = obj.get("type")
    if not isinstance(ctype, str) or ctype not in COMMAND_TYPES:
        raise ProtocolError(
            "bad_command",
            f"unknown type {ctype!r}" if ctype is not None else "missing field 'type'")
    room = _check_id(obj)
    cmd_id = validate_cmd_id(obj.get("cmd_id"))
    id_of = raw if auto_id and cmd_id is None else None  # ``auto_cmd_id(raw)`` when first read
    received = time.time() if now is None else now
    if ctype in TEXT_COMMANDS:  # the hot path: one construction, no keyword dict
        text = check_text(obj.get("text"), max_text_bytes)
        to = obj.get("to") if ctype != "topic" else None
        expires = obj.get("expires")
        return Command(ctype, room, cmd_id, text, None if to is None else check_target(to), None, None, None,
                       None if expires is None else _timestamp(expires, "expires"), received, raw, id_of=id_of)
    if ctype == "join":
        spec_json = obj.get("spec")
        return Command(ctype, room, cmd_id, spec=parse_spec(spec_json), spec_json=spec_json, received=received,
                       raw=raw, id_of=id_of)
    reason = obj.get("reason") if ctype == "part" else None
    return Command(ctype, room, cmd_id, reason=None if reason is None else check_text(reason, 400, name="reason"),
                   received=received, raw=raw, id_of=id_of)


def parse_command(raw: bytes, *, max_text_bytes: int = MAX_TEXT_BYTES) -> Command:
    """Decode and validate one item popped from ``control``.

    A command without ``cmd_id`` gets one derived from its bytes (``auto-<hash>``): stable when the
    same item is delivered again after a crash, so duplicates are visible in the events. A join's
    ``tls_ca`` must be a file this host can use (``cafile.check_file``): this is the frontend's edge.
    """
    command = validate_command(decode(raw), max_text_bytes=max_text_bytes, raw=raw, auto_id=True)
    tls_ca = None if command.spec is None else getattr(command.spec, "tls_ca", None)
    if tls_ca is not None:
        try:
            cafile.check_file(tls_ca)
        except cafile.CaFileError as exc:
            raise ProtocolError("bad_command", f"spec field {exc}") from None
    return command


# a secret field's string value, also when the item was cut inside it
_SECRET_VALUE = re.compile(r'("(?:password|key|room_password)"\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?$)', re.S)


def _mask_obj(obj: Any, depth: int = 0) -> tuple[Any, bool]:
    """``obj`` with every secret field's value replaced by ``"***"``, and whether anything was."""
    if depth > 64:
        return obj, False
    if isinstance(obj, dict):
        found, out = False, {}
        for key, value in obj.items():
            if key in SECRET_FIELDS and value is not None:
                out[key], found = "***", True
            else:
                out[key], inner = _mask_obj(value, depth + 1)
                found = found or inner
        return out, found
    if isinstance(obj, list):
        items = [_mask_obj(value, depth + 1) for value in obj]
        return [v for v, _ in items], any(f for _, f in items)
    return obj, False


def mask_secrets(text: str) -> str:
    """``text`` (an item, JSON or not) with the value of every secret field (``password``, ``key``,
    ``room_password``, at any depth: SASL's too) replaced by ``"***"``, so a rejected join keeps no
    secret in ``control:dead``. Valid JSON is masked by its structure (escaped names cannot hide a
    field) and re-encoded only when something was masked; anything else by a pattern."""
    try:
        obj = ujson.loads(text)
    except (ValueError, TypeError):
        return _SECRET_VALUE.sub(r'\1"***"', text)
    masked, found = _mask_obj(obj)
    if not found:
        return text
    try:
        return encode(masked).decode("utf-8")
    except (UnicodeEncodeError, OverflowError, ValueError, TypeError):
        return _SECRET_VALUE.sub(r'\1"***"', text)


def dead_letter(raw: bytes, code: str, detail: str, frontend: str) -> bytes:
    """The ``control:dead`` item for a rejected command.

    ``raw`` is the item decoded as UTF-8 (with replacement), its secrets masked and cut to
    ``DEAD_RAW_LIMIT`` bytes; ``raw_bytes`` and ``raw_digest`` (BLAKE2b-128 of the item as popped)
    always say what it was, ``raw_truncated`` when it was cut.
    """
    entry: dict[str, Any] = {"error": {"code": code, "detail": detail}}
    head = raw[:DEAD_RAW_LIMIT]
    entry["raw"] = mask_secrets(head.decode("utf-8", "replace"))
    entry["raw_bytes"] = len(raw)
    entry["raw_digest"] = hashlib.blake2b(raw, digest_size=16).hexdigest()
    if len(raw) > DEAD_RAW_LIMIT:
        entry["raw_truncated"] = True
    entry["frontend"] = frontend
    entry["ts"] = time.time()
    return encode(entry)


# -------------------------------------------------------------------------------------------- events

_EVENT_ID_PREFIX = os.urandom(6).hex()
_EVENT_ID_COUNTER = itertools.count(1)
_time_ns = time.time_ns


def new_event_id() -> str:
    """Unique across processes and restarts: a random per-process prefix and a counter."""
    return f"{_EVENT_ID_PREFIX}-{next(_EVENT_ID_COUNTER):x}"


def event(type: str, room: str, protocol: str, tenant: str | None = None, /,
          **fields: Any) -> dict[str, Any]:
    """The one place an event is made (PROTOCOL.md, "Events"): the common fields, then ``fields``.

    A ``cmd_id`` of None is left out. ``event_id`` and ``ts`` are added here.
    """
    out: dict[str, Any] = {"type": type, "room": room, "protocol": protocol}
    if tenant is not None:
        out["tenant"] = tenant
    if "cmd_id" in fields and fields["cmd_id"] is None:
        del fields["cmd_id"]
    out.update(fields)
    out["event_id"] = new_event_id()
    out["ts"] = time.time()
    return out


def event_head(room: str, protocol: str, tenant: str | None) -> str:
    """The JSON of the fields every event of a room shares, after ``type`` (``"room":..,"protocol":..``
    and ``"tenant"``): made once per room, so an event costs one encode of its own fields."""
    common: dict[str, Any] = {"room": room, "protocol": protocol}
    if tenant is not None:
        common["tenant"] = tenant
    return dumps(common)[1:-1]


def encode_event(type: str, head: str, fields: dict[str, Any]) -> tuple[bytes, float]:
    """An event as ``event()`` makes it, encoded: ``{"type":..,<head>,<fields>,"event_id":..,"ts":..}``,
    and its ``ts``. ``type`` is one of ``EVENT_TYPES`` (no escaping needed); a ``cmd_id`` of None is
    left out. Raises ``UnicodeEncodeError`` like ``encode`` for what UTF-8 cannot carry."""
    if "cmd_id" in fields and fields["cmd_id"] is None:
        del fields["cmd_id"]
    return encode_event_body(type, head, encode_fields(fields))


def encode_fields(fields: dict[str, Any]) -> str:
    """An event's own fields as ``encode_event`` encodes them (once for every room that gets them)."""
    return _ujson_dumps(fields, False, False, False)


def encode_event_body(type: str, head: str, body: str) -> tuple[bytes, float]:
    """``encode_event`` with the fields already encoded (``encode_fields``). The event id is
    ``new_event_id()``'s, written in the same format operation (one call less per event). ``ts`` is
    written from the clock's microseconds as two integers (``1796175129.165278``): a float's
    shortest repr cost 0.9 µs of the event's 1.8 (``python -m tests.bench.line_costs``); the number
    is the float returned (both are the double nearest to the same microseconds)."""
    micros = _time_ns() // 1000
    seconds, fraction = divmod(micros, 1_000_000)
    text = '{"type":"%s",%s%s%s,"event_id":"%s-%x","ts":%d.%06d}' % (
        type, head, "," if len(body) > 2 else "", body[1:-1], _EVENT_ID_PREFIX, next(_EVENT_ID_COUNTER),
        seconds, fraction)
    return text.encode("utf-8"), micros / 1e6
