"""Placement's two halves agree (``frontend/placement.py`` and ``frontend/lua/placement.lua``).

- ``share_key``: the router computes a join's share key in Lua from the raw item; a starting frontend
  computes the keys of its registry's rooms in Python. Run against a real redis-server, both must give
  the same key for any spec a backend can send (the two docstrings promise a test pins them).
- ``decode_stored``: what a value of an inbox or a ledger is, for any bytes, as the module says.
"""

from __future__ import annotations

import ujson
from hypothesis import HealthCheck, given, settings, strategies as st

from frontend import placement, scripts

#: the library's share_key, run on a spec decoded by Redis' cjson (ARGV[1] is the key prefix)
SHARE_KEY_LUA = scripts.load("placement").text + "\nreturn share_key(cjson.decode(ARGV[2]))\n"

WORDS = st.sampled_from(["irc.example.net", "IRC.Example.NET", "bot", "Bot", "#room", "pw", "", "é", "x y",
                         "a\x00b", "bot@example.org", "BOT@Example.org", "chat.example.org"])
PORT = st.one_of(st.integers(min_value=1, max_value=65535), st.sampled_from([6667, 6697, 5222, 0, -1, 6667.0, 2 ** 40]),
                 st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                 st.none(), st.booleans(), st.sampled_from(["6667", "x"]))
FLAG = st.one_of(st.booleans(), st.none(), st.sampled_from(["yes", 1, 0]))
IRC_SPEC = st.fixed_dictionaries(
    {"protocol": st.just("irc")},
    optional={"server": WORDS, "port": PORT, "tls": FLAG, "nick": WORDS, "channel": WORDS, "password": WORDS,
              "key": WORDS, "share": FLAG, "tenant": WORDS,
              "sasl": st.one_of(st.none(), WORDS, st.fixed_dictionaries(
                  {}, optional={"username": st.one_of(WORDS, st.integers()),
                                "password": st.one_of(WORDS, st.none())}))})
XMPP_SPEC = st.fixed_dictionaries(
    {"protocol": st.just("xmpp")},
    optional={"jid": WORDS, "password": WORDS, "host": st.one_of(WORDS, st.none()), "port": PORT, "tls": FLAG,
              "muc": WORDS, "nick": WORDS, "share": FLAG})
SPEC = st.one_of(IRC_SPEC, XMPP_SPEC, st.fixed_dictionaries({"protocol": st.sampled_from(["matrix", None])}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=SPEC)
def test_the_share_key_of_python_is_the_share_key_of_lua(redis_client, spec):
    lua = redis_client.eval(SHARE_KEY_LUA, 0, "gr:", ujson.dumps(spec, ensure_ascii=False))
    assert lua.decode() == placement.share_key(spec), spec


def test_share_keys_group_what_may_share_one_connection_and_nothing_else():
    base = {"protocol": "irc", "server": "irc.example.net", "port": 6697, "tls": True, "nick": "bot",
            "channel": "#a"}
    key = placement.share_key(base)
    assert key and placement.share_key({**base, "channel": "#b", "server": "IRC.example.NET"}) == key
    for other in ({"nick": "bot2"}, {"port": 6667}, {"tls": False}, {"password": "x"},
                  {"sasl": {"username": "u", "password": "p"}}):
        assert placement.share_key({**base, **other}) != key, other
    assert placement.share_key({**base, "share": False}) == ""


def _decoded_as_documented(value: bytes) -> tuple[str, bytes, str | None]:
    """The module docstring's definition, written out case by case."""
    if value[:2] == b"\0!":
        verb, _, room = value[2:].partition(b"\0")
        return verb.decode("ascii", "replace"), room, None
    if value[:2] == b"\0@":
        tenant, _, item = value[2:].partition(b"\0")
        return placement.PUBLIC, item, tenant.decode("utf-8", "replace")
    if value[:2] == b"\0\0":
        return placement.PUBLIC, value[2:], None
    return placement.PUBLIC, value, None


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(st.binary(max_size=12),
                       st.tuples(st.sampled_from([b"\0!", b"\0@", b"\0\0", b"\0", b"!", b"{"]),
                                 st.binary(max_size=10)).map(b"".join)))
def test_decode_stored_reads_every_value_as_the_module_says(value):
    assert placement.decode_stored(value) == _decoded_as_documented(value)


def test_decode_stored_tells_the_kinds_apart():
    assert placement.decode_stored(b'{"type":"say"}') == ("public", b'{"type":"say"}', None)
    assert placement.decode_stored(b"\0\0\0x") == ("public", b"\0x", None)
    assert placement.decode_stored(b"\0@acme\0{}") == ("public", b"{}", "acme")
    assert placement.decode_stored(b"\0!take\0r1") == ("take", b"r1", None)
