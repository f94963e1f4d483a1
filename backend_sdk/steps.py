"""The steps the core decides and the shells perform, and the two loops that perform them.

A step is a small frozen dataclass. ``Run`` and ``Sleep`` are done by the shell itself (call a
handler; wait, unless the consumer stops). The others say what happens to an event or a command
(``Ack``, ``DeadLetter``, ``GiveBack``, ``Push``, ``Once``, ``Read``) and carry ``op``, the Redis
operation that does it, so a Redis shell only executes ``op`` while ``backend_sdk.testing`` records
what the step means; ``Command`` and ``Script`` are bare Redis operations (their own ``op``).

``drive(steps, perform)`` runs a generator of steps to its end: each step's reply is sent back in,
a ``redis.RedisError`` raised by ``perform`` is thrown back in (the core decides what it means), and
the generator's return value is returned. ``adrive`` is the same for asyncio.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Mapping, TypeVar, Union

import redis

from .events import Event
from .routing import Handler

T = TypeVar("T")


@dataclass(frozen=True)
class Command:
    """One Redis command; ``blocking``: on the consumer's own connection (the pop's)."""

    args: tuple[Any, ...] = field(repr=False)
    blocking: bool = False

    @property
    def op(self) -> "Command":
        return self


@dataclass(frozen=True)
class Script:
    """The Lua script ``frontend/lua/<name>.lua`` with these keys and arguments."""

    name: str
    keys: tuple[str, ...]
    args: tuple[Any, ...] = field(default=(), repr=False)
    blocking: bool = False

    @property
    def op(self) -> "Script":
        return self


Op = Union[Command, Script]


@dataclass(frozen=True)
class Run:
    """Call ``handler`` with ``event``; the reply is the exception it raised, or None."""

    handler: Handler
    event: Event
    attempt: int
    attempts: int


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` (a retry's backoff); the reply is True when the consumer stops meanwhile."""

    seconds: float


@dataclass(frozen=True)
class Ack:
    """The event was handled: remove it from the processing list."""

    raw: bytes = field(repr=False)
    op: Op = field(repr=False)


@dataclass(frozen=True)
class DeadLetter:
    """A handler failed on its last attempt (or the item is no event): write ``entry`` to the dead
    list. ``error`` is ``Type: message``."""

    raw: bytes = field(repr=False)
    handler: str
    error: str
    entry: bytes = field(repr=False)
    op: Op = field(repr=False)


@dataclass(frozen=True)
class GiveBack:
    """Not handled (stopping during a backoff): back to the head of the events list."""

    raw: bytes = field(repr=False)
    op: Op = field(repr=False)


@dataclass(frozen=True)
class Push:
    """A validated command (``item``, encoded) for ``control``."""

    item: bytes
    op: Op = field(repr=False)


@dataclass(frozen=True)
class Once:
    """``bot.once``: set ``key`` unless it exists, for ``ttl`` seconds; the reply is truthy when set."""

    key: str
    ttl: int
    op: Op = field(repr=False)


@dataclass(frozen=True)
class Read:
    """Read the hash ``key`` (``rooms``, ``rooms:state``); the reply is ``{field: value}`` (bytes)."""

    key: str
    op: Op = field(repr=False)


Step = Union[Run, Sleep, Ack, DeadLetter, GiveBack, Push, Once, Read, Command, Script]
Steps = Generator[Step, Any, T]


def drive(steps: Steps[T], perform: Callable[[Step], Any]) -> T:
    """Run ``steps`` to the end with ``perform``; returns what the generator returns."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        try:
            reply, error = perform(step), None
        except redis.RedisError as exc:
            reply, error = None, exc


async def adrive(steps: Steps[T], perform: Callable[[Step], Any]) -> T:
    """``drive`` for asyncio: ``perform(step)`` may return an awaitable."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        try:
            reply = perform(step)
            if inspect.isawaitable(reply):
                reply = await reply
            error = None
        except redis.RedisError as exc:
            reply, error = None, exc


def execute(op: Op, client: Any, blocking: Any, scripts: Mapping[str, Any]) -> Any:
    """Send ``op`` with redis-py: on ``blocking`` (the pop's own connection) when it says so, else on
    the shared ``client``; ``scripts`` are the registered ``SCRIPTS``. The reply, or with
    ``redis.asyncio`` clients an awaitable of it."""
    target = blocking if op.blocking and blocking is not None else client
    if isinstance(op, Script):
        return scripts[op.name](keys=op.keys, args=op.args, client=target)
    return target.execute_command(*op.args)


def run_handler(step: Run) -> BaseException | None:
    """Call a plain handler; the exception it raised, or None. (``Backend`` refuses ``async def``
    handlers; one that returns an awaitable anyway has failed.)"""
    try:
        result = step.handler.func(step.event)
    except Exception as exc:
        return exc
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return TypeError(f"handler {step.handler.name} returned an awaitable: use AsyncBackend")
    return None


async def arun_handler(step: Run) -> BaseException | None:
    """Call a handler and await what it returns (``AsyncBackend``); the exception, or None."""
    try:
        result = step.handler.func(step.event)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        return exc
    return None


async def wait_event(event: Any, seconds: float) -> bool:
    """Wait at most ``seconds`` for an ``asyncio.Event``; True when it is set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        return event.is_set()
    return True


__all__ = ["Ack", "Command", "DeadLetter", "GiveBack", "Once", "Op", "Push", "Read", "Run",
           "Script", "Sleep", "Step", "Steps", "adrive", "arun_handler", "drive", "execute", "run_handler",
           "wait_event"]
