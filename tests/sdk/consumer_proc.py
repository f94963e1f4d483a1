"""A consumer process for the crash tests: ``python consumer_proc.py REDIS_URL CONSUMER [hang]``.

Each handler records ``<consumer> <event_id>`` in the list ``started``; with ``hang`` it then blocks
forever (the test kills the process with -9 there), else it records the same in ``handled``.
"""

from __future__ import annotations

import sys
import threading

import redis

from backend_sdk import Backend, Message


def main(url: str, consumer: str, hang: bool) -> None:
    bot = Backend(url, consumer=consumer, block_timeout=0.5)
    client = redis.Redis.from_url(url)

    @bot.on("message")
    def handle(event: Message) -> None:
        client.rpush("started", f"{consumer} {event.event_id}")
        if hang:
            threading.Event().wait()
        client.rpush("handled", f"{consumer} {event.event_id}")

    bot.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] == ["hang"])
