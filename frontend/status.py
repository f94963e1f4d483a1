"""What `greenroom status`, `greenroom dead` and the dashboard read and change in Redis.

Everything comes from Redis alone (heartbeats ``frontends:<id>``, ``rooms``, ``rooms:state``, the
lists), so it works against any number of frontends from anywhere. Dead letters are named by a short
digest of their bytes, not by position, so a list that moves under you never requeues the wrong item.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Iterable

import redis

from .errors import ProtocolError
from .keys import Keys
from .protocol import decode, encode

#: heartbeat fields that hold JSON
_JSON_FIELDS = {"rooms_by_state", "rooms_by_protocol", "commands"}
_NUMBER_FIELDS = {"pid", "started", "rooms", "sessions", "inflight", "outbox", "deepest_room_queue",
                  "events_pushed", "events_dropped"}
#: spec fields that are never shown
SECRET_FIELDS = {"password", "key", "room_password"}
DEAD_LISTS = {"control": "control:dead", "messages": "messages:dead"}
LIST_LIMIT = 1000

# KEYS[1] dead list, KEYS[2] target list; ARGV[1] the dead item, ARGV[2] what to push back.
_REQUEUE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def frontends(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """The live frontends from their heartbeats, oldest first."""
    out = []
    prefix = keys.heartbeat("")
    for key in sorted(client.scan_iter(match=keys.heartbeat("*"), count=500)):
        raw = client.hgetall(key)
        if not raw:
            continue
        entry: dict[str, Any] = {"id": _text(key)[len(prefix):]}
        for name, value in raw.items():
            field, text = _text(name), _text(value)
            try:
                if field in _JSON_FIELDS:
                    entry[field] = decode(text)
                    continue
                if field in _NUMBER_FIELDS:
                    entry[field] = float(text) if "." in text else int(text)
                    continue
            except (ProtocolError, ValueError):
                pass
            entry[field] = text
        entry["ttl"] = client.pttl(key) / 1000.0
        out.append(entry)
    return sorted(out, key=lambda f: f.get("started") or 0)


def rooms(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every room of the registry (and stray states), with its spec (secrets masked) and state."""
    specs = client.hgetall(keys.rooms)
    states = client.hgetall(keys.states)
    rows = []
    for room in sorted(set(specs) | set(states)):
        spec = _decode_obj(specs.get(room))
        state = _decode_obj(states.get(room)) or {}
        rows.append({
            "room": _text(room), "protocol": (spec or {}).get("protocol") or state.get("protocol"),
            "tenant": (spec or {}).get("tenant"), "where": where(spec),
            "state": state.get("state", "pending" if spec else "?"),
            "since": state.get("since"), "attempts": state.get("attempts", 0),
            "error": state.get("error"), "frontend": state.get("frontend"),
            "registered": spec is not None, "spec": mask(spec) if spec else None,
        })
    return rows


