"""XMPP MUC rooms end to end: Redis `control` -> frontend -> real prosody -> slixmpp "human", and back."""

from __future__ import annotations

import pytest

from tests.support.frontend import held, push
from tests.xmpp.conftest import uniq, xmpp_spec

pytestmark = pytest.mark.e2e


def join(redis_client, events, spec: dict, room: str | None = None) -> tuple[str, dict]:
    room = room or uniq("x")
    push(redis_client, {"type": "join", "room": room, "spec": spec})
    return room, events.wait(timeout=15, type="joined", room=room)


@pytest.fixture
def bot(prosody, xmpp_account):
    jid, password = xmpp_account("bot")
    return lambda muc, **extra: xmpp_spec(prosody, jid, password, muc, **extra)


def test_join_reports_joined_and_state(fe, redis_client, events, bot, muc):
    room, joined = join(redis_client, events, bot(muc, nick="greeter", tenant="acme"))
    assert joined["nick"] == "greeter" and joined["channel"] == muc
    assert joined["protocol"] == "xmpp" and joined["tenant"] == "acme" and joined["event_id"]
    assert b'"state":"joined"' in redis_client.hget("rooms:state", room)


def test_users_lines_become_events(fe, redis_client, events, bot, muc, xmpp_user):
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    room, _ = join(redis_client, events, bot(muc))
    # alice was there before the bot: part of the initial occupant list, not a user_joined
    bob = xmpp_user("bob")
    bob.join(muc, "bob")
    assert events.wait(type="user_joined", room=room)["nick"] == "bob"
    alice.say(muc, "!deploy web")
    alice.say(muc, "/me waves")
    msg = events.wait(type="message", room=room)
    assert {k: msg[k] for k in ("from", "text", "private", "protocol")} == {
        "from": "alice", "text": "!deploy web", "private": False, "protocol": "xmpp"}
    action = events.wait(type="action", room=room)
    assert action["text"] == "waves" and action["from"] == "alice"
    bob.leave(muc, "bob", "lunch")
    left = events.wait(type="user_left", room=room)
    assert left == {**left, "nick": "bob", "how": "part", "reason": "lunch"}
    assert not [e for e in events.seen if e["type"] == "user_joined" and e.get("nick") == "alice"]


def test_echo_round_trip_without_the_sdk(fe, redis_client, events, bot, muc, xmpp_user):
    """A backend reacting to a `message` event with a `say`: the human sees the answer."""
    room, _ = join(redis_client, events, bot(muc, nick="echo"))
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    alice.say(muc, "ping me back")
    msg = events.wait(type="message", room=room)
    push(redis_client, {"type": "say", "room": msg["room"], "text": "echo: " + msg["text"], "cmd_id": "e1"})
    push(redis_client, {"type": "action", "room": room, "text": "bows"})
    got = alice.expect(kind="groupchat", muc=muc, nick="echo")
    assert got["body"] == "echo: ping me back"
    assert alice.expect(kind="groupchat", nick="echo")["body"] == "/me bows"
    # the bot's own lines are not reported back as messages
    push(redis_client, {"type": "ping", "room": room, "cmd_id": "p1"})
    events.wait(type="pong", room=room, cmd_id="p1")
    assert not [e for e in events.seen if e["type"] in ("message", "action") and e.get("from") == "echo"]


def test_multiline_say_topic_and_acks(fe, redis_client, events, bot, muc, xmpp_user):
    room, _ = join(redis_client, events, bot(muc, nick="poster"))
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    push(redis_client, {"type": "say", "room": room, "text": "one\n\ntwo\x00\x07"},
         {"type": "topic", "room": room, "text": "release day"})
    assert alice.expect(kind="groupchat", nick="poster")["body"] == "one"
    assert alice.expect(kind="groupchat", nick="poster")["body"] == "two"
    topic = events.wait(type="topic", room=room)
    assert topic["text"] == "release day" and topic["by"] == "poster"
    push(redis_client, {"type": "ping", "room": room, "cmd_id": "after"})
    events.wait(type="pong", room=room, cmd_id="after")
    assert held(redis_client, fe.settings.frontend_id) == 0


