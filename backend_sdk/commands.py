"""Building commands for ``control`` (PROTOCOL.md, "Commands"), validated before anything is pushed.

Validation is the frontend's own (``frontend.protocol.validate_command``), so a command the SDK
accepts is a command the frontend accepts; its ``ProtocolError`` is re-raised as ``ValidationError``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from frontend.protocol import MAX_TEXT_BYTES, ProtocolError, encode, validate_command

from .errors import ValidationError

__all__ = ["MAX_TEXT_BYTES", "build", "encode", "new_cmd_id"]


def new_cmd_id() -> str:
    """A fresh command id (for ``ping``: the ``pong`` event echoes it)."""
    return "sdk-" + os.urandom(8).hex()


def build(type: str, room: str, *, max_text_bytes: int = MAX_TEXT_BYTES, **fields: Any) -> dict[str, Any]:
    """A validated command dict; fields that are ``None`` are left out.

    Raises ``ValidationError`` (a ``ValueError``) with the reason, e.g. "text is 20000 bytes, the limit
    is 16384" or "unknown spec key 'chanel' for irc".
    """
    command: dict[str, Any] = {"type": type, "room": room}
    command.update((k, v) for k, v in fields.items() if v is not None)
    if type == "join" and isinstance(command.get("spec"), Mapping):
        command["spec"] = dict(command["spec"])
    try:
        validate_command(command, max_text_bytes=max_text_bytes)
    except ProtocolError as exc:
        raise ValidationError(f"invalid {type!r} command for room {room!r}: {exc.detail}", exc.code) from None
    try:
        encode(command)
    except (TypeError, OverflowError, ValueError) as exc:
        raise ValidationError(f"invalid {type!r} command: not JSON-serialisable: {exc}") from None
    return command
