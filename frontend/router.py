"""The router: moves commands from the one public ``control`` to the holders of their rooms.

Any number of frontends share one ``control``; each runs a router. A step blocks on a BLMOVE of
``control``'s head to the tail of ``control:routing`` and then runs ``route.lua`` (both in one write):
it routes everything in ``control:routing``, and what else waits in ``control``, to the inbox of each
command's room holder (placing new rooms, placement.lua), and takes what it routed to its own
frontend straight into its ledger (behind what others routed there first), so one frontend costs no
round trip more than before. Per-room order holds with any number of routers: ``control:routing`` is
filled only at its tail with ``control``'s head, and emptied only from its head by one script at a
time. What the router took for its own frontend is handed to the incoming dispatcher (``deliver``),
which hands it to the rooms in sequence order. Under a backlog the script runs again at once, up to
``control_batch`` commands, before that hand-over: each script holds Redis only for its
``control_drain`` commands, and the rooms get the backlog in large batches. A scoped tenant's own intake ``tenant:<name>:control``
has a router of its own (``tenant=``): its items carry the tenant's tag, which only scripts write.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from . import scripts
from .config import Settings
from .counters import Counters
from .inflight import InflightLedger
from .keys import Keys
from .logs import Throttle
from .pacing import Backoff
from .redis_conn import REDIS_ANY, REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP, DirectLink
from .service import Service

log = logging.getLogger(__name__)


class Router(Service):
    """Routes ``control`` to the room holders' inboxes (and its own frontend's share to its ledger)."""

    name = "router"

    def __init__(self, *, link: DirectLink, keys: Keys, ledger: InflightLedger, frontend_id: str,
                 settings: Settings, counters: Counters, deliver: Callable[[list[Any]], None],
                 adopt: Callable[[], None], tenant: str | None = None) -> None:
        super().__init__()
        self._link = link
        self._keys = keys
        #: the scoped tenant whose own intake this router routes (None: the public ``control``)
        self.tenant = tenant
        self._source = keys.tenant_control(tenant) if tenant else keys.control
        self._routing = keys.tenant_routing(tenant) if tenant else keys.routing
        if tenant:
            self.name = f"router:{tenant}"
        self._ledger = ledger
        self._frontend_id = frontend_id
        self._settings = settings
        self._counters = counters
        self._deliver = deliver
        self._adopt = adopt
        self._route = scripts.load("route")
        self._backoff = Backoff(REDIS_BACKOFF_BASE, REDIS_BACKOFF_CAP)
        self._throttle = Throttle(log, counter=counters)

    def apply_settings(self, new: Settings) -> None:
        self._settings = new

    def on_stop(self) -> None:
        self._link.close()  # ends a blocked pop; what it moved waits in control:routing

    def commands(self) -> list[tuple[Any, ...]]:
        """A step's batch: the blocking BLMOVE, then the script."""
        return [("BLMOVE", self._source, self._routing, "LEFT", "RIGHT", self._settings.control_block_timeout),
                self._script()]

    def _script(self) -> tuple[Any, ...]:
        settings, keys, ledger = self._settings, self._keys, self._ledger
        return self._route.command(
            [self._source, self._routing, ledger.inbox, ledger.landing, ledger.key, ledger.seq_key],
            [keys.prefix, self._frontend_id, settings.control_drain, settings.control_drain_bytes,
             settings.max_item_bytes, ledger.max_items, self.tenant or ""])

    def step(self) -> None:
        """One step: the BLMOVE and the script; while ``control`` has a backlog (a script took its
        ``control_drain``), the script alone again, up to ``control_batch`` commands; then what was
        taken for this frontend to the rooms at once. A script holds Redis for its own
        ``control_drain`` commands only, while the rooms get a backlog in large hand-overs (each room's
        wake-up, write and PING shared by more lines: BENCHMARKS.md "Hot path, session 8")."""
        taken: list[Any] = []
        try:
            _, reply = self._link.round_trip(self.commands())
            taken = list(reply or ())
            settings = self._settings
            while (len(reply or ()) >= 2 * settings.control_drain and len(taken) < 2 * settings.control_batch
                   and not self.stopping.is_set()):
                reply = self._link.round_trip([self._script()])[0]
                taken.extend(reply or ())
        except REDIS_ANY as exc:
            if taken:
                self._deliver(taken)  # what came before the error: its items are in our ledger
            self._failed(exc)
            return
        self._backoff.reset()
        if taken:
            self._deliver(taken)

    def _failed(self, exc: Exception) -> None:
        if self.stopping.is_set():
            return
        self._counters["redis_reconnects:router"] += 1
        delay = self._backoff.next()
        self._throttle.warning("redis", "routing %s failed (%s); retrying in %.2fs", self._source, exc, delay)
        self.stopping.wait(delay)
        if not self.stopping.is_set():
            try:
                self._adopt()  # the script may have run with its reply lost
            except REDIS_ANY:
                pass
