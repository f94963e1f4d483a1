"""The Frontend: wiring only. It builds the parts, starts them in order and stops them in reverse.

Parts (each gets what it uses, see its module): the in-flight ledger (``inflight``), the outgoing
dispatcher (``outgoing``), the chat session pool (``sessions``), the room registry (``registry``, with
a ``RoomContext`` for its rooms), the router (``router``: ``control`` to the room holders), the
incoming dispatcher (``incoming``: this frontend's commands to its rooms), the lease keeper
(``lease``) and this frontend's membership of the fleet (``membership``: adopt, lose, hand over), the
heartbeat, recovery, the Redis health ping and the systemd watchdog. Every
long-lived loop is a ``Service`` under one ``Supervisor`` that restarts a loop that died.

Start: raise the open-file limit -> wait for Redis -> our lease -> beat, move legacy leftovers back,
load the registry, place every room nobody alive holds and route what an earlier run of this
frontend id held (``adopt.lua``) -> start the outgoing dispatcher, heartbeat, recovery and lease
keeper -> start the rooms this frontend holds -> start the incoming dispatcher and the router ->
READY=1.

Stop (SIGTERM/SIGINT; a second signal exits at once), each phase logged: stop routing and taking
commands -> rooms handle what they accepted -> sessions send it and QUIT -> flush events and acks to
Redis -> hand the rooms to live peers (or leave them unheld for the next frontend) with what is still
in flight (``release.lua``) -> remove the heartbeat -> close Redis. Rooms stay in ``rooms``.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import time
from collections import Counter
from typing import Any, Callable

import gevent
import gevent.event
import redis

from . import __version__, gc_tuning
from .chat.base import SpeakGate
from .config import Settings
from .counters import OTHER_TENANT, Counters
from .heartbeat import Heartbeat
from .incoming import IncomingDispatcher
from .inflight import InflightLedger
from .keys import Keys
from .lease import LeaseKeeper
from .logs import Throttle, flush_throttles
from .membership import Membership
from .metrics import FrontendCollector, Health, MetricsServer, MetricsView, RedisPing, build_registry
from .outgoing import OutgoingDispatcher
from .pacing import Backoff
from .protocol import Spec
from .recovery import Recovery
from .redis_conn import REDIS_ERRORS, DirectLink, shared_client
from .registry import Census, RoomRegistry
from .reload import apply_logging, reload_settings, report
from .room import RoomContext
from .router import Router
from .sealing import sealer_from_settings
from .service import Supervisor
from .sessions import SessionPool
from .systemd import Watchdog, notify
from .tenants import TenantTable

log = logging.getLogger(__name__)

def raise_nofile_limit(rooms_hint: int = 0) -> int:
    """Raise the open-file soft limit to the hard limit; warn when it is below what rooms need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    if rooms_hint and soft < rooms_hint + 64:
        log.error("open-file limit %d is below what %d rooms with their own connections need (%d); "
                  "raise it (ulimit -n, LimitNOFILE=)", soft, rooms_hint, rooms_hint + 64)
    return soft


