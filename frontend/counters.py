"""Every counter of one frontend, in one object the parts receive; the metrics collector reads it.

A leaf: it imports nothing of greenroom, so any part may take a ``Counters`` without an import circle.
Counting is an integer add on a ``collections.Counter`` (no locks: one thread, greenlets), and the two
latency histograms are ``FastHistogram``s (a bisect and two adds). Names, with ``:`` before a label:

- ``commands_received``, ``commands_applied``, ``commands_dead:<code>``, ``commands_requeued``
- ``events_pushed``, ``events_dropped`` (buffer full), ``events_unencodable``,
  ``events_rate_dropped`` (a room past its inbound limit)
- ``chat_reconnects:<protocol>``, ``redis_reconnects:<component>``, ``line_drops:<code>``,
  ``lines_too_long`` (IRC lines over 8 KiB + 512 B, dropped), ``stanzas_too_big`` (XMPP streams
  dropped for a stanza over 1 MiB), ``members_untracked`` (channel members / MUC occupants past the
  tracking bounds), ``dm_dropped`` (private messages on a connection shared across tenants)
- ``flood_kills:<server>`` (flood disconnects learned from) and the gauge ``flood_rate:<server>``
  (the learned rate, lines/s: a float, set rather than counted; ``flood_memory``)
- ``loop_crashes:<service>`` (a supervised loop died and was restarted), ``room_crashes``
- ``log_suppressed`` (repeated warnings folded into a count)
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


class Counters(Counter):
    """The counters of one frontend (``counters["commands_received"] += 1``) and its histograms."""

    def __init__(self) -> None:
        super().__init__()
        #: popped from ``control`` -> written to the chat socket (observed when a command is acked)
        self.command_latency = FastHistogram()
        #: read from the chat socket -> pushed to Redis (observed per written batch)
        self.event_latency = FastHistogram()

    def labelled(self, prefix: str, always: Iterable[str] = ()) -> dict[str, int]:
        """``{label: n}`` for the counters named ``<prefix>:<label>`` (``always`` listed at 0)."""
        out = {label: 0 for label in always}
        head = prefix + ":"
        for name, n in list(self.items()):
            if name.startswith(head):
                out[name[len(head):]] = n
        return out
