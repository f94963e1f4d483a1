"""Prometheus metrics, ``/healthz`` and ``/readyz``, served by a gevent WSGI server inside the daemon.

Nothing here sits in a hot loop and nothing here knows the process: the collector reads a frontend's
``Counters`` and a ``view()`` callable (rooms by state, queue depths, sessions, buffers) at scrape time,
so metrics cost nothing per message; no metric has one series per room. ``Health`` answers the two
probes from callables the wiring gives it. ``RedisPing`` is the supervised loop that keeps
"Redis last answered" fresh while nothing else talks to Redis.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from gevent.pywsgi import WSGIServer
from prometheus_client import (CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector,
                               generate_latest)
from prometheus_client.core import (CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import Settings
from .counters import Counters
from .protocol import encode
from .redis_conn import REDIS_ERRORS
from .registry import DEPTH_BUCKETS, Census
from .service import Service

log = logging.getLogger(__name__)

ROOM_STATES = ("new", "waiting", "connecting", "joining", "joined", "backoff", "failed", "parted")


@dataclass
class MetricsView:
    """What the collector reads besides the counters, taken at scrape time."""

    census: Census
    sessions: Counter
    outbox_pending: int
    inflight: int
    started_at: float
    redis_age: float


class FrontendCollector:
    """Reads a frontend's counters and a view of its rooms at scrape time."""

    def __init__(self, counters: Counters, view: Callable[[], MetricsView]) -> None:
        self._counters = counters
        self._view = view

    def describe(self) -> list[Metric]:
        return []  # dynamic; skip the registration-time collect()

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        counters = self._counters
        stats = dict(counters)
        rooms = GaugeMetricFamily("greenroom_rooms", "Rooms by state and protocol", labels=["state", "protocol"])
        by: Counter[tuple[str, str]] = Counter(view.census.by_state_protocol)
        for protocol in ("irc", "xmpp"):
            for state in ROOM_STATES:
                by.setdefault((state, protocol), 0)
        for (state, protocol), n in sorted(by.items()):
            rooms.add_metric([state, protocol], n)
        yield rooms

        running, buckets = 0, []
        for bound, count in zip(list(DEPTH_BUCKETS) + [float("inf")], view.census.depth_counts):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
        yield GaugeHistogramMetricFamily("greenroom_room_queue_depth",
                                         "Rooms by the number of commands and lines waiting in them",
                                         buckets=buckets, gsum_value=view.census.depth_sum)
        yield GaugeMetricFamily("greenroom_room_queue_depth_max", "The deepest room queue", view.census.deepest)

        yield CounterMetricFamily("greenroom_commands_received", "Commands popped from control",
                                  stats.get("commands_received", 0))
        yield CounterMetricFamily("greenroom_commands_applied", "Commands routed to their room",
                                  stats.get("commands_applied", 0))
        yield _labelled(CounterMetricFamily, "greenroom_commands_dead", "Commands dead-lettered, by reason",
                        "reason", counters.labelled("commands_dead", ("bad_command", "unknown_room")))
        yield CounterMetricFamily("greenroom_commands_requeued",
                                  "Commands moved back to control (an earlier run's, a dead frontend's)",
                                  stats.get("commands_requeued", 0))
        yield CounterMetricFamily("greenroom_events_pushed", "Events written to Redis", stats.get("events_pushed", 0))
        yield CounterMetricFamily("greenroom_events_dropped",
                                  "Events dropped because the buffer was full while Redis was down",
                                  stats.get("events_dropped", 0))
        yield CounterMetricFamily("greenroom_reads_held",
                                  "Times a chat connection stopped reading because the event buffer was full "
                                  "(Redis slower than the chat servers: the servers hold the rest)",
                                  stats.get("reads_held", 0))
        yield CounterMetricFamily("greenroom_events_rate_dropped",
                                  "Chat lines dropped because a room was past its inbound limit",
                                  stats.get("events_rate_dropped", 0))
        yield CounterMetricFamily("greenroom_events_unencodable",
                                  "Events dropped because they could not be encoded (a bug)",
                                  stats.get("events_unencodable", 0))
        yield _labelled(CounterMetricFamily, "greenroom_redis_refused",
                        "Commands of a batch that Redis refused (e.g. WRONGTYPE), by what they wrote", "what",
                        counters.labelled("redis_refused", ("list", "registry", "states", "acks")))
        yield GaugeMetricFamily("greenroom_outbox_pending",
                                "Items (events, acks, states) waiting to be written to Redis", view.outbox_pending)
        yield GaugeMetricFamily("greenroom_inflight_commands",
                                "Commands popped and not yet written to the chat server", view.inflight)
        sessions = GaugeMetricFamily("greenroom_chat_sessions", "Open chat connections", labels=["protocol"])
        per_protocol: Counter[str] = Counter({"irc": 0, "xmpp": 0})
        per_protocol.update(view.sessions)
        for protocol, n in sorted(per_protocol.items()):
            sessions.add_metric([protocol], n)
        yield sessions
        yield _labelled(CounterMetricFamily, "greenroom_chat_reconnects", "Chat connections lost and retried",
                        "protocol", counters.labelled("chat_reconnects", ("irc", "xmpp")))
        yield _labelled(CounterMetricFamily, "greenroom_redis_reconnects",
                        "Redis calls that failed and were retried", "component",
                        counters.labelled("redis_reconnects", ("incoming", "outgoing")))
        yield _labelled(CounterMetricFamily, "greenroom_line_drops",
                        "Lines dropped before sending (flood_dropped, stale)", "reason",
                        counters.labelled("line_drops", ("flood_dropped", "stale", "tenant_queued")))
        # by tenant: a label value per registered tenant, every other room under OTHER_TENANT ("_other")
        by_tenant = counters.by_tenant()
        yield _labelled(CounterMetricFamily, "greenroom_tenant_lines_sent",
                        "Lines handed to the chat socket, by tenant (registered ones; _other: the rest)",
                        "tenant", {t: sent for t, (sent, _) in by_tenant.items()})
        yield _labelled(CounterMetricFamily, "greenroom_tenant_line_drops",
                        "Lines dropped before sending, by tenant (registered ones; _other: the rest)",
                        "tenant", {t: dropped for t, (_, dropped) in by_tenant.items()})
        yield _labelled(CounterMetricFamily, "greenroom_loop_crashes",
                        "Background loops that died and were restarted", "loop",
                        counters.labelled("loop_crashes", ("incoming", "outgoing")))
        yield _labelled(CounterMetricFamily, "greenroom_flood_kills",
                        "Disconnects for flooding that lowered a server's learned flood limits", "server",
                        counters.labelled("flood_kills"))
        yield _labelled(GaugeMetricFamily, "greenroom_flood_rate",
                        "The learned flood rate of a server (lines per second), where one was learned",
                        "server", counters.labelled("flood_rate"))
        yield CounterMetricFamily("greenroom_room_crashes", "Room greenlets that died and were restarted",
                                  stats.get("room_crashes", 0))
        yield CounterMetricFamily("greenroom_log_suppressed",
                                  "Repeated log lines folded into a count", stats.get("log_suppressed", 0))
        yield _histogram("greenroom_command_latency_seconds",
                         "Command popped from control -> written to the chat socket", counters.command_latency)
        yield _histogram("greenroom_event_latency_seconds",
                         "Event read from the chat socket -> pushed to Redis", counters.event_latency)
        yield GaugeMetricFamily("greenroom_redis_last_ok_age_seconds", "Seconds since Redis last answered",
                                view.redis_age)
        yield GaugeMetricFamily("greenroom_start_time_seconds", "When this frontend started", view.started_at)


