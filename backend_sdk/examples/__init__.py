"""Example backends: ``echo`` (the demo bot) and ``deploy`` (a slow handler with retries)."""

from __future__ import annotations

import argparse
import logging
import os


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The options every example takes; each defaults to its ``GREENROOM_*`` environment variable."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--redis-url", default=env("GREENROOM_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="Redis URL (env GREENROOM_REDIS_URL)")
    parser.add_argument("--key-prefix", default=env("GREENROOM_KEY_PREFIX", ""),
                        help="prefix of every Redis key (env GREENROOM_KEY_PREFIX)")
    parser.add_argument("--events", default=env("GREENROOM_EVENTS", "messages"),
                        help="the events list to consume (env GREENROOM_EVENTS)")
    parser.add_argument("--consumer", default=env("GREENROOM_CONSUMER"),
                        help="consumer name (default hostname:pid; env GREENROOM_CONSUMER)")
    parser.add_argument("--nick", default=env("GREENROOM_NICK"), help="the bot's nick, for 'nick: cmd'")
    parser.add_argument("--log-level", default=env("GREENROOM_LOG_LEVEL", "INFO"))
    return parser


def backend_options(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"key_prefix": args.key_prefix, "events": args.events, "consumer": args.consumer,
            "nick": args.nick}
