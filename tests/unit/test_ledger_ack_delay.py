"""``ack_batch_delay``: the in-flight ledger wakes its writer for acknowledgements after the delay (one
hub timer), so the acknowledgements of that time go in one HDEL; at once with 0, or when the intake
waits for room in a full ledger. Anything the writer writes meanwhile takes them along, and then no
wake-up is left for them.
"""

from __future__ import annotations

import gevent
import gevent.event
import pytest

from frontend.config import ConfigError, Settings, load_settings
from frontend.inflight import InflightLedger
from frontend.keys import Keys

DELAY = 0.05


def _ledger(client, delay: float, wakes: list[float]) -> InflightLedger:
    ledger = InflightLedger(client, Keys("gr:"), "fe-ack", max_items=100, max_bytes=1_000_000,
                            wake_writer=lambda: wakes.append(gevent.get_hub().loop.now()), ack_delay=delay)
    ledger.start()
    ledger.accept([seq for n in range(1, 11) for seq in (n, b'{"type":"say","room":"r","text":"x"}')])
    return ledger


def test_no_delay_wakes_the_writer_at_once(redis_client):
    wakes: list[float] = []
    ledger = _ledger(redis_client, 0.0, wakes)
    ledger.ack(1)
    assert len(wakes) == 1
    ledger.ack(2)
    assert len(wakes) == 1  # told once for the batch
    assert ledger.take_acks() == [1, 2]


def test_acks_of_the_delay_wake_the_writer_once_after_it(redis_client):
    wakes: list[float] = []
    ledger = _ledger(redis_client, DELAY, wakes)
    start = gevent.get_hub().loop.now()
    ledger.ack(1)
    gevent.sleep(DELAY / 5)
    ledger.ack(2)
    ledger.ack(3)
    assert wakes == []
    gevent.sleep(DELAY * 2)
    assert len(wakes) == 1 and wakes[0] - start >= DELAY * 0.9
    assert ledger.take_acks() == [1, 2, 3]


def test_acks_taken_by_an_earlier_write_leave_no_wake_up_behind(redis_client):
    wakes: list[float] = []
    ledger = _ledger(redis_client, DELAY, wakes)
    ledger.ack(1)
    assert ledger.take_acks() == [1]  # an event batch took it along
    gevent.sleep(DELAY * 2)
    assert wakes == []
    ledger.ack(2)  # the next one arms the timer again
    gevent.sleep(DELAY * 2)
    assert len(wakes) == 1


def test_acks_that_come_during_a_write_wait_for_their_own_delay(redis_client):
    """The writer loops while it has work: an acknowledgement that came during its last round trip
    is not work yet (``acks_due``), or every line would get its own HDEL again at a paced load."""
    wakes: list[float] = []
    ledger = _ledger(redis_client, DELAY, wakes)
    ledger.ack(1)
    assert not ledger.acks_due
    gevent.sleep(DELAY * 1.5)
    assert ledger.acks_due and len(wakes) == 1
    assert ledger.take_acks() == [1] and not ledger.acks_due
    ledger.ack(2)  # during the HDEL's round trip
    assert ledger.pending_acks == 1 and not ledger.acks_due
    gevent.sleep(DELAY / 5)  # a libev timer started again after it fired would fire at once
    assert not ledger.acks_due and len(wakes) == 1
    gevent.sleep(DELAY * 1.5)
    assert ledger.acks_due and len(wakes) == 2
    acks = ledger.take_acks()
    ledger.give_back_acks(acks)  # that batch failed: they are due at once
    assert ledger.acks_due


def test_a_full_ledger_wakes_the_writer_at_once(redis_client):
    wakes: list[float] = []
    ledger = _ledger(redis_client, DELAY, wakes)
    ledger._space.clear()  # the intake waits for room (``wait_for_room``)
    ledger.ack(1)
    assert len(wakes) == 1 and ledger.acks_due
    ledger.take_acks()
    ledger._space.set()
    ledger.ack(2)
    assert not ledger.acks_due
    stopping = gevent.event.Event()
    waiter = gevent.spawn(ledger.wait_for_ack, stopping)  # the intake found the ledger full
    gevent.sleep(0)
    assert ledger.acks_due and len(wakes) == 2
    stopping.set()
    waiter.join(1)


def test_the_delay_follows_a_reload_and_is_validated(redis_client):
    wakes: list[float] = []
    ledger = _ledger(redis_client, 10.0, wakes)
    ledger.ack(1)
    assert wakes == []
    ledger.apply_settings(Settings(ack_batch_delay=0.0))  # what waited goes now
    assert len(wakes) == 1 and ledger.ack_delay == 0.0
    assert load_settings(env={}).ack_batch_delay == 0.005
    assert load_settings("configs/greenroom.toml", env={}).ack_batch_delay == 0.005
    assert load_settings(env={"GREENROOM_ACK_BATCH_DELAY": "0"}).ack_batch_delay == 0.0
    for bad in ("-0.1", "1.5"):
        with pytest.raises(ConfigError, match="ack_batch_delay must be between 0 and 1"):
            load_settings(env={"GREENROOM_ACK_BATCH_DELAY": bad})
