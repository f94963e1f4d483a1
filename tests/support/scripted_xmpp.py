"""A scripted XMPP server of the test suite's own, for what prosody will not do.

prosody limits c2s stanzas (256 KiB) and cannot be made to send presences from 30,000 occupants in a
second, so the hostile-XMPP tests (issue 13, the XMPP side) need a server that does exactly what the
test says. ``ScriptedXmppServer`` is a gevent ``StreamServer`` on 127.0.0.1 speaking just enough
RFC 6120 for slixmpp to log in over plaintext (SASL PLAIN accepted for anyone, resource binding,
no stream management), that answers a MUC join with the self-presence (status 110) and then runs the
test's ``script(conn, muc_jid, nick, full_jid)`` in the connection's greenlet. Other IQs get an empty
result. It is the other end of a real TCP stream: nothing in greenroom is replaced.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Optional

import gevent
from gevent.server import StreamServer

DOMAIN = "stub.test"
_STREAM = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams' id='{id}' from='" + DOMAIN + "' version='1.0'>")
_AUTH_FEATURES = ("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                  "<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
_BIND_FEATURES = "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
_IQ = re.compile(r"<iq\b[^>]*?\bid=['\"]([^'\"]+)['\"][^>]*>")
_JOIN = re.compile(r"<presence\b[^>]*?\bto=['\"]([^/'\"]+)/([^'\"]+)['\"][^>]*>(?:(?!</presence>).)*"
                   r"http://jabber.org/protocol/muc['\"]", re.S)


class XmppConn:
    def __init__(self, sock) -> None:
        self.sock = sock
        self.received = ""
        self.closed = False

    def send(self, text: str | bytes) -> None:
        self.sock.sendall(text.encode() if isinstance(text, str) else text)


class ScriptedXmppServer:
    """``ScriptedXmppServer(script).start()``; ``port``, ``conns``, ``stop()``."""

    def __init__(self, script: Optional[Callable[..., None]] = None) -> None:
        self.script = script
        self.conns: list[XmppConn] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    def start(self) -> "ScriptedXmppServer":
        self.server.start()
        return self

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.stop(timeout=1)
        for conn in self.conns:
            try:
                conn.sock.close()
            except OSError:
                pass

    def wait_conns(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.conns) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.conns)} XMPP connections, {n} expected within {timeout}s")
            gevent.sleep(0.05)

    def _handle(self, sock, address) -> None:
        conn = XmppConn(sock)
        self.conns.append(conn)
        stage = "auth"
        streams = 0
        answered: set[str] = set()
        runner = None
        full_jid = f"bot@{DOMAIN}/gr"
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                conn.received += data.decode("utf-8", "replace")
                text = conn.received
                while text.count("<stream:stream") > streams:
                    streams += 1
                    conn.send(_STREAM.format(id=f"s{streams}") + (_AUTH_FEATURES if stage == "auth" else _BIND_FEATURES))
                if stage == "auth" and "<auth" in text:
                    stage = "bind"
                    conn.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                for match in _IQ.finditer(text):
                    iq_id = match.group(1)
                    if iq_id in answered:
                        continue
                    answered.add(iq_id)
                    if "xmpp-bind" in text[match.start():match.start() + 400]:
                        conn.send(f"<iq type='result' id='{iq_id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                  f"<jid>{full_jid}</jid></bind></iq>")
                    else:
                        conn.send(f"<iq type='result' id='{iq_id}' from='{DOMAIN}' to='{full_jid}'/>")
                join = _JOIN.search(text)
                if join is not None and runner is None:
                    muc, nick = join.group(1), join.group(2)
                    conn.send(f"<presence from='{muc}/{nick}' to='{full_jid}'><x xmlns='http://jabber.org/protocol/muc#user'>"
                              "<item affiliation='member' role='participant'/><status code='110'/></x></presence>"
                              f"<message from='{muc}' to='{full_jid}' type='groupchat'><subject>stub</subject></message>")
                    if self.script is not None:
                        runner = gevent.spawn(self.script, conn, muc, nick, full_jid)
        finally:
            conn.closed = True
            if runner is not None:
                runner.kill(block=False)
            try:
                sock.close()
            except OSError:
                pass


def stub_spec(server: ScriptedXmppServer, muc: str = f"room@muc.{DOMAIN}", nick: str = "bot", **extra) -> dict:
    return {"protocol": "xmpp", "jid": f"bot@{DOMAIN}", "password": "any", "muc": muc, "nick": nick,
            "host": "127.0.0.1", "port": server.port, "tls": False, **extra}
