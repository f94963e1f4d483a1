"""Tenants on the chat side (issue 18), without servers: fair turns by tenant in a connection's send
queue, a registered tenant's share of lines/minute and queued lines, connect admission by tenant
within a server's connection budget."""

from __future__ import annotations

import time

import gevent
import pytest

from frontend.chat.sendqueue import TENANT_QUEUED, OutLine, SendQueue
from frontend.chat.tenant_share import TenantShares
from frontend.config import load_settings
from frontend.counters import OTHER_TENANT, Counters
from frontend.errors import ConfigError
from frontend.sessions import ConnectLine, ConnectTicket
from frontend.tenants import Tenant


class Seat:
    __slots__ = ("name", "tenant")

    def __init__(self, name: str, tenant: str | None) -> None:
        self.name, self.tenant = name, tenant

    def __repr__(self) -> str:
        return self.name


def make(shares: TenantShares | None = None):
    drops = []
    q = SendQueue(None, 1000, lambda seat, line, code: drops.append((seat.name, line.data, code)),
                  shares=shares)
    return q, drops


def texts(taken):
    return [line.data for _, line in taken]


def test_tenants_take_turns_before_rooms():
    q, _ = make()
    a_rooms = [Seat(f"a{i}", "A") for i in range(20)]
    b = Seat("b", "B")
    for seat in a_rooms + [b]:
        q.enable(seat)
    for seat in a_rooms:
        for i in range(100):  # 2,000 lines of tenant A over 20 rooms
            q.put(seat, OutLine(f"{seat.name}-{i}"))
    q.put(b, OutLine("b-0"))
    first = texts(q.take(2)[0])
    assert "b-0" in first, first  # by room it would have been the 21st line
    # within tenant A its rooms still take turns
    rest = texts(q.take(40)[0])
    assert [t.split("-")[0] for t in rest[:20]] == [f"a{i}" for i in range(1, 20)] + ["a0"]


def test_a_tenant_with_one_room_and_rooms_without_tenant_each_get_a_turn():
    q, _ = make()
    seats = [Seat("n1", None), Seat("n2", None), Seat("x", "X")]
    for s in seats:
        q.enable(s)
        for i in range(3):
            q.put(s, OutLine(f"{s.name}-{i}"))
    order = texts(q.take(9)[0])
    assert order[:2] == ["n1-0", "x-0"] and order.count("x-0") == 1
    assert sorted(order) == sorted(f"{s.name}-{i}" for s in seats for i in range(3))


def test_a_registered_tenant_out_of_tokens_is_passed_over_and_the_wait_reported():
    shares = TenantShares()
    shares.apply({"acme": Tenant("acme", lines_per_minute=60)}, {"acme": 1}, {"acme": 1})
    share = shares.get("acme")
    assert share.bucket.rate == 1.0 and share.bucket.burst == 5.0  # 60/min, 5 s of burst
    q, _ = make(shares)
    acme, other = Seat("acme1", "acme"), Seat("free", None)
    q.enable(acme)
    q.enable(other)
    for i in range(10):
        q.put(acme, OutLine(f"a{i}"))
        q.put(other, OutLine(f"f{i}"))
    taken, wait = q.take(100)
    assert [t for t in texts(taken) if t.startswith("a")] == [f"a{i}" for i in range(5)]
    assert [t for t in texts(taken) if t.startswith("f")] == [f"f{i}" for i in range(10)]
    assert 0.9 < wait <= 1.0  # the tenant's next token
    assert share.queued == 5 and share.tally.sent == 5
    taken, wait = q.take(100)
    assert taken == [] and 0.9 < wait <= 1.0


def test_the_tenant_bucket_is_shared_by_every_connection_of_the_frontend():
    shares = TenantShares()
    shares.apply({"acme": Tenant("acme", lines_per_minute=120)}, {"acme": 2}, {"acme": 2})
    queues = [make(shares)[0] for _ in range(3)]
    for n, q in enumerate(queues):
        seat = Seat(f"r{n}", "acme")
        q.enable(seat)
        for i in range(20):
            q.put(seat, OutLine(i))
    total = sum(len(q.take(100)[0]) for q in queues)
    assert total == 10  # burst: 5 s of 2 lines/s, over the three connections together


def test_the_connection_token_is_not_spent_on_a_tenant_without_one():
    from frontend.pacing import TokenBucket
    shares = TenantShares()
    shares.apply({"acme": Tenant("acme", lines_per_minute=6)}, {"acme": 1}, {"acme": 1})  # burst 1
    q = SendQueue(TokenBucket(0.001, 1), 100, lambda *a: None, shares=shares)
    acme, other = Seat("a", "acme"), Seat("o", None)
    q.enable(acme)
    q.enable(other)
    q.put(acme, OutLine("a0"))
    q.put(acme, OutLine("a1"))
    assert texts(q.take(10)[0]) == ["a0"]  # the connection's only token
    q.bucket = TokenBucket(100, 1)
    q.put(other, OutLine("o0"))
    taken, _ = q.take(10)
    assert texts(taken) == ["o0"]  # acme's bucket was empty: its line did not take the token


