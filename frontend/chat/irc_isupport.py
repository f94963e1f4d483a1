"""What a server says of itself in ISUPPORT (``005``) that greenroom uses: how many channels one
connection may join (``CHANLIMIT``, older servers ``MAXCHANNELS``) and how it compares names
(``CASEMAPPING``). Pure: no sockets, no gevent; a server's tokens are hostile (bounded, validated;
what does not parse is ignored, as if the server had said nothing).

``ServerFacts`` is what the pool knows of each server host from any of its connections, so that a
connection that has not registered yet already answers ``accepts`` with the server's limit.
"""

from __future__ import annotations

from typing import Optional

#: the most tokens of one 005 line looked at, and the longest value
_MAX_TOKENS = 32
_MAX_VALUE = 200
#: a limit above this is no limit worth counting
_MAX_LIMIT = 100_000
#: channel prefixes a server may name (RFC 2811 and common extensions)
_CHANNEL_PREFIXES = frozenset("#&+!")


class ServerInfo:
    """One server's limits: ``chanlimit`` is ``((prefixes, limit), ...)`` (``prefixes`` "" for every
    channel type, from ``MAXCHANNELS``); ``casemapping`` as the server named it (None: not said)."""

    __slots__ = ("chanlimit", "casemapping")

    def __init__(self) -> None:
        self.chanlimit: tuple[tuple[str, int], ...] = ()
        self.casemapping: Optional[str] = None

    def copy(self) -> "ServerInfo":
        other = ServerInfo()
        other.chanlimit, other.casemapping = self.chanlimit, self.casemapping
        return other

    def limit_for(self, channel: str) -> tuple[str, int] | None:
        """``(prefixes, limit)`` that applies to ``channel`` (None: no limit known)."""
        first = channel[:1]
        for prefixes, limit in self.chanlimit:
            if not prefixes or first in prefixes:
                return prefixes, limit
        return None

    def feed(self, params: list[str]) -> bool:
        """The parameters of one ``005`` line (``<nick> TOKEN TOKEN ... :are supported``); True when
        something used here changed."""
        changed = False
        for token in params[1:-1][:_MAX_TOKENS]:
            name, _, value = token.partition("=")
            name = name.upper()
            if len(value) > _MAX_VALUE:
                continue
            if name == "CHANLIMIT":
                parsed = parse_chanlimit(value)
                if parsed != self.chanlimit:
                    self.chanlimit, changed = parsed, True
            elif name == "MAXCHANNELS" and not any(p for p, _ in self.chanlimit):
                limit = _limit(value)
                parsed = (("", limit),) if limit is not None else ()
                if parsed != self.chanlimit:
                    self.chanlimit, changed = parsed, True
            elif name == "CASEMAPPING":
                mapping = value.lower() if value.isascii() and value.replace("-", "").isalnum() else None
                if mapping and mapping != self.casemapping:
                    self.casemapping, changed = mapping, True
        return changed


def parse_chanlimit(value: str) -> tuple[tuple[str, int], ...]:
    """``#&:25,+:10`` -> ``(("#&", 25), ("+", 10))``; a group without a number has no limit (left out)."""
    out = []
    for group in value.split(",")[:8]:
        prefixes, sep, number = group.partition(":")
        if not sep or not prefixes or not set(prefixes) <= _CHANNEL_PREFIXES:
            continue
        limit = _limit(number)
        if limit is not None:
            out.append((prefixes, limit))
    return tuple(out)


def _limit(text: str) -> Optional[int]:
    if not text.isdigit() or len(text) > 6:
        return None
    value = int(text)
    return value if 0 < value <= _MAX_LIMIT else None


class ServerFacts:
    """What the pool's IRC connections learned from each server's ISUPPORT, by host (lower-cased)."""

    __slots__ = ("_by_host",)

    #: the most hosts remembered (a spec names its server: do not let specs fill memory)
    MAX_HOSTS = 10_000

    def __init__(self) -> None:
        self._by_host: dict[str, ServerInfo] = {}

    def get(self, host: str) -> Optional[ServerInfo]:
        return self._by_host.get(host.lower())

    def put(self, host: str, info: ServerInfo) -> None:
        key = host.lower()
        if key in self._by_host or len(self._by_host) < self.MAX_HOSTS:
            self._by_host[key] = info
