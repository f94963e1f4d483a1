"""100 XMPP rooms next to 100 IRC rooms in one process: the asyncio side never stalls the gevent side."""

from __future__ import annotations

import time

import pytest

from tests.support.frontend import irc_spec, push
from tests.xmpp.conftest import uniq, xmpp_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 100


def test_irc_rooms_keep_answering_while_xmpp_rooms_connect(fe, redis_client, events, prosody, ngircd,
                                                           xmpp_account, xmpp_user):
    irc_rooms = [uniq("i") for _ in range(N)]
    push(redis_client, *[{"type": "join", "room": r, "spec": irc_spec(ngircd, f"#{r}", nick="scalebot")}
                         for r in irc_rooms])
    events.wait_many(N, timeout=60, type="joined", protocol="irc")

    # half the XMPP rooms share five streams, half have a stream each (share: false)
    shared = [xmpp_account("shared") for _ in range(5)]
    own = xmpp_account("own")
    xmpp_rooms, mucs = [uniq("x") for _ in range(N)], [f"{uniq('scale')}@{prosody.muc_domain}" for _ in range(N)]
    specs = [xmpp_spec(prosody, *shared[i % 5], mucs[i], nick=f"n{i}") if i % 2 else
             xmpp_spec(prosody, *own, mucs[i], nick=f"n{i}", share=False) for i in range(N)]
    started = time.monotonic()
    push(redis_client, *[{"type": "join", "room": r, "spec": s} for r, s in zip(xmpp_rooms, specs)])
    push(redis_client, *[{"type": "ping", "room": r, "cmd_id": f"p-{r}"} for r in irc_rooms])

    pongs: dict[str, float] = {}
    joined: dict[str, float] = {}
    deadline = started + 90
    while (len(pongs) < N or len(joined) < N) and time.monotonic() < deadline:
        event = events.wait(timeout=max(0.1, deadline - time.monotonic()))
        now = time.monotonic() - started
        if event["type"] == "pong":
            pongs[event["room"]] = now
        elif event["type"] == "joined" and event["protocol"] == "xmpp":
            joined[event["room"]] = now
        elif event["type"] == "error":
            raise AssertionError(f"unexpected error event: {event}")
    assert len(pongs) == N, f"{N - len(pongs)} IRC rooms never answered"
    assert len(joined) == N, f"{N - len(joined)} XMPP rooms never joined"
    slowest_pong = max(pongs.values())
    print(f"\nIRC pongs: slowest {slowest_pong:.2f}s; XMPP joins: first {min(joined.values()):.2f}s, "
          f"last {max(joined.values()):.2f}s")
    assert slowest_pong < 5.0, f"IRC rooms stalled: slowest pong after {slowest_pong:.2f}s"
    assert len([s for s in fe.sessions.sessions() if s.protocol == "xmpp"]) == 5 + N // 2
    # rooms that attached at the same moment still found one session per shared JID
    in_use = {id(room.session) for room in fe.rooms.values() if room.spec.protocol == "xmpp"}
    assert len(in_use) == 5 + N // 2

    # traffic still flows both ways in the last XMPP room
    alice = xmpp_user("alice")
    alice.join(mucs[-1], "alice")
    alice.say(mucs[-1], "hello crowd")
    assert events.wait(timeout=15, type="message", room=xmpp_rooms[-1])["text"] == "hello crowd"
    push(redis_client, {"type": "say", "room": xmpp_rooms[-1], "text": "hello alice"})
    assert alice.expect(kind="groupchat", nick=f"n{N - 1}")["body"] == "hello alice"
