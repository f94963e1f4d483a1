"""XMPP rooms survive their server: restarts, dropped TCP streams, silent networks, ghost rooms."""

from __future__ import annotations

import asyncio
import time

import gevent
import pytest
import ujson
from slixmpp import JID

from frontend.chat import asyncio_bridge as aio
from tests.support.events import EventLog
from tests.support.frontend import push, running_frontend
from tests.support.tcp_proxy import TcpProxy
from tests.xmpp.conftest import XmppUser, uniq, xmpp_spec

pytestmark = pytest.mark.e2e


def test_prosody_restart_rejoins_and_messages_flow(fe, redis_client, events, prosody, xmpp_account, muc):
    jid, password = xmpp_account("bot")
    hjid, hpassword = xmpp_account("human")
    room = uniq("x")
    push(redis_client, {"type": "join", "room": room, "spec": xmpp_spec(prosody, jid, password, muc)})
    events.wait(timeout=15, type="joined", room=room)
    prosody.restart()
    events.wait(timeout=30, type="joined", room=room)  # reconnected (backoff) and rejoined
    human = XmppUser(prosody, hjid, hpassword).connect()
    try:
        human.join(muc, "human")
        human.say(muc, "after the restart")
        assert events.wait(timeout=15, type="message", room=room)["text"] == "after the restart"
        push(redis_client, {"type": "say", "room": room, "text": "back online"})
        assert human.expect(kind="groupchat", nick="bot")["body"] == "back online"
    finally:
        human.disconnect()
    states = [e for e in events.seen if e["room"] == room and e["type"] == "joined"]
    assert len(states) == 2


def test_dropped_stream_resumes_or_rejoins(redis_url, redis_client, prosody, xmpp_account, xmpp_user, muc):
    jid, password = xmpp_account("bot")
    events = EventLog(redis_client)
    with TcpProxy(prosody.host, prosody.port) as proxy, running_frontend(redis_url, frontend_id=uniq("xfe")):
        spec = {**xmpp_spec(prosody, jid, password, muc), "port": proxy.port}
        room = uniq("x")
        push(redis_client, {"type": "join", "room": room, "spec": spec})
        events.wait(timeout=15, type="joined", room=room)
        alice = xmpp_user("alice")
        alice.join(muc, "alice")
        assert proxy.reset(refuse_for=0.5) >= 1
        push(redis_client, {"type": "say", "room": room, "text": "queued while away"})
        events.wait(timeout=20, type="joined", room=room)  # XEP-0198 resumed it, or a fresh join
        assert alice.expect(timeout=15, kind="groupchat", nick="bot")["body"] == "queued while away"
        alice.say(muc, "welcome back")
        assert events.wait(timeout=10, type="message", room=room)["text"] == "welcome back"


def test_silent_network_is_detected_by_the_keepalive(redis_url, redis_client, prosody, xmpp_account, muc):
    jid, password = xmpp_account("bot")
    events = EventLog(redis_client)
    with TcpProxy(prosody.host, prosody.port) as proxy, running_frontend(
            redis_url, frontend_id=uniq("xfe"), ping_interval=1.0, ping_timeout=1.0, connect_timeout=3.0):
        room = uniq("x")
        push(redis_client, {"type": "join", "room": room,
                            "spec": {**xmpp_spec(prosody, jid, password, muc), "port": proxy.port}})
        events.wait(timeout=15, type="joined", room=room)
        proxy.blackhole()
        try:
            state = _wait_state(redis_client, room, b'"state":"backoff"', timeout=15)
            assert b"ping" in state
        finally:
            proxy.heal()
        events.wait(timeout=30, type="joined", room=room)


def test_self_ping_failure_rejoins(fe, redis_client, events, prosody, xmpp_account, muc):
    """XEP-0410 reports that the MUC forgot us (a ghost): the room rejoins on its own."""
    from slixmpp.plugins.xep_0410 import PingStatus

    jid, password = xmpp_account("bot")
    room = uniq("x")
    push(redis_client, {"type": "join", "room": room, "spec": xmpp_spec(prosody, jid, password, muc)})
    events.wait(timeout=15, type="joined", room=room)
    session = next(s for s in fe.sessions.sessions() if s.protocol == "xmpp" and s.room_count)
    plugin = session.client.plugin["xep_0410"]
    key = next(k for k in plugin.ping_timers if k[0].bare == JID(muc).bare)
    assert key[0].resource == "bot"
    aio.call(lambda: plugin._update_ping_results(key, PingStatus.DISCONNECTED))
    events.wait(timeout=15, type="joined", room=room)


def _wait_state(redis_client, room: str, needle: bytes, timeout: float) -> bytes:
    """Room states are written by the outbox; poll the hash (there is no event for a state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = redis_client.hget("rooms:state", room) or b""
        if needle in state:
            return state
        gevent.sleep(0.1)
    raise AssertionError(f"room {room} never reached {needle!r}: {redis_client.hget('rooms:state', room)!r}")


def _pending_event_waits() -> int:
    return sum(1 for task in asyncio.all_tasks(aio.loop())
               if not task.done() and task.get_coro().__qualname__ == "Event.wait")


def test_a_quiet_room_does_not_pile_up_self_ping_tasks(redis_url, redis_client, prosody, xmpp_account, muc):
    """slixmpp's XEP-0410 scheduler left one task pending per quiet interval (frontend/chat/xmpp_selfping.py)."""
    jid, password = xmpp_account("bot")
    events = EventLog(redis_client)
    with running_frontend(redis_url, frontend_id=uniq("xfe"), ping_interval=0.2, ping_timeout=2.0):
        room = uniq("x")
        push(redis_client, {"type": "join", "room": room, "spec": xmpp_spec(prosody, jid, password, muc)})
        events.wait(timeout=15, type="joined", room=room)
        gevent.sleep(0.5)
        start = _pending_event_waits()
        gevent.sleep(2.5)  # about a dozen quiet intervals, each answered by a self-ping
        assert _pending_event_waits() <= start + 1
        # and the self-pings said we are still in the room
        assert ujson.loads(redis_client.hget("rooms:state", room))["state"] == "joined"
