"""Redis clients, all built here from one URL and on one retry policy.

``endpoint(url, ...)`` reads a ``redis_url`` (``frontend/redis_url.py``: one server, a Sentinel-managed
primary, a Redis Cluster) and builds every pool and client of the daemon, the ops CLI, the dashboard
and ``backend_sdk`` (``Endpoint.pool``/``client``; ``async_pool``/``async_client`` for
``redis.asyncio``). Their connections follow a promotion (``frontend/redis_follow.py``): a Sentinel
connection asks the sentinels at every connect and treats ``READONLY`` as a lost connection; a cluster
connection talks to the primary of the deployment's hash slot and treats ``MOVED`` likewise.

The dispatchers, which talk to Redis for every batch, each own a ``DirectLink``: one connection,
commands sent in one write and their replies read back, with no automatic retry (a retried BLMOVE
after a lost reply would strand an item, a retried RPUSH duplicate one, so the caller decides). The
blocking pop's link has a socket timeout longer than its block time. With ``redis_wait_replicas`` N a
link appends ``WAIT N`` to each batch and returns only once N replicas confirmed it. Everything else
shares a BlockingConnectionPool, so many greenlets queue for a connection instead of failing when the
pool is exhausted.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, Sequence

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import key_slot
from redis.retry import Retry

from . import redis_follow, scripts
from .redis_wire import PLAIN_CONNECTIONS, Wire
from .config import Settings
from .logs import Throttle
from .redis_url import RedisTarget, check_prefix, parse_url

log = logging.getLogger(__name__)

#: errors after which a Redis call is worth retrying (the connection, not the command, failed)
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
#: what a long-running loop catches so that no Redis failure (connection, or a refused command such
#: as OOM or WRONGTYPE) ever kills its greenlet: it logs, backs off and tries again
REDIS_ANY = (redis.RedisError,)
#: the dispatchers' own reconnect delays: short, so work resumes within ~1 s of Redis returning
REDIS_BACKOFF_BASE = 0.05
REDIS_BACKOFF_CAP = 1.0


def retry_policy(retries: int = 3) -> Retry:
    """The one retry policy every Redis client uses: exponential backoff with jitter."""
    return Retry(ExponentialWithJitterBackoff(cap=REDIS_BACKOFF_CAP, base=REDIS_BACKOFF_BASE), retries,
                 supported_errors=REDIS_ERRORS)


class Endpoint:
    """The Redis one URL names, and how to connect to it: one per URL and key prefix in a process
    (``endpoint()``), so the sentinel clients and the cluster topology are shared by its pools."""

    def __init__(self, url: str, *, key_prefix: str = "", sentinel_password: str | None = None) -> None:
        self.target: RedisTarget = parse_url(url, sentinel_password=sentinel_password or None)
        check_prefix(self.target, key_prefix)
        self.key_prefix = key_prefix
        self.slot = key_slot(key_prefix.encode("utf-8")) if self.target.kind == "cluster" else None
        self._sentinel: Any = None
        self._router: redis_follow.SlotRouter | None = None

    @property
    def kind(self) -> str:
        return self.target.kind

    # ------------------------------------------------------------------------------------ sync
    def pool(self, *, blocking: bool = True, max_connections: int | None = None, timeout: float | None = None,
             **options: Any) -> redis.ConnectionPool:
        """A connection pool (``BlockingConnectionPool`` when ``blocking``); ``options`` go to each
        connection (socket timeouts, retry, ...)."""
        sizing = _pool_sizing(max_connections, blocking, timeout)
        target = self.target
        if target.kind == "direct":
            cls = redis.BlockingConnectionPool if blocking else redis.ConnectionPool
            return cls.from_url(target.url, **sizing, **options)
        kwargs = {**options, **target.node_kwargs()}
        ssl = kwargs.pop("ssl", False)
        if target.kind == "sentinel":
            conn_cls = redis_follow.SentinelPrimarySSLConnection if ssl else redis_follow.SentinelPrimaryConnection
            pool_cls = redis_follow.BlockingSentinelPool if blocking else redis_follow.SentinelConnectionPool
            return pool_cls(target.service, self.sentinel(), is_master=True, connection_class=conn_cls,
                            **sizing, **kwargs)
        kwargs.pop("db", None)
        conn_cls = redis_follow.SlotSSLConnection if ssl else redis_follow.SlotConnection
        cls = redis.BlockingConnectionPool if blocking else redis.ConnectionPool
        return cls(connection_class=conn_cls, slot_router=self.router(), **sizing, **kwargs)

    def client(self, *, blocking: bool = True, max_connections: int | None = None, timeout: float | None = None,
               single_connection_client: bool = False, **options: Any) -> redis.Redis:
        """A ``redis.Redis`` on a pool of this endpoint."""
        return redis.Redis(connection_pool=self.pool(blocking=blocking, max_connections=max_connections,
                                                     timeout=timeout, **options),
                           single_connection_client=single_connection_client)

    def sentinel(self) -> Any:
        """redis-py's ``Sentinel`` over the URL's sentinels (one per endpoint)."""
        if self._sentinel is None:
            from redis.sentinel import Sentinel

            self._sentinel = Sentinel(self.target.hosts, sentinel_kwargs=self._discovery_kwargs(sentinel=True))
        return self._sentinel

    def router(self) -> redis_follow.SlotRouter:
        """Where the deployment's slot is served (one per endpoint)."""
        if self._router is None:
            assert self.slot is not None
            self._router = redis_follow.SlotRouter(self.target.hosts, self.slot, **self._discovery_kwargs())
        return self._router

    def _discovery_kwargs(self, *, sentinel: bool = False) -> dict[str, Any]:
        t = self.target
        out: dict[str, Any] = dict(t.tls_options)
        if sentinel:
            out.update(socket_timeout=redis_follow.DISCOVERY_TIMEOUT,
                       socket_connect_timeout=redis_follow.DISCOVERY_TIMEOUT, retry=redis_follow.no_retry())
            if t.sentinel_password:
                out["password"] = t.sentinel_password
            if t.sentinel_username:
                out["username"] = t.sentinel_username
        else:
            if t.password:
                out["password"] = t.password
            if t.username:
                out["username"] = t.username
        return out

    # --------------------------------------------------------------------------------- asyncio
    def async_pool(self, *, blocking: bool = True, max_connections: int | None = None,
                   timeout: float | None = None, **options: Any) -> Any:
        """A ``redis.asyncio`` pool of this endpoint (for ``backend_sdk.aio``)."""
        import redis.asyncio as aredis

        from . import redis_follow_aio as follow

        sizing = _pool_sizing(max_connections, blocking, timeout)
        target = self.target
        if target.kind == "direct":
            cls = aredis.BlockingConnectionPool if blocking else aredis.ConnectionPool
            return cls.from_url(target.url, **sizing, **options)
        kwargs = {**options, **target.node_kwargs()}
        ssl = kwargs.pop("ssl", False)
        # asyncio clients bind to the loop that first uses them: each pool gets its own sentinel
        # clients or topology (the sync ones are shared by the endpoint's pools)
        if target.kind == "sentinel":
            from redis.asyncio.sentinel import Sentinel

            skw = self._discovery_kwargs(sentinel=True)
            skw["retry"] = follow.no_retry()
            conn_cls = follow.SentinelPrimarySSLConnection if ssl else follow.SentinelPrimaryConnection
            pool_cls = follow.BlockingSentinelPool if blocking else follow.SentinelConnectionPool
            return pool_cls(target.service, Sentinel(target.hosts, sentinel_kwargs=skw), is_master=True,
                            connection_class=conn_cls, **sizing, **kwargs)
        assert self.slot is not None
        router = follow.SlotRouter(target.hosts, self.slot, **self._discovery_kwargs())
        kwargs.pop("db", None)
        conn_cls = follow.SlotSSLConnection if ssl else follow.SlotConnection
        cls = aredis.BlockingConnectionPool if blocking else aredis.ConnectionPool
        return cls(connection_class=conn_cls, slot_router=router, **sizing, **kwargs)

    def async_client(self, *, blocking: bool = True, max_connections: int | None = None,
                     timeout: float | None = None, single_connection_client: bool = False, **options: Any) -> Any:
        import redis.asyncio as aredis

        return aredis.Redis(connection_pool=self.async_pool(blocking=blocking, max_connections=max_connections,
                                                            timeout=timeout, **options),
                            single_connection_client=single_connection_client)

    def __repr__(self) -> str:
        return f"<Endpoint {self.target.kind} {self.target.redacted}>"


