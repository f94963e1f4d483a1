"""XMPP test helpers: a slixmpp "human" client on the process-wide asyncio loop, specs, a frontend."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import gevent
import gevent.event
import gevent.queue
import pytest
import slixmpp

from frontend.chat import asyncio_bridge as aio
from tests.support.frontend import running_frontend
from tests.support.names import uniq




def xmpp_spec(prosody: Any, jid: str, password: str, muc: str, nick: str = "bot", **extra: Any) -> dict:
    """A join spec for the prosody test server (plaintext on loopback)."""
    return {"protocol": "xmpp", "jid": jid, "password": password, "muc": muc, "nick": nick,
            "host": prosody.host, "port": prosody.port, "tls": False, **extra}


class XmppUser:
    """A person in MUC rooms, driven from the test's greenlet; what arrives lands in ``inbox``."""

    def __init__(self, prosody: Any, jid: str, password: str) -> None:
        self.prosody = prosody
        self.jid = jid
        self.inbox: gevent.queue.Queue = gevent.queue.Queue()
        self._started = gevent.event.Event()
        self.client: slixmpp.ClientXMPP = aio.call(self._make, jid, password)

    def _make(self, jid: str, password: str) -> slixmpp.ClientXMPP:
        client = slixmpp.ClientXMPP(jid, password)
        client.loop = aio.loop()
        client.enable_direct_tls = client.enable_starttls = False
        client.enable_plaintext = True
        client.plugin["feature_mechanisms"].unencrypted_plain = True
        client.plugin["feature_mechanisms"].unencrypted_scram = True
        for name in ("xep_0030", "xep_0004", "xep_0045", "xep_0199", "xep_0203"):
            client.register_plugin(name)
        client.add_event_handler("session_start", lambda _: self._started.set())
        client.add_event_handler("groupchat_message", self._on_groupchat)
        client.add_event_handler("message", self._on_message)
        return client

    def _on_groupchat(self, msg: Any) -> None:
        self.inbox.put({"kind": "groupchat", "muc": msg["from"].bare, "nick": msg["from"].resource,
                        "body": msg["body"]})

    def _on_message(self, msg: Any) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.inbox.put({"kind": "chat", "muc": msg["from"].bare, "nick": msg["from"].resource,
                            "body": msg["body"]})

    def connect(self, timeout: float = 10.0) -> "XmppUser":
        self._started.clear()
        aio.post(self.client.connect, self.prosody.host, self.prosody.port)
        assert self._started.wait(timeout), f"{self.jid} did not connect within {timeout}s"
        return self

    def join(self, muc: str, nick: str, timeout: float = 10.0) -> Any:
        """Join (creating the room as its owner when it is new); returns slixmpp's join result."""
        plugin = self.client.plugin["xep_0045"]
        result = aio.run(lambda: plugin.join_muc_wait(muc, nick, maxstanzas=0, timeout=timeout),
                         timeout=timeout + 2)
        if 201 in result[0]["muc"]["status_codes"]:  # a new room: unlock it with the default config
            form = self.client.plugin["xep_0004"].make_form(ftype="submit")
            aio.run(lambda: plugin.set_room_config(muc, form), timeout=timeout)
        return result

    def say(self, muc: str, text: str) -> None:
        aio.call(lambda: self.client.send_message(mto=muc, mbody=text, mtype="groupchat"))

    def private(self, muc: str, nick: str, text: str) -> None:
        def send() -> None:
            msg = self.client.make_message(mto=f"{muc}/{nick}", mbody=text, mtype="chat")
            msg.enable("muc")
            msg.send()
        aio.call(send)

    def leave(self, muc: str, nick: str, status: str = "") -> None:
        aio.call(lambda: self.client.plugin["xep_0045"].leave_muc(muc, nick, status))

    def set_role(self, muc: str, nick: str, role: str, reason: str = "") -> None:
        plugin = self.client.plugin["xep_0045"]
        aio.run(lambda: plugin.set_role(muc, nick, role, reason=reason or None), timeout=10)

    def set_affiliation(self, muc: str, jid: str, affiliation: str) -> None:
        plugin = self.client.plugin["xep_0045"]
        aio.run(lambda: plugin.set_affiliation(muc, affiliation, jid=jid), timeout=10)

    def expect(self, timeout: float = 10.0, **match: Any) -> dict:
        """The next inbox item whose fields equal ``match`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.jid}: nothing matching {match} within {timeout}s")
            try:
                item = self.inbox.get(timeout=left)
            except gevent.queue.Empty:
                continue
            if all(item.get(k) == v for k, v in match.items()):
                return item

    def disconnect(self) -> None:
        try:
            aio.call(lambda: self.client.disconnect(wait=0.5), timeout=5)
        except Exception:
            pass


@pytest.fixture
def xmpp_user(prosody, xmpp_account) -> Iterator[Callable[..., XmppUser]]:
    """Factory: a connected human XMPP client with a fresh account."""
    users: list[XmppUser] = []

    def make(stem: str = "human") -> XmppUser:
        jid, password = xmpp_account(stem)
        user = XmppUser(prosody, jid, password).connect()
        users.append(user)
        return user

    yield make
    for user in users:
        user.disconnect()


@pytest.fixture
def fe(redis_url):
    with running_frontend(redis_url, frontend_id=uniq("xfe")) as frontend:
        yield frontend


@pytest.fixture
def muc(prosody) -> str:
    return f"{uniq('room')}@{prosody.muc_domain}"
