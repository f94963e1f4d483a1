"""``redis_follow`` for ``redis.asyncio`` (``backend_sdk.aio``): the same connections, awaited.

``SentinelPrimaryConnection`` asks the sentinels at every connect (also when redis-py connects it
from ``send_packed_command``, which skips ``connect()``); ``SlotConnection`` talks to the primary of
the deployment's hash slot, found in redis-py's asyncio ``RedisCluster`` topology, and turns
``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN``/``READONLY`` into ``ConnectionError`` after marking the
topology stale. See ``frontend.redis_follow`` for why.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from .redis_follow import CLUSTER_MOVES, DISCOVERY_TIMEOUT


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


class SentinelPrimaryConnection(SentinelManagedConnection):
    """An asyncio connection to the primary the sentinels name now, resolved at every connect."""

    async def _connect_retry(self) -> None:
        if self.is_connected:
            return
        if not self.connection_pool.is_master:
            await super()._connect_retry()
            return
        await self.connect_check_health(check_health=self.connection_pool.check_connection,
                                        retry_socket_connect=False)

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class SentinelPrimarySSLConnection(SentinelPrimaryConnection, aredis.SSLConnection):
    pass


class BlockingSentinelPool(SentinelConnectionPool, aredis.BlockingConnectionPool):
    """redis-py's asyncio Sentinel pool with ``BlockingConnectionPool``'s waiting."""


class SlotRouter:
    """Where one hash slot's primary is, from redis-py's asyncio ``RedisCluster`` topology."""

    def __init__(self, seeds: Sequence[tuple[str, int]], slot: int, **node_options: Any) -> None:
        self.seeds = list(seeds)
        self.slot = slot
        self._options = node_options
        self._cluster: RedisCluster | None = None
        self._stale = False
        self._lock: asyncio.Lock | None = None

    async def address(self) -> tuple[str, int]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                if self._cluster is None:
                    cluster = RedisCluster(
                        startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
                        require_full_coverage=False, socket_timeout=DISCOVERY_TIMEOUT,
                        socket_connect_timeout=DISCOVERY_TIMEOUT, retry=no_retry(), **self._options)
                    await cluster.initialize()
                    self._cluster, self._stale = cluster, False
                elif self._stale:
                    await self._cluster.nodes_manager.initialize()
                    self._stale = False
                node = self._cluster.nodes_manager.get_node_from_slot(self.slot)
            except (RedisClusterException, redis.RedisError, OSError) as exc:
                self._stale = True
                raise redis.ConnectionError(f"Redis Cluster: no primary found for slot {self.slot}: {exc}") from exc
        return node.host, int(node.port)

    def mark_stale(self) -> None:
        self._stale = True

    async def aclose(self) -> None:
        if self._cluster is not None:
            await self._cluster.aclose()
            self._cluster = None


class SlotConnection(aredis.Connection):
    """An asyncio connection to the primary of ``slot_router``'s slot, wherever it is now."""

    def __init__(self, *, slot_router: SlotRouter, **kwargs: Any) -> None:
        self.slot_router = slot_router
        super().__init__(**kwargs)

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self.is_connected:
            return
        self.host, self.port = await self.slot_router.address()
        try:
            await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_router.mark_stale()
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except CLUSTER_MOVES as exc:
            await self.disconnect()
            self.slot_router.mark_stale()
            raise redis.ConnectionError(f"slot {self.slot_router.slot} is not served here any more "
                                        f"({type(exc).__name__}: {exc})") from exc
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_router.mark_stale()
            raise


class SlotSSLConnection(SlotConnection, aredis.SSLConnection):
    pass
