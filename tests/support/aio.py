"""Running a coroutine to completion from a greenlet, whether or not an asyncio loop already runs.

Once ``frontend.chat.asyncio_bridge`` started its loop (parked in a greenlet of this thread), ``asyncio.run`` can
no longer be used in this process: tests that drive asyncio code go through ``run_async``.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Optional, TypeVar

import gevent.event

T = TypeVar("T")
_own_loop: Optional[asyncio.AbstractEventLoop] = None


def run_async(factory: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Run ``factory()`` to completion from this greenlet on an asyncio_gevent loop.

    When a loop already runs in this thread (``frontend.chat.asyncio_bridge``'s, parked in its own greenlet),
    the coroutine goes to that loop through ``call_soon_threadsafe`` (which wakes its selector) and this
    greenlet waits on a gevent ``AsyncResult``: a second loop cannot run in the same thread. Otherwise
    our own loop (the policy makes it an ``asyncio_gevent.EventLoop``) runs until the coroutine is done.
    That loop is kept, never closed: slixmpp objects collected later call ``loop.call_soon`` in
    ``__del__``, which raises on a closed loop.
    """
    global _own_loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is None:
        if _own_loop is None:
            _own_loop = asyncio.new_event_loop()
        return _own_loop.run_until_complete(asyncio.wait_for(factory(), timeout))
    result: gevent.event.AsyncResult = gevent.event.AsyncResult()

    def start() -> None:
        task = asyncio.ensure_future(asyncio.wait_for(factory(), timeout))
        task.add_done_callback(lambda t: result.set_exception(t.exception()) if t.exception()
                               else result.set(t.result()))

    running.call_soon_threadsafe(start)
    return result.get(timeout=timeout + 5)
