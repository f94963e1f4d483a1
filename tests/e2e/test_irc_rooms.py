"""IRC rooms end to end: Redis `control` -> frontend -> real ngircd -> raw observer client, and back."""

import re

import pytest

from tests.support.events import EventLog
from tests.support.frontend import held, irc_spec, push, running_frontend
from tests.support.names import uniq

pytestmark = pytest.mark.e2e



@pytest.fixture
def fe(redis_url):
    with running_frontend(redis_url) as frontend:
        yield frontend


def join(redis_client, events, ngircd, room, channel, **spec):
    push(redis_client, {"type": "join", "room": room, "spec": irc_spec(ngircd, channel, **spec)})
    return events.wait(type="joined", room=room)


def test_join_reports_joined_and_records_the_room(fe, redis_client, events, ngircd, irc_client):
    room, chan, nick = uniq("r"), "#" + uniq("join"), uniq("bot")
    watcher = irc_client(uniq("watch"))
    watcher.join(chan)
    event = join(redis_client, events, ngircd, room, chan, nick=nick, tenant="acme")
    assert event["nick"] == nick and event["channel"] == chan and event["protocol"] == "irc"
    assert event["tenant"] == "acme" and isinstance(event["ts"], float) and event["event_id"]
    watcher.expect(rf":{nick}!\S+ JOIN :?{re.escape(chan)}")
    assert b'"channel":"%s"' % chan.encode() in redis_client.hget("rooms", room)
    assert b'"state":"joined"' in redis_client.hget("rooms:state", room)


def test_a_users_line_becomes_a_message_event(fe, redis_client, events, ngircd, irc_client):
    room, chan = uniq("r"), "#" + uniq("msg")
    join(redis_client, events, ngircd, room, chan, nick=uniq("bot"), tenant="t1")
    alice = irc_client(uniq("alice"))
    alice.join(chan)
    assert events.wait(type="user_joined", room=room)["nick"] == alice.nick
    alice.privmsg(chan, "!deploy web")
    alice.privmsg(chan, "\x01ACTION waves\x01")
    msg = events.wait(type="message", room=room)
    assert {k: msg[k] for k in ("from", "text", "private", "protocol", "tenant")} == {
        "from": alice.nick, "text": "!deploy web", "private": False, "protocol": "irc", "tenant": "t1"}
    assert events.wait(type="action", room=room)["text"] == "waves"
    alice.part(chan)
    left = events.wait(type="user_left", room=room)
    assert left["nick"] == alice.nick and left["how"] == "part"


def test_say_action_topic_reach_the_channel(fe, redis_client, events, ngircd, irc_client):
    room, chan, nick = uniq("r"), "#" + uniq("say"), uniq("bot")
    watcher = irc_client(uniq("watch"))
    watcher.join(chan)
    join(redis_client, events, ngircd, room, chan, nick=nick)
    push(redis_client, {"type": "say", "room": room, "text": "hello world"},
         {"type": "action", "room": room, "text": "waves"},
         {"type": "topic", "room": room, "text": "new topic"})
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :hello world$")
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :\x01ACTION waves\x01$")
    watcher.expect(rf":{nick}!\S+ TOPIC {re.escape(chan)} :new topic$")
    topic = events.wait(type="topic", room=room)
    assert topic["text"] == "new topic" and topic["by"] == nick


def test_private_messages_both_ways(fe, redis_client, events, ngircd, irc_client):
    room, chan, nick = uniq("r"), "#" + uniq("priv"), uniq("bot")
    join(redis_client, events, ngircd, room, chan, nick=nick)
    alice = irc_client(uniq("alice"))
    alice.privmsg(nick, "psst")
    event = events.wait(type="message", room=room)
    assert event["private"] is True and event["from"] == alice.nick and event["text"] == "psst"
    push(redis_client, {"type": "say", "room": room, "text": "hi back", "to": alice.nick})
    alice.expect(rf":{nick}!\S+ PRIVMSG {alice.nick} :hi back$")


def test_ping_answers_pong_from_the_rooms_greenlet(fe, redis_client, events, ngircd):
    room = uniq("r")
    join(redis_client, events, ngircd, room, "#" + uniq("ping"), nick=uniq("bot"))
    push(redis_client, {"type": "ping", "room": room, "cmd_id": "p1"})
    assert events.wait(type="pong", room=room)["cmd_id"] == "p1"