def _labelled(family: Callable[..., Any], name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    metric = family(name, doc, labels=[label])
    for value, n in sorted(values.items()):
        metric.add_metric([value], n)
    return metric


def _histogram(name: str, doc: str, hist: Any) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=hist.buckets(), sum_value=hist.sum)


# ------------------------------------------------------------------------------------------ health
class Health:
    """``/healthz`` and ``/readyz`` from what the wiring says of the process."""

    def __init__(self, *, settings: Callable[[], Settings], redis_age: Callable[[], float],
                 down: Callable[[], dict[str, str]], rooms: Callable[[], tuple[int, int]],
                 loaded: Callable[[], bool], stopping: Callable[[], bool]) -> None:
        self._settings = settings
        self._redis_age = redis_age
        self._down = down
        self._rooms = rooms
        self._loaded = loaded
        self._stopping = stopping

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 while every supervised loop runs and Redis answered within ``health_redis_age`` s."""
        down = self._down()
        if down:
            return 503, {"ok": False, "reason": "; ".join(f"{name}: {why}" for name, why in sorted(down.items())),
                         "down": sorted(down)}
        age = self._redis_age()
        limit = self._settings().health_redis_age
        if age > limit:
            why = "Redis never answered" if age == float("inf") else f"Redis last answered {age:.1f}s ago"
            return 503, {"ok": False, "reason": why}
        return 200, {"ok": True, "redis_age": round(age, 3)}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 once ``ready_share`` of the rooms in the registry are joined."""
        if not self._loaded():
            return 503, {"ready": False, "reason": "starting: the room registry is not loaded yet"}
        if self._stopping():
            return 503, {"ready": False, "reason": "stopping"}
        total, joined = self._rooms()
        share = joined / total if total else 1.0
        required = self._settings().ready_share
        body = {"ready": share >= required, "rooms": total, "joined": joined, "share": round(share, 4),
                "required": required}
        if not body["ready"]:
            body["reason"] = f"{joined} of {total} rooms joined, {required:.0%} required"
            return 503, body
        return 200, body


