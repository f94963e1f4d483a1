"""Logging set-up: text or JSON lines on stderr, control characters escaped, repeated warnings folded.

Every line is one line: in text logs a CR, LF, ESC, BEL or any other control character in a message
(a room id, a nick, a line from a chat server) is written as an escape (``\\n``, ``\\x1b``), so nothing
read from the outside can forge a log line or drive the operator's terminal; JSON lines escape them by
construction. ``Throttle`` folds a warning that repeats (one per rejected item, say) into one line per
interval with a count. Room-scoped lines start with ``room <id>:``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import weakref
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def escape_json(text: str) -> str:
    """JSON text with DEL, C1 controls, U+2028/U+2029 and lone surrogates written as ``\\u`` escapes
    (JSON already escapes C0): the same string once decoded, and safe to show in a terminal."""
    return _JSON_UNSAFE.sub(lambda m: "\\u%04x" % ord(m.group()), text)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1, line/paragraph separators) and lone
    surrogate escaped."""
    if _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text)
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), "\\x%02x" % ord(m.group())
                                             if ord(m.group()) < 0x100 else "\\u%04x" % ord(m.group())),
                        text)


class EscapingFormatter(logging.Formatter):
    """The text format; the message (with its arguments) has its control characters escaped.
    A traceback keeps its own line breaks (it is ours), each of its lines escaped the same way."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.getMessage())
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return "\n".join(escape_controls(line) for line in super().formatException(ei).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # JSON escapes C0 controls; the rest too, so the line stays valid JSON and reads safely
        return escape_json(json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level.upper() != "DEBUG":
        logging.getLogger("slixmpp").setLevel(logging.WARNING)


class Throttle:
    """At most one line per ``key`` per ``interval`` seconds; the ones held back are counted and
    said in the next line of that key (``... (and 1234 more like this in the last 10s)``).

    No timer: the count is reported when the key logs again, or by ``flush()`` (a periodic caller
    such as the heartbeat, and shutdown). Keys are bounded: past ``max_keys`` the oldest is flushed.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, *, max_keys: int = 1000,
                 counter: Any = None) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._counter = counter  # a Counters (``log_suppressed``) or None
        self._state: dict[str, list[Any]] = {}  # key -> [last logged (monotonic), held back, level]
        _THROTTLES.add(self)

    def log(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        state = self._state.get(key)
        if state is not None and now - state[0] < self.interval:
            state[1] += 1
            if self._counter is not None:
                self._counter["log_suppressed"] += 1
            return
        held = state[1] if state is not None else 0
        if state is None and len(self._state) >= self.max_keys:
            self._flush_one(next(iter(self._state)))
        self._state[key] = [now, 0, level]
        if held:
            msg += " (and %d more like this in the last %.0fs)"
            args = (*args, held, self.interval)
        self.logger.log(level, msg, *args)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, key, msg, *args)

    def flush(self) -> None:
        """Say every count held back, and forget keys that have been quiet for an interval."""
        now = time.monotonic()
        for key in list(self._state):
            state = self._state[key]
            if state[1]:
                self._flush_one(key)
            elif now - state[0] >= self.interval:
                del self._state[key]

    def _flush_one(self, key: str) -> None:
        state = self._state.pop(key)
        if state[1]:
            self.logger.log(state[2], "%d more like %r held back in the last %.0fs", state[1], key,
                            self.interval)


_THROTTLES: "weakref.WeakSet[Throttle]" = weakref.WeakSet()


def flush_throttles() -> None:
    """Say what every live ``Throttle`` held back (called after each heartbeat, and at shutdown)."""
    for throttle in list(_THROTTLES):
        throttle.flush()
