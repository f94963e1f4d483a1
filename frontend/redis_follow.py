"""Connections that follow the primary: through Sentinel, and to the node of a cluster slot.

Every greenroom connection to a Sentinel-managed Redis or a Redis Cluster is one of these classes,
whichever way redis-py connects it (a pool handing it out, a retried command, a ``DirectLink``
writing to it first: redis-py 8's own ``SentinelManagedConnection`` asks the sentinels only in
``connect()``, and a connection written to without it goes to ``localhost:6379``):

- ``SentinelPrimaryConnection`` asks the sentinels (redis-py's ``Sentinel.discover_master``) at every
  connect, and a ``READONLY`` reply (the node it talks to was demoted) disconnects it and raises
  ``ConnectionError``, so the retry or the caller's next attempt reaches the promoted primary;
- ``SlotConnection`` talks to the primary of one hash slot, the deployment's (every greenroom key of
  one ``key_prefix`` lives there, README), found in redis-py's ``RedisCluster`` topology
  (``SlotRouter``). ``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN`` and ``READONLY`` replies and
  connection failures mark the topology stale and raise ``ConnectionError``; the next connect reads
  the topology again and goes to the slot's new primary.

So a client on these connections behaves like one on a single Redis: pipelines, transactions, WATCH
and the scripts that build key names from the prefix all work unchanged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (AskError, ClusterDownError, MovedError, ReadOnlyError, RedisClusterException,
                              TryAgainError)
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection

log = logging.getLogger(__name__)

#: replies after which the slot's primary is somewhere else (or about to be)
CLUSTER_MOVES = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError)
#: seconds the topology and sentinel queries wait for one node (a dead host must not stall a reconnect)
DISCOVERY_TIMEOUT = 1.0


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


# --------------------------------------------------------------------------------------- Sentinel
class SentinelPrimaryConnection(SentinelManagedConnection):
    """A connection to the primary the sentinels name now, resolved at every connect."""

    def _connect_retry(self) -> None:
        if self._sock:
            return
        if not self.connection_pool.is_master:
            super()._connect_retry()
            return
        self.connect_check_health(check_health=self.connection_pool.check_connection,
                                  retry_socket_connect=False)

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class SentinelPrimarySSLConnection(SentinelPrimaryConnection, redis.SSLConnection):
    pass


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool with ``BlockingConnectionPool``'s queue: greenlets wait for a
    connection instead of failing when all are in use."""


# ---------------------------------------------------------------------------------------- Cluster
class SlotRouter:
    """Where one hash slot's primary is, from redis-py's ``RedisCluster`` topology (``CLUSTER SLOTS``
    of any reachable node). Built on first use, so it may be created while the cluster is down;
    read again after ``mark_stale()``. Shared by every connection of an endpoint."""

    def __init__(self, seeds: Sequence[tuple[str, int]], slot: int, **node_options: Any) -> None:
        self.seeds = list(seeds)
        self.slot = slot
        self._options = node_options
        self._cluster: RedisCluster | None = None
        self._stale = False
        self._lock = threading.RLock()
        self.refreshes = 0

    def address(self) -> tuple[str, int]:
        """The slot's primary now (reading the topology first when it is stale)."""
        with self._lock:
            try:
                if self._cluster is None:
                    self._cluster = RedisCluster(
                        startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
                        require_full_coverage=False, socket_timeout=DISCOVERY_TIMEOUT,
                        socket_connect_timeout=DISCOVERY_TIMEOUT, retry=no_retry(),
                        **self._options)
                    self._stale = False
                elif self._stale:
                    self.refreshes += 1
                    self._cluster.nodes_manager.initialize()
                    self._stale = False
                node = self._cluster.nodes_manager.get_node_from_slot(self.slot)
            except (RedisClusterException, redis.RedisError, OSError) as exc:
                self._stale = True
                raise redis.ConnectionError(f"Redis Cluster: no primary found for slot {self.slot}: {exc}") from exc
        return node.host, int(node.port)

    def mark_stale(self) -> None:
        self._stale = True

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None


class SlotConnection(redis.Connection):
    """A connection to the primary of ``slot_router``'s slot, wherever it is now."""

    def __init__(self, *, slot_router: SlotRouter, **kwargs: Any) -> None:
        self.slot_router = slot_router
        super().__init__(**kwargs)

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        self.host, self.port = self.slot_router.address()
        try:
            super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_router.mark_stale()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except CLUSTER_MOVES as exc:
            self.disconnect()
            self.slot_router.mark_stale()
            raise redis.ConnectionError(f"slot {self.slot_router.slot} is not served here any more "
                                        f"({type(exc).__name__}: {exc})") from exc
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_router.mark_stale()
            raise

    def __repr__(self) -> str:
        return f"<SlotConnection slot={self.slot_router.slot} host={self.host} port={self.port}>"


class SlotSSLConnection(SlotConnection, redis.SSLConnection):
    pass
