"""Prometheus metrics, ``/healthz`` and ``/readyz``, served by a gevent WSGI server inside the daemon.

Nothing here sits in a hot loop. Most figures are read at scrape time from counters the frontend
keeps anyway (``frontend.stats``, the Outbox, the rooms' states) by a custom collector. The few
things that have no counter elsewhere are bumped in ``COUNTS`` (a plain process-wide Counter: an
integer add, no lock) and the two latency histograms are ``FastHistogram``s (a bisect and two adds).
The per-room queue depth is a histogram computed at scrape time: never one series per room.
"""

from __future__ import annotations

import bisect
import logging
import time
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterator

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer
from prometheus_client import (CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector,
                               generate_latest)
from prometheus_client.core import (CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .protocol import encode
from .redis_conn import REDIS_ERRORS

if TYPE_CHECKING:
    from .app import Frontend

log = logging.getLogger(__name__)

DEPTH_BUCKETS = (0, 1, 5, 10, 50, 100, 500, 1000)
ROOM_STATES = ("new", "connecting", "joining", "joined", "backoff", "failed", "parted")


class FrontendCollector:
    """Reads a frontend's own counters and rooms at scrape time."""

    def __init__(self, frontend: "Frontend") -> None:
        self.frontend = frontend

    def describe(self) -> list[Metric]:
        return []  # dynamic; skip the registration-time collect()

    def collect(self) -> Iterator[Metric]:
        fe = self.frontend
        stats = dict(fe.stats)
        rooms = GaugeMetricFamily("greenroom_rooms", "Rooms by state and protocol",
                                  labels=["state", "protocol"])
        by: Counter[tuple[str, str]] = Counter()
        depths = [0] * (len(DEPTH_BUCKETS) + 1)
        depth_sum, deepest = 0, 0
        for room in list(fe.rooms.values()):
            by[(room.state, room.spec.protocol)] += 1
            depth = room.queue_depth()
            depths[bisect.bisect_left(DEPTH_BUCKETS, depth)] += 1
            depth_sum += depth
            deepest = max(deepest, depth)
        for protocol in ("irc", "xmpp"):
            for state in ROOM_STATES:
                by.setdefault((state, protocol), 0)
        for (state, protocol), n in sorted(by.items()):
            rooms.add_metric([state, protocol], n)
        yield rooms

        running, buckets = 0, []
        for bound, count in zip(list(DEPTH_BUCKETS) + [float("inf")], depths):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
        yield GaugeHistogramMetricFamily("greenroom_room_queue_depth",
                                         "Rooms by the number of commands and lines waiting in them",
                                         buckets=buckets, gsum_value=depth_sum)
        yield GaugeMetricFamily("greenroom_room_queue_depth_max", "The deepest room queue", deepest)

        yield CounterMetricFamily("greenroom_commands_received", "Commands popped from control",
                                  stats.get("commands_received", 0))
        yield CounterMetricFamily("greenroom_commands_applied", "Commands routed to their room",
                                  stats.get("commands_applied", 0))
        dead = CounterMetricFamily("greenroom_commands_dead", "Commands dead-lettered, by reason",
                                   labels=["reason"])
        dead.add_metric(["bad_command"], stats.get("commands_dead:bad_command", 0))
        dead.add_metric(["unknown_room"], stats.get("commands_dead:unknown_room", 0))
        for key, n in stats.items():
            code = key.partition(":")[2]
            if key.startswith("commands_dead:") and code not in ("bad_command", "unknown_room"):
                dead.add_metric([code], n)
        yield dead

        outbox = fe.outbox
        yield CounterMetricFamily("greenroom_events_pushed", "Events written to Redis", outbox.pushed)
        yield CounterMetricFamily("greenroom_events_dropped",
                                  "Events dropped because the buffer was full while Redis was down",
                                  outbox.dropped)
        yield GaugeMetricFamily("greenroom_outbox_pending",
                                "Items (events, acks, states) waiting to be written to Redis",
                                outbox.pending)
        yield GaugeMetricFamily("greenroom_inflight_commands",
                                "Commands popped and not yet written to the chat server",
                                sum(fe.inflight.values()))
        sessions = GaugeMetricFamily("greenroom_chat_sessions", "Open chat connections", labels=["protocol"])
        per_protocol: Counter[str] = Counter({"irc": 0, "xmpp": 0})
        for session in fe.sessions.sessions():
            per_protocol[getattr(session, "protocol", "?")] += 1
        for protocol, n in sorted(per_protocol.items()):
            sessions.add_metric([protocol], n)
        yield sessions
        counters = fe.counters
        yield _labelled(CounterMetricFamily, "greenroom_chat_reconnects",
                        "Chat connections lost and retried", "protocol",
                        counters.labelled("chat_reconnects", ("irc", "xmpp")))
        yield _labelled(CounterMetricFamily, "greenroom_redis_reconnects",
                        "Redis calls that failed and were retried", "component",
                        counters.labelled("redis_reconnects", ("incoming", "outgoing")))
        yield _labelled(CounterMetricFamily, "greenroom_line_drops",
                        "Lines dropped before sending (flood_dropped, stale)", "reason",
                        counters.labelled("line_drops", ("flood_dropped", "stale")))
        yield _histogram("greenroom_command_latency_seconds",
                         "Command popped from control -> written to the chat socket",
                         counters.command_latency)
        yield _histogram("greenroom_event_latency_seconds",
                         "Event read from the chat socket -> pushed to Redis", counters.event_latency)
        yield GaugeMetricFamily("greenroom_redis_last_ok_age_seconds",
                                "Seconds since Redis last answered", fe_redis_age(fe))
        yield GaugeMetricFamily("greenroom_start_time_seconds", "When this frontend started",
                                fe.started_at)


def _labelled(family: Callable[..., Any], name: str, doc: str, label: str,
              values: dict[str, int]) -> Metric:
    metric = family(name, doc, labels=[label])
    for value, n in sorted(values.items()):
        metric.add_metric([value], n)
    return metric


def _histogram(name: str, doc: str, hist: Any) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=hist.buckets(), sum_value=hist.sum)


