"""Configuration flows one way: TOML file -> GREENROOM_* environment -> CLI flags -> one frozen Settings."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import gc_tuning
from .errors import ConfigError
from .redis_url import check_prefix, parse_url, redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _default_frontend_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """Every tunable of the daemon, with its default next to its meaning."""

    #: Redis URL: redis://[:password@]host:port/db, rediss:// for TLS, unix:///path.sock; Sentinel:
    #: redis+sentinel://[:password@]host1:26379,host2:26379/service/db (rediss+sentinel:// for TLS);
    #: Cluster: redis+cluster://[:password@]host1:6379,host2:6379 (key_prefix must hold a {hash tag})
    redis_url: str = "redis://127.0.0.1:6379/0"
    # ---- Redis for production (frontend/redis_conn.py, README "Redis for production") ----
    #: the sentinels' own password (their requirepass), when it is not in the URL's
    #: ?sentinel_password=; the data nodes' password is the URL's
    redis_sentinel_password: str = field(default="", repr=False)
    #: replicas that must confirm every batch the dispatchers write (a WAIT after each batch that
    #: moves or acknowledges commands or pushes events); 0: no wait, a fail-over may lose the last
    #: writes. While fewer confirm, the batch is held (not handed on, not forgotten) and WAIT repeated
    redis_wait_replicas: int = 0
    #: seconds one WAIT waits for those replicas before it is sent again
    redis_wait_timeout: float = 1.0
    #: prepended to every Redis key (e.g. "prod:")
    key_prefix: str = ""
    #: this process's id; names the Redis keys it owns (in-flight list, heartbeat)
    frontend_id: str = field(default_factory=_default_frontend_id)
    #: seconds between heartbeats (`frontends:<id>`, expiring after three intervals)
    heartbeat_interval: float = 5.0
    #: seconds between scans for stranded in-flight commands and dead frontends' in-flight lists
    recovery_interval: float = 30.0
    #: several frontends: a frontend's lease lasts this long (renewed every third of it); a frontend
    #: whose lease expired is dead and its rooms are taken over by the live ones
    lease_time: float = 6.0
    #: a frontend stops speaking in its rooms this long before its lease could expire unrenewed
    lease_margin: float = 1.5
    #: this frontend's capacity relative to the others: new rooms go where rooms/weight is lowest
    weight: float = 1.0
    #: a room's `tenant` must name a tenant of the registry (`greenroom tenant add`); off: a free label
    require_tenants: bool = False
    #: when an IRC line counts as delivered where the server lacks echo-message: "pong" (a PING
    #: written after it was answered: nothing lost if the process or link dies; one PING per batch)
    #: or "write" (once written to the socket: cheaper, loses what sat in socket buffers)
    irc_ack: str = "pong"
    #: a command's text limit in UTF-8 bytes; larger commands are rejected as bad_command
    max_text_bytes: int = 16384
    #: seconds a blocking pop of `control` waits before it looks at the stop flag again
    control_block_timeout: float = 1.0
    #: most commands one router step's script takes from `control` (only a backlog fills a step; the
    #: script holds Redis for 5-7 µs a command: about 3 ms for 500, BENCHMARKS.md "Hot path, session 8") ...
    control_drain: int = 500
    #: ... and most bytes (the first item is always taken)
    control_drain_bytes: int = 4 * 1024 * 1024
    #: while `control` has a backlog (a step took its `control_drain`), the router runs its script
    #: again, up to this many commands, and hands them to the rooms at once: each room's wake-up,
    #: write and PING are shared by more lines (1: every step is handed over alone)
    control_batch: int = 10_000
    #: the in-flight window: most commands (and bytes) taken from `control` and not yet written to the
    #: chat server; past it the frontend takes no more, so a backlog waits in Redis, not in memory
    inflight_max: int = 20_000
    inflight_max_bytes: int = 64 * 1024 * 1024
    #: seconds a command's acknowledgement (its HDEL from the in-flight ledger, once its line is
    #: confirmed) may wait to go with others in one round trip (0: each batch at once). A kill -9 in
    #: that time sends those lines again after the restart, as for any line confirmed and not yet
    #: acknowledged; lines, events and their latency are not delayed
    ack_batch_delay: float = 0.005
    #: a `control` item larger than this is dead-lettered without being decoded
    max_item_bytes: int = 65536
    #: inbound chat lines per room: a burst, then lines per second (0: no limit); past it lines are
    #: dropped and counted (greenroom_events_rate_dropped_total)
    room_event_burst: int = 500
    room_event_rate: float = 100.0
    #: most events written to Redis in one pipelined round trip
    event_batch: int = 1000
    #: events kept in memory while Redis is unreachable; past it the oldest are dropped (counted)
    event_buffer: int = 100_000
    #: first and largest delay between reconnects (chat servers and Redis), seconds; full jitter
    reconnect_min: float = 1.0
    reconnect_max: float = 300.0
    #: a connection that stayed up this long resets its backoff
    reconnect_reset_after: float = 60.0
    #: delay before a kicked room rejoins, seconds
    rejoin_delay: float = 10.0
    #: new connections per second per chat server (0: unlimited)
    connect_rate: float = 20.0
    #: seconds to wait for a TCP/TLS connect and for registration
    connect_timeout: float = 30.0
    #: a silent connection is PINGed after this many seconds, and dropped when the PONG is late
    ping_interval: float = 120.0
    ping_timeout: float = 30.0
    #: default flood control for IRC: a burst of lines, then `flood_rate` lines per second
    flood_burst: int = 5
    flood_rate: float = 0.5
    # ---- flood control that learns (frontend/flood_memory.py, README "Flood control that learns") ----
    #: learn from flood disconnects (Excess Flood, SendQ/RecvQ exceeded, a kill that says so): the
    #: server's rate and burst go down for every connection to it, kept in Redis (`servers:flood`)
    flood_learn: bool = True
    #: lines/s a connection without flood control (`"flood": false`, or flood_rate 0) falls back to
    #: after its first flood disconnect
    flood_learn_rate: float = 1.0
    #: a learned rate never goes below this, so a connection always makes progress
    flood_learn_min_rate: float = 0.05
    #: seconds without a flood disconnect after which a learned rate is probed 10 % higher (0: never)
    flood_probe_after: float = 3600.0
    #: the garbage collector runs after this many objects made and not freed (frontend/gc_tuning.py;
    #: Python's own is 700, which cost about 10 % of the CPU at 1,000 busy rooms); 0: Python's
    gc_young_threshold: int = 5_000
    #: unsent lines kept per room; past it the oldest are dropped with an error `flood_dropped`
    room_queue_max: int = 1000
    #: a say/action older than this many seconds when its turn comes is dropped as `stale`
    max_line_age: float = 300.0
    #: most rooms sharing one IRC connection (a new connection, with a suffixed nick, past it)
    channels_per_connection: int = 50
    #: seconds a graceful stop may take before stragglers are killed
    shutdown_timeout: float = 4.0
    #: log level and format (text or json)
    log_level: str = "INFO"
    log_format: str = "text"
    #: host:port of the Prometheus /metrics, /healthz and /readyz server (empty: off)
    metrics_addr: str = "127.0.0.1:9478"
    #: /readyz answers 200 once this share of the rooms in the registry is joined
    ready_share: float = 0.95
    #: /healthz answers 503 when Redis has not answered for this many seconds
    health_redis_age: float = 10.0
    #: host:port of `greenroom web`, the dashboard (binds loopback by default)
    web_addr: str = "127.0.0.1:9479"
    #: the token the dashboard asks for before any action (join, part, requeue, purge); empty: read-only
    web_token: str = field(default="", repr=False)
    # ---- ops: secrets at rest (frontend/sealing.py) and the dashboard (frontend/web/dashboard.py) ----
    #: Fernet keys that seal the secrets of room specs in `rooms`, comma-separated, newest first (the
    #: first seals, any opens); set it in the environment (GREENROOM_SECRETS_KEYS), it is never logged.
    #: Empty (and no secrets_keys_file): specs are stored in clear
    secrets_keys: str = field(default="", repr=False)
    #: or a file with the keys (one a line or comma-separated, newest first), readable by its owner only
    secrets_keys_file: str = ""
    #: with a key configured, seal specs when they are written; false writes them in clear (sealed
    #: ones still open), and `greenroom secrets rotate` then opens every spec
    secrets_seal: bool = True
    #: Host header values the dashboard answers (against DNS rebinding), comma-separated host or
    #: host:port ("*": any); empty: web_addr's own, and localhost, 127.0.0.1, [::1] on its port when
    #: bound to loopback
    web_allowed_hosts: str = ""
    #: bound beyond loopback, the read pages need a login too; true makes them public again
    web_public_reads: bool = False
    #: failed login attempts per window from one client address (IPv6: per /64), and from all
    #: together (not counting loopback clients); past them 429 until the window ends
    web_login_limit: int = 5
    web_login_limit_total: int = 30
    web_login_window: float = 60.0
    #: seconds a dashboard session lasts after the login (logout ends it at once)
    web_session_ttl: float = 43200.0
    # ---- tenants' fair shares of a chat server (frontend/sessions.py, frontend/chat/tenant_share.py) ----
    #: most connections this frontend holds to one chat server at once, shared fairly between tenants
    #: (a freed one goes to the waiting tenant that holds the fewest); rooms past it wait (state
    #: `waiting`, an error `max_connections` once). Set it per server in [servers."host"]; 0: no limit
    max_connections: int = 0
    #: per chat server overrides: {"irc.example.org": {"flood_burst": 10, "flood_rate": 1.0, "connect_rate": 5,
    #: "max_connections": 200}}
    servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_server(self, server: str, name: str) -> Any:
        """A setting with the per-server override applied."""
        return self.servers.get(server, {}).get(name, getattr(self, name))

    def redacted_redis_url(self) -> str:
        """The Redis URL with its password masked, for logs."""
        return redact_url(self.redis_url)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = type(getattr(Settings(frontend_id="x"), name))
    if name == "servers":
        if not isinstance(value, Mapping):
            raise ConfigError("'servers' must be a table of server name -> overrides")
        return {str(k): dict(v) for k, v in value.items()}
    try:
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return kind(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: {value!r} is not a valid {kind.__name__}") from None


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from a TOML file, then ``GREENROOM_*`` variables, then explicit overrides."""
    values: dict[str, Any] = {}
    env = os.environ if env is None else env
    path = path or env.get("GREENROOM_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    for name in _FIELDS:
        if name == "servers":
            continue
        raw = env.get("GREENROOM_" + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            if name not in _FIELDS:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _coerce(name, value)
    settings = Settings(**values)
    if settings.irc_ack not in ("pong", "write"):
        raise ConfigError("irc_ack must be 'pong' or 'write'")
    if settings.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {settings.log_level!r}")
    if settings.lease_time < 1.0 or not 0.0 < settings.lease_margin < settings.lease_time / 2:
        raise ConfigError("lease_time must be at least 1 and lease_margin between 0 and half of it")
    if settings.redis_wait_replicas < 0:
        raise ConfigError("redis_wait_replicas must be 0 (no wait) or more")
    if not 0.01 <= settings.redis_wait_timeout <= 3.0:
        raise ConfigError("redis_wait_timeout must be between 0.01 and 3 seconds")
    check_prefix(parse_url(settings.redis_url), settings.key_prefix)  # RedisUrlError is a ConfigError
    if settings.weight <= 0:
        raise ConfigError("weight must be above 0")
    if not 0.0 <= settings.ack_batch_delay <= 1.0:
        raise ConfigError("ack_batch_delay must be between 0 and 1 second")
    if not 1 <= settings.control_drain <= 5000:
        raise ConfigError("control_drain must be between 1 and 5000")
    if not 1 <= settings.control_batch <= 20000:
        raise ConfigError("control_batch must be between 1 and 20000")
    for name in ("inflight_max", "inflight_max_bytes", "max_item_bytes", "control_drain_bytes",
                 "room_event_burst"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if settings.max_item_bytes < settings.max_text_bytes:
        raise ConfigError("max_item_bytes must not be below max_text_bytes")
    if not 0.0 < settings.flood_learn_min_rate <= settings.flood_learn_rate:
        raise ConfigError("flood_learn_min_rate must be above 0 and at most flood_learn_rate")
    if not 0.0 <= settings.ready_share <= 1.0:
        raise ConfigError("ready_share must be between 0 and 1")
    try:
        gc_tuning.check(settings.gc_young_threshold)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for server, overrides in settings.servers.items():  # the connection budget: a whole number >= 0
        value = overrides.get("max_connections", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"servers.{server!r}: max_connections must be a whole number >= 0, "
                              f"not {value!r}")
    if settings.max_connections < 0:
        raise ConfigError("max_connections must be a whole number >= 0")
    for name in ("metrics_addr", "web_addr"):
        addr = getattr(settings, name)
        if addr and not addr.rpartition(":")[2].isdigit():
            raise ConfigError(f"{name} must be host:port (or empty for off), not {addr!r}")
    return settings
