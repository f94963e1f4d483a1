"""What IRC servers say when they disconnect a client for flooding, and what a connection counts so
that ``flood_memory.tighten`` can learn from it.

Pure: no sockets, no gevent. ``flood_disconnect(text)`` reads the ``ERROR`` a server sends before it
closes the link (or the reason of a KILL) and says whether it was about flooding:

- InspIRCd: ``Closing link: (user@host) [Excess Flood]``, ``[RecvQ exceeded]``, ``[SendQ exceeded]``
- ircd-hybrid, ratbox, charybdis, solanum, UnrealIRCd, ircu: ``Closing Link: host (Excess Flood)``,
  ``Max SendQ exceeded``, ``Max RecvQ exceeded``
- ngircd: ``Receive buffer space exhausted``, ``Write buffer space exhausted``
- a KILL by an operator or a service that says so: ``Killed (oper (flooding))``

A server's text is hostile: it is only matched, bounded, never evaluated.
"""

from __future__ import annotations

import re

#: the most of a server's words that is looked at
_MAX_TEXT = 512
_FLOOD = re.compile(
    r"flood|\b(?:max\s+)?(?:send|recv)\s*-?q(?:ueue)?\b.{0,20}\b(?:exceeded|exhausted|full)"
    r"|\b(?:receive|write|send)\s+buffer\s+(?:space\s+)?(?:exhausted|exceeded|full)",
    re.IGNORECASE)


def flood_disconnect(text: str) -> bool:
    """True when a server's ``ERROR`` (or KILL reason) says the client was disconnected for
    flooding (an excess flood, a send or receive queue exceeded)."""
    return bool(_FLOOD.search(text[:_MAX_TEXT]))
