"""A consumer killed with -9 in the middle of a handler loses nothing: its event is handled by the
next consumer with the same name, by any running consumer once the dead one's heartbeat expired, or
after ``recover()``; and a live consumer's events are never taken from it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from backend_sdk import Backend

from .helpers import PYTHON, Recorder, message, push, running

SCRIPT = str(Path(__file__).with_name("consumer_proc.py"))
ROOT = str(Path(__file__).resolve().parents[2])
Spawn = Callable[..., subprocess.Popen]


@pytest.fixture
def spawn(redis_url: str) -> Iterator[Spawn]:
    """Start ``consumer_proc.py`` (a plain-threads process) as a given consumer."""
    procs: list[subprocess.Popen] = []

    def start(consumer: str, *mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([PYTHON, SCRIPT, redis_url, consumer, *mode], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": ROOT},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def pop(client: Any, key: str, timeout: float = 20.0) -> str:
    """The next item of ``key``, waiting up to ``timeout`` (in 1 s pops: below the client's socket
    timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = client.blpop(key, timeout=1)
        if item is not None:
            return item[1].decode()
    raise AssertionError(f"nothing arrived in {key} within {timeout}s")


def kill_mid_handler(spawn: Spawn, client: Any, consumer: str) -> str:
    """Push an event, let ``consumer`` start handling it, SIGKILL it; returns the event id."""
    item = message("important")
    push(client, item)
    proc = spawn(consumer, "hang")
    assert pop(client, "started") == f"{consumer} {item['event_id']}"
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait(10)
    assert client.llen(f"messages:processing:{consumer}") == 1 and client.llen("messages") == 0
    return item["event_id"]


def test_killed_consumers_event_is_handled_by_the_next_one_with_its_name(spawn: Spawn,
                                                                         redis_client: Any) -> None:
    event_id = kill_mid_handler(spawn, redis_client, "worker-1")
    later = message("later")
    push(redis_client, later)
    proc = spawn("worker-1")
    handled = [pop(redis_client, "handled") for _ in range(2)]
    assert handled == [f"worker-1 {event_id}", f"worker-1 {later['event_id']}"]  # re-queued first
    proc.terminate()
    assert proc.wait(10) == 0
    assert redis_client.llen("messages:processing:worker-1") == 0


def test_recover_hands_a_dead_consumers_event_to_another(spawn: Spawn, redis_client: Any,
                                                         make_bot: Callable[..., Backend]) -> None:
    event_id = kill_mid_handler(spawn, redis_client, "worker-2")
    other = make_bot(consumer="worker-3")
    assert other.recover() == 0  # worker-2's heartbeat has not expired yet: it may be alive
    assert other.recover("worker-2") == 1  # an operator knows better
    handled = Recorder()
    other.on("message")(lambda ev: handled.add(ev.event_id))
    with running(other):
        assert handled.wait(1) == [event_id]
    assert redis_client.llen("messages:processing:worker-2") == 0


def test_recover_without_a_name_takes_consumers_whose_heartbeat_expired(
        spawn: Spawn, redis_client: Any, make_bot: Callable[..., Backend]) -> None:
    kill_mid_handler(spawn, redis_client, "worker-4")
    redis_client.expire("messages:consumer:worker-4", 0)  # as if 15 s had passed
    assert make_bot(consumer="worker-5").recover() == 1
    assert redis_client.llen("messages") == 1


def test_a_running_consumer_recovers_a_killed_ones_event_by_itself(spawn: Spawn, redis_client: Any) -> None:
    """kill -9 mid-handler, then a consumer with the default name (``hostname:pid``): the event is
    handled once more, within the heartbeat's lifetime plus a recovery interval (both shrunk here
    through the settings), and never again."""
    item = message("important")
    push(redis_client, item)
    victim = spawn("victim", "hang", "--heartbeat-ttl", "1.5")
    assert pop(redis_client, "started") == f"victim {item['event_id']}"
    victim.kill()
    victim.wait(10)
    killed = time.monotonic()
    survivor = spawn("-", "--recovery-interval", "0.5")
    name, event_id = pop(redis_client, "handled").split(" ")
    elapsed = time.monotonic() - killed
    print(f"handled again {elapsed:.2f}s after kill -9")
    assert event_id == item["event_id"] and name.endswith(f":{survivor.pid}")  # the default name
    assert elapsed < 1.5 + 0.5 + 10  # heartbeat TTL + recovery interval + a process start
    time.sleep(1.5)  # three more recovery passes: nothing is handled again
    assert redis_client.llen("handled") == 0
    assert [s.decode().split(" ")[1] for s in redis_client.lrange("started", 0, -1)] == [event_id]
    survivor.terminate()
    assert survivor.wait(10) == 0
    assert redis_client.llen("messages:processing:victim") == 0 and redis_client.llen("messages") == 0
    assert redis_client.zscore("messages:consumers", "victim") is None  # forgotten once recovered


def test_a_live_consumer_busy_for_longer_than_its_heartbeat_ttl_is_not_recovered(
        make_bot: Callable[..., Backend], redis_client: Any) -> None:
    """The heartbeat has its own timer: a consumer whose only worker is in a long handler (so it pops
    nothing) stays alive, and another consumer's recovery leaves its events alone."""
    busy = make_bot(consumer="busy", concurrency=1, heartbeat_ttl=0.6)  # holds 2 events, pops no more
    other = make_bot(consumer="other", recovery_interval=0.2)
    started = Recorder()

    @busy.on("message")
    def slow(ev: Any) -> None:
        started.add(("busy", ev.event_id))
        if ev.text == "slow":
            time.sleep(2.0)  # more than three heartbeat lifetimes

    other.on("message")(lambda ev: started.add(("other", ev.event_id)))
    items = [message("slow"), message("quick")]
    push(redis_client, *items)
    with running(busy):
        started.wait(1)
        assert redis_client.llen("messages:processing:busy") == 2 and redis_client.llen("messages") == 0
        with running(other):
            time.sleep(1.5)  # 2.5 heartbeat lifetimes, several recovery passes
            assert redis_client.exists("messages:consumer:busy")
            assert other.recover() == 0  # the explicit call agrees
        assert other.stats["recovery_passes"] >= 3 and other.stats["requeued"] == 0
        started.wait(2)
    time.sleep(0.2)
    assert started.items == [("busy", items[0]["event_id"]), ("busy", items[1]["event_id"])]
    assert redis_client.llen("messages:processing:busy") == 0
