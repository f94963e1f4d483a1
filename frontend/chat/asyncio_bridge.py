"""The asyncio <-> gevent bridge: one asyncio loop for the whole process, run by a greenlet.

How it works
------------
* ``loop()`` creates, on first use, an ``asyncio_gevent.EventLoop`` (a ``SelectorEventLoop`` whose
  selector is gevent's) and runs its ``run_forever`` in a greenlet named ``asyncio-loop``. The loop's
  ``select()`` blocks only that greenlet: while asyncio waits for sockets or timers, the hub runs every
  other greenlet (rooms, IRC, Redis), and each loop iteration yields to the hub, so neither side can
  starve the other. Everything stays in the main thread: no executor, no thread pool.
* asyncio keeps its "running loop" per *thread*, so while the loop greenlet is parked in ``select()``,
  ``asyncio.get_running_loop()`` in any other greenlet returns this loop. That is convenient (slixmpp
  finds it) and dangerous: a plain ``loop.call_soon()`` or ``create_task()`` from a room greenlet only
  appends to the ready queue and does **not** wake the parked selector, so the work would wait for the
  next unrelated socket event or timer. Rule: gevent code reaches asyncio only through ``post``,
  ``call`` and ``run`` below, which use ``call_soon_threadsafe`` (it writes a byte to the loop's
  self-pipe, a gevent-aware socket, which wakes the selector at once).
* Results come back through ``gevent.event.AsyncResult``: the asyncio side sets it (non-blocking), the
  calling greenlet waits on it (cooperative), with a timeout. No busy waiting anywhere.
* The other direction: code that runs *on* the loop (slixmpp event handlers) may call gevent objects
  that never block (``Event.set``, ``Queue.put_nowait``, ``RoomLink`` methods), never anything that
  waits for the loop. One deliberate exception: ``xmpp_client`` yields (``base.give_turn``) between
  slices of a large read, so a burst of stanzas cannot hold every other greenlet; the loop simply
  resumes where it was. ``call``/``run`` from the loop greenlet itself would deadlock; ``call`` runs the function
  directly there and ``run`` refuses.

Only one loop may run in a thread, so test helpers (a slixmpp "human" client) must use ``loop()`` too.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from typing import Any, Awaitable, Callable, TypeVar

import asyncio_gevent
import gevent
import gevent.event

log = logging.getLogger(__name__)

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_greenlet: gevent.Greenlet | None = None
_shut = False  # set by shutdown(): the loop is not restarted after it (the process is exiting)


def loop() -> asyncio.AbstractEventLoop:
    """The process-wide asyncio loop, started in its own greenlet on first use."""
    global _loop, _greenlet
    if _shut and _loop is not None:
        return _loop  # closed or closing: callers get RuntimeError("Event loop is closed")
    if _loop is None or _loop.is_closed() or _greenlet is None or _greenlet.dead:
        _loop = asyncio_gevent.EventLoop()
        _greenlet = gevent.spawn(_run_loop, _loop)
        _greenlet.name = "asyncio-loop"
        atexit.register(shutdown)
    return _loop


def shutdown(timeout: float = 2.0) -> None:
    """Cancel every task, stop and close the loop (at exit, so no task dies half-finalized)."""
    global _shut
    the_loop, greenlet = _loop, _greenlet
    if _shut or the_loop is None or greenlet is None or greenlet.dead or in_loop():
        return
    _shut = True

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks(the_loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let every task see its cancellation

    def start() -> None:
        asyncio.ensure_future(cancel_all()).add_done_callback(lambda _: the_loop.stop())

    try:
        the_loop.call_soon_threadsafe(start)
        greenlet.join(timeout)
    finally:
        if greenlet.dead:
            the_loop.close()
        else:
            greenlet.kill(block=False)


def _run_loop(the_loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(the_loop)
    try:
        # asyncio_gevent.EventLoop.run_forever would spawn yet another greenlet; we already are one
        asyncio.SelectorEventLoop.run_forever(the_loop)  # type: ignore[arg-type]
    except BaseException:  # pragma: no cover - the loop should never die
        log.exception("the asyncio loop stopped with an error")
        raise


def in_loop() -> bool:
    """True when the caller runs on the loop's greenlet (inside an asyncio callback or task)."""
    return _greenlet is not None and gevent.getcurrent() is _greenlet


def post(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on the loop soon; never blocks, result and errors are the callee's business."""
    try:
        loop().call_soon_threadsafe(_guarded, fn, args)
    except RuntimeError:
        if not _shut:
            raise  # after shutdown() there is nothing left to run it


def _guarded(fn: Callable[..., Any], args: tuple) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("error in %r on the asyncio loop", fn)


def call(fn: Callable[..., T], *args: Any, timeout: float | None = 30.0) -> T:
    """Run ``fn(*args)`` on the loop and return its result (or raise its error) to this greenlet."""
    if in_loop():
        return fn(*args)
    result: gevent.event.AsyncResult = gevent.event.AsyncResult()

    def step() -> None:
        try:
            result.set(fn(*args))
        except BaseException as exc:  # handed to the waiting greenlet
            result.set_exception(exc)

    loop().call_soon_threadsafe(step)
    return result.get(timeout=timeout)


def run(factory: Callable[[], Awaitable[T]], *, timeout: float | None = 30.0) -> T:
    """Run the coroutine ``factory()`` as a task on the loop; block this greenlet until it is done.

    On timeout (``gevent.Timeout``) or when this greenlet is killed, the task is cancelled.
    """
    if in_loop():
        raise RuntimeError("aio.run() called on the loop greenlet: it would wait for itself")
    result: gevent.event.AsyncResult = gevent.event.AsyncResult()
    box: list[asyncio.Future] = []

    def done(task: asyncio.Future) -> None:
        if task.cancelled():
            result.set_exception(asyncio.CancelledError())
        elif task.exception() is not None:
            result.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            result.set(task.result())

    def start() -> None:
        try:
            task = asyncio.ensure_future(factory(), loop=loop())
        except BaseException as exc:
            result.set_exception(exc)
            return
        box.append(task)
        task.add_done_callback(done)

    loop().call_soon_threadsafe(start)
    try:
        return result.get(timeout=timeout)
    except BaseException:
        if not result.ready():
            loop().call_soon_threadsafe(lambda: box and box[0].cancel())
        raise
