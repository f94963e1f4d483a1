"""``ack_batch_delay``: the in-flight ledger wakes its writer for acknowledgements after the delay (one
hub timer), so the acknowledgements of that time go in one HDEL; at once with 0, or when the intake
waits for room in a full ledger. Anything the writer writes meanwhile takes them along, and then no
wake-up is left for them.
"""

from __future__ import annotations

import gevent
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


def test_a_full_ledger_wakes_the_writer_at_once(redis_client):
    wakes: list[float] = []
    ledger = _ledger(redis_client, DELAY, wakes)
    ledger._space.clear()  # the intake waits for room (``wait_for_room``)
    ledger.ack(1)
    assert len(wakes) == 1


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