def test_part_leaves_forgets_and_later_commands_are_unknown(fe, redis_client, events, ngircd, irc_client):
    room, chan, nick = uniq("r"), "#" + uniq("part"), uniq("bot")
    watcher = irc_client(uniq("watch"))
    watcher.join(chan)
    join(redis_client, events, ngircd, room, chan, nick=nick)
    push(redis_client, {"type": "say", "room": room, "text": "last words"},
         {"type": "part", "room": room, "reason": "bye now"})
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :last words$")
    watcher.expect(rf":{nick}!\S+ (PART {re.escape(chan)}|QUIT)")
    assert events.wait(type="parted", room=room)["reason"] == "bye now"
    assert redis_client.hget("rooms", room) is None
    push(redis_client, {"type": "say", "room": room, "text": "too late", "cmd_id": "c9"})
    redis_client.blpop(["control:dead"], timeout=5)
    assert room not in fe.rooms


def test_crlf_injection_gives_two_privmsgs_and_no_join(fe, redis_client, events, ngircd, irc_client):
    room, chan, nick, other = uniq("r"), "#" + uniq("inj"), uniq("bot"), "#" + uniq("other")
    watcher = irc_client(uniq("watch"))
    watcher.join(chan)
    watcher.join(other)
    join(redis_client, events, ngircd, room, chan, nick=nick)
    push(redis_client, {"type": "say", "room": room, "text": "a\r\nJOIN " + other},
         {"type": "say", "room": room, "text": "x\rQUIT :bye\nMODE " + chan + " +o evil\x00NICK z"},
         {"type": "say", "room": room, "text": "marker"})
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :a$")
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :JOIN {re.escape(other)}$")
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :marker$")
    from_bot = [line for line in watcher.lines if line.startswith(f":{nick}!")]
    commands = [line.split()[1] for line in from_bot]
    assert set(commands) <= {"JOIN", "PRIVMSG"}, from_bot
    assert [line for line in from_bot if " JOIN " in line] == [line for line in from_bot
                                                              if re.search(rf"JOIN :?{re.escape(chan)}$", line)]


def test_2000_character_text_arrives_complete_in_legal_lines(fe, redis_client, events, ngircd, irc_client):
    room, chan, nick = uniq("r"), "#" + uniq("long"), uniq("bot")
    watcher = irc_client(uniq("watch"))
    watcher.join(chan)
    join(redis_client, events, ngircd, room, chan, nick=nick)
    words = [("é€😀" if i % 7 == 0 else "word") + str(i) for i in range(400)]
    text = " ".join(words)[:2000]
    assert len(text) == 2000
    push(redis_client, {"type": "say", "room": room, "text": text},
         {"type": "say", "room": room, "text": "marker"})
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :marker$", timeout=10)
    pattern = re.compile(rf"^:{nick}!\S+ PRIVMSG {re.escape(chan)} :(.*)$")
    raw_lines = [line for line in watcher.lines if pattern.match(line)][:-1]
    assert len(raw_lines) >= 2
    assert all(len(line.encode()) + 2 <= 512 for line in raw_lines)
    received = " ".join(pattern.match(line).group(1) for line in raw_lines)
    assert received == text


def test_malformed_items_are_dead_lettered_and_the_daemon_keeps_serving(fe, redis_client, events, ngircd):
    room = uniq("r")
    join(redis_client, events, ngircd, room, "#" + uniq("bad"), nick=uniq("bot"))
    bad = [b"not json", b"\xff\xfe\x00", b"[1,2,3]", b"null", b'{"type":"say"}',
           b'{"type":"explode","room":"%s"}' % room.encode(),
           b'{"type":"say","room":"%s","cmd_id":"c1"}' % room.encode(),
           b'{"type":"say","room":"nosuchroom","text":"x"}',
           b'{"type":"join","room":"j","spec":{"protocol":"irc","chanel":"#x"}}']
    push(redis_client, *bad)
    push(redis_client, {"type": "ping", "room": room, "cmd_id": "alive"})
    assert events.wait(type="pong", room=room)["cmd_id"] == "alive"
    error = events.wait(type="error", room=room, cmd_id="c1")
    assert error["code"] == "bad_command" and "text" in error["detail"]
    dead = [__import__("ujson").loads(x) for x in redis_client.lrange("control:dead", 0, -1)]
    assert len(dead) == len(bad)
    assert [d["raw"].encode("utf-8", "surrogateescape") for d in dead][0] == b"not json"
    codes = [d["error"]["code"] for d in dead]
    assert codes.count("unknown_room") == 1 and codes.count("bad_command") == len(bad) - 1
    assert all(d["error"]["detail"] for d in dead)
    assert "unknown spec key 'chanel'" in dead[-1]["error"]["detail"]
    assert fe.counters["commands_dead"] == len(bad)
    assert held(redis_client, "test-fe") == 0


