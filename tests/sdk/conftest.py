"""SDK fixtures (the servers come from tests/conftest.py: redis_server, redis_url, redis_client)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from backend_sdk import Backend


@pytest.fixture
def make_bot(redis_url: str) -> Iterator[Callable[..., Backend]]:
    """Backend factory with fast retries; closes the clients afterwards."""
    bots: list[Backend] = []

    def make(**options: Any) -> Backend:
        options.setdefault("consumer", f"test-{len(bots)}")
        options.setdefault("retry_delay", 0.01)
        options.setdefault("block_timeout", 0.5)
        bot = Backend(redis_url, **options)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        bot.stop()
        bot.redis.close()

