"""This frontend's membership of the fleet: the rooms it takes at start, leaves, and hands over.

- ``adopt(specs)`` (start): places the registry's rooms that nobody alive holds and routes what an
  earlier run of this frontend id held (``adopt.lua``, in chunks so Redis never waits long for us);
  returns the rooms this frontend holds.
- ``lost(taker)``: our lease lapsed and another frontend took our rooms: every room here ends without
  a word, and what the ledger held is theirs now.
- ``hand_over(end_lease=...)``: every room goes to a live peer with what is still in flight
  (``release.lua``); at a stop after the sessions QUIT, or for a drain.
- ``drain()`` (``greenroom drain``): pause taking commands, let the rooms send what they accepted and
  leave, hand them over, take commands again (the frontend stays up and takes no new rooms).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import gevent
import redis

from . import scripts
from .config import Settings
from .counters import Counters
from .inflight import InflightLedger
from .keys import Keys
from .outgoing import OutgoingDispatcher
from .placement import share_key
from .protocol import Spec
from .redis_conn import REDIS_ERRORS
from .registry import RoomRegistry
from .service import Service, Supervisor

log = logging.getLogger(__name__)

#: rooms placed per call of adopt.lua at start
ADOPT_CHUNK = 2000


class Membership:
    """What this frontend does when it joins, loses or leaves its place among the others."""

    def __init__(self, client: redis.Redis, keys: Keys, *, settings: Callable[[], Settings],
                 registry: RoomRegistry, ledger: InflightLedger, outbox: OutgoingDispatcher,
                 counters: Counters, supervisor: Supervisor, intake: Callable[[], Sequence[Service]]) -> None:
        self._keys = keys
        self._settings = settings
        self._registry = registry
        self._ledger = ledger
        self._outbox = outbox
        self._counters = counters
        self._supervisor = supervisor
        self._intake = intake  # the services that take commands (routers, incoming): paused by a drain
        self._adopt = scripts.load("adopt").register(client)
        self._release = scripts.load("release").register(client)
        self._draining: gevent.Greenlet | None = None

    def adopt(self, specs: dict[str, tuple[Spec, dict]]) -> set[str]:
        """Place the registry's rooms nobody alive holds, route what an earlier run of this frontend id
        held; returns the rooms this frontend holds."""
        settings, keys = self._settings(), self._keys
        pairs = [(room, share_key(spec_json)) for room, (_, spec_json) in sorted(specs.items())]
        mine: set[str] = set()
        for start in range(0, max(len(pairs), 1), ADOPT_CHUNK):
            chunk = [x for pair in pairs[start:start + ADOPT_CHUNK] for x in pair]
            earlier, *held = self._adopt(keys=[keys.leases], args=[keys.prefix, settings.frontend_id,
                                                                   settings.max_item_bytes, *chunk])
            if earlier:
                log.warning("re-queued %d in-flight commands left by an earlier run", earlier)
                self._counters["commands_requeued"] += int(earlier)
            mine.update(r.decode("utf-8", "replace") for r in held)
        return mine

    def lost(self, taker: str) -> None:
        """Our lease lapsed and frontend ``taker`` took our rooms: leave them without a word."""
        rooms = list(self._registry)
        for room_id in rooms:
            self._registry.drop(room_id)
        self._ledger.forget_all()
        log.warning("left %d rooms that frontend %s holds now", len(rooms), taker)

    def drain(self) -> None:
        """``greenroom drain``: hand every room to live peers, then stay up, taking no new rooms."""
        if self._draining is not None and not self._draining.dead:
            return
        self._draining = gevent.spawn(self._drain)

    def _drain(self) -> None:
        settings = self._settings()
        log.info("draining: handing %d rooms to other frontends", len(self._registry))
        intake = list(self._intake())
        self._supervisor.stop(intake)
        self._registry.leave_all("moving to another frontend", timeout=settings.shutdown_timeout)
        self._outbox.flushed(settings.shutdown_timeout)  # the acks of what they sent, first
        self.hand_over(end_lease=False)
        for service in intake:
            service.reset()
        self._supervisor.start(intake)

    def hand_over(self, *, end_lease: bool) -> None:
        """Every room this frontend holds goes to a live peer, with what it still holds in flight."""
        settings, keys = self._settings(), self._keys
        try:
            given, unheld, items = self._release(
                keys=[keys.leases], args=[keys.prefix, settings.frontend_id, settings.max_item_bytes,
                                          "1" if end_lease else "0"])
        except REDIS_ERRORS as exc:
            log.warning("rooms not handed over (%s): the others take them when our lease expires", exc)
            return
        self._ledger.forget_all()
        log.info("handed %d rooms to other frontends (%d left for the next frontend to start), "
                 "%d commands in flight with them", given, unheld, items)
