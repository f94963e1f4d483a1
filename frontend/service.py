"""One lifecycle for every long-lived loop, and the supervisor that keeps them running.

A ``Service`` is a loop in its own greenlet: ``start()`` (idempotent) spawns it, ``stop(timeout)`` sets
its one stop Event, lets it finish its current step, and kills it if it does not within ``timeout``.
A subclass writes ``step()`` (one iteration; it may block cooperatively, and waits on ``self.stopping``
rather than sleeping) and, if it needs them, ``setup()`` (run at every (re)start, before the first
step) and ``on_stop()`` (wake a step that blocks elsewhere, close a connection).

The ``Supervisor`` (after huey's consumer and gevent's ``BaseServer``) starts services in order, stops
them in reverse, and restarts any that dies: the crash is logged with its traceback and counted
(``loop_crashes:<name>``), the restart waits a short, growing delay (so a loop that crashes at once
does not spin), and ``down()`` names what is not running, which ``/healthz`` reports. A step should
catch what it expects (Redis errors, a bad item: set it aside and go on); the supervisor is for the
rest, the bugs. ``GreenletExit`` and ``SystemExit`` are never swallowed.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import gevent
import gevent.event
from gevent import GreenletExit

from .counters import Counters
from .pacing import Backoff

log = logging.getLogger(__name__)

#: a restarted loop that then ran this long without crashing resets its restart delay
HEALTHY_AFTER = 30.0


class Service:
    """A long-lived loop with one stop Event. Subclasses write ``step()``."""

    #: a short name for logs, metrics and health ("incoming", "outgoing", ...)
    name = "service"

    def __init__(self) -> None:
        self.stopping = gevent.event.Event()
        self.greenlet: gevent.Greenlet | None = None
        self.started_at = 0.0

    # -------------------------------------------------------------------------- for subclasses
    def setup(self) -> None:
        """Run at every (re)start of the loop, before the first step."""

    def step(self) -> None:
        """One iteration of the loop."""
        raise NotImplementedError

    def on_stop(self) -> None:
        """``stop()`` was called: wake the step if it blocks on something else than ``stopping``."""

    # -------------------------------------------------------------------------------- lifecycle
    @property
    def wanted(self) -> bool:
        """False for a service that has nothing to do here (it is then never "down")."""
        return True

    @property
    def running(self) -> bool:
        return self.greenlet is not None and not self.greenlet.dead

    def start(self) -> None:
        """Start the loop (a no-op while it runs)."""
        if self.running or self.stopping.is_set():
            return
        self.started_at = time.monotonic()
        self.greenlet = gevent.spawn(self._run)
        self.greenlet.name = self.name

    def reset(self) -> None:
        """After ``stop()``: make the service startable again (a pause, e.g. while rooms move)."""
        if not self.running:
            self.stopping.clear()

    def _run(self) -> None:
        self.setup()
        while not self.stopping.is_set():
            self.step()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop after the current step (killed after ``timeout`` s); True when it ended by itself."""
        self.stopping.set()
        self.on_stop()
        greenlet = self.greenlet
        if greenlet is None or greenlet.dead:
            return True
        if greenlet is gevent.getcurrent():
            return False  # a step stopping its own service: the loop ends after it
        greenlet.join(timeout)
        if greenlet.dead:
            return True
        greenlet.kill(block=True, timeout=1.0)
        return False


class Supervisor:
    """Starts services in order, restarts any that dies, stops them in reverse order."""

    def __init__(self, counters: Counters, *, restart_min: float = 0.1, restart_max: float = 5.0) -> None:
        self._counters = counters
        self._services: list[Service] = []
        self._backoffs: dict[str, Backoff] = {}
        self._restarts: dict[str, gevent.Greenlet] = {}
        self._last_crash: dict[str, str] = {}
        self._restart_min, self._restart_max = restart_min, restart_max
        self._stopping = False

    def add(self, service: Service) -> Service:
        self._services.append(service)
        self._backoffs[service.name] = Backoff(self._restart_min, self._restart_max)
        return service

    def remove(self, service: Service, timeout: float = 1.0) -> None:
        """Stop a service for good and forget it (a tenant's router, when the tenant goes)."""
        service.stop(timeout)
        if service in self._services:
            self._services.remove(service)

    def __iter__(self) -> Any:
        return iter(list(self._services))

    def start(self, services: Iterable[Service] | None = None) -> None:
        """Start the given services (default: all), watching each for a crash."""
        for service in services if services is not None else self._services:
            self._start(service)

    def _start(self, service: Service) -> None:
        service.start()
        if service.greenlet is not None:
            service.greenlet.link_exception(lambda g, s=service: self._crashed(s, g))

    def _crashed(self, service: Service, greenlet: gevent.Greenlet) -> None:
        exc = greenlet.exception
        if isinstance(exc, (GreenletExit, SystemExit)):
            return
        self._counters["loop_crashes:" + service.name] += 1
        self._last_crash[service.name] = repr(exc)[:300]
        info = greenlet.exc_info if greenlet.exc_info and greenlet.exc_info[0] else None
        if self._stopping or service.stopping.is_set():
            log.error("%s died while stopping: %r", service.name, exc, exc_info=info)
            return
        backoff = self._backoffs[service.name]
        if time.monotonic() - service.started_at > HEALTHY_AFTER:
            backoff.reset()
        delay = backoff.next()
        log.error("%s died: %r; restarting it in %.2fs", service.name, exc, delay, exc_info=info)
        self._restarts[service.name] = gevent.spawn_later(delay, self._restart, service)

    def _restart(self, service: Service) -> None:
        self._restarts.pop(service.name, None)
        if not self._stopping and not service.stopping.is_set():
            log.warning("%s: restarted after a crash", service.name)
            self._start(service)

    def down(self) -> dict[str, str]:
        """The services that should run and do not, with why (for ``/healthz``)."""
        out = {}
        for service in self._services:
            if service.wanted and not service.running and not service.stopping.is_set():
                why = self._last_crash.get(service.name)
                out[service.name] = f"restarting after a crash: {why}" if why else "not running"
        return out

    def stop(self, services: Iterable[Service] | None = None, timeout: float = 1.0) -> None:
        """Stop the given services (default: all, in reverse order of adding)."""
        chosen = list(services) if services is not None else list(reversed(self._services))
        if services is None:
            self._stopping = True
            for pending in self._restarts.values():
                pending.kill(block=False)
            self._restarts.clear()
        for service in chosen:
            service.stop(timeout)
