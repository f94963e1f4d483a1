"""Replies and ops commands: validated before pushing, and everything pushed passes the frontend's
own validator (the contract test)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_sdk import Backend, Event, ValidationError
from backend_sdk.commands import build, encode
from frontend.protocol import parse_command

from .helpers import message

IRC_SPEC = {"protocol": "irc", "server": "127.0.0.1", "port": 6667, "nick": "bot", "channel": "#r1",
            "tenant": "acme"}


def pushed(client: Any) -> list[bytes]:
    items = client.lrange("control", 0, -1)
    client.delete("control")
    return items


def test_everything_the_sdk_pushes_passes_the_frontend_validator(make_bot: Callable[..., Backend],
                                                                  redis_client: Any) -> None:
    bot = make_bot()
    public = Event.from_json(ujson.dumps(message("!x")), backend=bot)
    private = Event.from_json(ujson.dumps(message("!x", private=True, sender="bob")), backend=bot)
    bot.say("r1", "hello\nworld", expires=2e9)
    bot.say("r1", "psst", to="bob")
    bot.action("r1", "waves")
    bot.topic("r1", "new topic")
    bot.join("r1", IRC_SPEC)
    bot.join("x1", {"protocol": "xmpp", "jid": "bot@example.org", "password": "pw",
                    "muc": "team@conference.example.org", "nick": "bot"})
    bot.part("r1", "bye")
    bot.part("r1")
    cmd_id = bot.ping("r1")
    public.reply("to the room")
    private.reply("to bob only")
    public.reply_private("to alice only")
    public.action("nods")
    Event.from_json('{"type":"user_joined","room":"r1","nick":"dave"}', backend=bot).reply_private("hi")
    items = pushed(redis_client)
    commands = [parse_command(raw) for raw in items]  # raises if the frontend would reject one
    assert [c.type for c in commands] == ["say", "say", "action", "topic", "join", "join", "part",
                                          "part", "ping", "say", "say", "say", "action", "say"]
    assert commands[8].cmd_id == cmd_id and commands[13].to == "dave"
    assert [(c.room, c.to) for c in commands[9:12]] == [("r1", None), ("r1", "bob"), ("r1", "alice")]
    assert all(b" " not in raw.split(b'"text"')[0] for raw in items)  # compact JSON
    assert ujson.loads(items[1]) == {"type": "say", "room": "r1", "text": "psst", "to": "bob"}


@pytest.mark.parametrize("call, message", [
    (lambda b: b.say("r1", "x" * 20000), "text is 20000 bytes, the limit is 16384"),
    (lambda b: b.say("r1", "é" * 9000), "text is 18000 bytes, the limit is 16384"),
    (lambda b: b.join("r1", {**IRC_SPEC, "chanel": "#x"}), "unknown spec key 'chanel'"),
    (lambda b: b.join("r1", {**IRC_SPEC, "channel": "nohash"}), "not a channel name"),
    (lambda b: b.join("r1", {**IRC_SPEC, "protocol": "slack"}), "'protocol' must be one of"),
    (lambda b: b.say("r1", "x", to="#chan"), "not a plain nick"),
    (lambda b: b.say("r1", "x", to="a b"), "not a plain nick"),
    (lambda b: b.say("room with spaces", "x"), "field 'room'"),
    (lambda b: b.say("", "x"), "field 'room'"),
    (lambda b: b.say("r1", None), "missing field 'text'"),
    (lambda b: b.part("r1", "r" * 500), "reason is 500 bytes"),
    (lambda b: b.say("r1", "x", cmd_id="c" * 300), "cmd_id"),
])
def test_invalid_commands_raise_before_anything_is_pushed(make_bot: Callable[..., Backend], redis_client: Any,
                                                           call: Callable[[Backend], Any], message: str) -> None:
    bot = make_bot()
    with pytest.raises(ValidationError, match=message) as info:
        call(bot)
    assert isinstance(info.value, ValueError) and info.value.code == "bad_command"
    assert redis_client.llen("control") == 0


def test_text_limit_follows_the_setting(make_bot: Callable[..., Backend]) -> None:
    with pytest.raises(ValidationError, match="text is 101 bytes, the limit is 100"):
        make_bot(max_text_bytes=100).say("r1", "x" * 101)


def test_reply_private_needs_a_sender(make_bot: Callable[..., Backend]) -> None:
    pong = Event.from_json('{"type":"pong","room":"r1","cmd_id":"p"}', backend=make_bot())
    with pytest.raises(ValueError, match="no sender"):
        pong.reply_private("x")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(room=st.text(min_size=0, max_size=210), text=st.text(max_size=300),
       to=st.none() | st.text(max_size=70), type=st.sampled_from(["say", "action", "topic"]))
def test_accepted_by_the_sdk_means_accepted_by_the_frontend(room: str, text: str, to: str | None,
                                                            type: str) -> None:
    try:
        command = build(type, room, text=text, to=to if type != "topic" else None)
    except ValidationError:
        return
    parsed = parse_command(encode(command))
    assert (parsed.type, parsed.room, parsed.text) == (type, room, text)
