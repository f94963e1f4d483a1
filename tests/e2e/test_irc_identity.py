"""Issue 16, item 4: nicks are not identities. Real services: InspIRCd linked to Atheme.

- A user logged in with SASL joins and speaks: ``user_joined`` and ``message`` carry their services
  ``account`` (extended-join, account-tag), the ``msgid`` and the server's time (``server_ts``); a
  real ``Backend`` with ``@bot.command("deploy", accounts={account})`` runs the command for them and
  refuses, with a reply in the channel, a user who took the same nick without an account.
- A user who identifies to NickServ after joining is known from then on (account-notify / the tag).
- A server that did not negotiate the capabilities cannot make greenroom trust an ``account`` tag,
  an extended JOIN or an ``ACCOUNT`` line (the suite's scripted stub plays that server: no packaged
  server sends tags it was not asked for).
"""

from __future__ import annotations

import re
import time

import pytest

from backend_sdk import Backend, Message
from tests.sdk.helpers import Recorder, running
from tests.support.events import EventLog
from tests.support.frontend import push, running_frontend
from tests.support.names import uniq
from tests.support.scripted_ircd import ScriptedIrcd, irc_stub_spec

pytestmark = pytest.mark.e2e

CAPS = ("account-tag", "extended-join", "account-notify", "server-time", "message-tags", "echo-message")


def _wait(recorder: Recorder, pred, timeout: float = 15.0, what: str = "an event"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in list(recorder.items):
            if pred(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s; seen: {recorder.items[-5:]}")


def test_services_accounts_reach_the_events_and_the_sdk_admits_only_the_account(
        inspircd, atheme, irc_account, inspircd_client, redis_url, redis_client):
    account, password = irc_account("alice")
    other_account, other_password = irc_account("bob")
    chan, botnick = "#" + uniq("id"), uniq("idbot")
    bot = Backend(redis_url, consumer=uniq("idc"), recovery_interval=None)
    seen, deployed = Recorder(), []

    @bot.on("message", "user_joined", "joined")
    def record(event) -> None:
        seen.add(event)

    @bot.command("deploy", accounts={account})
    def deploy(event: Message) -> None:
        deployed.append((event.sender, event.account))
        event.reply(f"deploying {event.arg_text}")

    with running_frontend(redis_url, frontend_id="ident"), running(bot):
        push(redis_client, {"type": "join", "room": "id", "spec": {
            "protocol": "irc", "server": inspircd.host, "port": inspircd.port, "nick": botnick,
            "channel": chan, "flood": False}})
        _wait(seen, lambda e: e.type == "joined", what="joined")

        alice = inspircd_client(uniq("al"), caps=CAPS, sasl=(account, password))
        alice.join(chan)
        joined = _wait(seen, lambda e: e.type == "user_joined" and e.nick == alice.nick, what="alice joined")
        assert joined.account == account
        before = time.time()
        alice.privmsg(chan, "!deploy web")
        said = _wait(seen, lambda e: e.type == "message" and e.sender == alice.nick, what="alice's line")
        assert said.account == account and said.data["account"] == account
        assert said.msgid and re.match(r"^[\x21-\x7e]+$", said.msgid)
        assert before - 5 < said.server_ts < time.time() + 5
        alice.expect(rf"PRIVMSG {re.escape(chan)} :deploying web", timeout=10)
        nick = alice.nick
        alice.close()

        impostor = inspircd_client(nick)  # the same nick, no account
        impostor.join(chan)
        assert _wait(seen, lambda e: e.type == "user_joined" and e.nick == nick and e is not joined,
                     what="the impostor joined").account is None
        impostor.privmsg(chan, "!deploy prod")
        fake = _wait(seen, lambda e: e.type == "message" and e.text == "!deploy prod", what="the impostor's line")
        assert fake.sender == nick and fake.account is None and fake.data["account"] is None
        refusal = impostor.expect(rf"PRIVMSG {re.escape(chan)} :!deploy is for some accounts only", timeout=10)
        assert "log in" in refusal.text
        assert deployed == [(nick, account)] and bot.stats["denied"] == 1

        bob = inspircd_client(uniq("bo"))  # logs in through NickServ after joining
        bob.join(chan)
        assert _wait(seen, lambda e: e.type == "user_joined" and e.nick == bob.nick, what="bob joined").account is None
        bob.privmsg("NickServ", f"IDENTIFY {other_account} {other_password}")
        bob.expect(lambda ln: ln.nick == "NickServ" and "now identified" in ln.text, timeout=10)
        bob.privmsg(chan, "hello from bob")
        assert _wait(seen, lambda e: e.type == "message" and e.text == "hello from bob",
                     what="bob's line").account == other_account
        bob.privmsg(chan, "!deploy web")  # an account, but not an allowed one
        assert "is not one of them" in bob.expect(rf"PRIVMSG {re.escape(chan)} :!deploy is for", timeout=10).text
        assert len(deployed) == 1


def test_identity_a_server_did_not_negotiate_is_never_trusted(redis_url, redis_client):
    def script(conn) -> None:
        conn.wait_for(lambda line: line.startswith("JOIN"), timeout=10)
        conn.line(":mallory!m@h JOIN #spoof alice :Mallory")               # extended-join, not asked for
        conn.line(":mallory!m@h ACCOUNT alice")                             # account-notify, not asked for
        conn.line("@account=alice;msgid=forged;time=2026-01-01T00:00:00.000Z :mallory!m@h PRIVMSG #spoof :!deploy")

    ircd = ScriptedIrcd(script).start()  # offers no capability at all
    try:
        events = EventLog(redis_url)
        with running_frontend(redis_url, frontend_id="spoof"):
            push(redis_client, {"type": "join", "room": "sp", "spec": irc_stub_spec(ircd, "#spoof", uniq("sp"))})
            joined = events.wait(10, type="user_joined", room="sp")
            said = events.wait(10, type="message", room="sp")
        assert joined["nick"] == "mallory" and joined["account"] is None
        assert said["text"] == "!deploy" and said["account"] is None
        assert "msgid" not in said and "server_ts" not in said
        assert not [line for line in ircd.conns[0].lines if line.startswith("CAP REQ")]
    finally:
        ircd.stop()
