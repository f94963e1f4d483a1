"""The lease: how a frontend proves it is alive, and how the others take its rooms over when it is not.

Every ``lease_time / 3`` seconds the ``LeaseKeeper`` renews this frontend's lease in
``fleet:leases`` (a sorted set: expiry in Redis time) and then takes over every frontend whose
lease expired (``takeover.lua``: their rooms go to live frontends, what they held in flight follows).

Never two bots in one room: a frontend that was paused (SIGSTOP, a VM freeze) or cut off from Redis
longer than its lease may have had its rooms taken. So the ``SpeakGate`` is open only while the lease
is surely valid: until ``sent + lease_time - lease_margin``, measured on this process's monotonic
clock from the moment the renewal was *sent* (Redis set the expiry later than that). While it is
closed, rooms send no line (protocol lines still go). When Redis answers again, the renewal says
whether someone took our rooms over: then ``on_lost`` leaves them without speaking in them. A frontend
that cannot reach Redis keeps its rooms: nobody can take them without Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import gevent
import gevent.event
import redis

from . import scripts
from .chat.base import SpeakGate
from .config import Settings
from .counters import Counters
from .keys import Keys
from .logs import Throttle
from .redis_conn import REDIS_ANY
from .service import Service

log = logging.getLogger(__name__)


class LeaseKeeper(Service):
    """Renews this frontend's lease, keeps the speak gate, takes over the frontends that died."""

    name = "lease"

    def __init__(self, client: redis.Redis, keys: Keys, frontend_id: str, *, settings: Callable[[], Settings],
                 gate: SpeakGate, counters: Counters, on_lost: Callable[[str], None],
                 on_drain: Callable[[], None], housekeeping: Callable[[], Any] = lambda: None) -> None:
        super().__init__()
        self._client = client
        self._keys = keys
        self.frontend_id = frontend_id
        self._settings = settings
        self.gate = gate
        self._counters = counters
        self._on_lost = on_lost
        self._on_drain = on_drain
        self._housekeeping = housekeeping  # after every renewal (the wiring decides what is due)
        self._renew = scripts.load("lease").register(client)
        self._takeover = scripts.load("takeover").register(client)
        self._throttle = Throttle(log, counter=counters)
        self.valid_until = 0.0  # monotonic: the gate closes then unless renewed
        self.redis_now_ms = 0  # Redis time of the last renewal
        self.held = 0  # rooms Redis says we hold
        self.draining = False
        self._closer: Any = None
        self.renewed = gevent.event.Event()

    @property
    def interval(self) -> float:
        return self._settings().lease_time / 3

    # -------------------------------------------------------------------------------- renewal
    def renew(self) -> None:
        """Renew the lease (raises the Redis error when Redis does not answer)."""
        settings = self._settings()
        sent = time.monotonic()
        now, taken, held, draining = self._renew(
            keys=[self._keys.leases],
            args=[self._keys.prefix, self.frontend_id, int(settings.lease_time * 1000), settings.weight,
                  "0"])
        self.redis_now_ms, self.held = int(now), int(held)
        self.valid_until = sent + settings.lease_time - settings.lease_margin
        self._schedule_close(self.valid_until - time.monotonic())
        self.renewed.set()
        taken = taken.decode() if isinstance(taken, bytes) else taken
        if taken:
            self._counters["lease_lost"] += 1
            log.warning("our lease had expired and frontend %s took our rooms over: leaving them without "
                        "a word", taken)
            self._on_lost(taken)
        self.gate.set_open(True)
        was, self.draining = self.draining, draining in (b"1", "1", 1)
        if self.draining and self.held:
            self._on_drain()
        elif was and not self.draining:
            log.info("drain ended: this frontend takes new rooms again")

    def _schedule_close(self, delay: float) -> None:
        if self._closer is not None:
            self._closer.close()
        self._closer = gevent.get_hub().loop.timer(max(delay, 0.0))
        self._closer.start(self._expired)

    def _expired(self) -> None:
        """Runs in the hub when the lease may have lapsed without a renewal: stop speaking."""
        self._closer = None
        if time.monotonic() >= self.valid_until and self.gate.open:
            self.gate.set_open(False)
            self._counters["lease_gate_closed"] += 1
            self._throttle.warning("gate", "the lease was not renewed in time (Redis unreachable, or this "
                                   "process was paused): no room speaks until it is")

    # ------------------------------------------------------------------------------- take-over
    def take_over_expired(self) -> int:
        """Take over every frontend whose lease expired (as of the last renewal's Redis time)."""
        expired = self._client.zrangebyscore(self._keys.leases, "-inf", self.redis_now_ms - 1)
        moved = 0
        for raw in expired:
            dead = raw.decode("utf-8", "replace")
            if dead == self.frontend_id:
                continue
            rooms, items = self._takeover(keys=[self._keys.leases],
                                          args=[self._keys.prefix, self.frontend_id, dead,
                                                self._settings().max_item_bytes])
            if int(rooms) < 0:
                continue  # it renewed meanwhile
            self._counters["takeovers"] += 1
            self._counters["rooms_taken_over"] += int(rooms)
            log.warning("frontend %s is dead (its lease expired): its %d rooms and %d commands in flight "
                        "went to live frontends", dead, int(rooms), int(items))
            moved += int(rooms)
        return moved

    # -------------------------------------------------------------------------------- the loop
    def step(self) -> None:
        try:
            self.renew()
            self.take_over_expired()
            self._housekeeping()
        except REDIS_ANY as exc:
            self._throttle.warning("renew", "lease not renewed: %s", exc)
        self.stopping.wait(self.interval)

    def on_stop(self) -> None:
        if self._closer is not None:
            self._closer.close()
            self._closer = None
