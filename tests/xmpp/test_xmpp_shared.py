"""Issue 13, item 4 on XMPP, and the adapter contract (speak gate, silent detach) on an XMPP stream,
through the real prosody.

Two rooms of two tenants with one JID on one MUC both work (one occupant, both rooms get the MUC's
lines, parting one keeps the bot in the MUC for the other; it used to take the MUC over from the
first). A private message through a MUC that rooms of two tenants share reaches neither.
"""

from __future__ import annotations

import time

import gevent
import pytest

from frontend.chat.base import SpeakGate
from frontend.config import load_settings
from frontend.counters import Counters
from frontend.protocol import Command
from frontend.sessions import SessionPool
from tests.e2e.test_session_contract import RecordingRoom
from tests.support.frontend import FAST, push
from tests.support.waiting import wait_until
from tests.xmpp.conftest import uniq, xmpp_spec

pytestmark = pytest.mark.e2e


@pytest.fixture
def bot(prosody, xmpp_account):
    jid, password = xmpp_account("bot")
    return lambda muc, **extra: xmpp_spec(prosody, jid, password, muc, **extra)


def test_two_tenants_on_one_muc_both_work_and_one_parting_keeps_the_other(
        fe, redis_client, events, bot, muc, xmpp_user):
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    push(redis_client, {"type": "join", "room": "xa", "spec": bot(muc, nick="shared", tenant="acme")},
         {"type": "join", "room": "xb", "spec": bot(muc, nick="shared", tenant="globex")})
    assert events.wait(type="joined", room="xa", timeout=15)["nick"] == "shared"
    assert events.wait(type="joined", room="xb", timeout=15)["nick"] == "shared"
    alice.say(muc, "hello both")
    assert events.wait(type="message", room="xa")["text"] == "hello both"
    assert events.wait(type="message", room="xb")["text"] == "hello both"
    alice.private(muc, "shared", "for whom?")
    wait_until(lambda: fe.counters["dm_dropped"] == 1, 5, what="the DM dropped")
    push(redis_client, {"type": "part", "room": "xa", "reason": "a leaves"})
    assert events.wait(type="parted", room="xa")["reason"] == "a leaves"
    push(redis_client, {"type": "say", "room": "xb", "text": "b still here"},
         {"type": "ping", "room": "xb", "cmd_id": "xb-ping"})
    assert alice.expect(kind="groupchat", nick="shared")["body"] == "b still here"
    events.wait(type="pong", room="xb", cmd_id="xb-ping")
    alice.private(muc, "shared", "one tenant now")
    dm = events.wait(type="message", room="xb", private=True)
    assert dm["text"] == "one tenant now"
    assert not [e for e in events.seen if e["type"] in ("parted", "error") and e["room"] == "xb"]
    assert not [e for e in events.seen if e.get("text") == "for whom?"]
    assert redis_client.llen(f"control:inflight:{fe.settings.frontend_id}") == 0


def test_gate_and_silent_detach_on_a_stream(prosody, xmpp_account, xmpp_user, muc):
    jid, password = xmpp_account("bot")
    settings = load_settings(env={}, overrides={**FAST, "redis_url": "redis://127.0.0.1:1/0"})
    pool = SessionPool(settings, counters=Counters(), gate=SpeakGate())
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    try:
        room = RecordingRoom("xg", xmpp_spec(prosody, jid, password, muc, nick="gated"))
        keeper = RecordingRoom("xk", xmpp_spec(prosody, jid, password, f"{uniq('keep')}@{prosody.muc_domain}",
                                               nick="keeper"))
        session = pool.session_for(room.id, room.spec)
        session.attach(keeper)
        session.attach(room)
        wait_until(lambda: room.of("joined") and keeper.of("joined"), 15, what="both joined")
        pool.gate.set_open(False)
        held = Command(type="say", room="xg", text="held line", cmd_id="h1", received=time.time())
        session.submit(room, held)
        gevent.sleep(0.5)
        assert not room.acked and session.depth(room) == 1
        pool.gate.set_open(True)
        assert alice.expect(kind="groupchat", nick="gated")["body"] == "held line"
        wait_until(lambda: room.acked == [held], 5, what="the held line acked")
        pool.gate.set_open(False)
        session.submit(room, Command(type="say", room="xg", text="never sent", cmd_id="h2", received=time.time()))
        session.detach(room, "moving", silent=True)
        pool.gate.set_open(True)
        gevent.sleep(0.5)
        assert room.acked == [held] and not room.of("parted") and not room.of("error")
        assert session.room_count == 1 and session.depth(room) == 0
        with pytest.raises(AssertionError):
            alice.expect(timeout=0.5, kind="groupchat", nick="gated", body="never sent")
    finally:
        pool.close_all("test over", 2.0)
