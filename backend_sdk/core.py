"""What ``Backend`` and ``AsyncBackend`` share: settings, key names, commands, retries, dead letters.

The I/O lives in the subclasses; every public command method here validates first and then hands the
command to ``self._push`` (a plain call in ``Backend``, an awaitable in ``AsyncBackend``).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import traceback
from typing import Any, Iterable, Mapping

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from . import commands
from .events import Event, Joined
from .routing import Handler, Router

log = logging.getLogger(__name__)

#: errors after which a Redis call is worth retrying (the connection, not the command, failed)
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)

#: move a whole processing list back to the head of the events list, keeping its order
REQUEUE_LUA = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
return n
"""
#: move up to ARGV[1] more events without blocking (the drain after a blocking pop)
DRAIN_LUA = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not v then break end
  out[#out + 1] = v
end
return out
"""
#: put one event back at the head of the events list (un-acked work given back at shutdown)
GIVE_BACK_LUA = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[1]) return 1 end
return 0
"""


def retry_policy(retries: int = 3) -> Retry:
    """redis-py's retry on connection errors, with exponential backoff and jitter."""
    return Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries, supported_errors=REDIS_ERRORS)


def default_consumer() -> str:
    """``<hostname>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Keys:
    """Key names (PROTOCOL.md), all under ``key_prefix``."""

    def __init__(self, prefix: str, events: str, control: str, consumer: str) -> None:
        self.prefix, self.consumer = prefix, consumer
        self.events = prefix + events
        self.control = prefix + control
        self.dead = self.events + ":dead"
        self.processing = self.processing_of(consumer)
        self.alive = self.alive_of(consumer)
        self.rooms = prefix + "rooms"
        self.states = prefix + "rooms:state"

    def processing_of(self, consumer: str) -> str:
        """The list a consumer holds its un-acked events in."""
        return f"{self.events}:processing:{consumer}"

    def alive_of(self, consumer: str) -> str:
        """The consumer's heartbeat key (it expires when the consumer dies)."""
        return f"{self.events}:consumer:{consumer}"

    def once(self, event_id: str) -> str:
        return f"{self.prefix}once:{event_id}"

    def processing_pattern(self) -> str:
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.events)
        return escaped + ":processing:*"


class BaseBackend(Router):
    """Settings, routing and the command API shared by the sync and asyncio backends."""

    def __init__(
        self,
        redis_url: str,
        *,
        events: str = "messages",
        control: str = "control",
        key_prefix: str = "",
        consumer: str | None = None,
        concurrency: int = 10,
        prefetch: int | None = None,
        retries: int = 2,
        retry_delay: float = 0.5,
        retry_delay_max: float = 30.0,
        block_timeout: float = 1.0,
        prefixes: Iterable[str] = ("!",),
        nick: str | None = None,
        help_command: str | None = "help",
        max_text_bytes: int = commands.MAX_TEXT_BYTES,
        heartbeat_ttl: float = 15.0,
    ) -> None:
        super().__init__(prefixes=prefixes, nick=nick, help_command=help_command)
        if concurrency < 1 or retries < 0 or block_timeout <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and block_timeout > 0")
        self.redis_url = redis_url
        self.consumer = consumer or default_consumer()
        self.keys = Keys(key_prefix, events, control, self.consumer)
        self.concurrency = concurrency
        self.prefetch = prefetch or 2 * concurrency
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_delay_max = retry_delay_max
        self.block_timeout = block_timeout
        self.max_text_bytes = max_text_bytes
        self.heartbeat_ttl = heartbeat_ttl
        self._room_nicks: dict[str, str] = {}
        #: counters, for logs and tests
        self.stats = {"handled": 0, "failed": 0, "retried": 0, "dead": 0, "requeued": 0}

    # ------------------------------------------------------------------------------------- commands
    def say(self, room: str, text: str, *, to: str | None = None, expires: float | None = None,
            cmd_id: str | int | None = None) -> Any:
        """Say ``text`` in ``room`` (privately to the nick ``to`` when given). Multi-line text is
        sent line by line. ``expires``: unix time after which the frontend drops it instead."""
        return self._send("say", room, text=text, to=to, expires=expires, cmd_id=cmd_id)

    def action(self, room: str, text: str, *, to: str | None = None, expires: float | None = None,
               cmd_id: str | int | None = None) -> Any:
        """``/me text`` in ``room`` (or privately to ``to``)."""
        return self._send("action", room, text=text, to=to, expires=expires, cmd_id=cmd_id)

    def topic(self, room: str, text: str, *, cmd_id: str | int | None = None) -> Any:
        """Set the topic of ``room``."""
        return self._send("topic", room, text=text, cmd_id=cmd_id)

    def join(self, room: str, spec: Mapping[str, Any], *, cmd_id: str | int | None = None) -> Any:
        """Create (or move) room ``room`` with a room spec (PROTOCOL.md, "Room spec")."""
        return self._send("join", room, spec=spec, cmd_id=cmd_id)

    def part(self, room: str, reason: str | None = None, *, cmd_id: str | int | None = None) -> Any:
        """Leave ``room`` and remove it from the ``rooms`` registry."""
        return self._send("part", room, reason=reason, cmd_id=cmd_id)

    def ping(self, room: str, cmd_id: str | int | None = None) -> Any:
        """Ask ``room`` for a ``pong`` event; returns the ``cmd_id`` it will carry."""
        return self._send("ping", room, cmd_id=cmd_id or commands.new_cmd_id(), _result="cmd_id")

    def _send(self, type: str, room: str, _result: str | None = None, **fields: Any) -> Any:
        command = commands.build(type, room, max_text_bytes=self.max_text_bytes, **fields)
        return self._push(commands.encode(command), command[_result] if _result else command)

    def _push(self, item: bytes, result: Any) -> Any:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- consuming
    def _decode(self, raw: bytes) -> Event:
        return Event.from_json(raw, backend=self)

    def _observe(self, event: Event) -> None:
        """Learn the bot's nick in a room from its ``joined`` events."""
        if isinstance(event, Joined) and event.nick:
            self._room_nicks[event.room] = event.nick

    def nicks(self, room: str) -> set[str]:
        """The bot's own nicks in ``room``: ``nick=`` and the one its last ``joined`` reported."""
        found = {n for n in (self.nick, self._room_nicks.get(room)) if n}
        return found

    def _attempts(self, handler: Handler) -> int:
        return 1 + (self.retries if handler.retries is None else handler.retries)

    def _backoff(self, attempt: int) -> float:
        """Exponential with full jitter in its upper half: base * 2**(attempt-1), capped."""
        delay = min(self.retry_delay_max, self.retry_delay * 2 ** (attempt - 1))
        return delay / 2 + random.random() * delay / 2

    def _dead_entry(self, raw: bytes, handler: str, exc: BaseException) -> bytes:
        return commands.encode({
            "event": raw.decode("utf-8", "replace"),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "handler": handler,
            "consumer": self.consumer,
            "ts": time.time(),
        })

    def _log_failure(self, handler: Handler, event: Event, attempt: int, attempts: int,
                     exc: BaseException) -> None:
        if attempt < attempts:
            self.stats["retried"] += 1
            log.warning("handler %s failed on %s %s (attempt %d of %d): %r; retrying", handler.name,
                        event.type, event.event_id, attempt, attempts, exc)
        else:
            self.stats["dead"] += 1
            log.error("handler %s failed on %s %s after %d attempts: %r; dead-lettered to %s",
                      handler.name, event.type, event.event_id, attempts, exc, self.keys.dead,
                      exc_info=exc)
