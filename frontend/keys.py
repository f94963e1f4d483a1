"""Redis key names (PROTOCOL.md), all under the configured prefix: the one place they are spelled.

``Keys`` names what frontends read and write; ``EventKeys`` names one events list and the keys
``backend_sdk`` keeps around it (processing lists, consumer heartbeats, dead letters). Both the daemon
and the SDK import them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: the default events list, and the namespace every other events list must live in
EVENTS_DEFAULT = "messages"
#: ``events`` in a room spec (and ``Backend(events=...)``) is ``messages`` or ``messages.<name>``
EVENTS_NAME_RE = re.compile(r"^messages(?:\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99})?$")


def glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped, for SCAN MATCH patterns."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True)
class Keys:
    """The keys of one greenroom deployment (one ``key_prefix``)."""

    prefix: str = ""

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def control(self) -> str:
        return self.prefix + "control"

    @property
    def dead(self) -> str:
        return self.prefix + "control:dead"

    @property
    def messages(self) -> str:
        return self.prefix + EVENTS_DEFAULT

    @property
    def rooms(self) -> str:
        return self.prefix + "rooms"

    @property
    def states(self) -> str:
        return self.prefix + "rooms:state"

    def inflight(self, frontend_id: str) -> str:
        return f"{self.prefix}control:inflight:{frontend_id}"

    def heartbeat(self, frontend_id: str) -> str:
        return f"{self.prefix}frontends:{frontend_id}"

    def takeover_lock(self, frontend_id: str) -> str:
        return f"{self.prefix}control:takeover:{frontend_id}"

    def events(self, name: str = EVENTS_DEFAULT) -> "EventKeys":
        """The keys of the events list ``name`` (``messages`` or ``messages.<name>``)."""
        return EventKeys(self.prefix, name)

    def once(self, event_id: str) -> str:
        return f"{self.prefix}once:{event_id}"

    def web_session(self, digest: str) -> str:
        """A dashboard session, by the SHA-256 of its id (the cookie's value); expires with it."""
        return f"{self.prefix}web:session:{digest}"

    def web_login(self, scope: str) -> str:
        """A counter of dashboard login attempts in one window (one client address, or all)."""
        return f"{self.prefix}web:login:{scope}"


@dataclass(frozen=True)
class EventKeys:
    """One events list and what backend consumers keep around it."""

    prefix: str
    name: str = EVENTS_DEFAULT

    @property
    def list(self) -> str:
        return self.prefix + self.name

    @property
    def dead(self) -> str:
        return self.list + ":dead"

    def processing(self, consumer: str) -> str:
        """The list a consumer holds its un-acked events in."""
        return f"{self.list}:processing:{consumer}"

    def alive(self, consumer: str) -> str:
        """A consumer's heartbeat key (it expires when the consumer dies)."""
        return f"{self.list}:consumer:{consumer}"

    @property
    def processing_pattern(self) -> str:
        """SCAN MATCH pattern of every consumer's processing list."""
        return glob_escape(self.list) + ":processing:*"

    @property
    def recovery_lock(self) -> str:
        """Held (SET NX PX) by the one consumer re-queuing the lists of consumers that died."""
        return self.list + ":recovering"
