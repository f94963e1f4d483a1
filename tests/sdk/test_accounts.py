"""``@bot.command(..., accounts=...)``: a restricted command runs only for the identities the chat server
vouches for (IRC services account, XMPP real JID), never for a nick; others are answered, not run.

Through ``TestClient`` (the real routing and core decisions, no Redis: the bots point where nothing
listens); the same check against real services is ``tests/e2e/test_irc_identity.py``.
"""

from __future__ import annotations

import pytest

from backend_sdk import Backend, Message
from backend_sdk.aio import AsyncBackend
from backend_sdk.testing import TestClient

NOWHERE = "redis://127.0.0.1:1/0"


def deploy_bot(bot=None):
    bot = bot or Backend(NOWHERE)
    ran: list[str] = []

    @bot.command("deploy", accounts={"Alice", "ops@example.org"})
    def deploy(event: Message) -> None:
        """Deploy a service."""
        ran.append(event.arg_text)
        event.reply(f"deploying {event.arg_text}")

    @bot.command("echo")
    def echo(event: Message) -> None:
        event.reply(event.arg_text)

    return bot, ran


def test_an_allowed_account_runs_the_command_whatever_its_nick_or_case():
    bot, ran = deploy_bot()
    with TestClient(bot) as stub:
        out = stub.message("!deploy web", sender="someone", account="alice")
        assert ran == ["web"] and out.replies == ["deploying web"] and not out.denied and out.acked
        assert stub.message("!deploy db", sender="x", account="ALICE").replies == ["deploying db"]
        assert bot.stats["denied"] == 0


def test_the_same_nick_without_an_account_is_refused_with_a_reply():
    bot, ran = deploy_bot()
    with TestClient(bot) as stub:
        out = stub.message("!deploy web", sender="alice")  # the nick, no account
        assert ran == [] and out.denied and out.acked and not out.dead
        assert out.replies == ["!deploy is for some accounts only, and I cannot tell who you are: log in to "
                               "the network's services (NickServ) first"]
        other = stub.message("!deploy web", sender="alice", account="mallory")
        assert ran == [] and other.replies == ["!deploy is for some accounts only, and mallory is not one of them"]
        private = stub.message("deploy web", sender="alice", private=True)
        assert private.denied and private.commands[0]["to"] == "alice"  # answered where it came from
        assert stub.message("!echo hi", sender="alice").replies == ["hi"]  # others are not restricted
        assert bot.stats["denied"] == 3


def test_xmpp_senders_are_known_by_their_real_jid_and_an_irc_jid_field_counts_for_nothing():
    bot, ran = deploy_bot()
    with TestClient(bot) as stub:
        assert stub.event("message", protocol="xmpp", **{"from": "o", "text": "!deploy x",
                                                         "jid": "Ops@Example.org"}).replies == ["deploying x"]
        anonymous = stub.event("message", protocol="xmpp", **{"from": "o", "text": "!deploy x", "jid": None})
        assert anonymous.denied and "this room does not show me who you are" in anonymous.replies[0]
        forged = stub.event("message", protocol="irc", **{"from": "o", "text": "!deploy y", "jid": "ops@example.org"})
        assert forged.denied and ran == ["x"]


def test_identity_fields_are_typed_and_bounded_or_the_item_is_refused():
    bot, _ = deploy_bot()
    with TestClient(bot) as stub:
        out = stub.message("hello", account="alice", msgid="abc", server_ts=1767225600.5)
        assert (out.event.account, out.event.msgid, out.event.server_ts) == ("alice", "abc", 1767225600.5)
        assert stub.event("user_joined", nick="bob", account="bob").event.account == "bob"
        for bad in ({"account": 5}, {"account": "a" * 201}, {"server_ts": "soon"}, {"jid": ["x"]}):
            refused = stub.event("message", **{"from": "a", "text": "!deploy", **bad})
            assert refused.refused and refused.event is None and not refused.calls, bad


def test_help_marks_restricted_commands_and_bad_declarations_are_refused():
    bot, _ = deploy_bot()
    with TestClient(bot) as stub:
        assert "!deploy - Deploy a service. (some accounts only)" in stub.message("!help").replies[0]
    with pytest.raises(TypeError):
        Backend(NOWHERE).command("x", accounts="alice")
    with pytest.raises(ValueError):
        Backend(NOWHERE).command("x", accounts={""})


def test_async_bots_refuse_the_same_way():
    bot = AsyncBackend(NOWHERE)

    @bot.command("deploy", accounts={"alice"})
    async def deploy(event: Message) -> None:
        await event.reply(f"deploying {event.arg_text}")

    with TestClient(bot) as stub:
        refused = stub.message("!deploy web", sender="alice")
        assert refused.denied and refused.replies[0].startswith("!deploy is for some accounts only")
        assert stub.message("!deploy web", account="alice").replies == ["deploying web"]
