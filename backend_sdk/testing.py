"""Unit-test a bot's handlers without Redis: ``TestClient(bot)``.

    from backend_sdk.testing import TestClient
    from ops_bot import bot

    def test_deploy_announces():
        stub = TestClient(bot)
        out = stub.message("!deploy web prod", room="r1", sender="alice")
        assert out.replies == ["deploying web to prod"]
        assert out.acked and not out.dead

The stub feeds events through the bot's real routing and the real core decisions (handlers chosen as
in production, attempts with their backoffs, dead letters with their entries, acks), synchronously
and without sleeping: a backoff is recorded, not waited. What the handlers push (``event.reply``,
``bot.say``, ``bot.join``...) is validated as the frontend validates it and recorded; ``bot.once``
works on an in-memory set and ``bot.rooms()`` reads ``stub.rooms``/``stub.states``. It works for
``Backend`` and ``AsyncBackend`` bots: ``stub.message(...)`` runs ``async def`` handlers to the end
itself (on a private event loop), and inside a running loop ``await stub.amessage(...)`` does.

While a stub is attached the bot's commands never reach Redis; ``stub.close()`` (or ``with
TestClient(bot) as stub:``) gives the bot back its I/O. The bot's own ``bot.redis`` client, used
directly, is not stubbed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import ujson

from frontend.protocol import encode, event as frontend_event, parse_command

from .core import BaseBackend
from .errors import BackendError
from .events import Event
from .steps import (Ack, Command, DeadLetter, GiveBack, Once, Push, Read, Run, Script, Sleep, Step,
                    Steps, adrive, arun_handler, drive)

__all__ = ["Call", "Outcome", "TestClient"]


@dataclass
class Call:
    """One attempt of one handler: ``error`` is what it raised (None: it returned)."""

    handler: str
    attempt: int
    attempts: int
    error: BaseException | None = None


@dataclass
class Outcome:
    """What happened to one delivered event."""

    #: the event the handlers got (None when the item was refused: see ``refused``)
    event: Event | None
    #: why the item was refused before any handler ("" for an event)
    refused: str = ""
    #: the commands pushed while it was handled, as dicts (validated by the frontend's validator)
    commands: list[dict[str, Any]] = field(default_factory=list)
    #: the dead letters written, as dicts (``event``, ``error``, ``traceback``, ``handler``, ...)
    dead: list[dict[str, Any]] = field(default_factory=list)
    #: every handler attempt, in order
    calls: list[Call] = field(default_factory=list)
    #: the backoffs a consumer would have slept between attempts (seconds)
    sleeps: list[float] = field(default_factory=list)
    acked: bool = False
    given_back: bool = False

    @property
    def replies(self) -> list[str]:
        """The texts of the ``say`` and ``action`` commands pushed, in order."""
        return [c["text"] for c in self.commands if c["type"] in ("say", "action")]

    @property
    def denied(self) -> bool:
        """True when a restricted command (``accounts=``) was refused to the sender (and answered)."""
        return any(c.handler == "backend_sdk.denied" for c in self.calls)

    @property
    def handlers(self) -> list[str]:
        """The handlers that ran (once each, however many attempts), by name."""
        return [c.handler for c in self.calls if c.attempt == 1]

    @property
    def errors(self) -> list[BaseException]:
        """What the handlers raised, attempt by attempt."""
        return [c.error for c in self.calls if c.error is not None]


class TestClient:
    """Attach to ``bot`` and deliver events to it by hand (see the module docstring).

    ``fail_fast``: a handler's exception is raised from ``message()``/``event()`` at once (no
    retries, no dead letter), for a readable traceback while writing a test.
    """

    __test__ = False  # its name starts with "Test": not a pytest test class

    def __init__(self, bot: BaseBackend, *, fail_fast: bool = False) -> None:
        self.bot = bot
        self.fail_fast = fail_fast
        #: every command pushed through the bot while attached (inside handlers or not)
        self.commands: list[dict[str, Any]] = []
        #: every dead letter, every outcome
        self.dead: list[dict[str, Any]] = []
        self.outcomes: list[Outcome] = []
        #: what ``bot.rooms()`` reads: room -> spec, room -> state
        self.rooms: dict[str, Any] = {}
        self.states: dict[str, Any] = {}
        self._once: dict[str, float] = {}
        self._current: Outcome | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous = bot._run_steps
        bot._run_steps = self._arun_steps if bot.asynchronous else self._run_steps

    def close(self) -> None:
        """Give the bot its own I/O back."""
        self.bot._run_steps = self._previous
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> "TestClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- events
    def message(self, text: str, *, room: str = "r1", sender: str = "alice", private: bool = False,
                account: str | None = None, **fields: Any) -> Outcome:
        """A ``message`` event as a frontend sends it (``from`` is ``sender``; ``account`` the services
        account the server vouches for, None: not logged in), handled to the end."""
        return self.event("message", room=room, **{"from": sender, "text": text, "private": private,
                                                   "account": account}, **fields)

    def event(self, type: str, *, room: str = "r1", protocol: str = "irc", tenant: str | None = None,
              **fields: Any) -> Outcome:
        """Any event type with its fields (PROTOCOL.md), e.g. ``event("user_joined", nick="bob")``;
        ``event_id`` and ``ts`` are made as a frontend makes them."""
        return self.deliver(frontend_event(type, room, protocol, tenant, **fields))

    def deliver(self, item: bytes | str | Mapping[str, Any]) -> Outcome:
        """An item exactly as a consumer would pop it (hostile ones too: they are refused)."""
        outcome, steps = self._start(item)
        try:
            drive(steps, self._perform)
        finally:
            self._current = None
        return outcome

    async def amessage(self, text: str, *, room: str = "r1", sender: str = "alice",
                       private: bool = False, account: str | None = None, **fields: Any) -> Outcome:
        """``message()`` for a test that runs in an event loop."""
        return await self.aevent("message", room=room, **{"from": sender, "text": text, "private": private,
                                                          "account": account}, **fields)

    async def aevent(self, type: str, *, room: str = "r1", protocol: str = "irc",
                     tenant: str | None = None, **fields: Any) -> Outcome:
        return await self.adeliver(frontend_event(type, room, protocol, tenant, **fields))

    async def adeliver(self, item: bytes | str | Mapping[str, Any]) -> Outcome:
        outcome, steps = self._start(item)
        try:
            await adrive(steps, self._aperform)
        finally:
            self._current = None
        return outcome

    def _start(self, item: bytes | str | Mapping[str, Any]) -> tuple[Outcome, Steps[bool]]:
        raw = encode(item) if isinstance(item, Mapping) else item.encode("utf-8", "surrogatepass") \
            if isinstance(item, str) else bytes(item)
        delivery = self.bot.receive(raw)
        outcome = Outcome(event=delivery.event, refused=delivery.error)
        self.outcomes.append(outcome)
        self._current = outcome
        return outcome, self.bot.handle(delivery)

    # ---------------------------------------------------------------------------------------- steps
    def _run_steps(self, steps: Steps[Any]) -> Any:
        return drive(steps, self._perform)

    async def _arun_steps(self, steps: Steps[Any]) -> Any:
        return drive(steps, self._perform)

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Run):
            return self._record(step, self._call(step))
        return self._io(step)

    async def _aperform(self, step: Step) -> Any:
        if isinstance(step, Run):
            return self._record(step, await arun_handler(step))
        return self._io(step)

    def _call(self, step: Run) -> BaseException | None:
        try:
            result = step.handler.func(step.event)
            if inspect.isawaitable(result):
                self._complete(result)
        except _NeedsLoop:
            raise
        except Exception as exc:
            return exc
        return None

    def _record(self, step: Run, error: BaseException | None) -> BaseException | None:
        if self._current is not None:
            self._current.calls.append(Call(step.handler.name, step.attempt, step.attempts, error))
        if error is not None and self.fail_fast:
            raise error
        return error

    def _complete(self, awaitable: Any) -> Any:
        """Run an ``async def`` handler's awaitable to its end from synchronous code."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: our own
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(_wrap(awaitable))
        # A loop runs in this thread (it cannot run a second one): what completes without waiting
        # (the stub's replies never wait) runs here; anything else needs ``await stub.amessage()``.
        steps = awaitable.__await__()
        try:
            steps.send(None)
        except StopIteration as done:
            return done.value
        steps.close()
        raise _NeedsLoop("an async handler waited for something while an event loop runs in this "
                         "thread: use `await stub.amessage(...)` (or aevent, adeliver)")

    def _io(self, step: Step) -> Any:
        """What the consumer's Redis would have done, recorded."""
        outcome = self._current
        if isinstance(step, Push):
            parse_command(step.item)  # the frontend's own check of what it pops from control
            command = ujson.loads(step.item)
            self.commands.append(command)
            if outcome is not None:
                outcome.commands.append(command)
            return None
        if isinstance(step, Once):
            now = time.monotonic()
            if self._once.get(step.key, 0.0) > now:
                return None
            self._once[step.key] = now + step.ttl
            return True
        if isinstance(step, Read):
            table = self.rooms if step.key == self.bot.keys.rooms else self.states
            return {room.encode(): encode(value) for room, value in table.items()}
        if outcome is not None:
            if isinstance(step, Sleep):
                outcome.sleeps.append(step.seconds)
                return False  # never stopping
            if isinstance(step, Ack):
                outcome.acked = True
                return 1
            if isinstance(step, GiveBack):
                outcome.given_back = True
                return 1
            if isinstance(step, DeadLetter):
                entry = ujson.loads(step.entry)
                outcome.dead.append(entry)
                self.dead.append(entry)
                return 1
        if isinstance(step, (Command, Script)):
            raise BackendError(f"the test stub does no Redis ({step.op!r}): it runs handlers, "
                               "commands, once() and rooms(); run the consumer itself against Redis")
        raise BackendError(f"the test stub cannot perform {step!r} outside a delivery")


class _NeedsLoop(BackendError):
    """Raised through the handler's attempt: a usage error of the stub, not a handler failure."""


async def _wrap(awaitable: Any) -> Any:
    return await awaitable