def test_nick_in_use_falls_back_to_suffixes(fe, redis_client, events, ngircd, irc_client):
    nick = uniq("taken")
    squatter = irc_client(nick)
    irc_client(nick + "_")
    event = join(redis_client, events, ngircd, uniq("r"), "#" + uniq("nick"), nick=nick)
    assert event["nick"] == nick + "__"
    assert squatter.nick == nick


def test_kicked_room_reports_and_rejoins(fe, redis_client, events, ngircd, irc_client):
    room, chan, nick = uniq("r"), "#" + uniq("kick"), uniq("bot")
    op = irc_client(uniq("op"))
    op.join(chan)  # first in the channel: channel operator
    join(redis_client, events, ngircd, room, chan, nick=nick)
    op.send_raw(f"KICK {chan} {nick} :behave")
    kicked = events.wait(type="kicked", room=room)
    assert kicked["by"] == op.nick and kicked["reason"] == "behave"
    assert events.wait(type="joined", room=room, timeout=10)["channel"] == chan


def test_channel_key_is_used_and_a_wrong_key_is_reported(fe, redis_client, events, ngircd, irc_client):
    chan = "#" + uniq("keyed")
    op = irc_client(uniq("op"))
    op.join(chan)
    op.send_raw(f"MODE {chan} +k sesame")
    op.expect(r"MODE \S+ \+k")
    bad_room = uniq("r")
    push(redis_client, {"type": "join", "room": bad_room,
                        "spec": irc_spec(ngircd, chan, nick=uniq("bot"), key="wrong")})
    error = events.wait(type="error", room=bad_room)
    assert error["code"] == "join_failed" and chan in error["detail"]
    assert b'"state":"backoff"' in redis_client.hget("rooms:state", bad_room)
    assert join(redis_client, events, ngircd, uniq("r"), chan, nick=uniq("bot"), key="sesame")


def test_join_with_a_new_spec_moves_the_room(fe, redis_client, events, ngircd, irc_client):
    room, nick = uniq("r"), uniq("bot")
    first, second = "#" + uniq("from"), "#" + uniq("to")
    watcher = irc_client(uniq("watch"))
    watcher.join(first)
    join(redis_client, events, ngircd, room, first, nick=nick)
    push(redis_client, {"type": "join", "room": room, "spec": irc_spec(ngircd, second, nick=nick)})
    assert events.wait(type="joined", room=room)["channel"] == second
    watcher.expect(rf":{nick}!\S+ (PART {re.escape(first)}|QUIT)")
    assert second.encode() in redis_client.hget("rooms", room)


def test_join_with_the_same_spec_in_another_key_order_stays_in_the_channel(fe, redis_client, events, ngircd,
                                                                          irc_client):
    """A room keeps its spec as canonical JSON text (``protocol.spec_text``): a join whose spec has the
    same fields in another order is the same spec, so the room only repeats ``joined``, never parts."""
    room, nick, chan = uniq("r"), uniq("bot"), "#" + uniq("same")
    watcher = irc_client(uniq("watch"))
    watcher.join(chan)
    join(redis_client, events, ngircd, room, chan, nick=nick)
    spec = irc_spec(ngircd, chan, nick=nick)
    push(redis_client, {"type": "join", "room": room, "spec": dict(reversed(list(spec.items())))},
         {"type": "say", "room": room, "text": "after the second join"})
    assert events.wait(type="joined", room=room)["channel"] == chan
    watcher.expect(rf":{nick}!\S+ PRIVMSG {re.escape(chan)} :after the second join")
    assert not [ln for ln in watcher.lines if re.search(rf":{nick}!\S+ (PART|QUIT)", ln)]


def test_rooms_share_a_connection_and_events_go_to_their_list(fe, redis_client, events, ngircd, irc_client):
    nick = uniq("bot")
    a, b = uniq("r"), uniq("r")
    join(redis_client, events, ngircd, a, "#" + uniq("sa"), nick=nick)
    push(redis_client, {"type": "join", "room": b,
                        "spec": irc_spec(ngircd, "#" + uniq("sb"), nick=nick, events="messages.team-b")})
    other = EventLog(redis_client, "messages.team-b")
    assert other.wait(type="joined", room=b)["nick"] == nick  # same nick: same connection
    assert len(fe.sessions) == 1
