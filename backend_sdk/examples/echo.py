"""The echo bot: ``!echo text`` answers ``text``, ``!ping`` answers ``pong``, ``!help`` lists both.

    python -m backend_sdk.examples.echo --redis-url redis://127.0.0.1:6379/0

SIGINT/SIGTERM stop it gracefully (running handlers finish and are acked); a second signal exits
at once.
"""

from __future__ import annotations

from typing import Any

from backend_sdk import Backend, Message
from backend_sdk.examples import arg_parser, backend_options


def build(redis_url: str, **options: Any) -> Backend:
    """The echo bot, not yet running."""
    bot = Backend(redis_url, **options)

    @bot.command("echo")
    def echo(event: Message) -> None:
        """Repeat the text: !echo <text>"""
        event.reply(event.arg_text or "usage: !echo <text>")

    @bot.command("ping")
    def ping(event: Message) -> None:
        """Answer pong."""
        event.reply("pong")

    return bot


def main(argv: list[str] | None = None) -> int:
    args = arg_parser("greenroom echo backend").parse_args(argv)
    build(args.redis_url, **backend_options(args)).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
