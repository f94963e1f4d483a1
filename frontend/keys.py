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

    def ledger(self, frontend_id: str) -> str:
        """A frontend's in-flight ledger: hash seq -> command item, popped and not yet written."""
        return f"{self.prefix}control:ledger:{frontend_id}"

    def landing(self, frontend_id: str) -> str:
        """The list a frontend's blocking pop moves into; its intake script empties it at once."""
        return f"{self.prefix}control:landing:{frontend_id}"

    def ledger_seq(self, frontend_id: str) -> str:
        """The counter that numbers a frontend's ledger entries."""
        return f"{self.prefix}control:seq:{frontend_id}"

    def inflight(self, frontend_id: str) -> str:
        """The in-flight *list* of versions before the ledger: only read to move it back."""
        return f"{self.prefix}control:inflight:{frontend_id}"

    def heartbeat(self, frontend_id: str) -> str:
        return f"{self.prefix}frontends:{frontend_id}"

    def takeover_lock(self, frontend_id: str) -> str:
        return f"{self.prefix}control:takeover:{frontend_id}"

    # ------------------------------------------------------------- several frontends (placement.lua)
    @property
    def routing(self) -> str:
        """The shared list routers move the head of ``control`` into, then route from."""
        return self.prefix + "control:routing"

    def inbox(self, frontend_id: str) -> str:
        """Commands routed to a frontend (it holds their rooms), not yet taken into its ledger."""
        return f"{self.prefix}control:inbox:{frontend_id}"

    @property
    def holder(self) -> str:
        """Hash room -> the frontend that holds it."""
        return self.prefix + "rooms:holder"

    def held(self, frontend_id: str) -> str:
        """Set of the rooms a frontend holds."""
        return f"{self.prefix}rooms:held:{frontend_id}"

    @property
    def sharekey(self) -> str:
        """Hash room -> share key (rooms with one key may share a chat connection)."""
        return self.prefix + "rooms:sharekey"

    @property
    def share(self) -> str:
        """Hash share key -> the frontend its rooms are placed on."""
        return self.prefix + "rooms:share"

    @property
    def moving(self) -> str:
        """Hash room -> target frontend, while ``greenroom rebalance`` moves it."""
        return self.prefix + "rooms:moving"

    def hold(self, room: str) -> str:
        """The commands of a moving room, waiting for its new holder."""
        return f"{self.prefix}rooms:hold:{room}"

    @property
    def leases(self) -> str:
        """Sorted set frontend id -> lease expiry (ms, Redis time)."""
        return self.prefix + "fleet:leases"

    @property
    def weight(self) -> str:
        return self.prefix + "fleet:weight"

    @property
    def draining(self) -> str:
        """Set of frontends that take no new rooms (``greenroom drain``)."""
        return self.prefix + "fleet:draining"

    def history(self, frontend_id: str) -> str:
        """A frontend's recent samples for the dashboard's charts (heartbeat.py): a capped list, newest
        first, one sample a beat, expiring an hour after the last one."""
        return f"{self.prefix}fleet:history:{frontend_id}"

    def taken(self, frontend_id: str) -> str:
        """Set when another frontend took this one's rooms over (its lease had expired)."""
        return f"{self.prefix}fleet:taken:{frontend_id}"

    # ------------------------------------------------------------------------------------ tenants
    @property
    def tenants(self) -> str:
        """Hash tenant name -> its limits (JSON): the tenant registry."""
        return self.prefix + "tenants"

    @property
    def tenants_version(self) -> str:
        """Bumped at every change of the registry: frontends re-read it when it moves."""
        return self.prefix + "tenants:version"

    def tenant(self, name: str) -> str:
        """The prefix of a scoped tenant's own keys (its ACL user may touch only these)."""
        return f"{self.prefix}tenant:{name}:"

    def tenant_control(self, name: str) -> str:
        return self.tenant(name) + "control"

    def tenant_routing(self, name: str) -> str:
        return self.tenant(name) + "control:routing"

    def tenant_dead(self, name: str) -> str:
        """Commands of a tenant's own intake that were refused."""
        return self.tenant(name) + "control:dead"

    def tenant_rooms(self, name: str) -> str:
        """Set of a registered tenant's rooms, over every frontend (its ``max_rooms``)."""
        return self.tenant(name) + "rooms"

    # ------------------------------------------------------------------------------ chat servers
    @property
    def servers_flood(self) -> str:
        """Hash server host -> the flood limits learned from it (``frontend/flood_memory.py``)."""
        return self.prefix + "servers:flood"

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
    def consumers(self) -> str:
        """Sorted set of the consumers of this list, scored by their heartbeat's deadline (unix ms):
        how a live consumer finds the lists of dead ones without a SCAN of the keyspace."""
        return self.list + ":consumers"

    @property
    def recovery_lock(self) -> str:
        """Held (SET NX PX) by the one consumer re-queuing the lists of consumers that died."""
        return self.list + ":recovering"
