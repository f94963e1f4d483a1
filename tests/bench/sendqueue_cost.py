"""CPU per line of a connection's send queue (``frontend/chat/sendqueue.py``): put + take, no sockets.

    .venv/bin/python -m tests.bench.sendqueue_cost

The writer calls ``take`` once per batch and the rooms ``put`` once per line, so this is the part of
the outbound path per line that the queue's scheduling costs. Scenarios:

- ``busy``: 100 rooms of one connection, 100 lines each queued, taken in batches of 256 (the shape of
  ``tests/bench`` at full speed), with a token bucket that never runs dry (flood control on);
- ``busy, 10 tenants``: the same 100 rooms spread over 10 tenants (labels, none registered);
- ``quiet``: one room puts one line and the writer takes it, over and over (each line makes and
  drops the room's queue: the path of most rooms, which are quiet);
- ``busy, registered``: the 100 rooms of one registered tenant with limits that never bind
  (``lines_per_minute`` and ``max_queued`` huge): the tenant check on every line.

Process time, best of 5 runs, so other processes on the machine count as little as possible.
"""

from __future__ import annotations

import time
from typing import Any

from frontend.chat.sendqueue import OutLine, SendQueue
from frontend.pacing import TokenBucket

ROUNDS = 100


class FakeSeat:
    __slots__ = ("tenant", "name")

    def __init__(self, name: str, tenant: Any = None) -> None:
        self.name, self.tenant = name, tenant


def _queue(shares: Any = None) -> SendQueue:
    """A queue as the pool makes it: with the frontend's (here empty) tenant shares where they exist."""
    q = SendQueue(TokenBucket(1e9, 1e9), 1_000_000, lambda *a: None)
    if shares is None:
        try:
            from frontend.chat.tenant_share import TenantShares
        except ImportError:  # a version before tenant shares
            return q
        shares = TenantShares()
    q.use_shares(shares)
    return q


def busy(tenants: int = 1, shares: Any = None, tenant_name: Any = None) -> float:
    q = _queue(shares)
    seats = [FakeSeat(f"r{i}", tenant_name if tenant_name is not None else
                      (f"t{i % tenants}" if tenants > 1 else None)) for i in range(100)]
    for s in seats:
        q.enable(s)
    line = b"PRIVMSG #x :hello\r\n"
    n = 0
    t0 = time.process_time()
    for _ in range(ROUNDS):
        for s in seats:
            for _ in range(100):
                q.put(s, OutLine(line))
        while True:
            taken, _ = q.take(256)
            if not taken:
                break
            n += len(taken)
    return (time.process_time() - t0) / n * 1e6


def quiet() -> float:
    q = _queue()
    s = FakeSeat("r")
    q.enable(s)
    line = b"PRIVMSG #x :hello\r\n"
    n = 200_000
    t0 = time.process_time()
    for _ in range(n):
        q.put(s, OutLine(line))
        q.take(256)
    return (time.process_time() - t0) / n * 1e6


def registered() -> float | None:
    try:
        from frontend.chat.tenant_share import TenantShares
        from frontend.tenants import Tenant
    except ImportError:
        return None
    shares = TenantShares()
    shares.apply({"acme": Tenant("acme", lines_per_minute=10**12, max_queued=10**9)}, {"acme": 1}, {"acme": 1})
    return busy(shares=shares, tenant_name="acme")


def best(fn: Any, runs: int = 5) -> float | None:
    values = [fn() for _ in range(runs)]
    return None if values[0] is None else min(values)


def main() -> None:
    rows = [("busy, 1 tenant", lambda: busy()), ("busy, 10 tenants", lambda: busy(10)),
            ("quiet", quiet), ("busy, registered", registered)]
    for name, fn in rows:
        value = best(fn)
        print(f"{name:20s} {'n/a' if value is None else f'{value:.3f} µs/line'}")


if __name__ == "__main__":
    main()