def test_max_queued_drops_the_tenants_oldest_line_over_every_connection():
    shares = TenantShares()
    shares.apply({"acme": Tenant("acme", max_queued=4)}, {"acme": 1}, {"acme": 1})
    share = shares.get("acme")
    (q1, drops1), (q2, drops2) = make(shares), make(shares)
    s1, s2 = Seat("one", "acme"), Seat("two", "acme")
    q1.enable(s1)
    q2.enable(s2)
    q1.put(s1, OutLine("1a"))
    q2.put(s2, OutLine("2a"))
    q1.put(s1, OutLine("1b"))
    q2.put(s2, OutLine("2b"))
    assert share.queued == 4 and not drops1 and not drops2
    q2.put(s2, OutLine("2c"))  # the oldest line of the tenant is on the other connection
    assert drops1 == [("one", "1a", TENANT_QUEUED)] and not drops2
    q1.put(s1, OutLine("1c"))
    assert drops2 == [("two", "2a", TENANT_QUEUED)]
    assert share.queued == 4 and share.tally.dropped == 2
    assert texts(q1.take(10)[0]) == ["1b", "1c"] and texts(q2.take(10)[0]) == ["2b", "2c"]
    assert share.queued == 0
    q1.put(s1, OutLine("x"))
    q1.remove(s1)
    assert share.queued == 0 and q1.take(10)[0] == []
    assert len(share.groups) == 1  # q1's group went with its last room (q2's room is still enabled)


def test_a_tenant_registered_later_counts_the_lines_already_queued():
    shares = TenantShares()
    q, drops = make(shares)
    seat = Seat("r", "late")
    q.enable(seat)
    for i in range(5):
        q.put(seat, OutLine(i))
    shares.apply({"late": Tenant("late", max_queued=3)}, {"late": 1}, {"late": 1})
    share = shares.get("late")
    assert share.queued == 5  # re-bound at once
    q.put(seat, OutLine(5))
    assert [d[1] for d in drops] == [0]
    shares.apply({}, {}, {})  # removed again: the queue forgets it
    q.put(seat, OutLine(6))
    assert len(drops) == 1 and q.depth(seat) == 6


def test_shares_split_the_limits_by_the_rooms_held():
    shares = TenantShares()
    tenants = {"acme": Tenant("acme", lines_per_minute=600, max_queued=1000), "free": Tenant("free")}
    shares.apply(tenants, {"acme": 1}, {"acme": 4})
    acme = shares.get("acme")
    assert acme.bucket.rate == pytest.approx(600 / 4 / 60) and acme.max_queued == 250
    assert shares.get("free").bucket is None and shares.get("free").max_queued is None
    bucket = acme.bucket
    shares.apply(tenants, {"acme": 3}, {"acme": 4})
    assert acme.bucket is bucket and bucket.rate == pytest.approx(600 * 3 / 4 / 60) and acme.max_queued == 750
    shares.apply(tenants, {}, {"acme": 10})  # no room here: one room's share, never nothing
    assert acme.max_queued == 100 and bucket.rate == pytest.approx(1.0)
    shares.apply(tenants, {"acme": 2}, {})  # no total yet: what is held here is the whole
    assert acme.max_queued == 1000
    assert shares.get(None) is None and shares.get("nobody") is None


def test_metrics_by_tenant_put_unregistered_rooms_under_one_label():
    counters = Counters()
    shares = TenantShares(counters)
    shares.apply({"acme": Tenant("acme")}, {"acme": 1}, {"acme": 1})
    q = SendQueue(None, 1, lambda seat, line, code: counters.update({"line_drops:" + code: 1}),
                  shares=shares)
    seats = [Seat("a", "acme"), Seat("x", "label-only"), Seat("n", None)]
    for s in seats:
        q.enable(s)
        q.put(s, OutLine("1"))
        q.put(s, OutLine("2"))  # max_per_room 1: the first is dropped
    q.take(10)
    assert counters.by_tenant() == {"acme": (1, 1), OTHER_TENANT: (2, 2)}
    assert set(counters.tenants) == {"acme"}  # no label value for unregistered tenants


