"""backend_sdk: write greenroom backends (the bot's brains) in a few lines.

    from backend_sdk import Backend

    bot = Backend("redis://127.0.0.1:6379/0")

    @bot.command("echo")
    def echo(event):
        "Repeat the text."
        event.reply(event.arg_text)

    bot.run()

Events are popped from ``messages`` with at-least-once delivery (acked after the handlers returned),
failing handlers are retried with backoff and then dead-lettered to ``messages:dead``, events of one
room are handled in order. ``backend_sdk.aio.AsyncBackend`` is the asyncio flavour.
"""

from .backend import Backend
from .errors import BackendError, DecodeError, NotBoundError, ValidationError
from .events import (Action, ErrorEvent, Event, Joined, Kicked, Message, Parted, Pong, Topic,
                     UserJoined, UserLeft)
from .routing import Handler

__all__ = [
    "Action", "Backend", "BackendError", "DecodeError", "ErrorEvent", "Event", "Handler", "Joined",
    "Kicked", "Message", "NotBoundError", "Parted", "Pong", "Topic", "UserJoined", "UserLeft",
    "ValidationError",
]
__version__ = "0.1.0"
