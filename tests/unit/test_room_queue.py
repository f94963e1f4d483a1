"""A room's command queue (``frontend/room_queue.py``): FIFO, a waiting get woken by a put, nothing
held while empty. No network."""

import gevent
import pytest

from frontend.room_queue import CommandQueue, Empty


def test_fifo_and_get_nowait():
    q = CommandQueue()
    with pytest.raises(Empty):
        q.get_nowait()
    for i in range(5):
        q.put(i)
    assert q.qsize() == 5
    assert [q.get() for _ in range(3)] == [0, 1, 2]
    assert q.get_nowait() == 3 and q.get() == 4
    assert q.qsize() == 0 and q._items is None  # an emptied queue drops its deque


def test_a_waiting_get_is_woken_by_a_put_never_by_the_put_itself():
    q = CommandQueue()
    got = []

    def consumer():
        while True:
            got.append(q.get())

    g = gevent.spawn(consumer)
    gevent.sleep(0)  # the consumer now waits
    assert got == []
    q.put("a")
    q.put("b")  # the same turn: no second wake-up is scheduled
    assert got == []  # a put never switches
    gevent.sleep(0.01)
    assert got == ["a", "b"]
    q.put("c")
    gevent.sleep(0.01)
    assert got == ["a", "b", "c"]
    g.kill()
    assert q._waiter is None


def test_a_killed_waiter_leaves_nothing_behind():
    q = CommandQueue()
    g = gevent.spawn(q.get)
    gevent.sleep(0)
    g.kill()
    assert q._waiter is None
    q.put(1)  # no waiter: nothing scheduled, the item waits
    assert q.get_nowait() == 1
