"""A registered tenant's limits on one frontend: its share of ``lines_per_minute`` and ``max_queued``.

Each frontend keeps one ``TenantShare`` per registered tenant: a token bucket for the tenant's lines
per minute and a count of its queued lines, each the tenant's limit times the share of the tenant's
rooms this frontend holds (``held / total``, ``total`` being the tenant's rooms over every frontend,
the set ``tenant:<name>:rooms``). The send queues of every connection of the frontend consult the
share of a room's tenant for each line of the room (``sendqueue.SendQueue``): one attribute read and
one bucket take; a room without a registered tenant costs nothing.

Why split per frontend rather than one bucket in Redis: a shared bucket costs a Redis round trip per
line (or per batch, with a lease of tokens), on the hot path, and a frontend cut off from Redis would
have to stop speaking for every limited tenant. Split, no line waits for Redis; the shares are
recomputed after every lease renewal (``TenantShares.refresh``, about every 2 s), when the registry
changed or the rooms moved. The cost: a tenant whose rooms are idle on one frontend leaves that
frontend's share unused (its busy rooms elsewhere do not get it), and a share follows a change of
rooms with a delay of one renewal. A frontend that holds none of a tenant's rooms keeps the share of
one room (so a room that arrives between two renewals is not silenced); its share of the sum is then
an over-estimate only while it has no room to use it.

The bucket holds ``BURST_SECONDS`` of the share's rate (at least one line): a tenant idle for a while
may send that many lines at once, then its rate.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from ..counters import TenantTally
from ..pacing import TokenBucket

if TYPE_CHECKING:
    from ..counters import Counters
    from ..keys import Keys
    from ..tenants import Tenant

log = logging.getLogger(__name__)

#: a tenant's bucket holds this many seconds of its (per frontend) rate, at least one line
BURST_SECONDS = 5.0


class LineBucket(TokenBucket):
    """A ``pacing.TokenBucket`` that can give a token back and be retuned in place (the send queues
    hold it while the shares are recomputed)."""

    __slots__ = ()

    def refund(self) -> None:
        """Give back a token taken for a line that could not go out after all."""
        self._tokens = min(self.burst, self._tokens + 1.0)

    def retune(self, rate: float, burst: float) -> None:
        """New limits from now on; what accrued at the old rate stays (up to the new burst)."""
        now = time.monotonic()
        self._tokens = min(burst, self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self.rate, self.burst = rate, burst

    @property
    def tokens(self) -> float:
        return min(self.burst, self._tokens + (time.monotonic() - self._stamp) * self.rate)


class TenantShare:
    """One registered tenant on this frontend: what its rooms may send and queue here.

    ``bucket`` is None without ``lines_per_minute``, ``max_queued`` None without ``max_queued``.
    ``queued`` counts the tenant's lines waiting in the send queues of this frontend; ``groups`` are
    the send queues' groups of the tenant's seats (where the oldest line is found past ``max_queued``);
    ``seq`` numbers its lines as they are queued (the oldest has the lowest). ``tally`` counts lines
    sent and dropped (the metrics).
    """

    __slots__ = ("name", "bucket", "max_queued", "queued", "seq", "groups", "tally", "fraction",
                 "lines_per_minute", "queued_limit", "rooms")

    def __init__(self, name: str, tally: Optional[TenantTally] = None) -> None:
        self.name = name
        self.bucket: Optional[LineBucket] = None
        self.max_queued: Optional[int] = None
        self.queued = 0
        self.seq = 0
        self.groups: set[Any] = set()
        self.tally = tally if tally is not None else TenantTally()
        self.fraction = 1.0
        #: the tenant's own limits (over every frontend), for logs and drop reports
        self.lines_per_minute: Optional[int] = None
        self.queued_limit: Optional[int] = None
        #: (rooms here, rooms over every frontend) as last applied
        self.rooms = (0, 0)

    def configure(self, tenant: "Tenant", fraction: float) -> None:
        """Limits for this frontend's ``fraction`` (0 < fraction <= 1) of the tenant's rooms."""
        self.fraction = fraction
        self.lines_per_minute, self.queued_limit = tenant.lines_per_minute, tenant.max_queued
        if tenant.lines_per_minute is None:
            self.bucket = None
        else:
            rate = tenant.lines_per_minute * fraction / 60.0
            burst = max(1.0, rate * BURST_SECONDS) if rate > 0 else 0.0  # 0 lines/min: none at all
            if self.bucket is None:
                self.bucket = LineBucket(rate, burst)
            elif (self.bucket.rate, self.bucket.burst) != (rate, burst):
                self.bucket.retune(rate, burst)
        self.max_queued = (None if tenant.max_queued is None
                           else max(1, math.ceil(tenant.max_queued * fraction)))

    def __repr__(self) -> str:
        rate = f"{self.bucket.rate * 60:.1f}/min" if self.bucket is not None else "unlimited"
        return f"<TenantShare {self.name} {self.fraction:.3f}: {rate}, queued {self.queued}/{self.max_queued}>"


class TenantShares:
    """Every registered tenant's share on this frontend; the send queues look a seat's tenant up here.

    When a tenant gets or loses its share object (registered, removed) every send queue that uses
    these shares (``watch``, held weakly) re-binds its groups once (``SendQueue.rebind``): nothing is
    checked per line or per batch for it. A share's limits change in place, so the queues holding
    it see them at once.
    """

    def __init__(self, counters: "Counters | None" = None) -> None:
        self.counters = counters
        #: every room's lines sent (the send queues add each batch): the metrics' total
        self.lines = counters.all_lines if counters is not None else TenantTally()
        self.version = 0
        self._queues: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._shares: dict[str, TenantShare] = {}
        #: the tenant's rooms over every frontend, as last read (``refresh``)
        self._totals: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._shares)

    def watch(self, queue: Any) -> None:
        """``queue.rebind()`` is called whenever a tenant gets or loses its share."""
        self._queues.add(queue)

    def get(self, tenant: Optional[str]) -> Optional[TenantShare]:
        return self._shares.get(tenant) if tenant is not None else None  # type: ignore[arg-type]

    def items(self) -> list[tuple[str, TenantShare]]:
        return sorted(self._shares.items())

    def apply(self, tenants: Mapping[str, "Tenant"], held_counts: Mapping[str, int],
              totals: Mapping[str, int]) -> None:
        """Recompute every share: ``tenants`` the registry (name -> Tenant), ``held_counts`` this
        frontend's rooms per tenant, ``totals`` each tenant's rooms over every frontend (missing:
        taken as what this frontend holds)."""
        version = self.version
        for name in [n for n in self._shares if n not in tenants]:
            del self._shares[name]
            self.version += 1
            log.info("tenant %s: no longer registered, its rooms have no tenant limits here", name)
        for name, tenant in tenants.items():
            share = self._shares.get(name)
            if share is None:
                tally = self.counters.tenant(name) if self.counters is not None else None
                share = self._shares[name] = TenantShare(name, tally)
                self.version += 1
            held = max(0, int(held_counts.get(name, 0)))
            total = max(held, int(totals.get(name, held)))
            # no room here: the share of one room, so a room arriving before the next renewal speaks
            fraction = 1.0 / max(total, 1) if held == 0 else held / total
            before = (share.bucket.rate if share.bucket is not None else None, share.max_queued, share.rooms)
            share.configure(tenant, fraction)
            share.rooms = (held, total)
            after = (share.bucket.rate if share.bucket is not None else None, share.max_queued, share.rooms)
            if before != after and (tenant.lines_per_minute is not None or tenant.max_queued is not None):
                log.info("tenant %s: %d of its %d rooms here: %s lines/min, %s queued lines on this frontend",
                         name, held, total,
                         "unlimited" if after[0] is None else f"{after[0] * 60:.1f}",
                         "unlimited" if after[1] is None else after[1])
        if self.version != version:
            for queue in list(self._queues):
                queue.rebind()

    def refresh(self, client: Any, keys: "Keys", tenants: Mapping[str, "Tenant"],
                room_tenants: Iterable[Optional[str]]) -> None:
        """Count this frontend's rooms by tenant (``room_tenants``: the tenant of each room held here),
        read the totals of the limited tenants that have rooms here (one pipelined round trip), and
        ``apply``. Without a limited tenant it reads nothing."""
        limited = {name for name, t in tenants.items()
                   if t.lines_per_minute is not None or t.max_queued is not None}
        held: dict[str, int] = {}
        if limited:
            for tenant in room_tenants:
                if tenant in limited:
                    held[tenant] = held.get(tenant, 0) + 1  # type: ignore[index]
            wanted = sorted(n for n in limited if held.get(n) or n not in self._totals)
            if wanted:
                pipe = client.pipeline(transaction=False)
                for name in wanted:
                    pipe.scard(keys.tenant_rooms(name))
                for name, n in zip(wanted, pipe.execute()):
                    self._totals[name] = int(n)
            for name in [n for n in self._totals if n not in limited]:
                del self._totals[name]
        self.apply(tenants, held, {n: self._totals.get(n, held.get(n, 0)) for n in tenants})
