"""The wire contract: commands and specs are validated with precise errors; secrets stay out of repr."""

import pytest
import ujson

from frontend.errors import ProtocolError
from frontend.protocol import (IrcSpec, XmppSpec, dead_letter, decode, encode, parse_command,
                               parse_spec, validate_command)

IRC = {"protocol": "irc", "server": "127.0.0.1", "port": 6667, "tls": False, "nick": "bot",
       "channel": "#r1", "key": None, "password": None, "sasl": None}


def cmd(**fields):
    return encode(fields)


def reject(raw, code="bad_command"):
    with pytest.raises(ProtocolError) as info:
        parse_command(raw if isinstance(raw, bytes) else cmd(**raw))
    assert info.value.code == code
    return info.value.detail


def test_join_parses_the_documented_example():
    c = parse_command(cmd(type="join", room="r1", spec=IRC, cmd_id="c1"))
    assert c.type == "join" and c.room == "r1" and c.cmd_id == "c1"
    assert isinstance(c.spec, IrcSpec) and c.spec.channel == "#r1" and c.spec.port == 6667
    assert c.spec_json == IRC


def test_say_part_action_topic_ping():
    assert parse_command(cmd(type="say", room="r1", text="hi", to="alice")).to == "alice"
    assert parse_command(cmd(type="part", room="r1", reason="bye")).reason == "bye"
    assert parse_command(cmd(type="action", room="r1", text="waves")).text == "waves"
    assert parse_command(cmd(type="topic", room="r1", text="t")).text == "t"
    assert parse_command(cmd(type="ping", room="r1", cmd_id=7)).cmd_id == 7


@pytest.mark.parametrize("raw, needle", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1,2]", "JSON object"),
    (b'"str"', "JSON object"),
    (b'{"room":"r1"}', "missing field 'type'"),
    (b'{"type":"dance","room":"r1"}', "unknown type"),
    (b'{"type":"say","text":"x"}', "missing field 'room'"),
    (b'{"type":"say","room":"r 1","text":"x"}', "field 'room'"),
    (b'{"type":"say","room":"r1"}', "missing field 'text'"),
    (b'{"type":"say","room":"r1","text":5}', "missing field 'text'"),
    (b'{"type":"say","room":"r1","text":"x","to":"a b"}', "not a plain nick"),
    (b'{"type":"say","room":"r1","text":"x","to":"#chan"}', "not a plain nick"),
    (b'{"type":"say","room":"r1","text":"x","to":"a,b"}', "not a plain nick"),
    (b'{"type":"say","room":"r1","text":"x","to":":x"}', "not a plain nick"),
    (b'{"type":"say","room":"r1","text":"x","cmd_id":[1]}', "cmd_id"),
    (b'{"type":"join","room":"r1"}', "'spec' must be an object"),
])
def test_malformed_commands_say_why(raw, needle):
    assert needle in reject(raw)


def test_text_limit_is_in_utf8_bytes():
    ok = "é" * 8192  # 16384 bytes
    assert parse_command(cmd(type="say", room="r", text=ok)).text == ok
    detail = reject({"type": "say", "room": "r", "text": ok + "e"})
    assert "16385 bytes, the limit is 16384" in detail
    with pytest.raises(ProtocolError):
        validate_command({"type": "say", "room": "r", "text": "abc"}, max_text_bytes=2)


@pytest.mark.parametrize("change, needle", [
    ({"chanel": "#x"}, "unknown spec key 'chanel'"),
    ({"protocol": "matrix"}, "protocol"),
    ({"channel": "nochan"}, "not a channel name"),
    ({"channel": "#a b"}, "not a channel name"),
    ({"channel": "#a,#b"}, "not a channel name"),
    ({"channel": "#a\x07"}, "not a channel name"),
    ({"nick": "bad nick"}, "not a valid nick"),
    ({"nick": None}, "'nick' is required"),
    ({"port": 70000}, "port"),
    ({"port": "6667"}, "port"),
    ({"tls": "yes"}, "true or false"),
    ({"key": "a b"}, "key"),
    ({"sasl": {"username": "u"}}, "sasl"),
    ({"flood": {"burst": 0, "rate": 1}}, "flood"),
    ({"flood": "off"}, "flood"),
    ({"server": "a\r\nb"}, "CR/LF/NUL"),
    ({"events": "my list"}, "events"),
])
def test_bad_irc_specs(change, needle):
    with pytest.raises(ProtocolError) as info:
        parse_spec({**IRC, **change})
    assert needle in info.value.detail


