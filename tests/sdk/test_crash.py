"""A consumer killed with -9 in the middle of a handler loses nothing: its event is handled by the
next consumer with the same name, or by any consumer after ``recover()``."""

from __future__ import annotations

import os
import subprocess
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


def pop(client: Any, key: str) -> str:
    item = client.blpop(key, timeout=20)
    assert item is not None, f"nothing arrived in {key}"
    return item[1].decode()


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
