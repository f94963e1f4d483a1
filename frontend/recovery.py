"""In-flight recovery: commands taken from ``control`` are never lost, even when a frontend dies.

Every ``recovery_interval`` this service asks the in-flight ledger for two things:
- entries of our own ledger that this process does not hold on two scans in a row (the safety net
  behind the intake's own check after a lost reply) go back to the head of ``control``;
- the ledger of a dead frontend that never had a lease (a version before several frontends; frontends
  with a lease are taken over by the lease keeper, ``lease.py``), and the in-flight list of a version
  before the ledger, go back to the head of ``control`` in order, under a ``SET NX PX`` lock so that
  only one live frontend takes them over.
"""

from __future__ import annotations

import logging

import redis

from .counters import Counters
from .inflight import InflightLedger
from .keys import Keys, glob_escape
from .logs import Throttle
from .redis_conn import REDIS_ANY
from .service import Service

log = logging.getLogger(__name__)


class Recovery(Service):
    """Re-queues stranded and orphaned in-flight commands."""

    name = "recovery"

    def __init__(self, client: redis.Redis, keys: Keys, ledger: InflightLedger, *, control: str,
                 interval: float, counters: Counters) -> None:
        super().__init__()
        self._client = client
        self._keys = keys
        self._ledger = ledger
        self._control = control
        self.interval = interval
        self._counters = counters
        self._throttle = Throttle(log)

    @property
    def requeued(self) -> int:
        return self._ledger.requeued

    def step(self) -> None:
        if self.stopping.wait(self.interval):
            return
        try:
            self.scan_once()
        except REDIS_ANY as exc:
            self._throttle.warning("scan", "in-flight recovery skipped: %s", exc)

    def scan_once(self) -> int:
        """One pass over our own ledger and the ledgers of dead frontends; returns items re-queued."""
        moved = self._ledger.requeue_stranded(self._control)
        for owner in sorted(self._owners()):
            if (owner == self._ledger.frontend_id or self._client.exists(self._keys.heartbeat(owner))
                    or self._client.zscore(self._keys.leases, owner) is not None):
                continue
            moved += self._ledger.take_over(owner, self._control)
        if moved:
            self._counters["commands_requeued"] += moved
        return moved

    def _owners(self) -> set[str]:
        """Every frontend id that has a ledger, a landing list or a legacy in-flight list."""
        owners: set[str] = set()
        for make in (self._keys.ledger, self._keys.landing, self._keys.inflight, self._keys.inbox):
            prefix = make("")
            for key in self._client.scan_iter(match=glob_escape(prefix) + "*", count=500):
                owners.add(key.decode("utf-8", "replace")[len(prefix):])
        return owners
