"""``backend_sdk.testing.TestClient``: handlers unit-tested without Redis, as a bot's author would.

No fixture here starts a server: every bot points at a port where nothing listens, so any step that
reached Redis would fail the test.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from backend_sdk import Backend, BackendError, Message, ValidationError
from backend_sdk.aio import AsyncBackend
from backend_sdk.examples import deploy
from backend_sdk.testing import TestClient

from tests.support.aio import run_async

NOWHERE = "redis://127.0.0.1:1/0"


def ops_bot(**options: Any) -> Backend:
    bot = Backend(NOWHERE, **options)

    @bot.command("echo")
    def echo(event: Message) -> None:
        """Repeat the text."""
        event.reply(event.arg_text)

    @bot.command("deploy", retries=3)
    def deploy_(event: Message) -> None:
        service, env = event.args
        if bot.once(f"announce:{event.event_id}"):
            event.reply(f"deploying {service} to {env}")
        if env == "prod" and not bot.rooms().get(event.room):
            raise RuntimeError(f"room {event.room} is not registered")
        event.reply_private("done")

    return bot


def test_a_command_is_routed_answered_and_acked() -> None:
    stub = TestClient(ops_bot())
    out = stub.message("!echo hello world", room="r1", sender="alice")
    assert out.replies == ["hello world"] and out.acked and not out.dead
    assert out.handlers == ["tests.sdk.test_testing.ops_bot.<locals>.echo"]
    assert stub.commands == [{"type": "say", "room": "r1", "text": "hello world"}]
    assert stub.message("!help").replies[0].splitlines()[0].startswith("!deploy")
    assert stub.message("no command here").handlers == []


def test_retries_are_recorded_not_slept_and_the_last_failure_is_dead_lettered() -> None:
    stub = TestClient(ops_bot(retry_delay=10.0))
    started = time.monotonic()
    out = stub.message("!deploy web prod")
    assert time.monotonic() - started < 1.0  # 3 backoffs of 5 s to 30 s were not waited
    assert [c.attempt for c in out.calls] == [1, 2, 3, 4] and len(out.sleeps) == 3
    assert 5.0 <= out.sleeps[0] <= 10.0 and 10.0 <= out.sleeps[1] <= 20.0 and 15 <= out.sleeps[2] <= 30
    assert out.replies == ["deploying web to prod"]  # once, guarded by bot.once
    [dead] = out.dead
    assert dead["error"] == "RuntimeError: room r1 is not registered" and dead["handler"].endswith("deploy_")
    assert "Traceback" in dead["traceback"] and out.acked and stub.dead == [dead]


def test_rooms_and_once_are_in_memory() -> None:
    stub = TestClient(ops_bot())
    stub.rooms["r1"] = {"protocol": "irc", "nick": "bot"}
    stub.states["r1"] = {"state": "joined"}
    assert stub.bot.rooms() == {"r1": {"spec": {"protocol": "irc", "nick": "bot"},
                                       "state": {"state": "joined"}}}
    out = stub.message("!deploy web prod", sender="bob")
    assert out.replies == ["deploying web to prod", "done"] and out.commands[1]["to"] == "bob"
    again = stub.deliver({**out.event.data})  # the same event delivered twice
    assert again.replies == ["done"]  # the announcement is not repeated


def test_commands_are_validated_as_the_frontend_validates_them() -> None:
    bot = Backend(NOWHERE, retries=0)
    bot.command("shout")(lambda ev: ev.reply("x" * 20000))
    stub = TestClient(bot)
    out = stub.message("!shout")
    assert isinstance(out.errors[0], ValidationError) and "20000 bytes" in str(out.errors[0])
    assert out.commands == [] and len(out.dead) == 1
    with pytest.raises(ValidationError, match="not a plain nick"):
        bot.say("r1", "hi", to="#chan")


def test_fail_fast_raises_the_handlers_exception() -> None:
    stub = TestClient(ops_bot(), fail_fast=True)
    with pytest.raises(ValueError, match="not enough values"):
        stub.message("!deploy web")


def test_nicks_filters_and_hostile_items_go_through_the_real_core() -> None:
    bot = Backend(NOWHERE)
    seen = []
    bot.command("echo")(lambda ev: ev.reply(ev.arg_text))
    bot.on("user_joined", tenant="acme")(lambda ev: seen.append(ev.nick))
    stub = TestClient(bot)
    assert stub.message("bot_: echo hi").replies == []  # the bot's nick is not known yet
    stub.event("joined", nick="bot_", channel="#r1")
    assert stub.message("bot_: echo hi").replies == ["hi"]
    assert stub.message("!echo loop", sender="bot_").handlers == []  # its own line
    stub.event("user_joined", nick="bob", tenant="acme")
    stub.event("user_joined", nick="eve", tenant="other")
    assert seen == ["bob"]
    junk = stub.deliver(b'{"type":"message","room":["r1"]}')
    assert junk.event is None and "'room' must be str" in junk.refused
    assert junk.dead[0]["handler"] == "backend_sdk.decode" and junk.acked


def test_close_gives_the_bot_its_io_back() -> None:
    bot = ops_bot()
    original = bot._run_steps
    with TestClient(bot) as stub:
        bot.say("r1", "while stubbed")
        assert stub.commands[0]["text"] == "while stubbed"
    assert bot._run_steps == original


def async_bot() -> AsyncBackend:
    bot = AsyncBackend(NOWHERE, retries=1)

    @bot.command("echo")
    async def echo(event: Message) -> None:
        if await bot.once(event):
            await event.reply(event.arg_text)

    @bot.command("slow")
    async def slow(event: Message) -> None:
        await asyncio.sleep(0.01)  # a real wait on the loop
        await event.reply("slept")

    @bot.command("fail")
    async def fail(event: Message) -> None:
        raise LookupError("nothing")

    return bot


def test_async_handlers_run_from_a_synchronous_test() -> None:
    stub = TestClient(async_bot())
    assert stub.message("!echo hi").replies == ["hi"]
    out = stub.message("!fail")
    assert [type(e) for e in out.errors] == [LookupError, LookupError] and out.dead[0]["error"] == (
        "LookupError: nothing")


def test_async_handlers_run_from_an_async_test() -> None:
    stub = TestClient(async_bot())

    async def main() -> list[list[str]]:
        return [(await stub.amessage("!slow")).replies, (await stub.amessage("!echo x")).replies,
                (await stub.aevent("pong", cmd_id="p1")).handlers]

    assert run_async(main) == [["slept"], ["x"], []]
    assert stub.commands == [{"type": "say", "room": "r1", "text": "slept"},
                             {"type": "say", "room": "r1", "text": "x"}]


def test_the_deploy_example_under_the_stub() -> None:
    stub = TestClient(deploy.build(NOWHERE, fail_rate=1.0, seconds=0.0))
    out = stub.message("!deploy web prod", sender="alice")
    assert out.replies == ["alice: deploying web to prod..."]  # announced once over 4 attempts
    assert len(out.calls) == 4 and "TransientError" in out.dead[0]["error"]
    assert stub.message("!deploy nope").replies[0].startswith("usage: !deploy")


def test_inside_a_running_loop_the_sync_call_runs_what_needs_no_wait_and_says_when_to_await() -> None:
    stub = TestClient(async_bot())

    async def main() -> list[str]:
        replies = stub.message("!echo hi").replies  # completes without waiting: fine
        with pytest.raises(BackendError, match=r"await stub.amessage"):
            stub.message("!slow")
        return replies

    assert run_async(main) == ["hi"]
    assert stub.outcomes[-1].calls == []  # a usage error, not a handler failure
