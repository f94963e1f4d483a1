"""Hostile items in the events list, through a real redis-server: none stops the consumer, each is
dead-lettered once (bounded), and the valid events around them are answered."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest
import ujson

from backend_sdk import Backend, Message
from backend_sdk.aio import AsyncBackend

from tests.support.aio import run_async

from .helpers import Recorder, event, message, push, replies, running

HOSTILE = [
    b"not json",
    b"\xff\xfe not utf-8",
    b"[1, 2, 3]",
    b'{"type":"message","room":["unhashable"],"from":"a","text":"!ping"}',  # ended run() on a0b5aec
    b'{"type":"message","room":"r1","from":"a","text":5}',
    b'{"type":"message","room":"r1","from":null,"text":"!ping"}',
    b'{"type":"message","room":"' + b"r" * 300 + b'","from":"a","text":"!ping"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"type":"message","room":"r1","from":"a","text":"' + b"x" * (2 << 20) + b'"}',  # 2 MiB
]
# valid JSON with lone surrogates: what the handler reads must be sendable, its error writable
ECHO = b'{"type":"message","room":"r1","from":"a","text":"!echo caf\\ud800e","event_id":"s1"}'
FAIL = b'{"type":"message","room":"r1","from":"a","text":"!fail \\udc80","event_id":"s2"}'
# after everything else in the ordering key "" of refused items: when it is handled, they all are
SENTINEL = event("user_joined", room="", nick="last")


def feed(client: Any) -> None:
    client.rpush("messages", *HOSTILE, ECHO, FAIL)
    push(client, *[message("!ping", room=f"r{i}") for i in range(2, 5)], SENTINEL)


def check(client: Any, bot: Any) -> None:
    got = sorted(replies(client, 4), key=lambda r: r["room"])  # rooms run in parallel
    assert got[0] == {"type": "say", "room": "r1", "text": "caf\ufffde"}
    assert got[1:] == [{"type": "say", "room": f"r{i}", "text": "pong"} for i in range(2, 5)]
    dead = [ujson.loads(item) for item in client.lrange("messages:dead", 0, -1)]
    refused = [d for d in dead if d["handler"] == "backend_sdk.decode"]
    assert len(refused) == len(HOSTILE) and bot.stats["refused"] == len(HOSTILE)
    [failed] = [d for d in dead if d["handler"] != "backend_sdk.decode"]
    assert failed["error"] == "ValueError: !fail \ufffd" and ujson.loads(failed["event"])["event_id"] == "s2"
    cut = sorted((d["event_bytes"], d["error"]) for d in refused if d.get("event_truncated"))
    assert [n for n, _ in cut] == [len(HOSTILE[-2]), len(HOSTILE[-1])]  # the two above 64 KiB
    assert "limit is 1048576" in cut[1][1]  # the 2 MiB one was not even decoded
    assert max(len(item) for item in client.lrange("messages:dead", 0, -1)) < 100_000
    assert client.llen("messages") == 0 and client.llen(f"messages:processing:{bot.consumer}") == 0


@pytest.mark.parametrize("runtime", ["gevent", "threads"])
def test_hostile_items_never_stop_the_consumer(make_bot: Callable[..., Backend], redis_client: Any,
                                               runtime: str) -> None:
    bot = make_bot(runtime=runtime, retries=0)
    last = Recorder()
    bot.command("echo")(lambda ev: ev.reply(ev.arg_text))
    bot.command("ping")(lambda ev: ev.reply("pong"))

    @bot.command("fail")
    def fail(ev: Message) -> None:
        raise ValueError(ev.text)

    bot.on("user_joined")(lambda ev: last.add(ev.nick))
    feed(redis_client)
    with running(bot):
        assert last.wait(1) == ["last"]
    check(redis_client, bot)


def test_hostile_items_never_stop_the_async_consumer(redis_url: str, redis_client: Any) -> None:
    async def main() -> AsyncBackend:
        bot = AsyncBackend(redis_url, consumer="aio-h", retries=0, block_timeout=0.5)
        done = asyncio.Event()

        @bot.command("echo")
        async def echo(ev: Message) -> None:
            await ev.reply(ev.arg_text)

        @bot.command("ping")
        async def ping(ev: Message) -> None:
            await ev.reply("pong")

        @bot.command("fail")
        async def fail(ev: Message) -> None:
            raise ValueError(ev.text)

        @bot.on("user_joined")
        async def sentinel(ev: Any) -> None:
            done.set()

        feed(redis_client)
        runner = asyncio.create_task(bot.run())
        await asyncio.wait_for(done.wait(), 15)
        bot.stop()
        await asyncio.wait_for(runner, 10)
        await bot.aclose()
        return bot

    check(redis_client, run_async(main))
