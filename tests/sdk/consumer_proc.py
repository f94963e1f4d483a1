"""A consumer process for the crash tests:
``python consumer_proc.py REDIS_URL CONSUMER [hang] [--heartbeat-ttl S] [--recovery-interval S]``.

``CONSUMER`` ``-`` means the default name (``hostname:pid``). Each handler records
``<consumer> <event_id>`` in the list ``started``; with ``hang`` it then blocks forever (the test kills
the process with -9 there), else it records the same in ``handled``.
"""

from __future__ import annotations

import argparse
import threading

import redis

from backend_sdk import Backend, Message


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("consumer")
    parser.add_argument("mode", nargs="?", choices=["hang"])
    parser.add_argument("--heartbeat-ttl", type=float)
    parser.add_argument("--recovery-interval", type=float)
    args = parser.parse_args(argv)
    options = {name: value for name, value in (("heartbeat_ttl", args.heartbeat_ttl),
                                               ("recovery_interval", args.recovery_interval))
               if value is not None}
    bot = Backend(args.url, consumer=None if args.consumer == "-" else args.consumer,
                  block_timeout=0.5, **options)
    client = redis.Redis.from_url(args.url)

    @bot.on("message")
    def handle(event: Message) -> None:
        client.rpush("started", f"{bot.consumer} {event.event_id}")
        if args.mode == "hang":
            threading.Event().wait()
        client.rpush("handled", f"{bot.consumer} {event.event_id}")

    bot.run()


if __name__ == "__main__":
    main()
