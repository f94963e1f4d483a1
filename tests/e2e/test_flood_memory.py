"""``FloodMemory`` against a real redis-server: what one frontend learns every other one (and the next
start) reads; live connections hear it at once; merges keep the lower limits; probes go up only with
connections to the server and never over another frontend's newer entry; a Redis that does not
answer never holds a connect for long."""

from __future__ import annotations

import time

import gevent
import redis

from frontend.config import load_settings
from frontend.counters import Counters
from frontend.flood_memory import LOAD_TIMEOUT, FloodMemory, Learned
from frontend.keys import Keys
from frontend.redis_conn import shared_client


class Listener:
    def __init__(self) -> None:
        self.heard: list[Learned] = []

    def flood_changed(self, learned: Learned) -> None:
        self.heard.append(learned)


def _memory(url: str, prefix: str = "", **options) -> FloodMemory:
    client = shared_client(load_settings(env={}, overrides={"redis_url": url}))
    return FloodMemory(client, Keys(prefix), counters=Counters(), **options)


def _stored(client: redis.Redis, host: str, prefix: str = "") -> Learned | None:
    raw = client.hget(prefix + "servers:flood", host)
    return Learned.from_json(raw) if raw is not None else None


def test_what_one_frontend_learns_the_others_and_the_next_start_use(redis_url, redis_client):
    one, two = _memory(redis_url, "p:"), _memory(redis_url, "p:")
    listener = Listener()
    assert one.get("IRC.Example") is None
    one.watch("irc.example", listener)
    learned = Learned(rate=0.9, burst=8, kills=1, at=time.time(), why="Excess Flood")
    one.learned("IRC.example", learned)
    assert listener.heard == [learned]  # this process: at once
    assert dict(one._counters) == {"flood_kills:irc.example": 1, "flood_rate:irc.example": 0.9}
    gevent.sleep(0.2)
    assert _stored(redis_client, "irc.example", "p:") == learned  # lower-cased host, under the prefix
    assert two.get("irc.example") == learned  # another frontend, or a restart: read at first use
    assert _memory(redis_url).get("irc.example") is None  # another prefix: another deployment


def test_a_tightening_never_raises_what_another_frontend_wrote(redis_url, redis_client):
    slow = Learned(rate=0.3, burst=2, kills=3, at=time.time())
    redis_client.hset("servers:flood", "irc.example", slow.to_json())
    mine = _memory(redis_url)
    mine.learned("irc.example", Learned(rate=0.7, burst=5, kills=1, at=time.time() + 1))  # stale cache
    gevent.sleep(0.2)
    stored = _stored(redis_client, "irc.example")
    assert (stored.rate, stored.burst, stored.kills) == (0.3, 2, 3)


def test_invalid_entries_are_ignored(redis_url, redis_client):
    redis_client.hset("servers:flood", mapping={"bad.example": b'{"rate": -1, "burst": 3}', "junk.example": b"\xff",
                                                "ok.example": Learned(rate=1.0, burst=3).to_json()})
    memory = _memory(redis_url)
    assert memory.get("bad.example") is None and memory.get("junk.example") is None
    assert memory.get("ok.example").rate == 1.0


def test_probes_go_up_with_a_connection_to_the_server_and_not_over_a_newer_entry(redis_url, redis_client):
    memory = _memory(redis_url, probe_after=lambda: 0.3)
    listener = Listener()
    memory.learned("a.example", Learned(rate=1.0, burst=4, kills=1, at=time.time()))
    gevent.sleep(0.5)
    assert memory.get("a.example").rate == 1.0  # nobody connected to it here: no evidence, no probe
    memory.watch("a.example", listener)
    gevent.sleep(0.45)
    assert [round(x.rate, 3) for x in listener.heard] == [1.1]
    assert round(_stored(redis_client, "a.example").rate, 3) == 1.1
    newer = Learned(rate=0.5, burst=2, kills=2, at=time.time() + 10)  # another frontend was killed
    redis_client.hset("servers:flood", "a.example", newer.to_json())
    gevent.sleep(0.7)
    # the next probe did not write 1.21 over it: it took the newer entry (and may have probed that)
    stored = _stored(redis_client, "a.example")
    assert stored.kills == 2 and round(stored.rate, 3) in (0.5, 0.55), stored
    assert memory.get("a.example", load=False).kills == 2


def test_a_redis_that_does_not_answer_never_holds_a_connect_long(redis_server):
    redis_server.pause()  # SIGSTOP: connections are accepted by the kernel, nothing answers
    try:
        memory = _memory(redis_server.url)
        started = time.monotonic()
        assert memory.get("irc.example") is None
        assert time.monotonic() - started < LOAD_TIMEOUT + 0.5
        started = time.monotonic()
        assert memory.get("irc.example") is None  # not tried again at once
        assert time.monotonic() - started < 0.1
    finally:
        redis_server.resume()


def test_many_connections_asking_at_once_cost_one_load(redis_url, redis_client):
    redis_client.hset("servers:flood", "irc.example", Learned(rate=0.8, burst=3).to_json())
    memory = _memory(redis_url)
    redis_client.config_resetstat()
    jobs = [gevent.spawn(memory.get, "irc.example") for _ in range(200)]
    gevent.joinall(jobs, timeout=5)
    assert [job.value.rate for job in jobs] == [0.8] * 200
    assert redis_client.info("commandstats")["cmdstat_hgetall"]["calls"] == 1  # Redis's own count
