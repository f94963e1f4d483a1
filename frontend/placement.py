"""Several frontends, the Python side of ``lua/placement.lua``: share keys and stored items.

- ``share_key(spec)``: rooms whose share keys are equal may share one chat connection, so they are
  placed on one frontend. The router computes it in Lua from a ``join``'s spec; a starting frontend
  computes it here for the rooms of the registry (whose secrets Lua cannot open). Both must agree:
  ``tests/unit/test_placement.py`` runs the Lua one on a real Redis against this one.
- ``decode_stored(value)``: what a value of an inbox or a ledger is. Scripts write them: a public item
  as it was popped (with ``\\0\\0`` in front when it starts with NUL), a scoped tenant's item as
  ``\\0@<tenant>\\0<item>``, or an internal marker ``\\0!<verb>\\0<room>`` (``take``: start holding
  this room; ``release``: leave it, it moves). No item pushed to an intake can pass for another kind.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _lower(text: str) -> str:
    """ASCII lower case, as Lua's ``string.lower``."""
    return text.translate(_ASCII_LOWER)


def _number(value: Any) -> str:
    """A JSON number as Lua's ``tostring`` writes it: cjson makes every number a double, which Lua
    writes with ``%.14g`` (integral values without a fraction, 14 significant digits)."""
    if isinstance(value, bool):
        return ""
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a double: cjson reads it as infinite
        number = math.inf if value > 0 else -math.inf
    return "%.14g" % number


def share_key(spec: Any) -> str:
    """The share key of a room spec (a decoded JSON object), as placement.lua computes it."""
    if not isinstance(spec, dict) or spec.get("share") is False:
        return ""
    protocol = spec.get("protocol")
    if protocol == "irc":
        tls = spec.get("tls") is True
        port = spec.get("port")
        port_s = _number(port) if isinstance(port, (int, float)) and not isinstance(port, bool) else (
            "6697" if tls else "6667")
        sasl = spec.get("sasl")
        su, sp = (_text(sasl.get("username")), _text(sasl.get("password"))) if isinstance(sasl, dict) else ("", "")
        parts = ["irc", _lower(_text(spec.get("server"))), port_s, "1" if tls else "0", _text(spec.get("nick")),
                 _text(spec.get("password")), su, sp]
    elif protocol == "xmpp":
        tls = spec.get("tls") is not False
        port = spec.get("port")
        port_s = _number(port) if isinstance(port, (int, float)) and not isinstance(port, bool) else "5222"
        parts = ["xmpp", _lower(_text(spec.get("jid"))), _text(spec.get("password")), _text(spec.get("host")),
                 port_s, "1" if tls else "0"]
    else:
        return ""
    return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


PUBLIC, TAKE, RELEASE = "public", "take", "release"


def decode_stored(value: bytes) -> tuple[str, bytes, str | None]:
    """``(PUBLIC, item, tenant)`` for a command (``tenant``: the scoped tenant whose own intake it came
    through, else None), or ``(verb, room as bytes, None)`` for an internal marker."""
    if not value.startswith(b"\0"):  # a public item as it was popped: the commonest, one test
        return PUBLIC, value, None
    kind = value[1:2]
    if kind == b"!":
        verb, _, room = value[2:].partition(b"\0")
        return verb.decode("ascii", "replace"), room, None
    if kind == b"@":
        tenant, _, item = value[2:].partition(b"\0")
        return PUBLIC, item, tenant.decode("utf-8", "replace")
    if kind == b"\0":
        return PUBLIC, value[2:], None
    return PUBLIC, value, None
