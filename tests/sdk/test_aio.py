"""AsyncBackend: the same contract on redis.asyncio with ``async def`` handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import ujson

from backend_sdk import Message
from backend_sdk.aio import AsyncBackend

from .helpers import message, push, replies

from tests.support.aio import run_async


def test_async_round_trip_retries_dead_letters_and_ordering(redis_url: str, redis_client: Any) -> None:
    order: dict[str, list[int]] = {}
    attempts: list[int] = []

    async def main() -> list[str]:
        bot = AsyncBackend(redis_url, consumer="aio-1", retry_delay=0.01, block_timeout=0.5)
        done = asyncio.Event()

        @bot.command("echo")
        async def echo(event: Message) -> None:
            """Repeat."""
            await event.reply(event.arg_text)

        @bot.on("message")
        async def record(event: Message) -> None:
            if event.text.isdigit():
                order.setdefault(event.room, []).append(int(event.text))
                await asyncio.sleep(0.001)
                if sum(map(len, order.values())) == 50:
                    done.set()

        @bot.command("fail", retries=1)
        async def fail(event: Message) -> None:
            attempts.append(1)
            raise ValueError("nope")

        push(redis_client, message("!echo hi there"), message("!fail"), message("!help"),
             *[message(str(i), room=f"room{r}") for i in range(10) for r in range(5)])
        runner = asyncio.create_task(bot.run())
        await asyncio.wait_for(done.wait(), 15)
        assert await bot.once("x") and not await bot.once("x")
        cmd_id = await bot.ping("r1")
        bot.stop()
        await asyncio.wait_for(runner, 10)
        await bot.aclose()
        return cmd_id

    cmd_id = run_async(main)
    got = replies(redis_client, 3)
    assert got[0] == {"type": "say", "room": "r1", "text": "hi there"}
    assert got[1]["text"].startswith("!echo - Repeat.")
    assert got[2] == {"type": "ping", "room": "r1", "cmd_id": cmd_id}
    assert all(seq == list(range(10)) for seq in order.values()) and len(order) == 5
    assert len(attempts) == 2
    dead = ujson.loads(redis_client.lpop("messages:dead"))
    assert dead["error"] == "ValueError: nope" and "raise ValueError" in dead["traceback"]
    assert redis_client.llen("messages:processing:aio-1") == 0 and redis_client.llen("messages") == 0


def test_async_events_iterator(redis_url: str, redis_client: Any) -> None:
    push(redis_client, message("a"), message("b"))

    async def main() -> list[str]:
        bot = AsyncBackend(redis_url, consumer="aio-2", block_timeout=0.5)
        seen = []
        async for event in bot.events():
            seen.append(event.text)
            await event.reply(event.text.upper())
            if len(seen) == 2:
                bot.stop()
        await bot.aclose()
        return seen

    assert run_async(main) == ["a", "b"]
    assert [r["text"] for r in replies(redis_client, 2)] == ["A", "B"]
    assert redis_client.llen("messages:processing:aio-2") == 0
