"""Dead letters (``<events>:dead``, PROTOCOL.md): bounded, and always encodable, whatever the event or the
exception held (a lone surrogate in an error message, a 10 MB item)."""

from __future__ import annotations

import hashlib
import time
import traceback
from typing import Any

from .commands import encode

#: a dead letter keeps at most this much of the event, of the traceback, of the error
DEAD_EVENT_LIMIT = 65536
DEAD_TRACEBACK_LIMIT = 16384
DEAD_ERROR_LIMIT = 2048


def describe(exc: BaseException) -> str:
    """``Type: message``, even when ``str(exc)`` itself fails."""
    try:
        text = str(exc)
    except Exception:  # a hostile or broken __str__
        text = object.__repr__(exc)
    return f"{type(exc).__name__}: {text}"


def _safe(text: str, limit: int, *, tail: bool = False) -> str:
    """``text`` cut to ``limit`` characters (its end when ``tail``), lone surrogates replaced, so that
    a dead letter can always be written."""
    if len(text) > limit:
        text = ("..." + text[-limit:]) if tail else (text[:limit] + "...")
    return text.encode("utf-8", "replace").decode("utf-8")


def dead_entry(raw: bytes, handler: str, error: BaseException | str, consumer: str) -> bytes:
    """The ``<events>:dead`` item: the event as received (at most ``DEAD_EVENT_LIMIT`` bytes; a
    longer one is cut and says its length and digest), the error, the traceback (its end), the
    handler, the consumer and the time. Always encodable, whatever the event or the error held."""
    if isinstance(error, str):
        text, tb = error, ""
    else:
        text = describe(error)
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    entry: dict[str, Any] = {
        "event": raw[:DEAD_EVENT_LIMIT].decode("utf-8", "replace"),
        "error": _safe(text, DEAD_ERROR_LIMIT),
        "traceback": _safe(tb, DEAD_TRACEBACK_LIMIT, tail=True),
        "handler": _safe(handler, DEAD_ERROR_LIMIT),
        "consumer": _safe(consumer, DEAD_ERROR_LIMIT),
        "ts": time.time(),
    }
    if len(raw) > DEAD_EVENT_LIMIT:
        entry.update(event_truncated=True, event_bytes=len(raw),
                     event_digest=hashlib.blake2b(raw, digest_size=16).hexdigest())
    return encode(entry)
