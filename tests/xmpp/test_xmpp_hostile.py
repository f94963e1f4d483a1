"""Issue 13 on the XMPP side: what a hostile XMPP server sends is bounded like what an IRC server sends.

A scripted server of the suite's own (``tests/support/scripted_xmpp.py``): prosody caps stanzas at
256 KiB and cannot send 30,000 occupants' presences on cue.

- a stanza that never ends: the stream is dropped after 1 MiB (``stanzas_too_big``) and reconnected
  with backoff; it is never held whole;
- a presence flood (7,000 occupants): at most ``MAX_OCCUPANTS`` occupants are tracked per MUC (``members_untracked``
  counts the rest) and slixmpp's roster keeps nothing (it used to keep a resource per occupant), the
  room still works afterwards, and an IRC room on the real ngircd keeps answering meanwhile (the
  burst used to hold every greenlet for seconds).
"""

from __future__ import annotations

import gevent
import pytest

from tests.support.events import Drain, EventLog, Pinger
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.names import uniq
from tests.support.report import report, rss_kb
from tests.support.scripted_xmpp import ScriptedXmppServer, stub_spec
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: occupants' presences in the flood: past the 5,000 tracked per MUC (enough to pass the bound)
PRESENCES = 7_000


def _roster_resources(client) -> int:
    total = 0
    for owner in list(client.roster):
        node = client.roster[owner]
        for jid in list(node):
            total += len(node[jid].resources)
    return total


def test_a_stanza_that_never_ends_drops_the_stream_and_is_not_held(redis_url, redis_client):
    def huge(conn, muc, nick, me):
        gevent.sleep(0.3)
        conn.send(f"<message from='{muc}/evil' to='{me}' type='groupchat'><body>")
        block = b"x" * (256 * 1024)
        for _ in range(120):  # 30 MiB, no end tag
            if conn.closed:
                return
            try:
                conn.send(block)
            except OSError:  # the client dropped the stream, as it should
                return

    server = ScriptedXmppServer(huge).start()
    try:
        events = EventLog(redis_url)
        with running_frontend(redis_url, frontend_id=uniq("xhuge-"), reconnect_min=0.3, reconnect_max=1.0) as fe:
            rss0 = rss_kb()
            push(redis_client, {"type": "join", "room": "xh", "spec": stub_spec(server)})
            events.wait(type="joined", room="xh", timeout=15)
            peak = rss0
            deadline = gevent.get_hub().loop.now() + 15
            while len(server.conns) < 2 and gevent.get_hub().loop.now() < deadline:
                peak = max(peak, rss_kb())
                gevent.sleep(0.05)
            too_big = fe.counters["stanzas_too_big"]
        assert peak - rss0 < 20 * 1024, f"{(peak - rss0) // 1024} MB held for one stanza"
        assert len(server.conns) >= 2, "the stream was not dropped"
        assert too_big >= 1
    finally:
        server.stop()


def test_a_presence_flood_is_tracked_within_bounds(redis_url, redis_client, ngircd):
    from frontend.chat.xmpp_muc import MAX_OCCUPANTS

    def flood(conn, muc, nick, me):
        gevent.sleep(0.5)
        stanzas = "".join(f"<presence from='{muc}/u{i}' to='{me}'><x xmlns='http://jabber.org/protocol/muc#user'>"
                          "<item affiliation='none' role='participant'/></x></presence>" for i in range(PRESENCES))
        conn.send(stanzas)  # ~1.3 MB at once: slixmpp gets it in reads of up to 256 KiB
        conn.send(f"<message from='{muc}/alice' to='{me}' type='groupchat'><body>after-presences</body></message>")

    server = ScriptedXmppServer(flood).start()
    collector = Drain(redis_url)
    try:
        with running_frontend(redis_url, frontend_id=uniq("xflood-")) as fe:
            push(redis_client, {"type": "join", "room": "good",
                                "spec": irc_spec(ngircd, "#" + uniq("xgood"), nick=uniq("xg"))})
            collector.wait(15, type="joined", room="good")
            pinger = Pinger(redis_client, collector, "good", every=0.05)
            push(redis_client, {"type": "join", "room": "xf", "spec": stub_spec(server)})
            collector.wait(15, type="joined", room="xf")
            collector.wait(60, type="message", room="xf", text="after-presences")
            latency = pinger.stop()
            session = [s for s in fe.sessions.sessions() if s.protocol == "xmpp"][0]
            roster = _roster_resources(session.client)
            assert roster == 0, f"slixmpp's roster keeps {roster} occupants"
            tracked = session.mucs.tracked
            untracked = fe.counters["members_untracked"]
            joins = collector.find(type="user_joined", room="xf")
            push(redis_client, {"type": "part", "room": "xf"})
            collector.wait(10, type="parted", room="xf")
            wait_until(lambda: session.mucs.tracked == 0, 5, what="occupants released")
        report("presence flood", pong=latency, tracked=tracked, untracked=untracked)
        assert tracked == MAX_OCCUPANTS and untracked == PRESENCES - MAX_OCCUPANTS
        assert len(joins) <= MAX_OCCUPANTS
        assert latency["missing"] == 0 and latency["max_s"] < 1.0, latency
    finally:
        collector.stop()
        server.stop()