# ------------------------------------------------------------------------------------------ health
#: frontend -> monotonic time of its last successful health ping
_redis_ok_at: "weakref.WeakKeyDictionary[Frontend, float]" = weakref.WeakKeyDictionary()


def fe_redis_age(fe: "Frontend") -> float:
    """Seconds since Redis last answered this frontend (an outbox flush or a health ping)."""
    last = max(fe.outbox.redis_ok_at, _redis_ok_at.get(fe, 0.0))
    return time.monotonic() - last if last else float("inf")


def health(fe: "Frontend") -> tuple[int, dict[str, Any]]:
    """/healthz: 200 while the process runs and Redis answered within ``health_redis_age`` s."""
    age = fe_redis_age(fe)
    limit = fe.settings.health_redis_age
    if age > limit:
        why = "Redis never answered" if age == float("inf") else f"Redis last answered {age:.1f}s ago"
        return 503, {"ok": False, "reason": why}
    return 200, {"ok": True, "redis_age": round(age, 3)}


def readiness(fe: "Frontend") -> tuple[int, dict[str, Any]]:
    """/readyz: 200 once ``ready_share`` of the rooms in the registry are joined."""
    if not getattr(fe, "registry_loaded", False):
        return 503, {"ready": False, "reason": "starting: the room registry is not loaded yet"}
    if getattr(fe, "_stopping", False):
        return 503, {"ready": False, "reason": "stopping"}
    rooms = list(fe.rooms.values())
    joined = sum(1 for room in rooms if room.state == "joined")
    share = joined / len(rooms) if rooms else 1.0
    body = {"ready": share >= fe.settings.ready_share, "rooms": len(rooms), "joined": joined,
            "share": round(share, 4), "required": fe.settings.ready_share}
    if not body["ready"]:
        body["reason"] = f"{joined} of {len(rooms)} rooms joined, {fe.settings.ready_share:.0%} required"
        return 503, body
    return 200, body


def build_registry(fe: "Frontend") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(FrontendCollector(fe))
    return registry


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """The gevent WSGI server on ``metrics_addr`` and the Redis health ping."""

    def __init__(self, fe: "Frontend") -> None:
        self.fe = fe
        self.registry = build_registry(fe)
        self.addr = ""
        self._server: WSGIServer | None = None
        self._pinger: gevent.Greenlet | None = None
        self._stop = gevent.event.Event()

    def app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(self.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path in ("/healthz", "/readyz"):
            code, doc = (health if path == "/healthz" else readiness)(self.fe)
            start_response(f"{code} {'OK' if code == 200 else 'Service Unavailable'}",
                           [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [encode(doc) + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz, /readyz\n"]

    def start(self, addr: str) -> None:
        """Listen on ``addr`` (host:port); an empty address means off."""
        self.addr = addr
        if addr:
            server = WSGIServer(parse_addr(addr), self.app, log=None, error_log=log)
            try:
                server.start()
            except (OSError, ValueError) as exc:
                log.error("metrics server cannot listen on %s (%s): /metrics, /healthz and /readyz "
                          "are off", addr, exc)
            else:
                self._server = server
                log.info("metrics on http://%s/metrics (and /healthz, /readyz)", addr)
        if self._pinger is None:
            self._pinger = gevent.spawn(self._ping_loop)
            self._pinger.name = "health-ping"

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else 0

    def rebind(self, addr: str) -> None:
        """Move to a new address (reload); the old one is closed first."""
        if addr == self.addr:
            return
        self._close_server()
        self.start(addr)

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None

    def stop(self) -> None:
        self._stop.set()
        if self._pinger is not None:
            self._pinger.kill(block=False)
        self._close_server()

    def _ping_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.fe.redis.ping()
                _redis_ok_at[self.fe] = time.monotonic()
            except REDIS_ERRORS as exc:
                log.debug("health ping: Redis did not answer: %s", exc)
            self._stop.wait(1.0)
