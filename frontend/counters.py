"""Every counter of one frontend, in one object the parts receive; the metrics collector reads it.

A leaf: it imports nothing of greenroom, so any part may take a ``Counters`` without an import circle.
Counting is an integer add on a ``collections.Counter`` (no locks: one thread, greenlets), and the two
latency histograms are ``FastHistogram``s (a bisect and two adds). Names, with ``:`` before a label:

- ``commands_received``, ``commands_applied``, ``commands_dead:<code>``, ``commands_requeued``
- ``events_pushed``, ``events_dropped`` (buffer full), ``events_unencodable``,
  ``events_rate_dropped`` (a room past its inbound limit), ``reads_held`` (a chat reader paused
  because the event buffer was past its high-water mark)
- ``chat_reconnects:<protocol>``, ``redis_reconnects:<component>``, ``line_drops:<code>``,
  ``lines_too_long`` (IRC lines over 8 KiB + 512 B, dropped), ``stanzas_too_big`` (XMPP streams
  dropped for a stanza over 1 MiB), ``members_untracked`` (channel members / MUC occupants past the
  tracking bounds), ``dm_dropped`` (private messages on a connection shared across tenants)
- ``flood_kills:<server>`` (flood disconnects learned from) and the gauge ``flood_rate:<server>``
  (the learned rate, lines/s: a float, set rather than counted; ``flood_memory``)
- ``loop_crashes:<service>`` (a supervised loop died and was restarted), ``room_crashes``
- ``log_suppressed`` (repeated warnings folded into a count)
- not in the Counter itself: ``all_lines.sent`` (lines the send queues handed to a writer, every
  room; added once per batch) and per registered tenant a ``TenantTally`` in ``tenants`` (lines sent
  and dropped by its rooms, added by the send queues): the rooms of every other tenant are
  ``all_lines.sent`` and the ``line_drops`` less the tallies, under the one label ``OTHER_TENANT``
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Iterable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0)


class FastHistogram:
    """A histogram for one greenlet-only process: no locks, one bisect and two adds per value."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_since(self, now: float, starts: Iterable[float]) -> None:
        """Observe ``now - t`` for every ``t`` (one batch of events)."""
        counts, bounds, left = self.counts, self.bounds, bisect.bisect_left
        total = 0.0
        for start in starts:
            value = now - start
            counts[left(bounds, value)] += 1
            total += value
        self.sum += total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(self.bounds + [float("inf")], self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


#: the metrics' ``tenant`` label of every room that is not of a registered tenant (a registered tenant's
#: name starts with a letter or digit, so it never is this)
OTHER_TENANT = "_other"


class TenantTally:
    """Lines of a registered tenant's rooms on this frontend: sent (handed to a writer) and dropped."""

    __slots__ = ("sent", "dropped")

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0


class Counters(Counter):
    """The counters of one frontend (``counters["commands_received"] += 1``) and its histograms."""

    def __init__(self) -> None:
        super().__init__()
        #: popped from ``control`` -> written to the chat socket (observed when a command is acked)
        self.command_latency = FastHistogram()
        #: read from the chat socket -> pushed to Redis (observed per written batch)
        self.event_latency = FastHistogram()
        #: registered tenant -> its tally (kept once made: a tenant removed from the registry keeps its
        #: figures, so the counters never go back; bounded by the tenants ever registered)
        self.tenants: dict[str, TenantTally] = {}
        #: every room's lines (``sent`` only)
        self.all_lines = TenantTally()

    def tenant(self, name: str) -> TenantTally:
        """The tally of a registered tenant (made on first use)."""
        tally = self.tenants.get(name)
        if tally is None:
            tally = self.tenants[name] = TenantTally()
        return tally

    def by_tenant(self) -> dict[str, tuple[int, int]]:
        """``{tenant: (lines sent, lines dropped)}``: each registered tenant's, and ``OTHER_TENANT``'s
        for every other room."""
        out = {name: (t.sent, t.dropped) for name, t in self.tenants.items()}
        sent = sum(s for s, _ in out.values())
        dropped = sum(d for _, d in out.values())
        all_dropped = sum(n for name, n in self.items() if name.startswith("line_drops:"))
        out[OTHER_TENANT] = (max(0, self.all_lines.sent - sent), max(0, all_dropped - dropped))
        return out

    def labelled(self, prefix: str, always: Iterable[str] = ()) -> dict[str, int]:
        """``{label: n}`` for the counters named ``<prefix>:<label>`` (``always`` listed at 0)."""
        out = {label: 0 for label in always}
        head = prefix + ":"
        for name, n in list(self.items()):
            if name.startswith(head):
                out[name[len(head):]] = n
        return out
