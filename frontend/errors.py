"""The exception hierarchy: one root class, narrow subclasses."""


class GreenroomError(Exception):
    """Root of every error greenroom raises on purpose."""


class ConfigError(GreenroomError):
    """The configuration (file, environment or flags) is invalid."""


class ProtocolError(GreenroomError, ValueError):
    """A command or spec violates the wire contract (PROTOCOL.md).

    ``code`` is the error code reported in ``error`` events and ``control:dead``.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
