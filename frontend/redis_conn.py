"""Redis clients, all built on one retry policy.

The two dispatchers, which talk to Redis for every batch, each own a ``DirectLink``: one connection,
commands sent in one write and their replies read back, with no automatic retry (a retried BLMOVE
after a lost reply would strand an item, a retried RPUSH duplicate one, so the caller decides). The
blocking pop's link has a socket timeout longer than its block time. Everything else shares a
BlockingConnectionPool, so many greenlets queue for a connection instead of failing when the pool is
exhausted.
"""

from __future__ import annotations

from typing import Any, Sequence

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from . import scripts
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


class PackError(ValueError):
    """A batch could not be encoded for the wire (a value Redis cannot carry): nothing was sent."""


class DirectLink:
    """One Redis connection for one greenlet: a batch of commands in one write, replies in one read.

    redis-py's ``Pipeline`` checks a connection out of a pool and polls it before every use; under
    gevent that poll costs more CPU than the round trip itself (``tests/bench``: 232 µs against 88 µs
    for an RPUSH and an EVAL). The link connects on first use, so it can be built while Redis is down.
    """

    def __init__(self, settings: Settings, socket_timeout: float = 5.0) -> None:
        self._client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=socket_timeout, socket_connect_timeout=3.0,
            socket_keepalive=True, health_check_interval=0, retry=retry_policy(0),
        )
        self._conn = self._client.connection_pool.make_connection()

    def round_trip(self, commands: Sequence[tuple[Any, ...]], *, raise_errors: bool = True) -> list[Any]:
        """Send ``commands`` (each ``(NAME, *args)``) in one write and return their replies in order.

        An error reply is raised once every reply is read (the first one), or with ``raise_errors``
        False returned in its place, so the caller can tell which command failed. An EVALSHA that
        Redis answers NOSCRIPT (its script cache was emptied) is sent again as EVAL at once. A batch
        that cannot be encoded raises ``PackError`` before anything is sent. Any other failure
        (connection, timeout, a kill) drops the connection, so a reply is never left unread.
        """
        conn, client = self._conn, self._client
        try:
            packed = conn.pack_commands(commands)
        except (UnicodeEncodeError, TypeError, ValueError, OverflowError) as exc:
            raise PackError(f"a command of the batch cannot be sent: {exc}") from exc
        replies: list[Any] = []
        try:
            conn.send_packed_command(packed)
            for command in commands:
                try:
                    replies.append(client.parse_response(conn, command[0]))
                except redis.ResponseError as exc:
                    replies.append(exc)
            for i, reply in enumerate(replies):
                if isinstance(reply, redis.ResponseError) and commands[i][0] == "EVALSHA" \
                        and scripts.is_noscript(reply):
                    replies[i] = self._eval_instead(commands[i])
        except BaseException:
            conn.disconnect()
            raise
        if raise_errors:
            for reply in replies:
                if isinstance(reply, redis.ResponseError):
                    raise reply
        return replies

    def _eval_instead(self, command: tuple[Any, ...]) -> Any:
        script = scripts.by_sha(command[1])
        if script is None:
            return redis.ResponseError(f"NOSCRIPT and no script with SHA {command[1]} is known")
        conn = self._conn
        conn.send_packed_command(conn.pack_command("EVAL", script.text, *command[2:]))
        try:
            return self._client.parse_response(conn, "EVAL")
        except redis.ResponseError as exc:
            return exc

    def close(self) -> None:
        self._conn.disconnect()
        self._client.close()
