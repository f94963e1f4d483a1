"""Issue 16, items 2 and 4 (CASEMAPPING): what a server says of its limits and names is followed.

- ngircd with ``MaxJoins = 3`` (ISUPPORT ``CHANLIMIT=#&+:3``, ``405`` past it): 5 rooms of one nick
  pushed at once (all attached before the connection registered, so the first connection JOINs all
  five and the server refuses two) and 2 more afterwards: every room is joined, three per connection,
  the second connection as ``<nick>2``, the third as ``<nick>3``; none stays in ``join_failed``.
- a channel that no connection can join (the scripted stub of the suite answers every JOIN with 405:
  no packaged server refuses a connection's first channel as "too many"): one ``error`` event
  ``join_failed`` that says why, the room ``failed``, and no second JOIN.
- ngircd compares names as ``CASEMAPPING=ascii``: ``#x[`` and ``#x{`` are two channels there (one
  under RFC 1459, what greenroom assumed before): two rooms on them get their own channel's lines.
"""

from __future__ import annotations

import time

import pytest

from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.scripted_ircd import ScriptedIrcd, irc_stub_spec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_rooms_past_the_servers_channel_limit_go_to_another_connection(make_ngircd, redis_url, redis_client):
    server = make_ngircd(max_joins=3)
    nick = uniq("cl")
    chans = ["#" + uniq("cl") for _ in range(7)]
    # the observers have the same limit: three channels each
    observers = [Observer(server.host, server.port, uniq("clw"), chans[i:i + 3]) for i in range(0, 7, 3)]
    try:
        events = EventLog(redis_url)
        with running_frontend(redis_url, frontend_id="chanlimit"):
            push(redis_client, *[{"type": "join", "room": f"c{i}", "spec": irc_spec(server, c, nick=nick)}
                                 for i, c in enumerate(chans[:5])])
            joined = {f"c{i}": events.wait(20, type="joined", room=f"c{i}") for i in range(5)}
            push(redis_client, *[{"type": "join", "room": f"c{i}", "spec": irc_spec(server, c, nick=nick)}
                                 for i, c in enumerate(chans[5:], start=5)])
            joined.update({f"c{i}": events.wait(20, type="joined", room=f"c{i}") for i in (5, 6)})
            by_nick: dict[str, list[str]] = {}
            for room, event in sorted(joined.items()):
                by_nick.setdefault(event["nick"], []).append(room)
            assert by_nick == {nick: ["c0", "c1", "c2"], nick + "2": ["c3", "c4", "c5"], nick + "3": ["c6"]}
            push(redis_client, *[{"type": "say", "room": f"c{i}", "text": f"hello {i}"} for i in range(7)])
            for i, chan in enumerate(chans):
                observers[i // 3].wait(lambda ln, i=i, chan=chan: ln.cmd == "PRIVMSG" and ln.text == f"hello {i}"
                                       and ln.target.lower() == chan.lower(), 10, what=f"room c{i}'s line")
            assert [ln.nick for ln in observers[1].privmsgs(chans[4])] == [nick + "2"]
            states = {k.decode(): v for k, v in redis_client.hgetall("rooms:state").items()}
            assert all(b'"joined"' in v for v in states.values()), states
            # the two refused JOINs were answered with another connection, never a join_failed
            assert not [e for e in events.seen if e["type"] == "error"], events.find(type="error")
    finally:
        for observer in observers:
            observer.close()


def test_a_channel_no_connection_can_join_fails_once_saying_why(redis_url, redis_client):
    ircd = ScriptedIrcd(answer_join=lambda conn, channel: (
        f":scripted 405 {conn.nick} {channel} :You have joined too many channels\r\n").encode()).start()
    try:
        events = EventLog(redis_url)
        with running_frontend(redis_url, frontend_id="chanlimit-0"):
            push(redis_client, {"type": "join", "room": "z", "spec": irc_stub_spec(ircd, "#full", uniq("z"))})
            error = events.wait(15, type="error", room="z")
            assert error["code"] == "join_failed"
            assert "#full" in error["detail"] and "too many channels" in error["detail"]
            assert "no connection can join it" in error["detail"]
            wait_until(lambda: b'"failed"' in (redis_client.hget("rooms:state", "z") or b""), 5,
                       what="the room failed")
            time.sleep(3.0)  # more than the shortest rejoin backoff (reconnect_min 0.2 x 5)
            joins = [line for conn in ircd.conns for line in conn.lines if line.startswith("JOIN")]
            assert joins == ["JOIN #full"], joins
            assert len(ircd.conns) == 1
            assert len(events.find(type="error", room="z")) == 1
    finally:
        ircd.stop()


def test_channel_names_are_compared_as_the_servers_casemapping_says(ngircd, redis_url, redis_client):
    stem = uniq("cm")
    square, curly = f"#{stem}[x", f"#{stem}{{x"  # one channel under RFC 1459, two under ascii
    nick = uniq("cmb")
    observer = Observer(ngircd.host, ngircd.port, uniq("cmw"), [square, curly])
    try:
        events = EventLog(redis_url)
        with running_frontend(redis_url, frontend_id="casemap"):
            push(redis_client, {"type": "join", "room": "sq", "spec": irc_spec(ngircd, square, nick=nick)},
                 {"type": "join", "room": "cu", "spec": irc_spec(ngircd, curly, nick=nick)})
            events.wait(15, type="joined", room="sq")
            events.wait(15, type="joined", room="cu")
            observer.wait(lambda ln: ln.cmd == "JOIN" and ln.nick == nick and ln.params[-1:] == [curly], 10,
                          what="the bot in the curly channel")
            observer.privmsg(curly, "to curly")
            observer.privmsg(square, "to square")
            assert events.wait(10, type="message", room="cu")["text"] == "to curly"
            assert events.wait(10, type="message", room="sq")["text"] == "to square"
            time.sleep(0.5)
            events.pump(0.1)
            assert [e["text"] for e in events.find(type="message", room="cu")] == ["to curly"]
            assert [e["text"] for e in events.find(type="message", room="sq")] == ["to square"]
    finally:
        observer.close()