def build_registry(collector: FrontendCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(collector)
    return registry


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """The gevent WSGI server on ``metrics_addr``: /metrics, /healthz, /readyz."""

    def __init__(self, registry: CollectorRegistry, health: Health) -> None:
        self.registry = registry
        self.health = health
        self.addr = ""
        self._server: WSGIServer | None = None

    def app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(self.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path in ("/healthz", "/readyz"):
            code, doc = (self.health.health if path == "/healthz" else self.health.readiness)()
            start_response(f"{code} {'OK' if code == 200 else 'Service Unavailable'}",
                           [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [encode(doc) + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz, /readyz\n"]

    def start(self, addr: str) -> None:
        """Listen on ``addr`` (host:port); an empty address means off."""
        self.addr = addr
        if not addr:
            return
        server = WSGIServer(parse_addr(addr), self.app, log=None, error_log=log)
        try:
            server.start()
        except (OSError, ValueError) as exc:
            log.error("metrics server cannot listen on %s (%s): /metrics, /healthz and /readyz are off",
                      addr, exc)
        else:
            self._server = server
            log.info("metrics on http://%s/metrics (and /healthz, /readyz)", addr)

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else 0

    def apply_settings(self, new: Settings) -> None:
        """Move to a new address (reload); the old one is closed first."""
        if new.metrics_addr == self.addr:
            return
        self.stop()
        self.start(new.metrics_addr)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None


class RedisPing(Service):
    """Pings Redis every second, so "Redis last answered" is fresh while nothing else talks to it."""

    name = "redis-ping"

    def __init__(self, ping: Callable[[], Any], interval: float = 1.0) -> None:
        super().__init__()
        self._ping = ping
        self.interval = interval
        self.ok_at = 0.0

    def step(self) -> None:
        try:
            self._ping()
            self.ok_at = time.monotonic()
        except REDIS_ERRORS as exc:
            log.debug("health ping: Redis did not answer: %s", exc)
        self.stopping.wait(self.interval)
