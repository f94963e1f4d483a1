"""A ``DirectLink`` on its ``Wire`` (``frontend/redis_wire.py``) answers exactly as on redis-py's path, on
a real redis-server: the same replies and error classes, redis-py's reply callbacks, the NOSCRIPT
fallback, and the same failures (a killed connection, a closed link, a socket timeout), after which
the next batch connects again on a new socket.
"""

from __future__ import annotations

import time

import gevent
import pytest
import redis

from frontend import scripts
from frontend.config import Settings
from frontend.redis_conn import DirectLink
from frontend.redis_wire import Wire

pytestmark = [pytest.mark.timeout(60)]


def _links(redis_url: str, **options) -> tuple[DirectLink, DirectLink]:
    wire = DirectLink(Settings(redis_url=redis_url), name="wire", **options)
    plain = DirectLink(Settings(redis_url=redis_url), name="redis-py", **options)
    plain._wire_capable = False
    return wire, plain


def _shown(reply):
    """A reply with its error replies as (class, text), so two can be compared."""
    if isinstance(reply, Exception):
        return (type(reply).__name__, str(reply))
    if isinstance(reply, list):
        return [_shown(item) for item in reply]
    if isinstance(reply, dict):
        return {key: _shown(value) for key, value in reply.items()}
    return reply


def test_the_wire_reads_what_redis_py_reads(redis_url, redis_client):
    wire, plain = _links(redis_url)
    assert wire._wire_capable
    big = b"\xff\x00" * 400_000  # 800 KB: a reply over many recv()s
    script = scripts.load("seq_floor")
    batch = [
        ("SET", "k", big), ("GET", "k"), ("SET", "k2", "v", "NX"), ("SET", "k2", "v", "NX"),
        ("HSET", "h", "a", 1, "b", "é"), ("HGETALL", "h"), ("RPUSH", "l", "x", b"y", 3.5), ("LRANGE", "l", 0, -1),
        ("LPUSH", "k", "x"),  # WRONGTYPE
        ("EVAL", "return {1, redis.error_reply('INNER fails'), {2, 'x'}}", 0),
        ("EVAL", "return redis.error_reply('BOOM it fails')", 0),
        ("EVAL", "return redis.status_reply('FINE')", 0),
        ("BLMOVE", "empty", "empty2", "LEFT", "RIGHT", 0.1),
        ("NOSUCHCOMMAND", 1),
    ]
    redis_client.script_flush()
    with_script = [*batch, script.command(["seq"], [7])]  # NOSCRIPT: sent again as EVAL
    got = {}
    for link in (wire, plain):
        redis_client.delete("k", "k2", "h", "l", "seq")
        got[link.name] = _shown(link.round_trip(with_script, raise_errors=False))
        redis_client.script_flush()
    assert got["wire"] == got["redis-py"]
    replies = got["wire"]
    assert replies[0] is True and replies[1] == big and replies[2] is True and replies[3] is None
    assert replies[5] == {b"a": b"1", b"b": "é".encode()}
    assert replies[8][0] == "ResponseError" and "WRONGTYPE" in replies[8][1]
    assert replies[9] == [1, ("ResponseError", "INNER fails"), [2, b"x"]]
    assert replies[12] is None
    assert int(redis_client.get("seq")) == 7
    assert isinstance(wire._wire, Wire) and plain._wire is None
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        wire.round_trip([("LPUSH", "k", "x")])


def test_a_killed_connection_fails_the_batch_and_the_next_one_reconnects(redis_url, redis_client):
    wire, _ = _links(redis_url)
    assert wire.round_trip([("PING",)]) == [True]
    first = wire._wire
    redis_client.client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.1)
    with pytest.raises(redis.ConnectionError):
        wire.round_trip([("RPUSH", "l", "a")])
    assert wire.round_trip([("RPUSH", "l", "b")])[0] >= 1
    assert wire._wire is not first and wire._wire.sock is wire._conn._sock


def test_closing_the_link_ends_a_blocked_pop(redis_url):
    wire, _ = _links(redis_url, socket_timeout=30.0)
    wire.round_trip([("PING",)])
    started = time.monotonic()
    blocked = gevent.spawn(wire.round_trip, [("BLMOVE", "nothing", "there", "LEFT", "RIGHT", 20)])
    gevent.sleep(0.2)
    wire.close()
    blocked.join(5)
    assert blocked.dead and isinstance(blocked.exception, redis.ConnectionError)
    assert time.monotonic() - started < 3
    assert wire.round_trip([("PING",)]) == [True]  # and it connects again


def test_a_reply_later_than_the_socket_timeout_is_a_timeout(redis_url):
    wire, plain = _links(redis_url, socket_timeout=0.3)
    for link in (wire, plain):
        with pytest.raises(redis.TimeoutError):
            link.round_trip([("BLMOVE", "nothing", "there", "LEFT", "RIGHT", 2)])
        assert not link._conn.is_connected  # dropped: the late reply is never read as another's
        assert link.round_trip([("PING",)]) == [True]
