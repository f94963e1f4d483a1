"""Chat adapters: sessions that carry rooms to chat servers, behind one contract (``base``).

    base.py            the contract (ChatSession, RoomLink, SpeakGate) and SessionBase, the part
                       every adapter shares: reconnect loop with backoff, drop reporting, close
                       with drain, the speak gate, settings reloads
    sendqueue.py       a session's outgoing lines: per room, round-robin, flood-controlled
    irc.py             IrcSession, composed of irc_registration, irc_channels, irc_delivery;
                       irc_wire (bounded lines, the parser) and irc_format (outgoing lines)
    xmpp.py            XmppSession, composed of xmpp_client (the slixmpp stream, bounded),
                       xmpp_muc (MUC membership and joins) and xmpp_stanzas (stanzas -> events);
                       xmpp_selfping fixes slixmpp's XEP-0410 scheduler
    asyncio_bridge.py  the one asyncio loop (slixmpp's) run inside gevent

``default_factories()`` maps a spec's ``protocol`` to its session class; XMPP is imported on first
use, so slixmpp and asyncio load only in processes that have an XMPP room.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from .base import ChatSession, SessionFactory


def _xmpp(*args: Any, **kwargs: Any) -> ChatSession:
    from .xmpp import XmppSession  # slixmpp is only imported when an XMPP room exists

    return XmppSession(*args, **kwargs)


def default_factories(irc: Mapping[str, Any] | None = None) -> dict[str, SessionFactory]:
    """protocol -> the factory of its sessions (``factory(spec, settings=, counters=, ...)``);
    ``irc``: keyword arguments every IRC session gets besides (the pool's flood memory, server facts
    and rehoming)."""
    from .irc import IrcSession

    return {"irc": functools.partial(IrcSession, **irc) if irc else IrcSession, "xmpp": _xmpp}