@functools.lru_cache(maxsize=64)
def endpoint(url: str, key_prefix: str = "", sentinel_password: str = "") -> Endpoint:
    """The ``Endpoint`` of ``url`` (one per URL, prefix and sentinel password in this process).
    Raises ``RedisUrlError`` (a ``ConfigError`` and ``ValueError``) for a URL it cannot use."""
    return Endpoint(url, key_prefix=key_prefix, sentinel_password=sentinel_password)


def settings_endpoint(settings: Settings) -> Endpoint:
    return endpoint(settings.redis_url, settings.key_prefix, settings.redis_sentinel_password)


def client_for(settings: Settings, **options: Any) -> redis.Redis:
    """A client for one-off work (the ops CLI, the dashboard): short timeouts, a small pool."""
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 3.0)
    return settings_endpoint(settings).client(max_connections=options.pop("max_connections", 8), **options)


def shared_client(settings: Settings, *, max_connections: int = 16) -> redis.Redis:
    """A client for short commands, shared by many greenlets."""
    return settings_endpoint(settings).client(
        max_connections=max_connections, timeout=None, socket_timeout=5.0, socket_connect_timeout=3.0,
        socket_keepalive=True, health_check_interval=30, retry=retry_policy())


class PackError(ValueError):
    """A batch could not be encoded for the wire (a value Redis cannot carry): nothing was sent."""


