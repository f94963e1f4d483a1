"""CPU of the per-line steps sessions 7 and 8 changed, each beside the forms it replaced (one process, no servers).

    .venv/bin/python -m tests.bench.line_costs

- ``event``: an inbound chat line's event, encoded as ``IrcChannels.on_channel_text`` and ``Room``
  encode it (``encode_fields`` once, then ``encode_event_body``), against the earlier form (ujson's
  options by keyword, the event id from ``new_event_id()`` formatted on its own);
- ``say``: ``parse_command`` of a ``say`` without ``cmd_id`` (what the SDK sends), the automatic
  ``cmd_id`` hashed only when read, against hashing it at once as before (``auto_cmd_id`` right away);
- ``line guard``: ``assert_safe_line`` (every line written passes it), one ``translate`` (session 8)
  against the regular expression search of session 7.

Process time, best of 5 runs of 200,000. ``python -m tests.bench.redis_wire_cost`` times the third
change (a ``DirectLink`` round trip on its ``Wire``).
"""

from __future__ import annotations

import re
import time
from typing import Callable

import ujson

from frontend import protocol
from frontend.text import assert_safe_line

N = 200_000
SAY = b'{"type":"say","room":"r17","text":"bench:1234567890123:42 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
FIELDS = {"from": "sender12", "text": "bench:1234567890123:42 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "private": False}


def per_call(fn: Callable[[], object], n: int = N) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def event_before(head: str) -> tuple[bytes, float]:
    """The event encode of 13833f5: options by keyword, the id formatted by ``new_event_id``."""
    body = ujson.dumps(FIELDS, ensure_ascii=False, escape_forward_slashes=False)
    ts = time.time()
    text = '{"type":"%s",%s%s%s,"event_id":"%s","ts":%r}' % (
        "message", head, "," if len(body) > 2 else "", body[1:-1], protocol.new_event_id(), ts)
    return text.encode("utf-8"), ts


def event_s7(head: str) -> tuple[bytes, float]:
    """The event encode of session 7 (33a14e2): ``ts`` as ``%r`` of ``time.time()``."""
    body = protocol.encode_fields(FIELDS)
    ts = time.time()
    text = '{"type":"%s",%s%s%s,"event_id":"%s-%x","ts":%r}' % (
        "message", head, "," if len(body) > 2 else "", body[1:-1], protocol._EVENT_ID_PREFIX,
        next(protocol._EVENT_ID_COUNTER), ts)
    return text.encode("utf-8"), ts


def event_now(head: str) -> tuple[bytes, float]:
    return protocol.encode_event_body("message", head, protocol.encode_fields(FIELDS))


LINE = b"PRIVMSG #bench-r17 :bench:1234567890123:42 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
_LINE_BREAKER = re.compile(rb"[\r\n\x00]")


def guard_s7(line: bytes = LINE) -> bytes:
    """``text.assert_safe_line`` of session 7: a regular expression search before the CRLF."""
    if not line.endswith(b"\r\n") or _LINE_BREAKER.search(line, 0, len(line) - 2) is not None:
        raise ValueError("unsafe")
    return line


def say_before() -> object:
    protocol.parse_command(SAY)
    return protocol.auto_cmd_id(SAY)  # what 13833f5 did for every command without one


def say_now() -> object:
    return protocol.parse_command(SAY)


def main() -> None:
    head = protocol.event_head("r17", "irc", "acme")
    cases = [("event, before", lambda: event_before(head)), ("event, session 7", lambda: event_s7(head)),
             ("event, now", lambda: event_now(head)),
             ("say, before", say_before), ("say, now", say_now),
             ("line guard, s7", guard_s7), ("line guard, now", lambda: assert_safe_line(LINE))]
    best = {name: min(per_call(fn) for _ in range(5)) for name, fn in cases}
    for name, value in best.items():
        print(f"{name:17s} {value:6.2f} µs")


if __name__ == "__main__":
    main()
