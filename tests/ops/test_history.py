"""The heartbeat's history sample (`fleet:history:<id>`, the dashboard's charts): one sample a beat with
the counters and the list lengths, capped to an hour of beats, expiring; one more command per beat;
what the dashboard reads of it (status.history) survives hostile samples. Real Redis, a real frontend."""

import json

import pytest

from frontend import status
from frontend.heartbeat import HISTORY_SECONDS, Heartbeat
from frontend.keys import Keys
from tests.support.frontend import push, running_frontend
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def _snapshot(received=0, applied=0, pushed=0, fid="fe-h"):
    return lambda: {"id": fid, "rooms": 0, "events_pushed": pushed,
                    "commands": {"commands_received": received, "commands_applied": applied}}


def _calls(client, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def test_each_beat_appends_one_capped_expiring_sample(redis_client):
    keys = Keys("pfx:")
    redis_client.rpush(keys.control, "a", "b")
    redis_client.rpush(keys.messages, "e")
    redis_client.hset(keys.ledger("fe-h"), mapping={"1": "x", "2": "y", "3": "z"})
    redis_client.rpush(keys.inbox("fe-h"), "i")
    beat = Heartbeat(redis_client, keys.heartbeat("fe-h"), 1800.0, _snapshot(7, 5, 11))  # 3 samples an hour
    evals, scripts = _calls(redis_client, "eval"), _calls(redis_client, "script|exists")
    beat.beat()
    assert _calls(redis_client, "eval") == evals + 1 and _calls(redis_client, "script|exists") == scripts
    (raw,) = redis_client.lrange(keys.history("fe-h"), 0, -1)
    sample = json.loads(raw)
    sec, usec = redis_client.time()
    assert abs(sample.pop("ts") - (sec * 1000 + usec // 1000)) < 5000
    assert sample == {"received": 7, "applied": 5, "pushed": 11, "control": 2, "messages": 1, "ledger": 3, "inbox": 1}
    assert HISTORY_SECONDS * 1000 - 5000 < redis_client.pttl(keys.history("fe-h")) <= HISTORY_SECONDS * 1000
    assert redis_client.hget(keys.heartbeat("fe-h"), "rooms") == b"0"  # the beat itself as before

    for n in range(4):
        beat._snapshot = _snapshot(8 + n)
        beat.beat()
    samples = [json.loads(x) for x in redis_client.lrange(keys.history("fe-h"), 0, -1)]
    assert [s["received"] for s in samples] == [11, 10, 9]  # newest first, one hour of beats kept

    # keys of another type count 0 and break nothing; a history that is not a list is replaced
    redis_client.delete(keys.control)
    redis_client.set(keys.control, "not a list")
    redis_client.delete(keys.history("fe-h"))
    redis_client.set(keys.history("fe-h"), "junk")
    beat.beat()
    assert json.loads(redis_client.lindex(keys.history("fe-h"), 0))["control"] == 0
    assert redis_client.hget(keys.heartbeat("fe-h"), "rooms") == b"0"

    # a heartbeat key that is not `frontends:<its id>` writes no history
    other = Heartbeat(redis_client, "somewhere:else", 5.0, _snapshot(fid="fe-x"))
    other.beat()
    assert not redis_client.exists(keys.history("fe-x"), Keys().history("fe-x"))


def test_the_dashboard_reads_live_frontends_history_and_skips_hostile_samples(redis_client):
    keys = Keys()
    sec, usec = redis_client.time()
    now = sec * 1000 + usec // 1000
    redis_client.zadd(keys.leases, {"fe-h": now + 60000, "fe-dead": now - 1000})
    good = [{"ts": now - 2000 + i * 500, "received": i, "applied": i, "pushed": 2 * i, "control": 1, "messages": 0,
             "ledger": 0, "inbox": 0} for i in range(4)]
    redis_client.lpush(keys.history("fe-h"), *[json.dumps(s) for s in good[:2]], b"\xff not json",
                       json.dumps({"ts": "soon"}), json.dumps({**good[0], "pad": "x" * 5000}),
                       json.dumps({"ts": now - 1250, "received": -5, "applied": "NaN", "pushed": 1e400}),
                       *[json.dumps(s) for s in good[2:]])
    redis_client.lpush(keys.history("fe-dead"), json.dumps(good[0]))

    data = status.history(redis_client, keys)
    assert data["fields"] == list(status.HISTORY_FIELDS) and abs(data["now"] - now) < 5000
    (fe,) = data["frontends"]  # only live frontends
    assert fe["id"] == "fe-h"
    assert [s[0] for s in fe["samples"]] == [good[0]["ts"], good[1]["ts"], now - 1250, good[2]["ts"], good[3]["ts"]]
    assert fe["samples"][2][1:4] == [0, 0, 0]  # negative, not a number, not finite: 0
    assert fe["samples"][4] == [good[3][f] for f in status.HISTORY_FIELDS]
    # since: only what is newer (the dashboard asks for what it has not got yet)
    newer = status.history(redis_client, keys, since_ms=good[2]["ts"])["frontends"][0]["samples"]
    assert [s[0] for s in newer] == [good[2]["ts"], good[3]["ts"]]
    # a long history is read whole, in pages, oldest first; `since` stops at what the page has already
    redis_client.zadd(keys.leases, {"fe-long": now + 60000})
    redis_client.lpush(keys.history("fe-long"), *[json.dumps({**good[0], "ts": now - 100000 + i}) for i in range(1000)])
    long = {fe["id"]: fe["samples"] for fe in status.history(redis_client, keys)["frontends"]}["fe-long"]
    assert [s[0] for s in long] == [now - 100000 + i for i in range(1000)]
    tail = {fe["id"]: fe["samples"] for fe in status.history(redis_client, keys, now - 100000 + 990)["frontends"]}
    assert [s[0] for s in tail["fe-long"]] == [now - 100000 + i for i in range(990, 1000)]


def test_a_running_frontend_samples_its_counters(redis_url, redis_client):
    with running_frontend(redis_url, frontend_id="fe-hist", heartbeat_interval=0.2):
        push(redis_client, *[{"type": "say", "room": "nowhere", "text": str(i)} for i in range(5)])
        wait_until(lambda: redis_client.lindex("fleet:history:fe-hist", 0)
                   and json.loads(redis_client.lindex("fleet:history:fe-hist", 0))["received"] >= 5,
                   what="a sample with the 5 commands received")
        samples = status.history(redis_client, Keys())["frontends"][0]["samples"]
        assert len(samples) >= 2 and samples[-1][1] >= 5 and samples[0][0] < samples[-1][0]
    assert redis_client.exists("fleet:history:fe-hist")  # kept for an hour after the last beat
