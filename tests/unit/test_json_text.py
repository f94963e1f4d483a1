"""The JSON text greenroom writes (``protocol.dumps``, ``encode``, the event encoders) is exactly what
``ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)`` writes.

``protocol.dumps`` gives ujson its options by position, because ujson matches keyword arguments by
name on every call (0.4-1.1 µs an event encode, BENCHMARKS.md "Hot path, session 7"). If an
installed ujson ordered or meant its positional options otherwise (escaping ``/``, ``\\u00e9`` instead
of UTF-8, ``&`` as ``\\u0026``), these tests fail.
"""

from __future__ import annotations

import json
import math
import re

import ujson
from hypothesis import given, settings, strategies as st

from frontend import protocol

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
                   st.floats(allow_nan=False, allow_infinity=False), TEXT,
                   st.sampled_from(["a/b", "</script>", "é", "日本", "\u2028", "x\x00y", "&<>", "\\", '"']))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(TEXT, inner, max_size=4)), max_leaves=16)


def _reference(obj) -> str:
    return ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)


@settings(max_examples=400, deadline=None)
@given(VALUE)
def test_dumps_writes_what_the_keyword_form_writes(obj) -> None:
    assert protocol.dumps(obj) == _reference(obj)
    assert protocol.encode({"v": obj}) == _reference({"v": obj}).encode("utf-8")


def test_the_options_are_the_ones_meant() -> None:
    text = protocol.dumps({"t": "a/b é &<>", "f": 1 / 3, "ts": 1796160872.5008862})
    assert text == '{"t":"a/b é &<>","f":0.3333333333333333,"ts":1796160872.5008862}'


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, SCALAR, max_size=5), st.sampled_from(sorted(protocol.EVENT_TYPES)),
       st.one_of(st.none(), TEXT))
def test_an_encoded_event_is_the_event_the_builder_makes(fields, type, tenant) -> None:
    """``encode_event`` (one encode of the fields, the room's head made once) is ``event()`` encoded:
    the same fields in the same order, an event id of the same form, a finite ``ts``."""
    fields = {k: v for k, v in fields.items() if k not in ("type", "room", "protocol", "tenant", "event_id", "ts")}
    head = protocol.event_head("r/1 é", "irc", tenant)
    payload, ts = protocol.encode_event(type, head, dict(fields))
    got = ujson.loads(payload)
    want = protocol.event(type, "r/1 é", "irc", tenant, **dict(fields))
    assert list(got) == list(want)
    for key in want:
        if key not in ("event_id", "ts"):
            assert got[key] == want[key] or (isinstance(want[key], float) and math.isclose(got[key], want[key]))
    assert re.fullmatch(re.escape(protocol._EVENT_ID_PREFIX) + r"-[0-9a-f]+", got["event_id"])
    assert got["ts"] == ts and math.isfinite(ts)


def test_event_ids_are_unique_and_share_the_counter() -> None:
    head = protocol.event_head("r1", "irc", None)
    ids = [ujson.loads(protocol.encode_event_body("message", head, '{"text":"x"}')[0])["event_id"]
           for _ in range(50)]
    ids.append(protocol.new_event_id())
    ids += [ujson.loads(protocol.encode_event("pong", head, {})[0])["event_id"] for _ in range(50)]
    assert len(set(ids)) == len(ids)
    counters = [int(i.rsplit("-", 1)[1], 16) for i in ids]
    assert counters == sorted(counters)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(min_value=0, max_value=2 ** 62),
                 st.integers(min_value=1_700_000_000 * 10 ** 9, max_value=2_100_000_000 * 10 ** 9)))
def test_an_events_ts_is_the_float_it_returns_in_microseconds(ns) -> None:
    """``encode_event_body`` writes ``ts`` from the clock's microseconds (``%d.%06d``): the JSON
    number is exactly the float it returns (for the latency histogram), for any clock value."""
    clock = protocol._time_ns
    protocol._time_ns = lambda: ns
    try:
        payload, ts = protocol.encode_event_body("message", protocol.event_head("r1", "irc", None), '{"text":"x"}')
    finally:
        protocol._time_ns = clock
    micros = ns // 1000
    assert ts == micros / 1e6
    text = re.search(rb'"ts":([0-9.]+)}$', payload).group(1).decode()
    assert text == f"{micros // 10 ** 6}.{micros % 10 ** 6:06d}"
    assert json.loads(payload)["ts"] == ts and ujson.loads(payload)["ts"] == ts
