"""The router hands a backlog to the rooms in large batches while each script stays short.

``Router.step`` runs the BLMOVE and ``route.lua`` (at most ``control_drain`` commands from ``control``);
while a script took its full ``control_drain``, it runs the script alone again, up to
``control_batch`` commands, and only then delivers, once, in order. Without a backlog a step is one
round trip, as before. On a real redis-server, with the real ledger and link.
"""

from __future__ import annotations

import time

import pytest

from frontend.config import ConfigError, Settings, load_settings
from frontend.counters import Counters
from frontend.inflight import InflightLedger
from frontend.keys import Keys
from frontend.redis_conn import DirectLink
from frontend.router import Router

KEYS = Keys("gr:")
ME = "fe-1"


@pytest.fixture
def router(redis_client, redis_url):
    made = []

    def make(**overrides) -> tuple[Router, list[list]]:
        settings = Settings(redis_url=redis_url, key_prefix=KEYS.prefix, control_block_timeout=0.2, **overrides)
        redis_client.zadd(KEYS.leases, {ME: int(time.time() * 1000) + 600_000})
        redis_client.hset(KEYS.holder, mapping={f"r{i}": ME for i in range(5)})
        ledger = InflightLedger(redis_client, KEYS, ME, max_items=10_000, max_bytes=10_000_000)
        ledger.start()
        delivered: list[list] = []
        link = DirectLink(settings, name="router")
        made.append(link)
        r = Router(link=link, keys=KEYS, ledger=ledger, frontend_id=ME, settings=settings, counters=Counters(),
                   deliver=delivered.append, adopt=lambda: None)
        return r, delivered

    yield make
    for link in made:
        link.close()


def _script_calls(r) -> int:
    """How many EVALSHA Redis has run (``INFO commandstats``)."""
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def _items(n: int) -> list[bytes]:
    return [b'{"type":"say","room":"r%d","text":"line %d"}' % (i % 5, i) for i in range(n)]


def test_a_backlog_goes_to_the_rooms_in_one_batch_of_several_short_scripts(router, redis_client):
    r, delivered = router(control_drain=10, control_batch=35)
    items = _items(100)
    redis_client.rpush(KEYS.control, *items)
    r.step()
    # BLMOVE + 10, then 10 at a time while under 35: 11, 21, 31, 41; one delivery, in order
    assert len(delivered) == 1
    assert delivered[0][1::2] == items[:41]
    assert delivered[0][0::2] == sorted(delivered[0][0::2])
    assert redis_client.llen(KEYS.control) == 59
    r.step()
    assert delivered[1][1::2] == items[41:82]
    r.step()  # 18 left: one full script (11), then the script alone finds 7 (not full): done
    assert delivered[2][1::2] == items[82:]
    assert not redis_client.exists(KEYS.control)


def test_without_a_backlog_a_step_is_one_round_trip(router, redis_client):
    r, delivered = router(control_drain=10, control_batch=35)
    items = _items(6)
    redis_client.rpush(KEYS.control, *items)
    calls_before = _script_calls(redis_client)
    r.step()
    assert [d[1::2] for d in delivered] == [items]  # one delivery, every item in order
    assert _script_calls(redis_client) - calls_before == 1


def test_control_batch_1_delivers_every_step_alone(router, redis_client):
    r, delivered = router(control_drain=10, control_batch=1)
    items = _items(30)
    redis_client.rpush(KEYS.control, *items)
    r.step()
    assert [d[1::2] for d in delivered] == [items[:11]]


def test_control_batch_is_checked():
    with pytest.raises(ConfigError, match="control_batch"):
        load_settings(env={"GREENROOM_CONTROL_BATCH": "0"})
    assert load_settings(env={}).control_batch == 10_000