def _decode_obj(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        obj = decode(raw)
    except ProtocolError:
        return None
    return obj if isinstance(obj, dict) else None


def mask(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec with every secret replaced by ``***``."""
    out = {}
    for name, value in spec.items():
        if name in SECRET_FIELDS and value:
            out[name] = "***"
        elif name == "sasl" and isinstance(value, dict):
            out[name] = {k: ("***" if k == "password" else v) for k, v in value.items()}
        else:
            out[name] = value
    return out


def where(spec: dict | None) -> str:
    if not spec:
        return "-"
    if spec.get("protocol") == "irc":
        return f"{spec.get('channel')}@{spec.get('server')}:{spec.get('port') or ''}"
    return f"{spec.get('muc')}"


def list_lengths(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Lengths of control, messages, the in-flight lists (summed) and the dead-letter lists."""
    pipe = client.pipeline(transaction=False)
    names = ["control", "messages", "control:dead", "messages:dead"]
    for name in names:
        pipe.llen(keys.key(name))
    lengths = dict(zip(names, pipe.execute()))
    inflight = [key for key in client.scan_iter(match=keys.inflight("*"), count=500)]
    lengths["inflight"] = sum(client.llen(key) for key in inflight)
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


# -------------------------------------------------------------------------------------- dead letters
def digest(item: bytes) -> str:
    return hashlib.blake2b(item, digest_size=6).hexdigest()


def dead_key(keys: Keys, which: str) -> str:
    if which not in DEAD_LISTS:
        raise ValueError(f"no dead-letter list {which!r}: use control or messages")
    return keys.key(DEAD_LISTS[which])


def dead_items(client: redis.Redis, keys: Keys, which: str = "control",
               limit: int = LIST_LIMIT) -> list[tuple[str, bytes]]:
    return [(digest(item), item) for item in client.lrange(dead_key(keys, which), 0, limit - 1)]


def dead_list(client: redis.Redis, keys: Keys, which: str = "control",
              limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
    """The dead letters, oldest first: id, reason, when, by whom, and the item."""
    out = []
    for ident, item in dead_items(client, keys, which, limit):
        obj = _decode_obj(item) or {}
        error = obj.get("error")
        if isinstance(error, dict):  # control:dead (the frontend)
            code, detail = error.get("code") or "?", error.get("detail") or ""
        elif isinstance(error, str):  # messages:dead (backend_sdk): "Type: message", handler, traceback
            code, detail = error.split(":", 1)[0], f"{obj.get('handler', '?')}: {error}"
        else:
            code, detail = "?", ""
        body = obj.get("raw", obj.get("event"))
        out.append({
            "id": ident, "code": code, "detail": detail, "ts": obj.get("ts"),
            "frontend": obj.get("frontend") or obj.get("consumer"),
            "raw": body if isinstance(body, str) else encode(body).decode() if isinstance(body, dict)
            else _text(item),
        })
    return out


def _payload(which: str, item: bytes, keys: Keys) -> tuple[str, bytes]:
    """Where a dead letter goes back to and what is pushed there."""
    obj = _decode_obj(item) or {}
    if which == "control":
        raw = obj.get("raw")
        return keys.control, raw.encode("utf-8") if isinstance(raw, str) else item
    event = obj.get("event")  # backend_sdk keeps the event as received (a string)
    if isinstance(event, dict):
        return keys.messages, encode(event)
    return keys.messages, event.encode("utf-8") if isinstance(event, str) else item


def _select(client: redis.Redis, keys: Keys, which: str, ids: Iterable[str] | None,
            code: str | None) -> list[bytes]:
    wanted = set(ids) if ids is not None else None
    chosen = []
    for ident, item in dead_items(client, keys, which, limit=1 << 30):
        if wanted is not None and ident not in wanted:
            continue
        if code is not None:
            error = (_decode_obj(item) or {}).get("error")
            found = error.get("code") if isinstance(error, dict) else str(error).split(":", 1)[0]
            if found != code:
                continue
        chosen.append(item)
    return chosen


def dead_requeue(client: redis.Redis, keys: Keys, which: str = "control", ids: Iterable[str] | None = None,
                 code: str | None = None) -> int:
    """Push the chosen dead letters (all when ``ids`` is None) back where they came from."""
    script = client.register_script(_REQUEUE)
    moved = 0
    source = dead_key(keys, which)
    for item in _select(client, keys, which, ids, code):
        target, payload = _payload(which, item, keys)
        moved += int(script(keys=[source, target], args=[item, payload]))
    return moved


def dead_purge(client: redis.Redis, keys: Keys, which: str = "control", ids: Iterable[str] | None = None,
               code: str | None = None) -> int:
    """Delete the chosen dead letters (all when ``ids`` is None and no ``code``)."""
    source = dead_key(keys, which)
    if ids is None and code is None:
        n = client.llen(source)
        client.delete(source)
        return int(n)
    return sum(int(client.lrem(source, 1, item)) for item in _select(client, keys, which, ids, code))


# ------------------------------------------------------------------------------------------ printing
def format_status(data: dict[str, Any], now: float | None = None) -> str:
    """The `greenroom status` table."""
    now = time.time() if now is None else now
    lines = [f"{'FRONTEND':28} {'HOST':16} {'PID':>7} {'VERSION':8} {'UP':>8} {'ROOMS':>6} "
             f"{'INFLIGHT':>8} {'OUTBOX':>7}  STATES"]
    for fe in data["frontends"]:
        up = _age(now - fe["started"]) if isinstance(fe.get("started"), (int, float)) and fe["started"] else "-"
        states = " ".join(f"{k}={v}" for k, v in sorted((fe.get("rooms_by_state") or {}).items()))
        lines.append(f"{str(fe['id'])[:28]:28} {str(fe.get('host', '?'))[:16]:16} {fe.get('pid', '?'):>7} "
                     f"{str(fe.get('version', '?')):8} {up:>8} {fe.get('rooms', 0):>6} "
                     f"{fe.get('inflight', 0):>8} {fe.get('outbox', 0):>7}  {states}")
        if fe.get("last_error"):
            lines.append(f"{'':28} last error: {fe['last_error']}")
    if not data["frontends"]:
        lines.append("(no live frontend)")
    rooms_ = data["rooms"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(rooms_["by_state"].items())) or "none"
    lines.append("")
    lines.append(f"rooms: {rooms_['total']} ({states})")
    lists = data["lists"]
    lines.append("lists: " + "  ".join(f"{name} {lists[name]}" for name in
                                        ("control", "messages", "inflight", "control:dead", "messages:dead")))
    return "\n".join(lines)


def format_dead(rows: list[dict[str, Any]], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"{'ID':12} {'AGE':>8} {'REASON':14} {'DETAIL':40} RAW"]
    for row in rows:
        age = _age(now - row["ts"]) if isinstance(row.get("ts"), (int, float)) else "-"
        detail = str(row["detail"]).replace("\n", " ")[:40]
        lines.append(f"{row['id']:12} {age:>8} {str(row['code'])[:14]:14} {detail:40} {row['raw'][:80]}")
    lines.append(f"{len(rows)} dead letters")
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
