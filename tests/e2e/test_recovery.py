"""In-flight recovery through a real Redis: stranded items, dead frontends' ledgers (and the in-flight
lists of versions before the ledger), live ones left alone."""

import json

import gevent

import pytest

from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend

pytestmark = pytest.mark.e2e


def ping(room: str, cmd_id: str) -> bytes:
    return json.dumps({"type": "ping", "room": room, "cmd_id": cmd_id}).encode()


@pytest.fixture
def fe(redis_url, redis_client, ngircd):
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id="rec-fe", recovery_interval=0.3,
                          heartbeat_interval=0.2) as frontend:
        push(redis_client, {"type": "join", "room": "rec", "spec": irc_spec(ngircd, "#rec", nick="recbot")})
        events.wait(type="joined", room="rec")
        yield frontend, events


def test_a_dead_frontends_inflight_list_is_taken_over(fe, redis_client):
    frontend, events = fe
    redis_client.rpush("control:inflight:dead-fe", ping("rec", "orphan1"), ping("rec", "orphan2"))
    assert {events.wait(type="pong", room="rec")["cmd_id"] for _ in range(2)} == {"orphan1", "orphan2"}
    assert redis_client.llen("control:inflight:dead-fe") == 0
    assert frontend.recovery.requeued >= 2


def test_a_live_frontends_list_is_left_alone(fe, redis_client):
    frontend, events = fe
    redis_client.set("frontends:alive-fe", "x", px=60_000)  # its heartbeat
    redis_client.rpush("control:inflight:alive-fe", ping("rec", "not-mine"))
    redis_client.rpush("control:inflight:dead-fe2", ping("rec", "marker"))
    events.wait(type="pong", room="rec", cmd_id="marker")  # a scan ran
    assert redis_client.lrange("control:inflight:alive-fe", 0, -1) == [ping("rec", "not-mine")]


def test_a_dead_frontends_ledger_is_taken_over_in_the_order_it_was_taken(fe, redis_client):
    frontend, events = fe
    # a dead frontend's ledger (seq -> item), written out of order, and what its last pop landed
    redis_client.hset("control:ledger:dead-fe3", mapping={"12": ping("rec", "third"), "3": ping("rec", "first"),
                                                         "7": ping("rec", "second")})
    redis_client.rpush("control:landing:dead-fe3", ping("rec", "fourth"))
    got = [events.wait(type="pong", room="rec")["cmd_id"] for _ in range(4)]
    assert got == ["first", "second", "third", "fourth"]
    assert not redis_client.exists("control:ledger:dead-fe3", "control:landing:dead-fe3")


def test_an_item_stranded_in_our_own_ledger_is_requeued(fe, redis_client):
    frontend, events = fe
    # what an intake whose reply was lost leaves behind: an entry of our ledger that no room holds
    redis_client.hset("control:ledger:rec-fe", 10 ** 9, ping("rec", "stranded"))
    assert events.wait(type="pong", room="rec", cmd_id="stranded", timeout=10)
    assert redis_client.hlen("control:ledger:rec-fe") == 0


def test_the_heartbeat_describes_the_frontend(fe, redis_client):
    frontend, _ = fe
    gevent.sleep(0.5)  # two heartbeat intervals: the periodic write has seen the joined room
    beat = {k.decode(): v.decode() for k, v in redis_client.hgetall("frontends:rec-fe").items()}
    assert beat["id"] == "rec-fe" and beat["rooms"] == "1"
    assert json.loads(beat["rooms_by_state"]) == {"joined": 1}
    assert 0 < redis_client.pttl("frontends:rec-fe") <= 600
