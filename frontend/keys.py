"""Redis key names (PROTOCOL.md), all under the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """The keys one frontend reads and writes."""

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
        return self.prefix + "messages"

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
