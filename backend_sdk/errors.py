"""The SDK's exceptions: one root class, narrow subclasses."""

from __future__ import annotations


class BackendError(Exception):
    """Root of every error ``backend_sdk`` raises on purpose."""


class ValidationError(BackendError, ValueError):
    """A command would violate the wire contract (PROTOCOL.md); nothing was pushed.

    ``code`` is the frontend's error code (``bad_command``), ``detail`` the human reason, e.g.
    ``"text is 20000 bytes, the limit is 16384"`` or ``"unknown spec key 'chanel' for irc"``.
    """

    def __init__(self, detail: str, code: str = "bad_command") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class NotBoundError(BackendError, RuntimeError):
    """``event.reply()`` and friends were called on an event that no backend delivered."""


class DecodeError(BackendError, ValueError):
    """An item of the events list is not a JSON object with a ``type``."""
