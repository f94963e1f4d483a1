"""The example bots as their users run them: ``python -m backend_sdk.examples.echo``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import ujson

from backend_sdk.examples import deploy

from .helpers import PYTHON, message, push, replies, running

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_echo_example_answers_and_stops_gracefully(redis_url: str, redis_client: Any, sig: int) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT, "GREENROOM_REDIS_URL": redis_url, "GREENROOM_CONSUMER": "echo"}
    proc = subprocess.Popen([PYTHON, "-m", "backend_sdk.examples.echo"], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        push(redis_client, message("!echo hello there"), message("!ping", room="r2"))
        got = replies(redis_client, 2, timeout=20)
        assert got == [{"type": "say", "room": "r1", "text": "hello there"},
                       {"type": "say", "room": "r2", "text": "pong"}]
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(10) == 0 and time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate()[1]
    assert "consuming messages as echo" in stderr and "stopped echo" in stderr
    assert redis_client.llen("messages:processing:echo") == 0


def test_deploy_example_announces_once_and_dead_letters_after_its_retries(redis_url: str,
                                                                          redis_client: Any) -> None:
    bot = deploy.build(redis_url, fail_rate=1.0, seconds=0.01, consumer="deploy", retry_delay=0.01)
    push(redis_client, message("!deploy web prod"), message("!deploy nope"))
    with running(bot):
        got = [r["text"] for r in replies(redis_client, 2)]
        _, raw = redis_client.blpop("messages:dead", timeout=10)
    assert got[0] == "alice: deploying web to prod..." and got[1].startswith("usage: !deploy")
    assert "TransientError: registry timeout" in ujson.loads(raw)["error"]
    assert redis_client.llen("control") == 0  # announced once despite 4 attempts


def test_deploy_example_succeeds(redis_url: str, redis_client: Any) -> None:
    bot = deploy.build(redis_url, fail_rate=0.0, seconds=0.01, consumer="deploy")
    push(redis_client, message("!deploy api staging", room="ops"))
    with running(bot):
        got = [r["text"] for r in replies(redis_client, 2)]
    assert got[0] == "alice: deploying api to staging..."
    assert got[1].startswith("alice: api api-") and got[1].endswith(" is live in staging")