def test_max_connections_is_checked(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[servers."irc.example.org"]\nmax_connections = 3\n')
    s = load_settings(str(path), env={})
    assert s.for_server("irc.example.org", "max_connections") == 3 and s.for_server("x", "max_connections") == 0
    path.write_text('[servers."irc.example.org"]\nmax_connections = -1\n')
    with pytest.raises(ConfigError, match="max_connections"):
        load_settings(str(path), env={})


# ------------------------------------------------------------------------------- connect admission
class FakeSession:
    def __init__(self) -> None:
        self.told: list = []

    def connection_wait(self, reason):
        self.told.append(reason)


def _connector(line: ConnectLine, tenant, order: list, name: str, hold: gevent.event.Event | None = None):
    ticket = ConnectTicket(tenant)
    session = FakeSession()
    ticket.bind(session)

    def run():
        line.enter(ticket)
        order.append(name)
        if hold is not None:
            hold.wait()
    g = gevent.spawn(run)
    g.session, g.ticket = session, ticket
    return g


def test_connects_are_admitted_by_tenant_not_in_arrival_order():
    line = ConnectLine("irc.test")
    line.configure(100.0, 0)  # 10 ms slots
    order: list = []
    hold = gevent.event.Event()
    many = [_connector(line, "A", order, f"a{i}", hold) for i in range(50)]
    gevent.sleep(0.035)
    arrived = len(order)
    one = _connector(line, "B", order, "b", hold)
    with gevent.Timeout(5):
        while "b" not in order:
            gevent.sleep(0.001)
    assert order.index("b") <= arrived + 2, (arrived, order)  # within a slot or two of arriving
    hold.set()
    gevent.joinall(many + [one], timeout=5)
    gevent.sleep(0.01)  # (the links that free the connections run after the greenlets end)
    assert len(order) == 51 and line.in_use == 0  # each session's end gave its connection back
    assert line.held == {}


def test_the_connection_budget_is_shared_fairly_and_waiters_hear_it_once():
    line = ConnectLine("irc.test")
    line.configure(1000.0, 4)
    order: list = []
    holds = {}
    greenlets = []
    for name, tenant in [(f"a{i}", "A") for i in range(10)] + [("b0", "B"), ("b1", "B")]:
        holds[name] = gevent.event.Event()
        greenlets.append(_connector(line, tenant, order, name, holds[name]))
    gevent.sleep(0.2)
    assert sorted(order) == ["a0", "a1", "b0", "b1"], order  # not four of A: B waited
    assert line.in_use == 4 and line.held == {"A": 2, "B": 2}
    waiting = [g for g in greenlets if g.session.told]
    assert len(waiting) == 8 and all(len(g.session.told) == 1 for g in waiting)
    assert "max_connections" in waiting[0].session.told[0]
    holds["b0"].set()  # a connection of B is given up: A holds 2 and B 1, only A waits
    gevent.sleep(0.1)
    assert len(order) == 5 and order[-1] == "a2"
    assert greenlets[2].session.told == [waiting[0].session.told[0], None]  # then "connecting" again
    # a new waiter of a tenant holding fewer goes before the ones waiting longer
    holds["c0"] = gevent.event.Event()
    greenlets.append(_connector(line, "C", order, "c0", holds["c0"]))
    gevent.sleep(0.05)
    holds["a0"].set()
    gevent.sleep(0.1)
    assert order[-1] == "c0"
    for h in holds.values():
        h.set()
    gevent.joinall(greenlets, timeout=5)
    gevent.sleep(0.01)
    assert len(order) == 13 and line.in_use == 0


def test_a_waiter_killed_in_the_line_leaves_no_trace():
    line = ConnectLine("irc.test")
    line.configure(0, 1)
    order: list = []
    hold = gevent.event.Event()
    first = _connector(line, "A", order, "a0", hold)
    gevent.sleep(0.01)
    waiter = _connector(line, "A", order, "a1", hold)
    third = _connector(line, "B", order, "b0", hold)
    gevent.sleep(0.01)
    waiter.kill()
    third.kill()
    hold.set()
    gevent.joinall([first], timeout=2)
    gevent.sleep(0.01)
    assert order == ["a0"] and line.in_use == 0 and line.waiting == 0 and line.active is None
    started = time.monotonic()
    late = _connector(line, "A", order, "a2")
    gevent.joinall([late], timeout=2)
    assert order == ["a0", "a2"] and time.monotonic() - started < 0.5


def test_max_queued_finds_the_oldest_line_behind_a_barrier_and_keeps_the_barrier():
    shares = TenantShares()
    shares.apply({"acme": Tenant("acme", max_queued=2)}, {"acme": 1}, {"acme": 1})
    q, drops = make(shares)
    s1, s2 = Seat("one", "acme"), Seat("two", "acme")
    q.enable(s1)
    q.enable(s2)
    q.put(s1, OutLine(None))  # a barrier (writes nothing, not counted) before s1's oldest line
    q.put(s1, OutLine("1a"))
    q.put(s2, OutLine("2a"))
    q.put(s2, OutLine("2b"))
    assert drops == [("one", "1a", TENANT_QUEUED)]
    assert [line.data for _, line in q.take(10)[0]] == [None, "2a", "2b"]
