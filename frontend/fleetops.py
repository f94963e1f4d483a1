"""Actions on several frontends for ops (`greenroom drain|undrain|rebalance`, the dashboard's buttons).

- ``drain(fid)`` adds a live frontend to ``fleet:draining``: at its next lease renewal (within a third
  of ``lease_time``) its lease keeper hands every room it holds to live peers, and placement gives it
  no new room. Refused when the frontend is not alive, or when no other live frontend takes rooms
  (its rooms would be left unheld), unless forced. Checked and written under WATCH, so two operators
  draining the last two frontends at once cannot both succeed.
- ``undrain(fid)`` removes it again: it takes new rooms; the rooms it gave away stay where they went
  (``rebalance`` moves some back).
- ``plan(state)`` computes moves that even out the rooms per frontend by weight (``fleet:weight``)
  between the live frontends that take rooms, moving the rooms of one share group (equal
  ``rooms:sharekey``) together, and as few rooms as it can; ``rebalance()`` starts each move with
  ``move_begin.lua``. Nothing ever moves by itself: moving an IRC room is visible in its channel (the
  bot parts, another frontend's bot joins).

Every id and room id is kept as the bytes Redis has (a hostile id is still the exact key); the results
carry text for display.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from . import scripts
from .keys import Keys
from .status import Fleet, _held_key, _text, fleet


class Refused(Exception):
    """An action that was not done, with the reason for the operator."""


def _known(state: Fleet, fid: bytes) -> bool:
    return fid in state.leases or fid in state.held or fid in state.draining


def _peers(state: Fleet, fid: bytes) -> list[bytes]:
    return [other for other in sorted(state.leases) if other != fid and state.takes_rooms(other)]


def drain(client: redis.Redis, keys: Keys, fid: str, *, force: bool = False) -> dict[str, Any]:
    """Add ``fid`` to ``fleet:draining``; returns what was done (``already``, ``rooms``, ``peers``).
    Raises ``Refused`` when the frontend is unknown or not alive, or no other live frontend takes rooms
    (``force`` drains anyway)."""
    raw = fid.encode("utf-8", "surrogateescape")
    with client.pipeline(transaction=True) as pipe:
        for _ in range(20):
            try:
                pipe.watch(keys.draining)
                state = fleet(client, keys)
                already = raw in state.draining
                peers = _peers(state, raw)
                if not already and not force:
                    if not _known(state, raw):
                        alive = [_text(x) for x in sorted(state.leases) if state.alive(x)]
                        raise Refused(f"no frontend {fid} (live frontends: {', '.join(alive) or 'none'})")
                    if not state.alive(raw):
                        left = state.lease_s(raw)
                        raise Refused(f"frontend {fid} is not alive (its lease "
                                      f"{'is gone' if left is None else f'expired {-left:.0f}s ago'}): "
                                      f"the live frontends take its rooms over by themselves")
                    if not peers:
                        raise Refused(f"no other live frontend takes rooms (the others are draining or "
                                      f"dead): draining {fid} would leave its {state.held.get(raw, 0)} rooms "
                                      f"unheld; undrain another one first, or --force")
                pipe.multi()
                pipe.sadd(keys.draining, raw)
                pipe.execute()
                return {"frontend": fid, "already": already, "rooms": state.held.get(raw, 0),
                        "peers": [_text(p) for p in peers]}
            except redis.WatchError:
                continue
    raise Refused("fleet:draining kept changing while we looked: try again")


def undrain(client: redis.Redis, keys: Keys, fid: str) -> bool:
    """Remove ``fid`` from ``fleet:draining``; False when it was not draining."""
    return bool(client.srem(keys.draining, fid.encode("utf-8", "surrogateescape")))


def wait_drained(client: redis.Redis, keys: Keys, fid: str, timeout: float,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Wait until ``fid`` holds no room (at most ``timeout`` s); returns how many it still holds."""
    key = _held_key(keys, fid.encode("utf-8", "surrogateescape"))
    deadline = time.monotonic() + timeout
    while True:
        left = client.scard(key)
        if not left or time.monotonic() >= deadline:
            return left
        sleep(0.2)


# ------------------------------------------------------------------------------------ rebalance
@dataclass
class Move:
    """One room to move: ``share`` is its share key (or None), ``together`` how many rooms of its
    share group move with it (itself included)."""

    room: bytes
    source: bytes
    target: bytes
    share: bytes | None = None
    together: int = 1
    result: str = "planned"

    def view(self) -> dict[str, Any]:
        """For display: ``group`` is the share key when the room moves with others of its group."""
        return {"room": _text(self.room), "from": _text(self.source), "to": _text(self.target),
                "group": _text(self.share) if self.share and self.together > 1 else None, "result": self.result}


@dataclass
class Plan:
    """The moves, and each frontend's rooms before and after them."""

    moves: list[Move] = field(default_factory=list)
    before: dict[bytes, int] = field(default_factory=dict)
    after: dict[bytes, int] = field(default_factory=dict)
    weights: dict[bytes, float] = field(default_factory=dict)
    why: str = ""  # when there is nothing to move: why

    def view(self) -> dict[str, Any]:
        return {"frontends": [{"id": _text(fid), "weight": self.weights[fid], "rooms": self.before[fid],
                               "after": self.after[fid]} for fid in sorted(self.before)],
                "moves": [m.view() for m in self.moves], "why": self.why}


