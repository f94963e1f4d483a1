"""Backend against a real redis-server: acks, retries, dead letters, ordering, sharing, shutdown."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from typing import Any, Callable

import pytest
import ujson

from backend_sdk import Backend, BackendError, Message
from backend_sdk.pool import gevent_patched

from .helpers import Recorder, event, message, push, replies, running


def test_echo_round_trip_acks_after_the_handler(make_bot: Callable[..., Backend], redis_client: Any) -> None:
    bot = make_bot()
    seen_in_processing = Recorder()

    @bot.command("echo")
    def echo(ev: Message) -> None:
        seen_in_processing.add(redis_client.llen(bot.keys.processing))
        ev.reply(ev.arg_text)

    push(redis_client, message("!echo hello world"))
    with running(bot):
        assert replies(redis_client, 1) == [{"type": "say", "room": "r1", "text": "hello world"}]
        assert seen_in_processing.wait(1) == [1]  # un-acked while the handler runs
    assert redis_client.llen(bot.keys.processing) == 0 and redis_client.llen("messages") == 0


def test_failing_handler_is_retried_then_dead_lettered(make_bot: Callable[..., Backend],
                                                       redis_client: Any) -> None:
    bot = make_bot(retries=2)
    calls = Recorder()

    @bot.on("message")
    def broken(ev: Message) -> None:
        calls.add(time.monotonic())
        raise RuntimeError(f"boom on {ev.text}")

    @bot.on("message", retries=0)
    def fine(ev: Message) -> None:
        calls.add("fine")

    item = message("hello")
    push(redis_client, item)
    with running(bot):
        _, raw = redis_client.blpop("messages:dead", timeout=10)
    dead = ujson.loads(raw)
    assert ujson.loads(dead["event"]) == item
    assert dead["error"] == "RuntimeError: boom on hello"
    assert "Traceback (most recent call last)" in dead["traceback"] and "in broken" in dead["traceback"]
    assert dead["handler"].endswith("broken") and dead["consumer"] == bot.consumer
    assert isinstance(dead["ts"], float)
    assert Counter(type(c) for c in calls.items) == {float: 3, str: 1}  # 3 attempts, the other once
    assert redis_client.llen(bot.keys.processing) == 0 and redis_client.llen("messages") == 0


def test_per_handler_retries_and_success_on_retry(make_bot: Callable[..., Backend], redis_client: Any) -> None:
    bot = make_bot(retries=0)
    attempts = Recorder()

    @bot.command("flaky", retries=5)
    def flaky(ev: Message) -> None:
        attempts.add(1)
        if len(attempts.items) < 4:
            raise ConnectionError("try again")
        ev.reply("made it")

    push(redis_client, message("!flaky"))
    with running(bot):
        assert replies(redis_client, 1)[0]["text"] == "made it"
    assert len(attempts.items) == 4 and redis_client.llen("messages:dead") == 0


def test_rooms_are_ordered_and_run_in_parallel(make_bot: Callable[..., Backend], redis_client: Any) -> None:
    bot = make_bot(concurrency=10)
    rooms, per_room = 20, 10
    lock = threading.Lock()
    active: Counter[str] = Counter()
    peak = {"total": 0, "room": 0}
    order: dict[str, list[int]] = defaultdict(list)
    done = Recorder()

    @bot.on("message")
    def work(ev: Message) -> None:
        with lock:
            active[ev.room] += 1
            peak["total"] = max(peak["total"], sum(active.values()))
            peak["room"] = max(peak["room"], active[ev.room])
            order[ev.room].append(int(ev.text))
        time.sleep(0.01)
        with lock:
            active[ev.room] -= 1
        done.add(ev.room)

    push(redis_client, *[message(str(i), room=f"room{r}") for i in range(per_room) for r in range(rooms)])
    with running(bot):
        done.wait(rooms * per_room)
    assert peak["room"] == 1  # one event of a room at a time
    assert 2 <= peak["total"] <= 10  # rooms in parallel, within the pool size
    assert all(seq == list(range(per_room)) for seq in order.values()) and len(order) == rooms


def test_two_consumers_share_a_list_without_duplicates(make_bot: Callable[..., Backend],
                                                       redis_client: Any) -> None:
    total = 500
    handled = Recorder()
    bots = [make_bot(consumer=f"c{i}") for i in range(2)]
    for bot in bots:
        @bot.on("message")
        def record(ev: Message, bot: Backend = bot) -> None:
            handled.add((ev.event_id, bot.consumer))
            if len(handled.items) % 7 == 0:
                time.sleep(0.002)  # let the other consumer in

    with running(bots[0]), running(bots[1]):
        for start in range(0, total, 50):
            push(redis_client, *[message(f"m{i}", room=f"r{i % 13}") for i in range(start, start + 50)])
        items = handled.wait(total)
        time.sleep(0.2)  # anything extra would show up now
    ids = [i for i, _ in handled.items]
    assert len(ids) == total and len(set(ids)) == total
    assert {c for _, c in items} == {"c0", "c1"}
    assert all(redis_client.llen(b.keys.processing) == 0 for b in bots)


def test_graceful_stop_finishes_running_handlers_and_leaves_nothing_unacked(
        make_bot: Callable[..., Backend], redis_client: Any) -> None:
    bot = make_bot(concurrency=4)
    started, finished = Recorder(), Recorder()

    @bot.on("message")
    def slow(ev: Message) -> None:
        started.add(ev.event_id)
        time.sleep(0.3)
        finished.add(ev.event_id)

    items = [message(str(i), room=f"r{i % 3}") for i in range(40)]
    push(redis_client, *items)
    with running(bot):
        started.wait(3)
    assert set(started.items) == set(finished.items)  # every started handler finished
    assert redis_client.llen(bot.keys.processing) == 0
    left = [ujson.loads(raw)["event_id"] for raw in redis_client.lrange("messages", 0, -1)]
    assert sorted(left + finished.items) == sorted(e["event_id"] for e in items)  # nothing lost or doubled
    assert left == [e["event_id"] for e in items if e["event_id"] in set(left)]  # order kept


def test_stop_during_a_retry_backoff_gives_the_event_back(make_bot: Callable[..., Backend],
                                                          redis_client: Any) -> None:
    bot = make_bot(retry_delay=30)
    failed = Recorder()

    @bot.on("message")
    def broken(ev: Message) -> None:
        failed.add(1)
        raise RuntimeError("down")

    item = message("x")
    push(redis_client, item)
    started = time.monotonic()
    with running(bot):
        failed.wait(1)
    assert time.monotonic() - started < 5
    assert [ujson.loads(r) for r in redis_client.lrange("messages", 0, -1)] == [item]
    assert redis_client.llen(bot.keys.processing) == 0 and redis_client.llen("messages:dead") == 0


def test_own_leftovers_are_requeued_on_start_and_recover(make_bot: Callable[..., Backend],
                                                         redis_client: Any) -> None:
    first, second = message("a"), message("b")
    bot = make_bot(consumer="host:1")
    push(redis_client, first, key=bot.keys.processing)  # left by a crashed "host:1"
    push(redis_client, second, key="messages:processing:host:2")  # left by a crashed "host:2"
    handled = Recorder()
    bot.on("message")(lambda ev: handled.add(ev.text))
    assert bot.recover("host:2") == 1
    assert redis_client.lrange("messages", 0, -1) == [ujson.dumps(second).encode()]
    with running(bot):
        assert sorted(handled.wait(2)) == ["a", "b"]


def test_commands_address_the_bot_by_the_nick_it_joined_with(make_bot: Callable[..., Backend],
                                                             redis_client: Any) -> None:
    bot = make_bot()

    @bot.command("echo")
    def echo(ev: Message) -> None:
        """Repeat."""
        ev.reply(ev.arg_text)

    push(redis_client, message("bot_: echo before join"), event("joined", nick="bot_", channel="#r1"),
         message("bot_: echo one"), message("!echo !echo loop", sender="bot_"),
         message("echo private", private=True, sender="carol"), message("!help"))
    with running(bot):
        got = replies(redis_client, 3)
    assert got[0] == {"type": "say", "room": "r1", "text": "one"}
    assert got[1] == {"type": "say", "room": "r1", "text": "private", "to": "carol"}
    assert got[2]["text"].splitlines()[0] == "!echo - Repeat."
    assert redis_client.llen("control") == 0


def test_once_rooms_and_ping(make_bot: Callable[..., Backend], redis_client: Any) -> None:
    bot = make_bot(key_prefix="p:")
    ev = bot.receive(ujson.dumps(message("x")).encode()).event
    assert bot.once(ev) is True and bot.once(ev) is False
    assert 0 < redis_client.ttl(f"p:once:{ev.event_id}") <= 86400
    redis_client.hset("p:rooms", "r1", ujson.dumps({"protocol": "irc", "nick": "bot"}))
    redis_client.hset("p:rooms:state", "r1", ujson.dumps({"state": "joined"}))
    redis_client.hset("p:rooms", "r2", "{}")
    assert bot.rooms() == {"r1": {"spec": {"protocol": "irc", "nick": "bot"}, "state": {"state": "joined"}},
                           "r2": {"spec": {}, "state": None}}
    cmd_id = bot.ping("r1")
    assert ujson.loads(redis_client.lpop("p:control")) == {"type": "ping", "room": "r1", "cmd_id": cmd_id}


def test_events_iterator_acks_on_next_and_gives_back_on_break(make_bot: Callable[..., Backend],
                                                              redis_client: Any) -> None:
    bot = make_bot()
    items = [message(str(i)) for i in range(3)]
    push(redis_client, *items)
    seen = []
    for ev in bot.events():
        seen.append(ev.text)
        assert redis_client.llen(bot.keys.processing) == 1
        if ev.text == "1":
            break
    assert seen == ["0", "1"]
    assert [ujson.loads(r)["text"] for r in redis_client.lrange("messages", 0, -1)] == ["1", "2"]
    assert redis_client.llen(bot.keys.processing) == 0
    for ev in bot.events():
        if ev.text == "2":
            bot.stop()
    assert redis_client.llen("messages") == 0 and redis_client.llen(bot.keys.processing) == 0


@pytest.mark.parametrize("runtime", ["threads", "gevent"])
def test_both_runtimes_handle_events(make_bot: Callable[..., Backend], redis_client: Any, runtime: str) -> None:
    if runtime == "gevent" and not gevent_patched():
        with pytest.raises(BackendError, match="gevent-patched"):
            make_bot(runtime=runtime)
        return
    bot = make_bot(runtime=runtime)
    bot.command("ping")(lambda ev: ev.reply("pong"))
    push(redis_client, *[message("!ping", room=f"r{i}") for i in range(5)])
    with running(bot):
        assert [r["text"] for r in replies(redis_client, 5)] == ["pong"] * 5
    assert bot.runtime.name == runtime


def test_consumer_survives_a_redis_restart(make_bot: Callable[..., Backend], redis_client: Any,
                                           redis_server: Any) -> None:
    bot = make_bot()
    bot.command("ping")(lambda ev: ev.reply("pong"))
    with running(bot):
        push(redis_client, message("!ping"))
        assert replies(redis_client, 1)[0]["text"] == "pong"
        redis_server.restart()
        push(redis_client, message("!ping", room="r2"))
        got = replies(redis_client, 1, timeout=20)
        if got[0]["room"] == "r1":  # the r1 reply's RPUSH was retried after the restart: a duplicate
            got = replies(redis_client, 1, timeout=20)
        assert got == [{"type": "say", "room": "r2", "text": "pong"}]
    assert redis_client.llen(bot.keys.processing) == 0


def test_stop_before_run_returns_at_once(make_bot: Callable[..., Backend]) -> None:
    bot = make_bot()
    bot.stop()
    started = time.monotonic()
    bot.run()
    assert time.monotonic() - started < 2


def test_events_stranded_by_a_lost_reply_are_adopted(make_bot: Callable[..., Backend],
                                                     redis_client: Any) -> None:
    bot = make_bot()
    item = ujson.dumps(message("x")).encode()
    redis_client.rpush(bot.keys.processing, item)  # moved by a BLMOVE whose reply never arrived
    bot.ledger.track(b"other")  # one we know about is not adopted twice
    assert bot._drive(bot.adopt_stranded()) == [item]
    assert bot._drive(bot.adopt_stranded()) == []
