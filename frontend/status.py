"""What `greenroom status`, `greenroom rooms` and the dashboard show: read-only views of Redis.

Everything comes from Redis alone (heartbeats ``frontends:<id>``, ``rooms``, ``rooms:state``, the
lists), so it works against any number of frontends from anywhere. Dead letters (listing, requeue,
purge) are ``frontend.deadletters``.

Every value read from Redis is treated as hostile: secrets are masked (in clear or sealed, at any
depth), strings that are not valid Unicode are made so, fields have the types the views expect, and
``terminal()`` / ``terminal_json()`` escape control characters for the operator's terminal.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import redis

from .errors import ProtocolError
from .keys import Keys, glob_escape
from .logs import escape_controls, escape_json
from .protocol import SECRET_FIELDS, decode
from .sealing import is_sealed

#: heartbeat fields that hold JSON
_JSON_FIELDS = {"rooms_by_state", "rooms_by_protocol", "commands"}
_NUMBER_FIELDS = {"pid", "started", "rooms", "sessions", "inflight", "outbox", "deepest_room_queue",
                  "events_pushed", "events_dropped"}
MASK = "***"
_MAX_DEPTH = 32
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# in JSON text these only occur inside strings, where a \u escape means the same character


# ------------------------------------------------------------------------------- hostile values
def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else clean(value)


def clean(value: Any, depth: int = 0) -> Any:
    """``value`` with every string made valid Unicode (a lone surrogate, which JSON can carry as
    ``\\ud800``, becomes U+FFFD), so it can be printed, rendered and encoded."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if depth > _MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {clean(str(k)): clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def terminal(value: Any) -> str:
    """``value`` as text safe for a terminal: control characters (ESC, BEL, CR, C1, ...) escaped."""
    return escape_controls(clean(value if isinstance(value, str) else str(value)))


def terminal_json(obj: Any) -> str:
    """Compact JSON safe for a terminal: C0 controls are escaped by JSON itself; DEL, C1 controls,
    U+2028/U+2029 and lone surrogates become ``\\u`` escapes too (the same string once decoded)."""
    return escape_json(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str))


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return clean(value) if isinstance(value, str) else json.dumps(clean(value), default=str)[:200]


