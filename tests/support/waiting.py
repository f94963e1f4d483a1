"""Waiting for a condition with a deadline (never a fixed sleep)."""

from __future__ import annotations

import time
from typing import Any, Callable

import gevent


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, step: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` (cooperatively) until it is truthy and return its value; AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        gevent.sleep(step)
