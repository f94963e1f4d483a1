"""The slixmpp stream of one XMPP session, with what a hostile server can make it hold bounded.

``BoundedClient`` is slixmpp's ``ClientXMPP`` with three changes, for memory and time a server controls:

- a stanza (or anything before the next complete stanza) over ``MAX_STANZA`` bytes ends the stream:
  slixmpp's parser would otherwise hold all of it until its end tag arrives (prosody itself refuses
  c2s stanzas over 256 KiB; no live MUC line comes close). Counted in ``stanzas_too_big``, logged
  once a minute per session; the session reconnects with backoff like after any lost stream;
- a read is parsed in slices of ``READ_SLICE`` bytes with a turn for every other greenlet in
  between, so a burst of stanzas cannot hold the process (slixmpp handles them synchronously);
- no roster: the bot never uses one, and slixmpp keeps a roster entry for every JID (and a
  resource for every MUC occupant) that sends a presence, and every item of a roster push, without
  bound. Presences reach us only as MUC events (``xep_0045``) and ``presence_error``.

And it says why a stream that never became a session failed, where slixmpp would only wait:
``gr_stage`` is how far the current connection got (for a timeout's reason), and the stream
features are checked against the spec's TLS policy before slixmpp acts on them: a server that
requires STARTTLS while ``tls`` is false, or offers none while it is true, is reported at once
(``on_refused``) instead of leaving the stream idle until ``connect_timeout``.

``make_client`` builds one for a spec: TLS policy, plugins, timers; it runs on the asyncio loop. Its
TLS context trusts nothing until the session sets the spec's (``tls.client_context``) before each
connect.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from typing import Any, Callable, Optional

import slixmpp

from ..logs import Throttle
from ..protocol import XmppSpec
from . import asyncio_bridge, tls
from .base import give_turn

log = logging.getLogger("frontend.chat.xmpp")
_throttled = Throttle(log, 60.0)

#: the most bytes read between two complete stanzas before the stream is dropped
MAX_STANZA = 1024 * 1024
#: what the parser is fed at once before the other greenlets get a turn
READ_SLICE = 4 * 1024
PLUGINS = ("xep_0030", "xep_0004", "xep_0045", "xep_0199", "xep_0203", "xep_0198", "xep_0410")
_TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
_STARTTLS = f"{{{_TLS_NS}}}starttls"
_REQUIRED = f"{{{_TLS_NS}}}required"
_MECHANISMS = "{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms"


class BoundedClient(slixmpp.ClientXMPP):
    """slixmpp's client stream, bounded: stanza size and no roster (see the module docstring)."""

    def __init__(self, jid: str, password: str, *, label: str, counters: Any,
                 on_too_big: Optional[Callable[[str], None]] = None,
                 on_refused: Optional[Callable[[str], None]] = None, **kwargs: Any) -> None:
        super().__init__(jid, password, **kwargs)
        self.gr_label = label
        self.gr_counters = counters
        self.gr_on_too_big = on_too_big
        self.gr_on_refused = on_refused
        self.gr_since_stanza = 0  # bytes read since the last complete stanza
        self.gr_completed = False
        #: how far the current connection got: "" (connecting), "tcp" (connected), "stream" (the
        #: server opened its stream), "tls" (encrypted), "login" (authenticated); reset per connect
        self.gr_stage = ""
        # slixmpp registered self._handle_presence and self._handle_roster, so the overrides below
        # replace its roster bookkeeping (its presence_available & co handlers are never fired)

    # ------------------------------------------------------------------------- bounded stanzas
    def data_received(self, data: bytes | str) -> None:
        """Feed what was read in slices of ``READ_SLICE`` bytes, yielding to the gevent hub between
        them: slixmpp handles every stanza of a slice synchronously (a presence costs ~0.4 ms), and
        a read may be 256 KiB, so one burst from the server would otherwise hold every greenlet of
        the process for seconds. (A yield, not a wait: nothing here waits for the loop itself.)"""
        if len(data) <= READ_SLICE:
            self._feed(data)
            return
        for start in range(0, len(data), READ_SLICE):
            if start:
                give_turn()
                if self.transport is None:  # dropped meanwhile (too big, or aborted)
                    return
            self._feed(data[start:start + READ_SLICE])

    def _feed(self, data: bytes | str) -> None:
        self.gr_completed = False
        super().data_received(data)
        if self.gr_completed:
            self.gr_since_stanza = 0  # (the tail after the last stanza is not counted: < one read)
            return
        self.gr_since_stanza += len(data)
        if self.gr_since_stanza > MAX_STANZA and self.transport is not None:
            self.gr_since_stanza = 0
            why = f"the server sent a stanza over {MAX_STANZA} bytes"
            self.gr_counters["stanzas_too_big"] += 1
            _throttled.warning("stanza " + self.gr_label, "xmpp %s: %s; dropping the stream", self.gr_label, why)
            if self.gr_on_too_big is not None:
                self.gr_on_too_big(why)
            self.abort()

    def _spawn_event(self, xml: Any) -> None:
        self.gr_completed = True
        super()._spawn_event(xml)

    # ------------------------------------------------------------------ how far it got, and why not
    def connection_made(self, transport: Any, send_event: bool = True) -> None:
        super().connection_made(transport, send_event)
        if self.gr_encrypted():
            self.gr_stage = "tls"
        elif not self.gr_stage:
            self.gr_stage = "tcp"

    def start_stream_handler(self, xml: Any) -> None:
        super().start_stream_handler(xml)
        if self.gr_stage == "tcp":
            self.gr_stage = "stream"
        if self.authenticated:
            self.gr_stage = "login"

    def gr_encrypted(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    async def _handle_stream_features(self, features: Any) -> Optional[bool]:
        """The server's features, checked against the TLS policy first (see the module docstring)."""
        problem = self.gr_tls_problem(features.xml)
        if problem is not None:
            if self.gr_on_refused is not None:
                self.gr_on_refused(problem)
            self.abort()
            return True
        return await super()._handle_stream_features(features)

    def gr_tls_problem(self, xml: Any) -> Optional[str]:
        """Why these stream features cannot give the stream the spec asks for (None: they can)."""
        if self.authenticated or self.gr_encrypted():
            return None
        starttls = xml.find(_STARTTLS)
        if self.enable_starttls:
            if starttls is None:
                return ("the server does not offer STARTTLS but tls is true (tls: false allows a plaintext "
                        "stream, for a server on loopback or a private network only)")
        elif not self.enable_direct_tls and starttls is not None:
            if starttls.find(_REQUIRED) is not None or xml.find(_MECHANISMS) is None:
                return "the server requires STARTTLS but tls is false (set tls: true, the default)"
        return None

    # ------------------------------------------------------------------------------- no roster
    def _handle_presence(self, presence: Any) -> None:
        """Only what the session listens to: errors (MUC presences have their own handler)."""
        if presence["type"] == "error":
            self.event("presence_error", presence)

    def _handle_roster(self, iq: Any) -> None:
        """A roster push is answered (RFC 6121 says so) and not kept."""
        if iq["type"] == "set" and not (iq["from"].bare and iq["from"].bare != self.boundjid.bare):
            resp = self.Iq(stype="result", sto=iq["from"], sid=iq["id"])
            resp.send()


def make_client(spec: XmppSpec, *, label: str, counters: Any, settings: Any,
                on_too_big: Optional[Callable[[str], None]] = None,
                on_refused: Optional[Callable[[str], None]] = None) -> BoundedClient:
    """A client for ``spec`` on the bridge's asyncio loop (call it there), plugins registered."""
    client = BoundedClient(spec.jid, spec.password, label=label, counters=counters, on_too_big=on_too_big,
                           on_refused=on_refused, ssl_context=_distrust_all())
    client.loop = asyncio_bridge.loop()
    if spec.tls:
        direct = spec.port in (5223, 443)
        client.enable_direct_tls, client.enable_starttls = direct, not direct
        client.enable_plaintext = False
    else:
        if spec.host and not _is_local(spec.host):
            log.warning("xmpp %s: tls is off for a server that is not local", label)
        client.enable_direct_tls = client.enable_starttls = False
        client.enable_plaintext = True
        mechanisms = client.plugin["feature_mechanisms"]
        mechanisms.unencrypted_plain = True
        mechanisms.unencrypted_scram = True
    for name in PLUGINS:
        client.register_plugin(name)
    client.plugin["xep_0410"].ping_interval = settings.ping_interval
    client.plugin["xep_0410"].ping_timeout = settings.ping_timeout
    return client


@functools.lru_cache(maxsize=None)
def _distrust_all() -> Any:
    """The context a client holds until its session sets the spec's (shared: slixmpp changes a
    context only for ciphers, client certificates or its own ``ca_certs``, none of which we set).
    Given, so slixmpp does not build a default one per client (~50 ms of CPU each)."""
    return tls.distrust_all()


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private