def _num(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _decode_obj(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        obj = decode(raw)
    except (ProtocolError, RecursionError, ValueError, OverflowError):
        return None
    return obj if isinstance(obj, dict) else None


# ----------------------------------------------------------------------------------------- views
def frontends(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """The live frontends from their heartbeats, oldest first."""
    out = []
    prefix = keys.heartbeat("")
    for key in sorted(client.scan_iter(match=keys.heartbeat("*"), count=500)):
        try:
            raw = client.hgetall(key)
        except redis.ResponseError:  # not a hash: not a heartbeat
            continue
        if not raw:
            continue
        entry: dict[str, Any] = {"id": _text(key)[len(prefix):]}
        for name, value in raw.items():
            field, text = _text(name), _text(value)
            entry[field] = text
            if field in _JSON_FIELDS:
                obj = _decode_obj(value)
                entry[field] = clean(obj) if obj is not None else text
            elif field in _NUMBER_FIELDS:
                try:
                    number = float(text) if "." in text or "e" in text.lower() else int(text)
                except ValueError:
                    continue
                if math.isfinite(number):
                    entry[field] = number
        entry["ttl"] = client.pttl(key) / 1000.0
        out.append(entry)
    return sorted(out, key=lambda f: f["started"] if isinstance(f.get("started"), (int, float)) else 0)


def rooms(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every room of the registry (and stray states), with its spec (secrets masked) and state."""
    specs = client.hgetall(keys.rooms)
    states = client.hgetall(keys.states)
    rows = []
    for room in sorted(set(specs) | set(states)):
        spec = _decode_obj(specs.get(room))
        state = _decode_obj(states.get(room)) or {}
        attempts = _num(state.get("attempts"))
        rows.append({
            "room": _text(room), "protocol": _str((spec or {}).get("protocol") or state.get("protocol")),
            "tenant": _str((spec or {}).get("tenant")), "where": where(spec),
            "state": _str(state.get("state")) or ("pending" if spec else "?"),
            "since": _num(state.get("since")), "attempts": int(attempts) if attempts is not None else 0,
            "error": _str(state.get("error")), "frontend": _str(state.get("frontend")),
            "registered": spec is not None, "spec": clean(mask(spec)) if spec else None,
        })
    return rows


def mask(spec: Any, depth: int = 0) -> Any:
    """``spec`` with every secret replaced by ``***``: the values of ``password``, ``key`` and
    ``room_password`` at any depth (SASL's too), and any sealed value wherever it is."""
    if depth > _MAX_DEPTH:
        return MASK
    if isinstance(spec, dict):
        return {name: MASK if (name in SECRET_FIELDS and value) or is_sealed(value) else mask(value, depth + 1)
                for name, value in spec.items()}
    if isinstance(spec, list):
        return [mask(value, depth + 1) for value in spec]
    return MASK if is_sealed(spec) else spec


def where(spec: dict | None) -> str:
    """Where a room is: ``#channel@server:port`` for IRC, the MUC for XMPP, ``-`` without a spec."""
    if not spec:
        return "-"
    if spec.get("protocol") == "irc":
        port = spec.get("port")
        return clean(f"{spec.get('channel')}@{spec.get('server')}:{port if port is not None else ''}")
    return clean(f"{spec.get('muc')}")


def list_lengths(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Lengths of control, messages, the in-flight lists (summed) and the dead-letter lists
    (a key of another type counts 0)."""
    names = ["control", "messages", "control:dead", "messages:dead"]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(keys.key(name))
    lengths = {name: n if isinstance(n, int) else 0 for name, n in zip(names, pipe.execute(raise_on_error=False))}
    # held in flight: the ledgers (hashes) and landing lists, and legacy in-flight lists
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(match=glob_escape(keys.ledger("")) + "*", count=500):
        pipe.hlen(key)
    for pattern in (keys.landing(""), keys.inflight(""), keys.inbox("")):
        for key in client.scan_iter(match=glob_escape(pattern) + "*", count=500):
            pipe.llen(key)
    lengths["inflight"] = sum(n for n in pipe.execute(raise_on_error=False) if isinstance(n, int))
    return lengths


def overview(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Everything `greenroom status` shows."""
    by_state: dict[str, int] = {}
    by_protocol: dict[str, int] = {}
    all_rooms = rooms(client, keys)
    for row in all_rooms:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
        proto = row["protocol"] or "?"
        by_protocol[proto] = by_protocol.get(proto, 0) + 1
    return {"ts": time.time(), "frontends": frontends(client, keys),
            "rooms": {"total": len(all_rooms), "by_state": by_state, "by_protocol": by_protocol},
            "lists": list_lengths(client, keys)}


# ------------------------------------------------------------------------------------------ printing
def _cell(value: Any, width: int) -> str:
    """A table cell: escaped, cut to ``width``, padded."""
    text = terminal("" if value is None else value)
    return f"{text[:width]:{width}}"


def _rcell(value: Any, width: int) -> str:
    text = terminal("" if value is None else value)
    return f"{text[:width]:>{width}}"


def format_status(data: dict[str, Any], now: float | None = None) -> str:
    """The `greenroom status` table (every value from Redis escaped for the terminal)."""
    now = time.time() if now is None else now
    lines = [f"{'FRONTEND':28} {'HOST':16} {'PID':>7} {'VERSION':8} {'UP':>8} {'ROOMS':>6} "
             f"{'INFLIGHT':>8} {'OUTBOX':>7}  STATES"]
    for fe in data["frontends"]:
        started = fe.get("started")
        up = _age(now - started) if isinstance(started, (int, float)) and started else "-"
        by_state = fe.get("rooms_by_state")
        states = " ".join(f"{k}={v}" for k, v in sorted(by_state.items(), key=lambda kv: str(kv[0]))) \
            if isinstance(by_state, dict) else str(by_state or "")
        lines.append(f"{_cell(fe['id'], 28)} {_cell(fe.get('host', '?'), 16)} {_rcell(fe.get('pid', '?'), 7)} "
                     f"{_cell(fe.get('version', '?'), 8)} {up:>8} {_rcell(fe.get('rooms', 0), 6)} "
                     f"{_rcell(fe.get('inflight', 0), 8)} {_rcell(fe.get('outbox', 0), 7)}  {terminal(states)}")
        if fe.get("last_error"):
            lines.append(f"{'':28} last error: {terminal(fe['last_error'])}")
    if not data["frontends"]:
        lines.append("(no live frontend)")
    rooms_ = data["rooms"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(rooms_["by_state"].items())) or "none"
    lines.append("")
    lines.append(f"rooms: {rooms_['total']} ({terminal(states)})")
    lists = data["lists"]
    lines.append("lists: " + "  ".join(f"{name} {lists[name]}" for name in
                                        ("control", "messages", "inflight", "control:dead", "messages:dead")))
    return "\n".join(lines)


def format_rooms(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """The `greenroom rooms` table."""
    now = time.time() if now is None else now
    lines = [f"{'ROOM':24} {'PROTO':5} {'WHERE':36} {'STATE':10} {'FOR':>8} {'TRIES':>5}  ERROR"]
    for r in rows:
        age = f"{now - r['since']:.0f}s" if r["since"] else "-"
        lines.append(f"{_cell(r['room'], 24)} {_cell(r['protocol'] or '?', 5)} {_cell(r['where'], 36)} "
                     f"{_cell(r['state'], 10)} {age:>8} {r['attempts']:>5}  {terminal(r['error'] or '')}")
    lines.append(f"{len(rows)} rooms")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
