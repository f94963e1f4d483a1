"""What `greenroom status`, `greenroom rooms` and the dashboard show: read-only views of Redis.

Everything comes from Redis alone (heartbeats ``frontends:<id>``, ``rooms``, ``rooms:state``, the
lists), so it works against any number of frontends from anywhere. Dead letters (listing, requeue,
purge) are ``frontend.deadletters``.

Several frontends (``fleet()``): who is alive is what placement says, the leases in ``fleet:leases``
(score = expiry, Redis time); who holds a room is ``rooms:holder``; ``holding()`` says whether every room
of ``rooms`` is held by a live frontend. The actions on the fleet (drain, rebalance) are
``frontend.fleetops``.

Tenants (``tenants_view()``): the registered tenants (``tenants``) and one row for every other room,
each with its rooms by state, its quota use (``SCARD tenant:<name>:rooms`` against ``max_rooms``) and
the live counters the frontends' heartbeats carry in their ``tenants`` field, summed over the live
frontends (``-`` when none carries it).

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

from .errors import ConfigError, ProtocolError
from .keys import Keys, glob_escape
from .logs import escape_controls, escape_json
from .protocol import SECRET_FIELDS, decode
from .sealing import is_sealed
from .tenants import Tenant, check_name

#: heartbeat fields that hold JSON
_JSON_FIELDS = {"rooms_by_state", "rooms_by_protocol", "commands", "tenants"}
#: a heartbeat's JSON field larger than this is not decoded (not one of ours)
_JSON_FIELD_BYTES = 1 << 20
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
                obj = _decode_obj(value) if len(value) <= _JSON_FIELD_BYTES else None
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


def rooms(client: redis.Redis, keys: Keys, state: "Fleet | None" = None) -> list[dict[str, Any]]:
    """Every room of the registry (and stray states), with its spec (secrets masked), state and holder:
    ``holder`` (``rooms:holder``, or None), ``holder_alive`` (its lease is valid) and ``moving_to``
    (the target while ``greenroom rebalance`` moves it)."""
    specs = client.hgetall(keys.rooms)
    states = client.hgetall(keys.states)
    state = state if state is not None else fleet(client, keys)
    rows = []
    for room in sorted(set(specs) | set(states)):
        spec = _decode_obj(specs.get(room))
        st = _decode_obj(states.get(room)) or {}
        attempts = _num(st.get("attempts"))
        holder = state.holder.get(room)
        moving = state.moving.get(room)
        rows.append({
            "room": _text(room), "protocol": _str((spec or {}).get("protocol") or st.get("protocol")),
            "tenant": _str((spec or {}).get("tenant")), "where": where(spec),
            "state": _str(st.get("state")) or ("pending" if spec else "?"),
            "since": _num(st.get("since")), "attempts": int(attempts) if attempts is not None else 0,
            "error": _str(st.get("error")), "frontend": _str(st.get("frontend")),
            "holder": _text(holder) if holder is not None else None,
            "holder_alive": holder is not None and state.alive(holder),
            "moving_to": _text(moving) if moving is not None else None,
            "registered": spec is not None, "spec": clean(mask(spec)) if spec else None,
        })
    return rows


# ------------------------------------------------------------------------------ several frontends
class Fleet:
    """One consistent read (MULTI) of who is alive and who holds what. Ids and room ids stay bytes
    here (exact keys); the views turn them into text."""

    def __init__(self, now_ms: int, leases: dict[bytes, float], draining: set[bytes], weights: dict[bytes, bytes],
                 holder: dict[bytes, bytes], moving: dict[bytes, bytes], registered: list[bytes],
                 held: dict[bytes, int]) -> None:
        self.now_ms, self.leases, self.draining, self.weights = now_ms, leases, draining, weights
        self.holder, self.moving, self.registered, self.held = holder, moving, registered, held

    def alive(self, fid: bytes) -> bool:
        """Alive as placement.lua says: a lease that has not expired (Redis time)."""
        expiry = self.leases.get(fid)
        return expiry is not None and expiry >= self.now_ms

    def lease_s(self, fid: bytes) -> float | None:
        """Seconds left on the lease (negative: expired that long ago); None without one."""
        expiry = self.leases.get(fid)
        return None if expiry is None else round((expiry - self.now_ms) / 1000.0, 1)

    def weight(self, fid: bytes) -> float:
        """The capacity weight placement uses (placement.lua's load_of: 1 when unset or not above 0)."""
        try:
            weight = float(self.weights.get(fid, b"1"))
        except ValueError:
            return 1.0
        return weight if math.isfinite(weight) and weight > 0 else 1.0

    def takes_rooms(self, fid: bytes) -> bool:
        return self.alive(fid) and fid not in self.draining

    def ids(self) -> list[bytes]:
        """Every frontend the fleet keys name: leased, draining, or holding a room."""
        return sorted(set(self.leases) | set(self.held) | set(self.holder.values()))

    def describe(self, fid: bytes) -> dict[str, Any]:
        return {"alive": self.alive(fid), "lease_s": self.lease_s(fid), "draining": fid in self.draining,
                "weight": self.weight(fid), "held": self.held.get(fid, 0)}


def _held_key(keys: Keys, fid: bytes) -> bytes:
    """``rooms:held:<id>`` for an id exactly as Redis has it (bytes, whatever they are)."""
    return keys.held("").encode("utf-8", "surrogateescape") + fid


def fleet(client: redis.Redis, keys: Keys) -> Fleet:
    """Read the fleet keys (leases, draining, weights, holders, moves, the registry's room ids) in one
    transaction, then how many rooms each frontend holds (``SCARD rooms:held:<id>``)."""
    pipe = client.pipeline(transaction=True)
    pipe.time()
    pipe.zrange(keys.leases, 0, -1, withscores=True)
    pipe.smembers(keys.draining)
    pipe.hgetall(keys.weight)
    pipe.hgetall(keys.holder)
    pipe.hgetall(keys.moving)
    pipe.hkeys(keys.rooms)
    now, leases, draining, weights, holder, moving, registered = pipe.execute(raise_on_error=False)
    if isinstance(now, Exception):
        raise now
    leases, draining, weights, holder, moving, registered = (
        value if not isinstance(value, Exception) else empty for value, empty in
        ((leases, []), (draining, set()), (weights, {}), (holder, {}), (moving, {}), (registered, [])))
    lease_map = {fid: score for fid, score in leases if math.isfinite(score)}
    ids = sorted(set(lease_map) | set(holder.values()))
    pipe = client.pipeline(transaction=False)
    for fid in ids:
        pipe.scard(_held_key(keys, fid))
    counts = pipe.execute(raise_on_error=False)
    held = {fid: n for fid, n in zip(ids, counts) if isinstance(n, int) and n}
    return Fleet(int(now[0]) * 1000 + int(now[1]) // 1000, lease_map, set(draining), weights, holder, moving,
                 sorted(registered), held)


def holding(state: Fleet, limit: int = 10000) -> dict[str, Any]:
    """Whether every room of ``rooms`` is held by a live frontend: ``ok``, counts, and the rooms that
    are not (``not_held``: room, holder, why; at most ``limit``), and the rooms moving."""
    not_held, count = [], 0
    for room in state.registered:
        holder = state.holder.get(room)
        if holder is not None and state.alive(holder):
            continue
        count += 1
        if len(not_held) >= limit:
            continue
        if holder is None:
            why = "no holder"
        else:
            left = state.lease_s(holder)
            why = (f"held by {_text(holder)}, which has no lease" if left is None else
                   f"held by {_text(holder)}, whose lease expired {_age(-left)} ago")
        not_held.append({"room": _text(room), "holder": _text(holder) if holder is not None else None,
                         "why": why})
    moving = [{"room": _text(room), "from": _text(state.holder[room]) if room in state.holder else None,
               "to": _text(target)} for room, target in sorted(state.moving.items())]
    return {"ok": count == 0, "rooms": len(state.registered), "held": len(state.registered) - count,
            "not_held_count": count, "not_held": not_held, "moving": moving[:limit]}


def frontend_rooms(client: redis.Redis, keys: Keys, state: Fleet | None = None) -> dict[str, Any]:
    """Each frontend's rooms (``rooms:held:<id>``), for `greenroom frontends`."""
    state = state if state is not None else fleet(client, keys)
    ids = state.ids()
    pipe = client.pipeline(transaction=False)
    for fid in ids:
        pipe.smembers(_held_key(keys, fid))
    out = []
    for fid, members in zip(ids, pipe.execute(raise_on_error=False)):
        members = members if isinstance(members, set) else set()
        out.append({"id": _text(fid), **state.describe(fid), "held": len(members),
                    "rooms": sorted(_text(room) for room in members)})
    return {"frontends": out, "holding": holding(state)}


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


def fleet_frontends(client: redis.Redis, keys: Keys, state: Fleet) -> list[dict[str, Any]]:
    """The frontends of the heartbeats and of the fleet keys, each with its heartbeat's fields (when it
    has one: ``heartbeat``) and ``alive``, ``lease_s``, ``draining``, ``weight``, ``held``. Oldest first;
    those without a heartbeat (dead, not yet taken over) last."""
    beats = frontends(client, keys)
    known = {fe["id"] for fe in beats}
    by_text = {_text(fid): fid for fid in state.ids()}
    out = []
    for fe in beats:
        fid = by_text.get(fe["id"], fe["id"].encode("utf-8", "surrogateescape"))
        out.append({**fe, "heartbeat": True, **state.describe(fid)})
    for text, fid in sorted(by_text.items()):
        if text not in known:
            out.append({"id": text, "heartbeat": False, **state.describe(fid)})
    return out


def overview(client: redis.Redis, keys: Keys, *, attention: int = 0) -> dict[str, Any]:
    """Everything `greenroom status` shows. ``alive`` counts the frontends whose lease is valid;
    ``holding`` says whether every room is held by one of them. With ``attention``, also the first
    that many rooms that are neither joined nor parted (the dashboard's list)."""
    by_state: dict[str, int] = {}
    by_protocol: dict[str, int] = {}
    state = fleet(client, keys)
    all_rooms = rooms(client, keys, state)
    for row in all_rooms:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
        proto = row["protocol"] or "?"
        by_protocol[proto] = by_protocol.get(proto, 0) + 1
    fes = fleet_frontends(client, keys, state)
    data = {"ts": time.time(), "frontends": fes, "alive": sum(1 for fe in fes if fe["alive"]),
            "rooms": {"total": len(all_rooms), "by_state": by_state, "by_protocol": by_protocol},
            "holding": holding(state), "lists": list_lengths(client, keys),
            "tenants": tenants_view(client, keys, all_rooms, fes)}
    if attention:
        data["attention"] = [r for r in all_rooms if r["state"] not in ("joined", "parted")][:attention]
    return data


# ---------------------------------------------------------------------------------------- tenants
#: the per-tenant counters a frontend's heartbeat may carry in its field ``tenants``, JSON
#: ``{"<name>": {"rooms": n, "lines_sent": n, "drops": n}, ...}``; summed over the live frontends
TENANT_COUNTERS = ("rooms", "lines_sent", "drops")
#: how the row of every room that is not a registered tenant's is named in tables
UNREGISTERED = "(unregistered)"


def registry(client: redis.Redis, keys: Keys) -> tuple[dict[str, Tenant], list[str]]:
    """The registered tenants by name, read as the frontends read them, and the names of the entries
    they ignore (an invalid name or entry: anyone with write access may have put anything there)."""
    valid: dict[str, Tenant] = {}
    invalid = []
    for raw_name, raw in client.hgetall(keys.tenants).items():
        name = _text(raw_name)
        try:
            valid[check_name(name)] = Tenant.from_json(name, raw)
        except (ConfigError, ValueError, TypeError, OverflowError, RecursionError):
            invalid.append(clean(name))
    return dict(sorted(valid.items())), sorted(invalid)


def _counter(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0 or value != int(value) or value >= 2 ** 63:
        return None
    return int(value)


def tenant_counters(value: Any) -> dict[str, dict[str, int]] | None:
    """A heartbeat's ``tenants`` field (decoded) with only its well-formed counters (whole numbers
    >= 0 of ``TENANT_COUNTERS``); None when it is not an object (missing, or not one of ours)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, dict[str, int]] = {}
    for name, counters in value.items():
        if isinstance(counters, dict):
            out[clean(str(name))] = {k: n for k in TENANT_COUNTERS if (n := _counter(counters.get(k))) is not None}
    return out


def _tenant_row(name: str | None, tenant: Tenant | None) -> dict[str, Any]:
    return {"name": name, "registered": tenant is not None,
            "max_rooms": tenant.max_rooms if tenant else None,
            "lines_per_minute": tenant.lines_per_minute if tenant else None,
            "max_queued": tenant.max_queued if tenant else None,
            "scoped": tenant.scoped if tenant else False,
            "rooms": 0, "by_state": {}, "quota": None, "live": {k: None for k in TENANT_COUNTERS},
            "intake": None, "dead": None}


def tenants_view(client: redis.Redis, keys: Keys, rows: list[dict[str, Any]], fes: list[dict[str, Any]],
                 registered: tuple[dict[str, Tenant], list[str]] | None = None) -> dict[str, Any]:
    """The rooms and counters by tenant: a row per registered tenant (``registered``, by name) and one
    for every other room (``unregistered``: no tenant, or a label the registry does not have), never a
    row per label. ``rows`` are ``rooms()``, ``fes`` are ``fleet_frontends()``. Each row: its limits,
    ``rooms`` and ``by_state`` (the rooms of ``rooms`` and their states), ``quota`` (``used``: SCARD
    tenant:<name>:rooms, ``max``, ``share``), ``live`` (``rooms``, ``lines_sent``, ``drops``: the
    ``tenants`` field of the live frontends' heartbeats summed, None when no live frontend has it),
    ``intake`` and ``dead`` (the lengths of its own intake and its dead letters)."""
    reg, invalid = registered if registered is not None else registry(client, keys)
    out = {name: _tenant_row(name, tenant) for name, tenant in reg.items()}
    other = _tenant_row(None, None)
    pipe = client.pipeline(transaction=False)
    for name in reg:
        pipe.scard(keys.tenant_rooms(name))
        pipe.llen(keys.tenant_control(name))
        pipe.llen(keys.tenant_dead(name))
    answers = [n if isinstance(n, int) else 0 for n in pipe.execute(raise_on_error=False)] if reg else []
    for i, (name, row) in enumerate(out.items()):
        used, row["intake"], row["dead"] = answers[3 * i:3 * i + 3]
        limit = row["max_rooms"]
        row["quota"] = {"used": used, "max": limit,
                        "share": None if not limit else round(used / limit, 4)}
    for room in rows:
        row = out.get(room.get("tenant") or "", other) if room.get("tenant") else other
        row["rooms"] += 1
        row["by_state"][room["state"]] = row["by_state"].get(room["state"], 0) + 1
    live = [fe for fe in fes if fe.get("alive") and fe.get("heartbeat", True)]
    reports = [c for c in (tenant_counters(fe.get("tenants")) for fe in live) if c is not None]
    if reports:
        for row in [*out.values(), other]:
            row["live"] = {k: 0 for k in TENANT_COUNTERS}
        for report in reports:
            for name, counters in report.items():
                target = out.get(name, other)["live"]
                for k, n in counters.items():
                    target[k] += n
    return {"registered": list(out.values()), "unregistered": other, "invalid": invalid,
            "live_frontends": len(live), "reporting": len(reports)}


def quota_text(row: dict[str, Any]) -> str:
    """``used/max share%`` (``over`` past it), ``used/-`` without a limit, ``-`` for the unregistered."""
    quota = row.get("quota")
    if not quota:
        return "-"
    used, limit = quota["used"], quota["max"]
    if limit is None:
        return f"{used}/-"
    text = f"{used}/{limit} {used * 100 // limit if limit else (100 if used else 0)}%"
    return text + " over" if used > limit else text


def _live_text(value: Any) -> str:
    return "-" if value is None else str(value)


def states_text(by_state: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(by_state.items(), key=lambda kv: str(kv[0])))


def live_note(view: dict[str, Any], label: str = "SENT, DROPS") -> str | None:
    """Why the live counters are ``-``, or that they cover only some live frontends; None when they
    are summed over every live frontend."""
    live, reporting = view["live_frontends"], view["reporting"]
    if not live:
        return f"{label}: - (no live frontend)"
    if not reporting:
        return f"{label}: - (no live frontend's heartbeat has per-tenant counters yet: 0 of {live})"
    if reporting < live:
        return (f"{label}: summed over {reporting} of {live} live frontends (the others' heartbeats "
                f"have no per-tenant counters)")
    return None


def format_tenants(view: dict[str, Any], limit: int = 20) -> list[str]:
    """The tenant section of `greenroom status`: a row per registered tenant (at most ``limit``) and the
    unregistered row. Every value escaped."""
    lines = [f"{'TENANT':24} {'ROOMS':>6} {'QUOTA':16} {'SENT':>10} {'DROPS':>8}  STATES"]
    rows = view["registered"]
    for row in [*rows[:limit], view["unregistered"]]:
        name = row["name"] if row["registered"] else UNREGISTERED
        lines.append(f"{_cell(name, 24)} {row['rooms']:>6} {_cell(quota_text(row), 16)} "
                     f"{_live_text(row['live']['lines_sent']):>10} {_live_text(row['live']['drops']):>8}  "
                     f"{terminal(states_text(row['by_state']))}".rstrip())
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more tenants (`greenroom tenant list`)")
    note = live_note(view)
    if note:
        lines.append(note)
    return lines


def format_tenant_list(view: dict[str, Any]) -> str:
    """`greenroom tenant list`: every registered tenant with its limits, then the unregistered row."""
    lines = [f"{'TENANT':24} {'MAX_ROOMS':>9} {'LINES/MIN':>9} {'MAX_QUEUED':>10} {'SCOPED':6} {'ROOMS':>6} "
             f"{'QUOTA':16} {'SENT':>10} {'DROPS':>8}  STATES"]
    for row in [*view["registered"], view["unregistered"]]:
        reg = row["registered"]
        name = row["name"] if reg else UNREGISTERED

        def lim(key: str) -> str:
            return ("-" if row[key] is None else str(row[key])) if reg else ""

        lines.append(f"{_cell(name, 24)} {lim('max_rooms'):>9} {lim('lines_per_minute'):>9} {lim('max_queued'):>10} "
                     f"{('yes' if row['scoped'] else 'no') if reg else '':6} {row['rooms']:>6} "
                     f"{_cell(quota_text(row), 16)} {_live_text(row['live']['lines_sent']):>10} "
                     f"{_live_text(row['live']['drops']):>8}  {terminal(states_text(row['by_state']))}".rstrip())
    lines.append(f"{len(view['registered'])} tenants")
    note = live_note(view)
    if note:
        lines.append(note)
    return "\n".join(lines)


def tenant_detail(client: redis.Redis, keys: Keys, name: str, *, limit: int = 200) -> dict[str, Any] | None:
    """One registered tenant for `greenroom tenant show`: its row of ``tenants_view`` with its rooms
    (at most ``limit``: room, state, where, holder) and whether its ACL user exists. None when it is
    not registered."""
    from .tenantops import acl_user_exists
    from .tenants import acl_user

    reg, invalid = registry(client, keys)
    if name not in reg:
        return None
    state = fleet(client, keys)
    rows = rooms(client, keys, state)
    view = tenants_view(client, keys, rows, fleet_frontends(client, keys, state), ({name: reg[name]}, invalid))
    mine = [r for r in rows if r.get("tenant") == name]
    return {**view["registered"][0], "acl_user": acl_user(name), "acl_user_exists": acl_user_exists(client, name),
            "keys": keys.tenant(name), "live_frontends": view["live_frontends"], "reporting": view["reporting"],
            "room_list": [{"room": r["room"], "state": r["state"], "where": r["where"], "holder": r["holder"]}
                          for r in mine[:limit]], "room_list_total": len(mine)}


def format_tenant(detail: dict[str, Any]) -> str:
    """`greenroom tenant show NAME`."""
    def lim(key: str) -> str:
        return "no limit" if detail[key] is None else str(detail[key])

    name = terminal(detail["name"])
    exists = detail["acl_user_exists"]
    user = terminal(detail["acl_user"])
    if detail["scoped"]:
        scoped = f"yes: its backends use the keys {terminal(detail['keys'])}* as ACL user {user}"
        if exists is False:
            scoped += (f" (which does NOT exist on this Redis: `greenroom tenant credentials {name} --rotate` "
                       f"makes it again)")
        elif exists is None:
            scoped += " (this connection may not ask Redis whether it exists)"
    else:
        scoped = "no: its rooms use the shared keys (`greenroom tenant credentials` gives it keys of its own)"
        if exists:
            scoped += f"; yet ACL user {user} exists (`greenroom tenant revoke {name}` deletes it)"
    live = detail["live"]
    lines = [f"tenant {name}",
             f"  max_rooms         {lim('max_rooms')}",
             f"  lines_per_minute  {lim('lines_per_minute')}",
             f"  max_queued        {lim('max_queued')}",
             f"  scoped            {scoped}",
             f"  quota             {quota_text(detail)} (rooms counted in {terminal(detail['keys'])}rooms)",
             f"  rooms             {detail['rooms']} in the registry" + (
                 f": {terminal(states_text(detail['by_state']))}" if detail["by_state"] else ""),
             f"  live              lines sent {_live_text(live['lines_sent'])}, drops {_live_text(live['drops'])}, "
             f"rooms {_live_text(live['rooms'])}",
             f"  intake            {terminal(detail['keys'])}control {detail['intake']}, "
             f"{terminal(detail['keys'])}control:dead {detail['dead']}"]
    note = live_note(detail, "lines sent, drops, rooms")
    if note:
        lines.append(f"  {note}")
    if detail["room_list"]:
        lines.append("")
        lines.append(f"{'ROOM':24} {'STATE':10} {'WHERE':36} HOLDER")
        for r in detail["room_list"]:
            lines.append(f"{_cell(r['room'], 24)} {_cell(r['state'], 10)} {_cell(r['where'], 36)} "
                         f"{terminal(r['holder'] or '-')}")
        if detail["room_list_total"] > len(detail["room_list"]):
            lines.append(f"... and {detail['room_list_total'] - len(detail['room_list'])} more "
                         f"(`greenroom rooms --json`)")
    return "\n".join(lines)


#: the fields of a history sample (heartbeat.py), in the order the dashboard's API sends them
HISTORY_FIELDS = ("ts", "received", "applied", "pushed", "control", "messages", "ledger", "inbox")
#: a sample bigger than this is not one of ours: skipped
_SAMPLE_BYTES = 1024


def history(client: redis.Redis, keys: Keys, since_ms: int = 0, *, limit: int = 8000) -> dict[str, Any]:
    """The recent samples of every live frontend (``fleet:history:<id>``), oldest first, each a list
    in ``HISTORY_FIELDS`` order: those with ``ts >= since_ms``, at most ``limit`` per frontend.
    ``now`` is the Redis time before the lists were read: the next call's ``since_ms``. The lists are
    read newest first in growing pages, so a page that asks only for what is new reads a few items."""
    state = fleet(client, keys)
    out = []
    for fid in sorted(state.leases):
        if not state.alive(fid):
            continue
        key = keys.history("").encode("utf-8", "surrogateescape") + fid
        samples: list[list[float]] = []
        start, chunk, done = 0, 8, client.type(key) != b"list"
        while not done and start < limit:
            items = client.lrange(key, start, min(start + chunk, limit) - 1)
            start += chunk
            done = len(items) < chunk
            chunk = min(chunk * 4, 2048)
            for raw in items:
                sample = _sample(raw)
                if sample is None:
                    continue
                if sample[0] < since_ms:
                    done = True
                    break
                samples.append(sample)
        samples.reverse()
        out.append({"id": _text(fid), "samples": samples})
    return {"now": state.now_ms, "fields": list(HISTORY_FIELDS), "frontends": out}


def _sample(raw: bytes) -> list[float] | None:
    if len(raw) > _SAMPLE_BYTES:
        return None
    obj = _decode_obj(raw)
    if obj is None:
        return None
    values = [_num(obj.get(name)) for name in HISTORY_FIELDS]
    if values[0] is None:
        return None
    return [v if v is not None and v >= 0 else 0 for v in values]


#: `greenroom status` exits with these
EXIT_OK, EXIT_NO_FRONTEND, EXIT_NOT_HELD = 0, 1, 3


def status_exit(data: dict[str, Any]) -> int:
    """0: a frontend is alive and every room is held by a live one; 1: no frontend is alive;
    3: some room of ``rooms`` is not held by a live frontend (``holding.not_held`` lists them)."""
    if not data["alive"]:
        return EXIT_NO_FRONTEND
    return EXIT_OK if data["holding"]["ok"] else EXIT_NOT_HELD


# ------------------------------------------------------------------------------------------ printing
def _cell(value: Any, width: int) -> str:
    """A table cell: escaped, cut to ``width``, padded."""
    text = terminal("" if value is None else value)
    return f"{text[:width]:{width}}"


def _rcell(value: Any, width: int) -> str:
    text = terminal("" if value is None else value)
    return f"{text[:width]:>{width}}"


def fleet_word(fe: dict[str, Any]) -> str:
    """alive, draining, dead (a lease that expired) or "no lease"."""
    if fe.get("alive"):
        return "draining" if fe.get("draining") else "alive"
    return "no lease" if fe.get("lease_s") is None else "dead"


def lease_text(fe: dict[str, Any]) -> str:
    left = fe.get("lease_s")
    if not isinstance(left, (int, float)):
        return "-"
    return f"{left:.1f}s" if left >= 0 else f"-{_age(-left)}"


def format_status(data: dict[str, Any], now: float | None = None, limit: int = 20) -> str:
    """The `greenroom status` table (every value from Redis escaped for the terminal)."""
    now = time.time() if now is None else now
    lines = [f"{'FRONTEND':24} {'FLEET':8} {'LEASE':>6} {'HELD':>5} {'HOST':14} {'PID':>7} {'VERSION':8} {'UP':>5} "
             f"{'ROOMS':>5} {'INFLIGHT':>8} {'OUTBOX':>6}  STATES"]
    for fe in data["frontends"]:
        started = fe.get("started")
        up = _age(now - started) if isinstance(started, (int, float)) and started else "-"
        by_state = fe.get("rooms_by_state")
        states = " ".join(f"{k}={v}" for k, v in sorted(by_state.items(), key=lambda kv: str(kv[0]))) \
            if isinstance(by_state, dict) else str(by_state or "")
        if not fe.get("heartbeat", True):
            states = "(no heartbeat)"
        lines.append(f"{_cell(fe['id'], 24)} {fleet_word(fe):8} {lease_text(fe):>6} {_rcell(fe.get('held', 0), 5)} "
                     f"{_cell(fe.get('host', '-'), 14)} {_rcell(fe.get('pid', '-'), 7)} "
                     f"{_cell(fe.get('version', '-'), 8)} {up:>5} {_rcell(fe.get('rooms', '-'), 5)} "
                     f"{_rcell(fe.get('inflight', '-'), 8)} {_rcell(fe.get('outbox', '-'), 6)}  {terminal(states)}")
        if fe.get("last_error"):
            lines.append(f"{'':24} last error: {terminal(fe['last_error'])}")
    if not data.get("alive", len(data["frontends"])):
        lines.append("(no live frontend)")
    rooms_ = data["rooms"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(rooms_["by_state"].items())) or "none"
    lines.append("")
    lines.append(f"rooms: {rooms_['total']} ({terminal(states)})")
    held = data.get("holding")
    if held is not None:
        moving = f"; {len(held['moving'])} moving" if held["moving"] else ""
        if held["ok"]:
            lines.append(f"held: every room is held by a live frontend ({held['rooms']} rooms{moving})")
        else:
            lines.append(f"held: {held['not_held_count']} of {held['rooms']} rooms are NOT held by a live "
                         f"frontend{moving}:")
            for row in held["not_held"][:limit]:
                lines.append(f"  {_cell(row['room'], 24)} {terminal(row['why'])}")
            if held["not_held_count"] > limit:
                lines.append(f"  ... and {held['not_held_count'] - limit} more (`greenroom status --json` "
                             f"lists them)")
    lists = data["lists"]
    lines.append("lists: " + "  ".join(f"{name} {lists[name]}" for name in
                                        ("control", "messages", "inflight", "control:dead", "messages:dead")))
    by_tenant = data.get("tenants")
    if by_tenant and by_tenant["registered"]:
        lines.append("")
        lines.extend(format_tenants(by_tenant, limit))
    return "\n".join(lines)


def holder_text(row: dict[str, Any]) -> str:
    """A room's holder as `greenroom rooms` shows it: ``-`` for none, marked when it is not alive or
    the room is moving (``fe-a -> fe-b``)."""
    holder = row.get("holder")
    if holder is None:
        return "- (none)" if row.get("registered") else "-"
    text = holder if row.get("holder_alive") else f"{holder} (dead)"
    if row.get("moving_to") is not None:
        text += f" -> {row['moving_to']} (moving)"
    return text


def format_rooms(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """The `greenroom rooms` table."""
    now = time.time() if now is None else now
    lines = [f"{'ROOM':24} {'PROTO':5} {'WHERE':36} {'STATE':10} {'FOR':>8} {'TRIES':>5} {'HOLDER':24}  ERROR"]
    for r in rows:
        age = f"{now - r['since']:.0f}s" if r["since"] else "-"
        holder = terminal(holder_text(r))
        lines.append(f"{_cell(r['room'], 24)} {_cell(r['protocol'] or '?', 5)} {_cell(r['where'], 36)} "
                     f"{_cell(r['state'], 10)} {age:>8} {r['attempts']:>5} {holder:24}  {terminal(r['error'] or '')}".rstrip())
    lines.append(f"{len(rows)} rooms")
    return "\n".join(lines)


def format_frontends(data: dict[str, Any], width: int = 100) -> str:
    """`greenroom frontends`: each frontend with its lease and the rooms it holds."""
    lines = []
    for fe in data["frontends"]:
        lines.append(f"{terminal(fe['id'])}  {fleet_word(fe)}, lease {lease_text(fe)}, weight {fe['weight']:g}, "
                     f"{fe['held']} rooms")
        lines.extend(_wrapped([terminal(room) for room in fe["rooms"]], width))
    if not data["frontends"]:
        lines.append("(no frontend in fleet:leases or rooms:holder)")
    held = data["holding"]
    if not held["ok"]:
        lines.append(f"not held by a live frontend: {held['not_held_count']} rooms")
        lines.extend(_wrapped([terminal(row["room"]) for row in held["not_held"]], width))
    return "\n".join(lines)


def _wrapped(words: list[str], width: int) -> list[str]:
    lines, line = [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width - 2:
            lines.append("  " + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append("  " + line)
    return lines


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
