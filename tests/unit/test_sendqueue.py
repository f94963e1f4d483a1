"""The per-connection send queue: fair round-robin, gating by join, bounds, staleness, token bucket."""

import time

from frontend.chat.sendqueue import OutLine, SendQueue
from frontend.pacing import Backoff, TokenBucket
from frontend.protocol import Command


def make(bucket=None, max_per_room=1000):
    drops = []
    q = SendQueue(bucket, max_per_room, lambda room, line, code: drops.append((room, line.data, code)))
    return q, drops


def test_round_robin_between_rooms():
    q, _ = make()
    for i in range(5):
        q.put("chatty", OutLine(f"c{i}"))
    q.put("quiet", OutLine("q0"))
    q.enable("chatty")
    q.enable("quiet")
    taken, wait = q.take(3)
    assert [line.data for _, line in taken] == ["c0", "q0", "c1"] and wait == 0


def test_lines_wait_until_the_room_is_enabled():
    q, _ = make()
    q.put("r", OutLine("x"))
    assert q.take(10) == ([], 0.0)
    q.enable("r")
    assert [l.data for _, l in q.take(10)[0]] == ["x"]
    q.put("r", OutLine("y"))
    q.disable("r")
    assert q.take(10)[0] == [] and q.depth("r") == 1


def test_bound_drops_the_oldest():
    q, drops = make(max_per_room=2)
    for i in range(4):
        q.put("r", OutLine(i))
    assert [d[1] for d in drops] == [0, 1] and drops[0][2] == "flood_dropped"
    q.enable("r")
    assert [l.data for _, l in q.take(10)[0]] == [2, 3]


def test_stale_lines_are_dropped_when_their_turn_comes():
    q, drops = make()
    q.put("r", OutLine("old", deadline=time.time() - 1))
    q.put("r", OutLine("new"))
    q.enable("r")
    assert [l.data for _, l in q.take(10)[0]] == ["new"]
    assert drops == [("r", "old", "stale")]


def test_token_bucket_limits_and_reports_the_wait():
    q, _ = make(bucket=TokenBucket(rate=0.5, burst=2))
    for i in range(4):
        q.put("r", OutLine(i))
    q.enable("r")
    taken, wait = q.take(10)
    assert len(taken) == 2 and 1.5 < wait <= 2.0


def test_put_front_restores_order_after_a_failed_write():
    q, _ = make()
    q.enable("r")
    for i in range(3):
        q.put("r", OutLine(i))
    taken, _ = q.take(2)
    q.put_front(taken)
    assert [l.data for _, l in q.take(10)[0]] == [0, 1, 2]


def test_remove_returns_unsent_lines():
    q, _ = make()
    cmd = Command(type="say", room="r")
    q.put("r", OutLine("a", cmd))
    assert [l.command for l in q.remove("r")] == [cmd] and len(q) == 0


def test_backoff_is_capped_jittered_and_resets():
    b = Backoff(1.0, 8.0)
    delays = [b.next() for _ in range(10)]
    assert all(0 <= d <= 8.0 for d in delays) and b.failures == 10
    assert max(Backoff(1.0, 8.0).compute(n) for n in range(20)) <= 8.0
    b.reset()
    assert b.failures == 0 and 0.5 <= b.next() <= 1.0


def test_drained_rooms_hold_no_queue_and_wake_calls_back():
    woken = []
    q = SendQueue(None, 10, lambda *a: None, on_wake=lambda: woken.append(1))
    q.enable("a")
    q.enable("b")
    assert not q.has_lines() and not woken
    q.put("a", OutLine("x"))
    q.put("b", OutLine("y"))
    assert q.has_lines() and len(woken) == 2 and q.depth("a") == 1
    assert [line.data for _, line in q.take(10)[0]] == ["x", "y"]
    assert not q.has_lines() and q.depth("a") == 0 and len(q) == 0
    q.put("a", OutLine("z"))  # a room that drained takes new lines as before
    assert [line.data for _, line in q.take(10)[0]] == ["z"]


def test_a_wait_for_the_rooms_lines_ends_when_the_last_is_taken_not_before():
    import gevent

    q, _ = make()
    q.enable("r")
    assert q.wait_empty("r", 0.0)  # nothing queued: at once
    for i in range(3):
        q.put("r", OutLine(f"l{i}"))
    q.put("other", OutLine("o"))
    waiter = gevent.spawn(q.wait_empty, "r", 5.0)
    gevent.sleep(0.01)
    assert [line.data for _, line in q.take(2)[0]] == ["l0", "l1"]
    gevent.sleep(0.01)
    assert not waiter.ready()  # one line of r is left
    assert [line.data for _, line in q.take(1)[0]] == ["l2"]
    gevent.sleep(0)  # one turn of the hub: woken by the take itself, not by a poll some time later
    gevent.sleep(0)
    assert waiter.ready() and waiter.value is True
    assert q.depth("other") == 1 and not q.wait_empty("other", 0.02)  # "other" was never enabled


def test_a_wait_ends_when_the_rooms_lines_are_dropped_or_it_is_removed():
    import gevent

    q, drops = make()
    q.put("r", OutLine("old", deadline=time.time() - 1))  # stale when its turn comes
    q.enable("r")
    waiter = gevent.spawn(q.wait_empty, "r", 5.0)
    gevent.sleep(0.01)
    assert q.take(10)[0] == [] and drops == [("r", "old", "stale")]
    assert waiter.get(timeout=1) is True
    q.put("gone", OutLine("x"))
    waiter = gevent.spawn(q.wait_empty, "gone", 5.0)
    gevent.sleep(0.01)
    assert [line.data for line in q.remove("gone")] == ["x"]
    assert waiter.get(timeout=1) is True
