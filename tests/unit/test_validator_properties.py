"""The command validator against arbitrary JSON (issue 13, item 1): every item is either accepted and
encodable end to end (into Redis, onto an IRC line, into XML), or refused with a ProtocolError.

Strings include lone surrogates (JSON can carry them as ``\\ud800`` escapes, UTF-8 cannot), control
characters, huge and deeply nested values; the items go through ``ujson`` exactly as the dispatcher
reads them from Redis.
"""

from __future__ import annotations

import ujson
from hypothesis import HealthCheck, given, settings, strategies as st

from frontend.chat.irc_format import message_lines
from frontend.errors import ProtocolError
from frontend.protocol import dead_letter, encode, event, parse_command
from frontend.text import assert_safe_line, xml_text

TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30)
NASTY = st.one_of(TEXT, st.sampled_from(["\ud800", "a\udfffb", "\ud83d", "x\x00y", "r\r\nJOIN #x", "\u2028",
                                          "é" * 50, "#chan", "messages.x", "control", "irc", "xmpp", "say",
                                          "join", "ping", "r1"]))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
                   st.floats(allow_nan=True, allow_infinity=True), NASTY)
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(NASTY, inner, max_size=4)), max_leaves=20)
SPEC_KEYS = ["protocol", "server", "port", "tls", "nick", "channel", "key", "password", "sasl", "tenant",
             "events", "flood", "share", "jid", "muc", "host", "room_password", "allow_services"]
SPEC = st.fixed_dictionaries({"protocol": st.sampled_from(["irc", "xmpp"])},
                             optional={k: st.one_of(NASTY, SCALAR) for k in SPEC_KEYS[1:]})
COMMAND = st.fixed_dictionaries(
    {"type": st.sampled_from(["join", "part", "say", "action", "topic", "ping", "nope"])},
    optional={"room": NASTY, "cmd_id": SCALAR, "text": st.one_of(NASTY, SCALAR), "to": NASTY, "reason": NASTY,
              "expires": SCALAR, "spec": st.one_of(SPEC, VALUE), "extra": VALUE})


def _raw(obj) -> bytes | None:
    """The item as a backend would push it: JSON with lone surrogates written as escapes."""
    try:
        return ujson.dumps(obj, ensure_ascii=True).encode("ascii")
    except (OverflowError, TypeError, ValueError):
        return None


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


@given(COMMAND)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_item_is_accepted_and_encodable_end_to_end_or_refused(obj):
    raw = _raw(obj)
    if raw is None:
        return
    try:
        command = parse_command(raw)
    except ProtocolError as exc:
        assert exc.code == "bad_command" and exc.detail
        encode({"error": exc.detail})  # the reason itself can be written
        dead_letter(raw, exc.code, exc.detail, "fe")  # and so can the dead letter
        return
    # accepted: everything it carries can be written to Redis, onto an IRC line and into XML
    for text in _strings([command.room, command.cmd_id, command.text, command.to, command.reason,
                          command.spec_json]):
        text.encode("utf-8")
    encode(event("error", command.room, "irc", None, code="x", detail="y", cmd_id=command.cmd_id))
    encode(event("pong", command.room, "irc", getattr(command.spec, "tenant", None), cmd_id=command.cmd_id))
    if command.spec_json is not None:
        encode(command.spec_json)
    if command.text is not None:
        target = command.to or "#c"
        for line in message_lines("PRIVMSG", target, command.text, prefix=60):
            assert_safe_line(line)
        xml_text(command.text).encode("utf-8")


@given(st.integers(min_value=1, max_value=5000))
@settings(max_examples=30, deadline=None)
def test_deep_nesting_is_refused_not_raised(depth):
    raw = b'{"type":"say","room":"r","text":' + b"[" * depth + b"]" * depth + b"}"
    try:
        parse_command(raw)
    except ProtocolError as exc:
        assert exc.code == "bad_command"


def test_a_huge_value_is_refused_with_its_size():
    raw = ujson.dumps({"type": "say", "room": "r", "text": "é" * 20000}).encode()
    try:
        parse_command(raw)
    except ProtocolError as exc:
        assert "40000 bytes" in exc.detail
    else:
        raise AssertionError("a 40,000-byte text was accepted")