class Frontend:
    """One greenroom process: the parts, wired."""

    def __init__(self, settings: Settings, *, config_loader: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        #: builds fresh Settings from the config file, env and flags (SIGHUP)
        self.config_loader = config_loader
        fid = settings.frontend_id
        self.keys = keys = Keys(settings.key_prefix)
        self.counters = counters = Counters()
        self.redis: redis.Redis = shared_client(settings)
        self.supervisor = Supervisor(counters)
        self.ledger = InflightLedger(self.redis, keys, fid, max_items=settings.inflight_max,
                                     max_bytes=settings.inflight_max_bytes,
                                     wake_writer=lambda: self.outbox.wake.set(),
                                     ack_delay=settings.ack_batch_delay)
        self.outbox = OutgoingDispatcher(DirectLink(settings, name="outgoing"), settings, keys, self.ledger, counters)
        #: open while this frontend's lease is surely valid: sessions send no room line while closed
        self.gate = SpeakGate(open=False)
        self.sessions = SessionPool(settings, counters=counters, pace_events=self.outbox,
                                    gate=self.gate, redis_client=self.redis)
        self.tenants = TenantTable(self.redis, keys)
        sealer = sealer_from_settings(settings)  # raises ConfigError for a bad key (never shown)
        self.room_context = RoomContext(
            outbox=self.outbox, ledger=self.ledger, sessions=self.sessions, counters=counters, keys=keys,
            frontend_id=fid, settings=lambda: self.settings,
            throttle=Throttle(logging.getLogger("frontend.room"), counter=counters), tenants=self.tenants)
        self.room_context.apply_settings(settings)
        self.registry = RoomRegistry(
            self.room_context,
            self.redis, keys, counters=counters, restart_delay=lambda: self.settings.reconnect_min * 5,
            seal=sealer.seal if sealer.enabled else (lambda spec: spec), open_spec=sealer.open)
        # the blocking pops' socket timeouts outlast the block: redis-py raises TimeoutError otherwise
        self.incoming = IncomingDispatcher(
            link=DirectLink(settings, socket_timeout=settings.control_block_timeout + 5.0,
                            on_connect=self.ledger.seq_floor, name="incoming"),
            ledger=self.ledger, registry=self.registry, outbox=self.outbox,
            counters=counters, settings=settings, frontend_id=fid, keys=keys, tenants=self.tenants,
            wakes=self.room_context.wakes)
        self.router = self._router()
        #: one router more per scoped tenant, for its own intake (``sync_tenants``)
        self.tenant_routers: dict[str, Router] = {}
        self.lease = LeaseKeeper(self.redis, keys, fid, settings=lambda: self.settings, gate=self.gate,
                                 counters=counters, on_lost=lambda taker: self.membership.lost(taker),
                                 on_drain=lambda: self.membership.drain(),
                                 housekeeping=self._housekeeping)
        self.heartbeat = Heartbeat(self.redis, keys.heartbeat(fid), settings.heartbeat_interval,
                                   self.snapshot, after_beat=flush_throttles)
        self.recovery = Recovery(self.redis, keys, self.ledger, control=keys.control,
                                 interval=settings.recovery_interval, counters=counters)
        self.redis_ping = RedisPing(self.redis.ping)
        self.watchdog = Watchdog()
        for service in (self.redis_ping, self.outbox, self.heartbeat, self.recovery, self.lease,
                        self.incoming, self.router, self.watchdog):
            self.supervisor.add(service)
        self.membership = Membership(
            self.redis, keys, settings=lambda: self.settings, registry=self.registry, ledger=self.ledger,
            outbox=self.outbox, counters=counters, supervisor=self.supervisor,
            intake=lambda: [self.router, *self.tenant_routers.values(), self.incoming])
        self._beats = 0
        self.metrics = MetricsServer(
            build_registry(FrontendCollector(counters, self.metrics_view)),
            Health(settings=lambda: self.settings, redis_age=self.redis_age, down=self.supervisor.down,
                   rooms=self._rooms_joined, loaded=lambda: self.registry.loaded,
                   stopping=lambda: self._stopping))
        self.started_at = 0.0
        self._stopped = gevent.event.Event()
        self._stopping = False
        self._starter: gevent.Greenlet | None = None

    def _router(self, tenant: str | None = None) -> Router:
        settings = self.settings
        return Router(link=DirectLink(settings, socket_timeout=settings.control_block_timeout + 5.0,
                                      on_connect=self.ledger.seq_floor,
                                      name=f"router:{tenant}" if tenant else "router"),
                      keys=self.keys, ledger=self.ledger, frontend_id=settings.frontend_id, settings=settings,
                      counters=self.counters, deliver=self.incoming.deliver, adopt=self.incoming.adopt,
                      tenant=tenant)

    def sync_tenants(self) -> None:
        """The tenant registry changed: a router for every scoped tenant's intake, and no other."""
        wanted = set(self.tenants.scoped())
        for name in sorted(set(self.tenant_routers) - wanted):
            router = self.tenant_routers.pop(name)
            self.supervisor.remove(router)
            log.info("tenant %s: no longer scoped, its intake is not read any more", name)
        for name in sorted(wanted - set(self.tenant_routers)):
            router = self.tenant_routers[name] = self._router(name)
            self.supervisor.add(router)
            if self.registry.loaded and not self._stopping:
                self.supervisor.start([router])
            log.info("tenant %s: reading its own intake %s", name, self.keys.tenant_control(name))

    def _housekeeping(self) -> None:
        """After every lease renewal: a changed tenant registry, the tenants' shares of this frontend
        (``chat/tenant_share.py``); now and then, parted placements."""
        if self.tenants.refresh():
            self.sync_tenants()
        self.sessions.tenant_shares.refresh(self.redis, self.keys, self.tenants.tenants,
                                            (room.spec.tenant for room in self.registry.values()))
        self._beats += 1
        if self._beats % 10 == 0:
            self.registry.forget_placements()

    @property
    def rooms(self) -> RoomRegistry:
        """The room map (room id -> Room): the registry."""
        return self.registry

    # ------------------------------------------------------------------------------- views
    def redis_age(self) -> float:
        """Seconds since Redis last answered (an outgoing batch or the health ping)."""
        last = max(self.outbox.redis_ok_at, self.redis_ping.ok_at)
        return time.monotonic() - last if last else float("inf")

    def _rooms_joined(self) -> tuple[int, int]:
        rooms = self.registry.values()
        return len(rooms), sum(1 for room in rooms if room.state == "joined")

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat publishes about this frontend."""
        census = self.registry.census()
        counters = self.counters
        return {
            "id": self.settings.frontend_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "started": self.started_at,
            "rooms": len(self.registry),
            "rooms_by_state": census.by(0),
            "rooms_by_protocol": census.by(1),
            "sessions": len(self.sessions),
            "inflight": len(self.ledger),
            "held": self.lease.held,
            "draining": "1" if self.lease.draining else "0",
            "inflight_oldest_s": round(self.ledger.oldest_age(), 1),
            "outbox": self.outbox.pending,
            "deepest_room_queue": census.deepest,
            "events_pushed": counters["events_pushed"],
            "events_dropped": counters["events_dropped"],
            "commands": {k: v for k, v in counters.items() if k.startswith("commands_")},
            "down": self.supervisor.down() or None,
            "last_error": self.outbox.last_error,
            "tenants": self._tenant_report(census),
        }

    def _tenant_report(self, census: Census) -> dict[str, dict[str, int]]:
        """The heartbeat's ``tenants``: rooms, lines sent and dropped of each registered tenant here,
        and of every other room under ``OTHER_TENANT`` (bounded by the registry, never a key per label)."""
        registered = self.tenants.tenants
        rooms: dict[str, int] = {}
        for label, n in census.by_tenant.items():
            name = label if label in registered else OTHER_TENANT
            rooms[name] = rooms.get(name, 0) + n
        lines = self.counters.by_tenant()
        out = {}
        for name in {*registered, OTHER_TENANT}:
            sent, drops = lines.get(name, (0, 0))
            out[name] = {"rooms": rooms.get(name, 0), "lines_sent": sent, "drops": drops}
        return out

    def metrics_view(self) -> MetricsView:
        sessions: Counter[str] = Counter(getattr(s, "protocol", "?") for s in self.sessions.sessions())
        return MetricsView(census=self.registry.census(yield_every=0), sessions=sessions,
                           outbox_pending=self.outbox.pending, inflight=len(self.ledger),
                           started_at=self.started_at, redis_age=self.redis_age())

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Connect to Redis (waiting while it is down), restore rooms, start the dispatchers."""
        self.started_at = time.time()
        log.info("frontend %s starting (redis %s)", self.settings.frontend_id,
                 self.settings.redacted_redis_url())
        gc_tuning.apply(self.settings.gc_young_threshold)
        self.metrics.start(self.settings.metrics_addr)
        self.supervisor.start([self.redis_ping])
        specs = self._wait_for_redis(self._prepare)
        raise_nofile_limit(len(specs))
        self.supervisor.start([self.outbox, self.heartbeat, self.recovery, self.lease])
        for room_id, (spec, spec_json) in specs.items():
            self.registry.add(room_id, spec, spec_json, record=False)
        if specs:
            log.info("restored %d rooms from the registry (the ones this frontend holds)", len(specs))
        self.registry.count_held()
        self.registry.loaded = True
        self.supervisor.start([self.incoming, self.router, *self.tenant_routers.values()])
        log.info("frontend %s running", self.settings.frontend_id)
        notify("READY=1")
        self.supervisor.start([self.watchdog])

    def _wait_for_redis(self, step: Any) -> Any:
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                return step()
            except REDIS_ERRORS as exc:
                delay = backoff.next()
                log.warning("Redis is not reachable (%s); retrying in %.1fs", exc, delay)
                gevent.sleep(delay)

    def _prepare(self) -> dict[str, tuple[Spec, dict]]:
        """Everything at start that needs Redis; returns the rooms this frontend holds."""
        self.ledger.start()
        self.tenants.refresh()
        self.sync_tenants()
        self.lease.renew()  # alive before anything is routed or taken, so nobody takes us over
        self.heartbeat.beat()
        self.recovery.scan_once()
        specs = self.registry.load(self.redis, self.keys)
        mine = self.membership.adopt(specs)
        return {room: specs[room] for room in sorted(mine) if room in specs}

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop within ``timeout`` seconds (default ``shutdown_timeout``). Idempotent."""
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        notify("STOPPING=1")
        budget = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        if self._starter is not None and not self._starter.dead:
            self._starter.kill()  # still waiting for Redis at start-up
        log.info("stopping: no more commands from %s", self.keys.control)
        self.supervisor.stop([self.router, *self.tenant_routers.values(), self.incoming, self.recovery])
        log.info("stopping: %d rooms finish what they accepted", len(self.registry))
        self.registry.shutdown(timeout=min(1.0, left()))
        log.info("stopping: %d chat sessions send their queues and quit", len(self.sessions))
        self.sessions.close_all("shutting down", timeout=max(0.1, left() - 1.0))
        log.info("stopping: flushing %d items to Redis", self.outbox.pending)
        self.supervisor.stop([self.outbox], timeout=left())
        log.info("stopping: handing the rooms over")
        self.supervisor.stop([self.lease])
        if self.registry.loaded:
            self.membership.hand_over(end_lease=True)
        self.supervisor.stop()  # the rest, in reverse order
        self.heartbeat.remove()
        self.metrics.stop()
        flush_throttles()
        self.redis.close()
        log.info("stopped")
        self._stopped.set()

    def reload(self) -> bool:
        """SIGHUP: re-read the configuration and apply it to every part without leaving any room."""
        old = self.settings
        new = reload_settings(self.config_loader, old)
        if new is None:
            return False
        apply_logging(old, new)
        gc_tuning.apply(new.gc_young_threshold)
        self.settings = new
        for part in (self.ledger, self.outbox, self.incoming, self.router, *self.tenant_routers.values(),
                     self.sessions, self.metrics, self.room_context):
            part.apply_settings(new)
        report(old, new, len(self.registry))
        return True

    def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully; return the exit status."""
        signals = {"count": 0}

        def on_signal(signum: int) -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                log.warning("second signal: exiting at once")
                os._exit(1)
            log.info("signal %s: stopping gracefully", signal.Signals(signum).name)
            gevent.spawn(self.stop)

        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, on_signal, signum)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        self._starter = gevent.spawn(self.start)
        self._stopped.wait()
        return 0