def test_spec_defaults_and_flood():
    spec = parse_spec({"protocol": "irc", "server": "h", "nick": "n", "channel": "#c", "tls": True})
    assert spec.port == 6697 and spec.share and spec.flood is None
    assert parse_spec({**IRC, "flood": False}).flood is False
    flood = parse_spec({**IRC, "flood": {"burst": 3, "rate": 1}}).flood
    assert (flood.burst, flood.rate) == (3, 1.0)


def test_secrets_never_in_repr():
    spec = parse_spec({**IRC, "password": "hunter2", "key": "chankey",
                       "sasl": {"username": "u", "password": "saslpw"}})
    assert "hunter2" not in repr(spec) and "saslpw" not in repr(spec) and "chankey" not in repr(spec)
    x = parse_spec({"protocol": "xmpp", "jid": "bot@localhost", "password": "xmpppw",
                    "muc": "r@conference.localhost", "nick": "bot", "room_password": "roompw"})
    assert isinstance(x, XmppSpec) and "xmpppw" not in repr(x) and "roompw" not in repr(x)


def test_connection_keys_group_same_identity():
    a = parse_spec({**IRC, "channel": "#a"})
    b = parse_spec({**IRC, "channel": "#b"})
    c = parse_spec({**IRC, "channel": "#c", "nick": "other"})
    assert a.connection_key() == b.connection_key() != c.connection_key()


def test_dead_letter_keeps_the_raw_item():
    item = decode(dead_letter(b'{"type":"x"\xff', "bad_command", "not UTF-8", "fe1"))
    assert item["error"] == {"code": "bad_command", "detail": "not UTF-8"}
    assert item["raw"] == '{"type":"x"\ufffd' and item["frontend"] == "fe1"


def test_encode_is_compact_utf8():
    assert encode({"a": "é/x"}) == '{"a":"é/x"}'.encode()
    assert ujson.loads(encode({"t": "\r\n"})) == {"t": "\r\n"}


def test_a_command_without_cmd_id_gets_one_from_its_bytes():
    """PROTOCOL.md: ``auto-<hash of the item>``, the same each time the same item is delivered. It is
    made when first read, also after the dispatcher let go of the item's bytes (``raw``)."""
    import hashlib

    raw = cmd(type="say", room="r1", text="hello")
    first, again = parse_command(raw), parse_command(raw)
    first.raw = b""  # as the dispatcher does once the command is routed
    want = "auto-" + hashlib.blake2b(raw, digest_size=8).hexdigest()
    assert first.cmd_id == want and again.cmd_id == want and first.cmd_id == want
    assert parse_command(cmd(type="say", room="r1", text="hello!")).cmd_id != want
    for other in (cmd(type="ping", room="r1"), cmd(type="part", room="r1"),
                  cmd(type="join", room="r1", spec=IRC)):
        assert parse_command(other).cmd_id == "auto-" + hashlib.blake2b(other, digest_size=8).hexdigest()


def test_a_cmd_id_of_its_own_is_kept_and_none_is_made_without_auto_id():
    assert parse_command(cmd(type="say", room="r1", text="x", cmd_id=0)).cmd_id == 0
    assert parse_command(cmd(type="say", room="r1", text="x", cmd_id="c9")).cmd_id == "c9"
    assert validate_command({"type": "say", "room": "r1", "text": "x"}, raw=b"{}").cmd_id is None
    assert "cmd_id='auto-" in repr(parse_command(cmd(type="say", room="r1", text="x")))