class DirectLink:
    """One Redis connection for one greenlet: a batch of commands in one write, replies in one read.

    redis-py's ``Pipeline`` checks a connection out of a pool and polls it before every use; under
    gevent that poll costs more CPU than the round trip itself (``tests/bench``: 232 µs against 88 µs
    for an RPUSH and an EVAL). The link connects on first use, so it can be built while Redis is down.

    A promotion: the connection is built by the URL's endpoint, so a (re)connect goes to the current
    primary (Sentinel) or to the slot's primary (Cluster); ``READONLY``/``MOVED`` replies drop it like
    a connection error. ``on_connect`` gives commands sent ahead of the first batch of every new
    connection, in the same write (the ledger's sequence floor: a promoted replica may lag behind).

    ``redis_wait_replicas`` N: ``WAIT N`` ends every batch, and ``round_trip`` returns only once N
    replicas confirmed it. While fewer do, it sends ``WAIT`` again (nothing is re-sent: the writes are
    on the primary already), logging; a connection error meanwhile raises as usual (the caller then
    treats the batch as failed: it may have been written, it was not confirmed).
    """

    def __init__(self, settings: Settings, socket_timeout: float = 5.0, *,
                 on_connect: Callable[[], Sequence[tuple[Any, ...]]] | None = None,
                 name: str = "link") -> None:
        pool = settings_endpoint(settings).pool(
            blocking=False, socket_timeout=socket_timeout, socket_connect_timeout=3.0,
            socket_keepalive=True, health_check_interval=0, retry=retry_policy(0))
        self._client = redis.Redis(connection_pool=pool)
        self._conn = pool.make_connection()
        #: batches go through ``redis_wire.Wire`` on a plain connection (the others: redis-py's path)
        self._wire_capable = type(self._conn) in PLAIN_CONNECTIONS
        self._wire: Wire | None = None
        self._on_connect = on_connect
        self.name = name
        self.wait_replicas = max(0, int(settings.redis_wait_replicas))
        self._wait_ms = max(1, int(settings.redis_wait_timeout * 1000))
        self._closes = 0
        self._throttle = Throttle(log)
        #: batches whose WAIT had to be repeated, and the seconds spent repeating them
        self.waits_repeated = 0
        self.wait_seconds = 0.0

    def round_trip(self, commands: Sequence[tuple[Any, ...]], *, raise_errors: bool = True) -> list[Any]:
        """Send ``commands`` (each ``(NAME, *args)``) in one write and return their replies in order.

        An error reply is raised once every reply is read (the first one), or with ``raise_errors``
        False returned in its place, so the caller can tell which command failed. An EVALSHA that
        Redis answers NOSCRIPT (its script cache was emptied) is sent again as EVAL at once. A batch
        that cannot be encoded raises ``PackError`` before anything is sent. Any other failure
        (connection, timeout, a kill, a promotion) drops the connection, so a reply is never left
        unread. With ``wait_replicas`` it returns once that many replicas have the batch.
        """
        conn = self._conn
        try:
            packed = self._pack(commands)
        except (UnicodeEncodeError, TypeError, ValueError, OverflowError, redis.DataError) as exc:
            raise PackError(f"a command of the batch cannot be sent: {exc}") from exc
        closes = self._closes
        replies: list[Any] = []
        try:
            ahead: list[tuple[Any, ...]] = []
            if not conn.is_connected:
                conn.connect()  # through the endpoint: the current primary, the slot's node
                if self._on_connect is not None:
                    ahead = list(self._on_connect())
            tail = [("WAIT", self.wait_replicas, self._wait_ms)] if self.wait_replicas else []
            batch = [*ahead, *commands, *tail]
            if ahead or tail:
                packed = [*self._pack(ahead), *packed, *self._pack(tail)]
            wire = self._wire_of(conn)
            if wire is not None:  # a plain connection: written and read here (``redis_wire``)
                wire.send(packed[0] if len(packed) == 1 else b"".join(packed))
                read = wire.read
                for command in batch:
                    replies.append(read(command[0]))
            else:
                conn.send_packed_command(packed)
                for command in batch:
                    replies.append(self._parse(conn, command[0]))
            evaled = False
            for i, reply in enumerate(replies):
                if isinstance(reply, redis.ResponseError) and batch[i][0] == "EVALSHA" \
                        and scripts.is_noscript(reply):
                    replies[i] = self._eval_instead(batch[i])
                    evaled = True
            for reply in replies[:len(ahead)]:
                if isinstance(reply, redis.ResponseError):
                    raise reply  # a connection whose preamble failed is dropped: the next one sends it again
            if tail:
                confirmed = replies.pop()
                if isinstance(confirmed, redis.ResponseError):
                    raise confirmed
                if evaled:
                    confirmed = self._wait_once()  # the EVALs ran after the batch's WAIT
                if int(confirmed) < self.wait_replicas:
                    self._wait_for_replicas(int(confirmed), closes)
        except BaseException:
            conn.disconnect()
            raise
        replies = replies[len(ahead):]
        if raise_errors:
            for reply in replies:
                if isinstance(reply, redis.ResponseError):
                    raise reply
        return replies

    def _pack(self, commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
        """The commands packed (the same bytes on either path: both pack with hiredis)."""
        if not commands:
            return []
        return [Wire.pack(commands)] if self._wire_capable else self._conn.pack_commands(commands)

    def _wire_of(self, conn: Any) -> Wire | None:
        """The ``Wire`` of the connected socket (a new one after every reconnect), or None for
        connections that keep redis-py's path."""
        if not self._wire_capable:
            return None
        wire = self._wire
        if wire is None or wire.sock is not conn._sock:
            if conn._sock is None:
                return None  # not connected: redis-py's path connects (or raises)
            wire = self._wire = Wire.for_connection(conn, self._client)
            if wire is None:  # a connection redis_wire cannot read like redis-py: its path from now on
                self._wire_capable = False
        return wire

    def _parse(self, conn: Any, name: str) -> Any:
        """One reply read through redis-py; an error reply is returned, not raised."""
        try:
            return self._client.parse_response(conn, name)
        except redis.ResponseError as exc:
            return exc

    def _one(self, command: tuple[Any, ...]) -> Any:
        """One command on the connected link, its reply (an error reply returned)."""
        conn = self._conn
        wire = self._wire_of(conn)
        if wire is not None:
            wire.send(Wire.pack([command]))
            return wire.read(command[0])
        conn.send_packed_command(conn.pack_command(*command))
        return self._parse(conn, command[0])

    def _wait_once(self) -> int:
        confirmed = self._one(("WAIT", self.wait_replicas, self._wait_ms))
        if isinstance(confirmed, redis.ResponseError):
            raise confirmed
        return int(confirmed)

    def _wait_for_replicas(self, confirmed: int, closes: int) -> None:
        """Fewer than ``wait_replicas`` confirmed the batch: WAIT again until enough do (the batch is
        on the primary; sending it again would duplicate it), or the link is closed or fails."""
        started = time.monotonic()
        self.waits_repeated += 1
        while confirmed < self.wait_replicas:
            if self._closes != closes:
                raise redis.ConnectionError("link closed while waiting for replicas to confirm a batch")
            self._throttle.warning(
                "wait", "%s: %d of %d replicas confirmed the last batch within %.2fs; holding it and waiting "
                "again (%.1fs so far)", self.name, confirmed, self.wait_replicas, self._wait_ms / 1000,
                time.monotonic() - started)
            confirmed = self._wait_once()
        took = time.monotonic() - started
        self.wait_seconds += took
        if took > 1.0:
            log.info("%s: %d replicas confirmed the held batch after %.1fs", self.name, confirmed, took)

    def _eval_instead(self, command: tuple[Any, ...]) -> Any:
        script = scripts.by_sha(command[1])
        if script is None:
            return redis.ResponseError(f"NOSCRIPT and no script with SHA {command[1]} is known")
        return self._one(("EVAL", script.text, *command[2:]))

    def close(self) -> None:
        """Drop the connection (a blocked pop or a WAIT in progress ends with an error); the next
        round trip connects again."""
        self._closes += 1
        self._conn.disconnect()
        self._client.close()


def _pool_sizing(max_connections: int | None, blocking: bool, timeout: float | None) -> dict[str, Any]:
    """The size arguments of a pool (sync or asyncio): a bound, and a checkout timeout when blocking."""
    sizing: dict[str, Any] = {}
    if max_connections is not None:
        sizing["max_connections"] = max_connections
    if blocking:
        sizing["timeout"] = timeout
    return sizing
