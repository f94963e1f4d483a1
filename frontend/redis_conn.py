"""Redis clients, all built on one retry policy.

Blocking pops get a connection of their own whose socket timeout is longer than the block time
(redis-py raises TimeoutError otherwise) and no automatic retry: a retried BLMOVE after a lost reply
would strand an item, so the caller decides. Everything else shares a BlockingConnectionPool, so many
greenlets queue for a connection instead of failing when the pool is exhausted.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from .config import Settings

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


def shared_client(settings: Settings, *, max_connections: int = 16) -> redis.Redis:
    """A client for short commands, shared by many greenlets."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=None,
        socket_timeout=5.0, socket_connect_timeout=3.0, socket_keepalive=True,
        health_check_interval=30, retry=retry_policy(),
    )
    return redis.Redis(connection_pool=pool)


def blocking_client(settings: Settings, block_seconds: float) -> redis.Redis:
    """A client with its own connection for blocking pops (BLMOVE) of at most ``block_seconds``."""
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=block_seconds + 5.0, socket_connect_timeout=3.0,
        socket_keepalive=True, health_check_interval=0, retry=retry_policy(0),
        single_connection_client=True,
    )