Unit = tuple[bytes, list[bytes]]  # (share key or b"", its rooms on one frontend)


def _units(client: redis.Redis, keys: Keys, state: Fleet, ids: list[bytes]) -> dict[bytes, dict[int, list[Unit]]]:
    """Per frontend, its rooms in units that move together (a share group, or a room alone), by size;
    each list sorted so that ``pop()`` gives the unit with the smallest room id. Rooms that are moving
    already are left out (they count where they go)."""
    pipe = client.pipeline(transaction=False)
    for fid in ids:
        pipe.smembers(_held_key(keys, fid))
    pipe.hgetall(keys.sharekey)
    *members, sharekeys = pipe.execute()
    out: dict[bytes, dict[int, list[Unit]]] = {}
    for fid, rooms in zip(ids, members):
        groups: dict[bytes, list[bytes]] = {}
        units: list[Unit] = []
        for room in sorted(rooms):
            if room in state.moving or state.holder.get(room) != fid:
                continue
            key = sharekeys.get(room, b"")
            if key:
                groups.setdefault(key, []).append(room)
            else:
                units.append((b"", [room]))
        units += groups.items()
        by_size: dict[int, list[Unit]] = {}
        for unit in sorted(units, key=lambda u: u[1][0], reverse=True):
            by_size.setdefault(len(unit[1]), []).append(unit)
        out[fid] = by_size
    return out


def plan(client: redis.Redis, keys: Keys, state: Fleet | None = None, *, max_rooms: int | None = None) -> Plan:
    """Moves that even out rooms per weight between the live frontends that take rooms.

    Greedy and deterministic: while moving some unit (a share group, or a room alone) from one frontend
    to another lowers the spread (the sum over frontends of rooms² / weight), make the best such move
    between the most and the least loaded pair that has one. A unit moves at most once; at most
    ``max_rooms`` rooms move (a group moves whole or not at all)."""
    state = state if state is not None else fleet(client, keys)
    ids = [fid for fid in sorted(state.leases) if state.takes_rooms(fid)]
    result = Plan()
    if len(ids) < 2:
        result.why = (f"{len(ids)} live frontend{'' if len(ids) == 1 else 's'} "
                      f"take{'s' if len(ids) == 1 else ''} rooms: nothing to even out")
        return result
    units = _units(client, keys, state, ids)
    weights = {fid: state.weight(fid) for fid in ids}
    count = {fid: sum(size * len(us) for size, us in units[fid].items()) for fid in ids}
    for target in state.moving.values():  # rooms on their way count where they go
        if target in count:
            count[target] += 1
    result.before, result.weights = dict(count), weights
    budget = max_rooms if max_rooms is not None else sum(count.values())

    def gain(source: bytes, target: bytes, size: int) -> float:
        return (((count[source] - size) ** 2 - count[source] ** 2) / weights[source]
                + ((count[target] + size) ** 2 - count[target] ** 2) / weights[target])

    while budget > 0:
        best = None
        order = sorted(ids, key=lambda f: (-count[f] / weights[f], f))
        for i, source in enumerate(order):
            for target in reversed(order[i + 1:]):
                for size, us in units[source].items():
                    if us and size <= budget:
                        g = gain(source, target, size)
                        if g < -1e-9 and (best is None or g < best[0] - 1e-9 or
                                          (abs(g - best[0]) <= 1e-9 and size < best[3])):
                            best = (g, source, target, size)
                if best is not None:
                    break
            if best is not None:
                break
        if best is None:
            break
        _, source, target, size = best
        key, rooms = units[source][size].pop()
        for room in rooms:
            result.moves.append(Move(room, source, target, key or None, size))
        count[source] -= size
        count[target] += size
        budget -= size
    result.after = count
    if not result.moves:
        result.why = "the rooms are as even as share groups and weights allow"
    return result


def rebalance(client: redis.Redis, keys: Keys, moves: list[Move],
              on_result: Callable[[Move], None] = lambda move: None) -> list[Move]:
    """Start every move with ``move_begin.lua`` (``result``: ``ok`` or why not). Once every room of a
    share group started towards its target, new rooms of that group are placed there too
    (``rooms:share``), so the group stays on one frontend."""
    begin = scripts.load("move_begin").register(client)
    groups: dict[bytes, list[Move]] = {}
    for move in moves:
        answer = begin(keys=[keys.leases], args=[keys.prefix, move.room, move.target])
        move.result = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
        if move.share:
            groups.setdefault(move.share, []).append(move)
        on_result(move)
    for key, members in groups.items():
        # placement.lua's place() keeps a group where rooms:share says while that frontend is alive
        if all(m.result == "ok" for m in members) and client.hget(keys.share, key) == members[0].source:
            client.hset(keys.share, key, members[0].target)
    return moves


def wait_moved(client: redis.Redis, keys: Keys, moves: list[Move], timeout: float,
               sleep: Callable[[float], None] = time.sleep) -> list[Move]:
    """Wait until every started move finished (the room is no longer in ``rooms:moving``); returns the
    ones still moving after ``timeout`` s."""
    pending = [m for m in moves if m.result == "ok"]
    deadline = time.monotonic() + timeout
    while pending:
        pipe = client.pipeline(transaction=False)
        for move in pending:
            pipe.hexists(keys.moving, move.room)
        pending = [m for m, still in zip(pending, pipe.execute()) if still]
        if not pending or time.monotonic() >= deadline:
            break
        sleep(0.2)
    return pending
