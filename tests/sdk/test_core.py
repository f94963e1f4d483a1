"""The core's decisions, driven step by step without Redis: the steps are its whole output, so a
test answers them (a reply, or a Redis error thrown back in) and reads what it decides next."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import ujson

from backend_sdk import Backend
from backend_sdk.core import DEAD_EVENT_LIMIT, Delivery
from backend_sdk.steps import Ack, Command, DeadLetter, GiveBack, Run, Script, Sleep

from .helpers import message

URL = "redis://127.0.0.1:1/0"  # nothing listens there: no step may reach a Redis


class Run_:
    """What a generator of steps did when its steps got ``replies``: a ``redis.RedisError`` is
    thrown in (as ``steps.drive`` does), anything else sent (a handler's exception is a reply)."""

    def __init__(self, steps: Any, *replies: Any) -> None:
        self.seen: list[Any] = []
        self.result: Any = None
        for reply in (None, *replies):
            try:
                step = steps.throw(reply) if isinstance(reply, redis.RedisError) else steps.send(reply)
            except StopIteration as done:
                self.result = done.value
                return
            self.seen.append(step)


def raw_of(text: str, **fields: Any) -> bytes:
    return ujson.dumps(message(text, **fields)).encode()


def test_a_drain_whose_reply_was_lost_strands_nothing() -> None:
    bot = Backend(URL, consumer="c1")
    first, second, third = raw_of("1"), raw_of("2"), raw_of("3")
    run = Run_(bot.pop(3), first, redis.ConnectionError("lost"), False, [first, second, third])
    blmove, drain, sleep, lrange = run.seen
    assert isinstance(blmove, Command) and blmove.args[0] == "BLMOVE" and blmove.blocking
    assert isinstance(drain, Script) and drain.name == "drain" and isinstance(sleep, Sleep)
    assert lrange.args == ("LRANGE", "messages:processing:c1", 0, -1)
    assert sorted(run.result) == sorted([first, second, third])  # the BLMOVEd one too, each once
    assert len(bot.ledger) == 3


def test_attempts_backoff_dead_letter_and_ack() -> None:
    bot = Backend(URL, consumer="c1", retries=2, retry_delay=1.0)
    bot.on("message")(lambda ev: None)
    raw = raw_of("x")
    boom = RuntimeError("boom")
    run = Run_(bot.handle(bot.receive(raw)), boom, False, boom, False, boom, 1, 1)
    kinds = [type(s).__name__ for s in run.seen]
    assert kinds == ["Run", "Sleep", "Run", "Sleep", "Run", "DeadLetter", "Ack"]
    assert [s.attempt for s in run.seen if isinstance(s, Run)] == [1, 2, 3]
    sleeps = [s.seconds for s in run.seen if isinstance(s, Sleep)]
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # exponential, jitter in the upper half
    dead = run.seen[5]
    assert isinstance(dead, DeadLetter) and dead.error == "RuntimeError: boom"
    assert dead.op == Command(("RPUSH", "messages:dead", dead.entry))
    assert run.seen[6].op == Command(("LREM", "messages:processing:c1", 1, raw)) and run.result is True


def test_stop_during_a_backoff_gives_back_and_a_failed_dead_letter_does_not_ack() -> None:
    bot = Backend(URL, consumer="c1", retries=1)
    bot.on("message")(lambda ev: None)
    run = Run_(bot.handle(bot.receive(raw_of("x"))), RuntimeError("x"), True, 1)
    assert [type(s) for s in run.seen] == [Run, Sleep, GiveBack] and run.result is False
    run = Run_(bot.handle(bot.receive(raw_of("x"))),
               RuntimeError("x"), False, RuntimeError("x"), redis.ResponseError("WRONGTYPE"))
    assert [type(s) for s in run.seen] == [Run, Sleep, Run, DeadLetter]  # no Ack: delivered again


def test_a_refused_item_is_dead_lettered_then_acked() -> None:
    bot = Backend(URL, consumer="c1", max_event_bytes=100)
    for raw, why in [(b"x" * 101, "the item is 101 bytes, the limit is 100"), (b"{", "not JSON"),
                     (b'{"type":"message","room":["r"]}', "'room' must be str")]:
        delivery = bot.receive(raw)
        assert delivery.event is None and why in delivery.error and delivery.key == ""
        run = Run_(bot.handle(delivery), 1, 1)
        assert [type(s) for s in run.seen] == [DeadLetter, Ack]
        assert run.seen[0].handler == "backend_sdk.decode"


def test_the_dead_entry_is_bounded_and_always_encodable() -> None:
    bot = Backend(URL, consumer="c1")
    raw = b'{"type":"message","text":"' + b"a" * (10 << 20) + b'"}'
    try:
        raise ValueError("lone \udc80 surrogate " + "e" * 10000)
    except ValueError as exc:
        entry = ujson.loads(bot.dead_entry(raw, "h\ud800", exc))
    assert len(entry["event"]) == DEAD_EVENT_LIMIT and entry["event_truncated"] is True
    assert entry["event_bytes"] == len(raw) and len(entry["event_digest"]) == 32
    assert entry["error"].startswith("ValueError: lone ? surrogate") and len(entry["error"]) < 2100
    assert entry["handler"] == "h?" and "raise ValueError" in entry["traceback"]


def test_a_recovery_pass_takes_the_lock_checks_each_expired_consumer_and_unlocks() -> None:
    bot = Backend(URL, consumer="me")
    run = Run_(bot.recovery_pass(now=1000.0), None)
    assert [s.args[:3] for s in run.seen] == [("SET", "messages:recovering", "me")]
    assert run.result == 0  # the lock is someone else's: nothing else happens
    run = Run_(bot.recovery_pass(now=1000.0), True, [b"dead", b"me", b"alive"], 3, -1, 1)
    lock, zrange, dead, alive, unlock = run.seen
    assert lock.args[3:] == ("NX", "PX", 10_000)
    assert zrange.args == ("ZRANGEBYSCORE", "messages:consumers", "-inf", 1_000_000, "LIMIT", 0, 100)
    assert dead == Script("recover_dead", ("messages:consumer:dead", "messages:processing:dead",
                                           "messages", "messages:consumers"), ("dead",))
    assert alive.keys[0] == "messages:consumer:alive"  # "me" is never a candidate
    assert unlock == Script("unlock", ("messages:recovering",), ("me",))
    assert run.result == 3 and bot.stats["requeued"] == 3


def test_the_heartbeat_is_a_third_of_its_lifetime_and_recovery_is_on_by_default() -> None:
    bot = Backend(URL)
    assert bot.heartbeat_ttl == 15.0 and bot.heartbeat_interval == 5.0 and bot.recovery_interval == 10.0
    [beat] = Run_(bot.beat(now=1000.0)).seen
    assert beat.name == "consumer_beat" and beat.args[1:] == (15_000, 1_015_000, bot.consumer)


@pytest.mark.parametrize("events", ["control", "rooms", "messages:dead", "messages:processing:x",
                                    "", "messages.", "messages.a b", "other", "messages.x*"])
def test_events_must_name_an_events_list(events: str) -> None:
    with pytest.raises(ValueError, match="events must name an events list"):
        Backend(URL, events=events)


def test_events_lists_in_the_namespace_are_accepted() -> None:
    bot = Backend(URL, events="messages.team-1", key_prefix="p:", consumer="c")
    assert (bot.keys.events, bot.keys.processing, bot.keys.dead) == (
        "p:messages.team-1", "p:messages.team-1:processing:c", "p:messages.team-1:dead")


def test_backend_refuses_async_handlers() -> None:
    bot = Backend(URL)
    with pytest.raises(TypeError, match="AsyncBackend"):
        @bot.on("message")
        async def handler(event: Any) -> None: ...


def test_delivery_key_orders_by_room() -> None:
    assert Delivery(b"", None, "x").key == ""
    bot = Backend(URL)
    assert bot.receive(raw_of("x", room="r7")).key == "r7"
