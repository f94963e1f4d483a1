"""Issue 13, item 4: rooms that share one connection, through the real ngircd.

Two rooms on one channel of one connection (two tenants with the same nick and server; or ``#Chan``
and ``#chan``, one channel under RFC 1459 case mapping) are both tracked on the channel: both are
joined and get the channel's lines, each one's lines go out (and are acked only once written), and
parting one keeps the bot in the channel for the other. A private message on a connection that rooms
of several tenants share reaches no room (``dm_dropped``); on a one-tenant connection it reaches the
connection's first room.
"""

from __future__ import annotations

import pytest

from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.names import uniq
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def fe(redis_url):
    with running_frontend(redis_url, frontend_id="shared-fe") as frontend:
        yield frontend


def _inflight_empty(redis_client) -> bool:
    return redis_client.llen("control:inflight:shared-fe") == 0


def test_two_tenants_on_one_channel_both_work_and_one_parting_keeps_the_other(
        fe, redis_client, ngircd, irc_client):
    events = EventLog(redis_client)
    chan, nick = "#" + uniq("both"), uniq("sbot")
    user = irc_client(uniq("u"))
    user.join(chan)
    push(redis_client, {"type": "join", "room": "ta", "spec": irc_spec(ngircd, chan, nick=nick, tenant="acme")},
         {"type": "join", "room": "tb", "spec": irc_spec(ngircd, chan, nick=nick, tenant="globex")})
    assert events.wait(type="joined", room="ta")["nick"] == nick
    assert events.wait(type="joined", room="tb")["nick"] == nick
    assert len(fe.sessions) == 1
    user.expect(rf":{nick}!\S+ JOIN :?{chan}")
    user.privmsg(chan, "hello both")
    assert events.wait(type="message", room="ta")["text"] == "hello both"
    assert events.wait(type="message", room="tb")["text"] == "hello both"
    push(redis_client, {"type": "say", "room": "ta", "text": "from-a"},
         {"type": "say", "room": "tb", "text": "from-b"},
         {"type": "part", "room": "ta", "reason": "a leaves"})
    user.expect(rf"PRIVMSG {chan} :from-a$")
    user.expect(rf"PRIVMSG {chan} :from-b$")
    assert events.wait(type="parted", room="ta")["reason"] == "a leaves"
    push(redis_client, {"type": "say", "room": "tb", "text": "b still here", "cmd_id": "b2"},
         {"type": "ping", "room": "tb", "cmd_id": "tb-ping"})
    user.expect(rf"PRIVMSG {chan} :b still here$")
    events.wait(type="pong", room="tb", cmd_id="tb-ping")
    wait_until(lambda: _inflight_empty(redis_client), 5, what="every command acked")
    bot_left = [line for line in user.lines if line.startswith(f":{nick}!") and (" PART " in line or " QUIT " in line)]
    assert not bot_left, bot_left
    assert not [e for e in events.seen if e["type"] == "error"], events.seen
    user.privmsg(chan, "only b now")
    assert events.wait(type="message", room="tb")["text"] == "only b now"
    assert not [e for e in events.seen if e["room"] == "ta" and e.get("text") == "only b now"]


def test_case_variants_of_one_channel_are_one_channel(fe, redis_client, ngircd, irc_client):
    events = EventLog(redis_client)
    stem, nick = uniq("case"), uniq("cbot")
    upper, lower = "#" + stem.upper(), "#" + stem.lower()
    user = irc_client(uniq("u"))
    user.join(lower)
    push(redis_client, {"type": "join", "room": "up", "spec": irc_spec(ngircd, upper, nick=nick)},
         {"type": "join", "room": "low", "spec": irc_spec(ngircd, lower, nick=nick)})
    assert events.wait(type="joined", room="up")["channel"] == upper
    assert events.wait(type="joined", room="low")["channel"] == lower
    push(redis_client, {"type": "part", "room": "up"})
    events.wait(type="parted", room="up")
    push(redis_client, {"type": "say", "room": "low", "text": "lower lives"})
    user.expect(rf"PRIVMSG {lower} :lower lives$")
    wait_until(lambda: _inflight_empty(redis_client), 5, what="every command acked")
    assert not [line for line in user.lines if line.startswith(f":{nick}!") and " PART " in line]


def test_a_private_message_never_crosses_a_tenant_boundary(fe, redis_client, ngircd, irc_client):
    events = EventLog(redis_client)
    nick = uniq("dbot")
    push(redis_client,
         {"type": "join", "room": "da", "spec": irc_spec(ngircd, "#" + uniq("dma"), nick=nick, tenant="acme")},
         {"type": "join", "room": "db", "spec": irc_spec(ngircd, "#" + uniq("dmb"), nick=nick, tenant="globex")})
    events.wait(type="joined", room="da")
    events.wait(type="joined", room="db")
    alice = irc_client(uniq("alice"))
    alice.privmsg(nick, "secret for whoever reads")
    wait_until(lambda: fe.counters["dm_dropped"] == 1, 5, what="the DM dropped")
    push(redis_client, {"type": "part", "room": "db"})
    events.wait(type="parted", room="db")
    alice.privmsg(nick, "now one tenant")
    dm = events.wait(type="message", room="da")
    assert dm["text"] == "now one tenant" and dm["private"] is True and dm["tenant"] == "acme"
    assert not [e for e in events.seen if e.get("text") == "secret for whoever reads"]