def test_private_messages_both_ways(fe, redis_client, events, bot, muc, xmpp_user):
    room, _ = join(redis_client, events, bot(muc, nick="helper"))
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    alice.private(muc, "helper", "psst")
    msg = events.wait(type="message", room=room, private=True)
    assert msg["from"] == "alice" and msg["text"] == "psst"
    push(redis_client, {"type": "say", "room": room, "text": "whisper back", "to": "alice"})
    got = alice.expect(kind="chat", muc=muc)
    assert got["nick"] == "helper" and got["body"] == "whisper back"


def test_history_is_not_replayed(fe, redis_client, events, bot, muc, xmpp_user):
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    for i in range(3):
        alice.say(muc, f"old line {i}")
    alice.say(muc, "last old line")
    alice.expect(kind="groupchat", body="last old line")  # the room has stored them
    room, _ = join(redis_client, events, bot(muc))
    alice.say(muc, "new line")
    assert events.wait(type="message", room=room)["text"] == "new line"
    assert [e["text"] for e in events.seen if e["type"] == "message"] == ["new line"]


def test_nick_conflict_takes_a_suffixed_nick(fe, redis_client, events, bot, muc, xmpp_user):
    squatter = xmpp_user("squat")
    squatter.join(muc, "bot")
    room, joined = join(redis_client, events, bot(muc, nick="bot"))
    assert joined["nick"] == "bot_"
    squatter.say(muc, "hi impostor")  # from nick "bot": not our echo, since we are bot_
    msg = events.wait(type="message", room=room)
    assert msg["from"] == "bot" and msg["text"] == "hi impostor"


def test_rooms_of_one_jid_share_a_session(fe, redis_client, events, bot, prosody, xmpp_user):
    mucs = [f"{uniq('shared')}@{prosody.muc_domain}" for _ in range(3)]
    rooms = [join(redis_client, events, bot(m, nick=f"b{i}"))[0] for i, m in enumerate(mucs)]
    assert len([s for s in fe.sessions.sessions() if s.protocol == "xmpp"]) == 1
    alice = xmpp_user("alice")
    alice.join(mucs[2], "alice")
    alice.say(mucs[2], "third room")
    assert events.wait(type="message", text="third room")["room"] == rooms[2]
    push(redis_client, {"type": "part", "room": rooms[0], "reason": "done"})
    assert events.wait(type="parted", room=rooms[0])["reason"] == "done"
    push(redis_client, {"type": "say", "room": rooms[2], "text": "still here"})
    assert alice.expect(kind="groupchat", nick="b2")["body"] == "still here"


def test_kick_rejoins_and_ban_fails(fe, redis_client, events, bot, muc, xmpp_user):
    owner = xmpp_user("owner")
    owner.join(muc, "owner")  # creates the room: owner may kick and ban
    room, _ = join(redis_client, events, bot(muc, nick="victim"))
    owner.set_role(muc, "victim", "none", reason="behave")
    kicked = events.wait(type="kicked", room=room)
    assert kicked["reason"] == "behave" and kicked["by"] in ("owner", None)
    events.wait(type="joined", room=room)  # back after rejoin_delay
    bot_jid = bot(muc)["jid"]
    owner.set_affiliation(muc, bot_jid, "outcast")
    error = events.wait(type="error", room=room, code="join_failed")
    assert "banned" in error["detail"]
    state = redis_client.hget("rooms:state", room)
    assert b'"state":"failed"' in state


def test_part_reports_parted_and_leaves(fe, redis_client, events, bot, muc, xmpp_user):
    alice = xmpp_user("alice")
    alice.join(muc, "alice")
    room, _ = join(redis_client, events, bot(muc, nick="leaver"))
    push(redis_client, {"type": "say", "room": room, "text": "bye all"},
         {"type": "part", "room": room, "reason": "maintenance"})
    assert alice.expect(kind="groupchat", nick="leaver")["body"] == "bye all"
    assert events.wait(type="parted", room=room)["reason"] == "maintenance"
    assert redis_client.hget("rooms", room) is None


def test_wrong_password_is_join_failed(fe, redis_client, events, prosody, xmpp_account, muc):
    jid, _ = xmpp_account("bot")
    room = uniq("x")
    push(redis_client, {"type": "join", "room": room,
                        "spec": xmpp_spec(prosody, jid, "not-the-password", muc)})
    error = events.wait(timeout=15, type="error", room=room, code="join_failed")
    assert "authentication failed" in error["detail"] and "not-the-password" not in error["detail"]
    push(redis_client, {"type": "part", "room": room})
    events.wait(type="parted", room=room)
