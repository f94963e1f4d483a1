"""Issue 16, item 4 on XMPP: a MUC occupant's real bare JID rides on their events (``jid``) where the
room shows it (prosody's rooms show real JIDs to moderators: the bot that created the room is one),
and is ``null`` where the room hides it (the bot a plain participant of a semi-anonymous room)."""

from __future__ import annotations

import pytest

from tests.support.frontend import push
from tests.xmpp.conftest import uniq, xmpp_spec

pytestmark = pytest.mark.e2e


@pytest.fixture
def bot(prosody, xmpp_account):
    jid, password = xmpp_account("bot")
    return lambda muc, **extra: xmpp_spec(prosody, jid, password, muc, **extra)


def test_occupants_real_jids_where_the_room_shows_them(fe, redis_client, events, bot, muc, xmpp_user):
    room = uniq("xj")
    push(redis_client, {"type": "join", "room": room, "spec": bot(muc, nick="owner")})  # creates it
    events.wait(timeout=15, type="joined", room=room)
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    assert events.wait(type="user_joined", room=room, nick="alice")["jid"] == alice.jid.lower()
    alice.say(muc, "!deploy web")
    alice.say(muc, "/me deploys")
    assert events.wait(type="message", room=room)["jid"] == alice.jid.lower()
    assert events.wait(type="action", room=room)["jid"] == alice.jid.lower()
    alice.private(muc, "owner", "psst")
    assert events.wait(type="message", room=room, private=True)["jid"] == alice.jid.lower()


def test_a_room_that_hides_real_jids_gives_none(fe, redis_client, events, bot, muc, xmpp_user):
    alice = xmpp_user("alice")
    alice.join(muc, "alice")  # alice owns the room; the bot is a participant and sees no JIDs
    room = uniq("xh")
    push(redis_client, {"type": "join", "room": room, "spec": bot(muc, nick="guest")})
    events.wait(timeout=15, type="joined", room=room)
    bob = xmpp_user("bob")
    bob.join(muc, "bob")
    joined = events.wait(type="user_joined", room=room, nick="bob")
    assert "jid" in joined and joined["jid"] is None
    bob.say(muc, "hello")
    said = events.wait(type="message", room=room)
    assert said["from"] == "bob" and said["jid"] is None
