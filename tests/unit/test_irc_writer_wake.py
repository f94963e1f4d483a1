"""The IRC writer's linger wait must not lose a wake-up that races its timeout (no network here)."""

import time

import gevent
import gevent.event

from frontend.chat.irc import set_within


def _race(wait) -> bool:
    """set() from a timer that expires just before the waiter's timeout, both handled in one hub turn."""
    event = gevent.event.Event()
    result = []
    waiter = gevent.spawn(lambda: result.append(wait(event, 0.05)))
    gevent.sleep(0)  # the waiter now blocks with its 50 ms timeout
    timer = gevent.get_hub().loop.timer(0.02)
    timer.start(event.set)
    deadline = time.monotonic() + 0.15
    while time.monotonic() < deadline:  # hold the hub: both timers expire before it runs again
        pass
    waiter.join(1)
    timer.close()
    return result[0]


def test_plain_wait_reports_a_timeout_although_the_event_was_set():
    # the gevent behaviour the helper exists for; if this starts failing, gevent changed
    assert _race(lambda event, timeout: event.wait(timeout)) is False


def test_set_within_sees_the_set_that_raced_the_timeout():
    assert _race(set_within) is True


def test_set_within_times_out_when_nothing_is_set():
    assert set_within(gevent.event.Event(), 0.01) is False
