"""The room registry: the rooms this frontend runs (room id -> ``Room``) and the ``rooms`` hash.

``rooms`` in Redis is the desired state (room id -> spec): a ``join`` writes it, a ``part`` removes it,
a starting frontend joins every room in it. Secret fields are sealed before they are written and
opened when read (``seal``/``open_spec``: identity unless secrets keys are configured). The rooms'
greenlets live in one ``gevent.pool.Group``; a room whose greenlet dies is restarted with the same
queue, so no command it held is lost, after a short delay (logged, counted in ``room_crashes``).
``census()`` counts the rooms by state and protocol and their queue depths, for the heartbeat and the
metrics, yielding to the hub on the way through 100,000 rooms.

Several frontends: the rooms here are the ones this frontend holds (``rooms:holder``). ``take`` starts
a room another frontend held (its spec from ``rooms``); a room that moves leaves (``_release``) and
``finish_move`` hands it to its target; ``drop`` ends rooms whose lease we lost, without a word.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import gevent
import gevent.pool
import redis

from . import scripts
from .counters import Counters
from .errors import GreenroomError, ProtocolError
from .keys import Keys
from .protocol import Spec, decode, parse_spec
from .room import Room, RoomContext, RoomGreenlet

log = logging.getLogger(__name__)

DEPTH_BUCKETS = (0, 1, 5, 10, 50, 100, 500, 1000)
Transform = Callable[[dict], dict]


@dataclass
class Census:
    """Rooms by (state, protocol), by tenant label, and their queue depths as a histogram."""

    by_state_protocol: Counter = field(default_factory=Counter)
    by_tenant: Counter = field(default_factory=Counter)  # the spec's tenant (None: no tenant)
    depth_counts: list[int] = field(default_factory=lambda: [0] * (len(DEPTH_BUCKETS) + 1))
    depth_sum: int = 0
    deepest: int = 0

    def by(self, index: int) -> dict[str, int]:
        out: Counter[str] = Counter()
        for key, n in self.by_state_protocol.items():
            out[key[index]] += n
        return dict(out)


class RoomRegistry:
    """The rooms of this frontend and the ``rooms`` hash."""

    def __init__(self, ctx: RoomContext, client: redis.Redis, keys: Keys, *, counters: Counters,
                 restart_delay: Callable[[], float], seal: Transform = lambda spec: spec,
                 open_spec: Transform = lambda spec: spec) -> None:
        self._ctx = ctx
        ctx.left = self._room_left
        self._client = client
        self._keys = keys
        self._move_finish = scripts.load("move_finish").register(client)
        self._forget_rooms = scripts.load("forget_rooms").register(client)
        self._tenant_join = scripts.load("tenant_join").register(client)
        #: rooms parted here whose placement (``rooms:holder``) is still ours, to be dropped
        self.parted: set[str] = set()
        self._counters = counters
        self._restart_delay = restart_delay
        self._seal, self._open = seal, open_spec
        self.rooms: dict[str, Room] = {}
        self.group = gevent.pool.Group()
        self.group.greenlet_class = RoomGreenlet  # each with its room: one crash link for all (``_crashed``)
        #: True once every room of the ``rooms`` hash was started (for /readyz and READY=1)
        self.loaded = False
        self._stopping = False

    # ------------------------------------------------------------------------------- the map
    def __len__(self) -> int:
        return len(self.rooms)

    def __contains__(self, room_id: object) -> bool:
        return room_id in self.rooms

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.rooms))

    def __getitem__(self, room_id: str) -> Room:
        return self.rooms[room_id]

    def get(self, room_id: str) -> Room | None:
        return self.rooms.get(room_id)

    def values(self) -> list[Room]:
        return list(self.rooms.values())

    # ------------------------------------------------------------------------ rooms come and go
    def add(self, room_id: str, spec: Spec, spec_json: dict, *, record: bool = True) -> Room:
        """Start a room; with ``record`` its spec is written to ``rooms`` (before the join's ack)."""
        room = Room(room_id, spec, spec_json, self._ctx)
        self.rooms[room_id] = room
        self._start(room)
        if record:
            self.record(room_id, spec_json)
        return room

    def plain(self, spec: Spec, spec_json: dict) -> tuple[Spec, dict]:
        """A join's spec with sealed secrets opened (a backend may re-join with a spec it read from
        ``rooms``); raises ``SealError`` when no configured key opens them."""
        opened = self._open(spec_json)
        return (spec, spec_json) if opened == spec_json else (parse_spec(opened), opened)

    def record(self, room_id: str, spec_json: dict | None) -> None:
        """Write (or with None remove) a room's entry in ``rooms``, its secrets sealed."""
        self._ctx.outbox.registry(room_id, None if spec_json is None else self._seal(spec_json))

    def forget(self, room_id: str) -> None:
        """The room was parted: out of the map and out of ``rooms`` (and its tenant's count)."""
        room = self.rooms.pop(room_id, None)
        self.record(room_id, None)
        self.parted.add(room_id)
        tenant = room.spec.tenant if room is not None else None
        if self._ctx.tenants.get(tenant) is not None:
            self._client.srem(self._keys.tenant_rooms(tenant), room_id)

    def count_new_room(self, room_id: str, tenant: str | None) -> bool:
        """A new room of a registered tenant counts towards its ``max_rooms`` (over every frontend,
        atomically): False when the quota is used up. Rooms of other tenants always pass."""
        found = self._ctx.tenants.get(tenant)
        if found is None:
            return True
        limit = "" if found.max_rooms is None else str(found.max_rooms)
        ok, _ = self._tenant_join(keys=[self._keys.tenant_rooms(found.name)], args=[room_id, limit])
        return bool(int(ok))

    def count_held(self) -> None:
        """At start: the rooms held here are counted in their registered tenants' sets (rooms made
        before their tenant was registered, or before tenants existed)."""
        pipe = self._client.pipeline(transaction=False)
        for room in self.rooms.values():
            if self._ctx.tenants.get(room.spec.tenant) is not None:
                pipe.sadd(self._keys.tenant_rooms(room.spec.tenant), room.id)
        pipe.execute()

    def forget_placements(self, most: int = 20_000) -> int:
        """Drop the placements of rooms parted here, once no command of theirs waits for us
        (forget_rooms.lua; run now and then by the lease keeper). Returns how many were settled."""
        rooms = sorted(r for r in self.parted if r not in self.rooms)
        self.parted -= self.parted - set(rooms)  # rejoined meanwhile: theirs again
        if not rooms:
            return 0
        chunk = rooms[:500]
        kept = self._forget_rooms(keys=[self._keys.leases],
                                  args=[self._keys.prefix, self._ctx.frontend_id, most, *chunk])
        if kept and kept[0] == -1:
            return 0  # too busy to look: next time
        kept_ids = {r.decode("utf-8", "replace") if isinstance(r, bytes) else r for r in kept}
        done = set(chunk) - kept_ids  # forgotten, or held by another now: not ours to drop either way
        self.parted -= done
        return len(done)

    def drop(self, room_id: str) -> None:
        """Another frontend holds this room now (our lease had lapsed): end it here without a word.
        It stays in ``rooms``; what it had queued is not sent (the new holder got it)."""
        room = self.rooms.pop(room_id, None)
        if room is None:
            return
        if room.greenlet is not None:
            room.greenlet.kill(block=False)
        room.leave_silently()

    def take(self, room_id: str) -> Room | None:
        """This frontend holds the room now (a ``take`` marker): start it from its spec in ``rooms``."""
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        found = self.fetch(room_id)
        if found is None:
            log.info("room %s: taken over, but it is not in the registry any more: nothing to join", room_id)
            return None
        log.info("room %s: this frontend holds it now", room_id)
        return self.add(room_id, *found, record=False)

    def fetch(self, room_id: str) -> tuple[Spec, dict] | None:
        """A room's spec from ``rooms`` (secrets opened), or None when it is not there or invalid."""
        value = self._client.hget(self._keys.rooms, room_id)
        if value is None:
            return None
        try:
            spec_json = self._open(decode(value))
            return parse_spec(spec_json), spec_json
        except (ProtocolError, GreenroomError) as exc:
            log.error("room %s: the registry's spec cannot be used (%s)", room_id, exc)
            return None

    def finish_move(self, room_id: str) -> str:
        """After a moving room left: hand it to its target (move_finish.lua); returns the new holder."""
        holder = self._move_finish(keys=[self._keys.leases],
                                   args=[self._keys.prefix, self._ctx.frontend_id, room_id])
        holder = holder.decode() if isinstance(holder, bytes) else holder
        if holder:
            log.info("room %s: moved to frontend %s", room_id, holder)
        return holder

    def _room_left(self, room: Room, why: str) -> None:
        """A room ended here without a ``part`` (it moved): out of the map, not out of ``rooms``."""
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
        if why == "moved":
            self.finish_move(room.id)

    def _start(self, room: Room) -> None:
        greenlet = self.group.spawn(Room.run, room)
        greenlet.room = room
        greenlet.name = f"room {room.id}"
        greenlet.link_exception(self._crashed)
        room.greenlet = greenlet

    def _crashed(self, greenlet: RoomGreenlet) -> None:
        if isinstance(greenlet.exception, gevent.GreenletExit):
            return
        room = greenlet.room
        self._counters["room_crashes"] += 1
        log.error("room %s: greenlet died: %r", room.id, greenlet.exception,
                  exc_info=greenlet.exc_info if greenlet.exc_info and greenlet.exc_info[0] else None)
        if self._stopping or self.rooms.get(room.id) is not room:
            return
        room.set_state("failed", error=f"internal error: {greenlet.exception!r}"[:300])

        def restart() -> None:
            if not self._stopping and self.rooms.get(room.id) is room:
                log.warning("room %s: restarting after a crash", room.id)
                self._start(room)

        gevent.spawn_later(self._restart_delay(), restart)

    # ---------------------------------------------------------------------------- the registry
    def load(self, client: redis.Redis, keys: Keys) -> dict[str, tuple[Spec, dict]]:
        """Every valid room of the ``rooms`` hash, its secrets opened; invalid ones are logged."""
        specs: dict[str, tuple[Spec, dict]] = {}
        for key, value in client.hgetall(keys.rooms).items():
            room_id = key.decode("utf-8", "replace")
            try:
                spec_json = self._open(decode(value))
                specs[room_id] = (parse_spec(spec_json), spec_json)
            except ProtocolError as exc:
                log.error("room %s: the registry holds an invalid spec (%s); not joining it",
                          room_id, exc.detail)
            except GreenroomError as exc:  # a sealed secret no configured key opens
                log.error("room %s: the registry's spec cannot be opened (%s); not joining it", room_id, exc)
        return specs

    # -------------------------------------------------------------------------------- views
    def census(self, *, yield_every: int = 5000) -> Census:
        out = Census()
        for i, room in enumerate(list(self.rooms.values()), 1):
            out.by_state_protocol[(room.state, room.spec.protocol)] += 1
            out.by_tenant[room.spec.tenant] += 1
            depth = room.queue_depth()
            out.depth_counts[bisect.bisect_left(DEPTH_BUCKETS, depth)] += 1
            out.depth_sum += depth
            if depth > out.deepest:
                out.deepest = depth
            if yield_every and not i % yield_every:
                gevent.sleep(0)  # 100,000 rooms take a while: never hold the hub for all of them
        return out

    # ------------------------------------------------------------------------------ shutdown
    def leave_all(self, reason: str, timeout: float) -> list[str]:
        """Every room handles what is queued, then leaves its channel (it stays in ``rooms``, for the
        frontend that takes it next); returns their ids. For a hand-over without stopping (drain)."""
        rooms = list(self.rooms.values())
        for room in rooms:
            room.shutdown()
        gevent.joinall([r.greenlet for r in rooms if r.greenlet is not None], timeout=timeout)
        deadline = time.monotonic() + timeout
        for room in rooms:
            if room.greenlet is not None and not room.greenlet.dead:
                room.greenlet.kill(block=False)
            room.wait_sent(max(0.0, deadline - time.monotonic()))  # what it accepted goes out here ...
            if room.session is not None:
                room.session.detach(room, reason, silent=True)  # ... the rest with the ledger, to a peer
            self.rooms.pop(room.id, None)
        return [room.id for room in rooms]

    def shutdown(self, timeout: float) -> None:
        """Rooms handle what is queued, then end without parting (they stay in ``rooms``)."""
        self._stopping = True
        rooms = list(self.rooms.values())
        for room in rooms:
            room.shutdown()
        self.group.join(timeout=timeout)
        self.group.kill(block=False)

