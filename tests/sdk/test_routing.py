"""Events and routing without Redis: typed decoding, command parsing, addressing, filters, help."""

from __future__ import annotations

import pytest
import ujson

from backend_sdk import DecodeError, Event, Joined, Message, NotBoundError, UserLeft
from backend_sdk.events import Action, ErrorEvent, Pong
from backend_sdk.routing import Router

from .helpers import event, message


def decode(obj: dict) -> Event:
    return Event.from_json(ujson.dumps(obj).encode())


def test_from_json_builds_typed_events() -> None:
    msg = decode(message("hi there", room="r9", tenant="acme"))
    assert isinstance(msg, Message) and msg.sender == "alice" and msg.text == "hi there"
    assert (msg.room, msg.tenant, msg.protocol, msg.private) == ("r9", "acme", "irc", False)
    assert isinstance(decode(event("action", text="waves")), Action)
    joined = decode(event("joined", nick="bot_", channel="#c"))
    assert isinstance(joined, Joined) and (joined.nick, joined.channel) == ("bot_", "#c")
    left = decode(event("user_left", nick="bob", reason="bye", how="quit"))
    assert isinstance(left, UserLeft) and (left.nick, left.how) == ("bob", "quit")
    error = decode(event("error", code="stale", detail="x", cmd_id=7))
    assert isinstance(error, ErrorEvent) and (error.code, error.cmd_id) == ("stale", 7)
    assert isinstance(decode(event("pong", cmd_id="p1")), Pong)


def test_unknown_types_and_fields_are_kept_not_fatal() -> None:
    future = decode({"type": "reaction", "room": "r1", "emoji": "+1", "event_id": "x"})
    assert type(future) is Event and future.data["emoji"] == "+1"
    assert decode(message("x", extra=1)).data["extra"] == 1


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"room": "r1"}', b"\xff\xfe"])
def test_undecodable_items_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        Event.from_json(raw)


def test_reply_needs_a_backend() -> None:
    with pytest.raises(NotBoundError):
        decode(message("hi")).reply("x")


def parse(router: Router, text: str, **kw) -> tuple[str, str] | None:
    return router.parse_command(text, **kw)


def test_command_parsing_prefixes_and_addressing() -> None:
    router = Router()
    assert parse(router, "!deploy web prod") == ("deploy", "web prod")
    assert parse(router, "  !Deploy   web  ") == ("deploy", "web")
    assert parse(router, "deploy web") is None
    assert parse(router, "! deploy") is None and parse(router, "!") is None
    assert parse(router, "deploy web", private=True) == ("deploy", "web")
    assert parse(router, "bot: deploy web", nicks={"bot"}) == ("deploy", "web")
    assert parse(router, "BOT, deploy", nicks={"bot"}) == ("deploy", "")
    assert parse(router, "bot2: deploy", nicks={"bot"}) is None
    assert parse(router, "robot: deploy", nicks={"bot"}) is None
    assert parse(Router(prefixes=(".", "?")), "?deploy x") == ("deploy", "x")
    assert parse(Router(prefixes=(".",)), "!deploy x") is None


def plan(router: Router, obj: dict, nicks=()) -> list:
    return [(h.name.rsplit(".", 1)[-1], ev) for h, ev in router.plan(decode(obj), nicks)]


def test_commands_get_args_and_arg_text() -> None:
    router = Router()

    @router.command("deploy", aliases=["ship"])
    def deploy(event: Message) -> None:
        """Deploy."""

    [(name, ev)] = plan(router, message('!ship web "prod eu"'))
    assert name == "deploy" and ev.command == "ship"
    assert ev.args == ("web", "prod eu") and ev.arg_text == 'web "prod eu"'
    [(_, ev)] = plan(router, message('!deploy "unbalanced web'))
    assert ev.args == ('"unbalanced', "web")
    assert plan(router, message("!deployx")) == [] and plan(router, message("deploy")) == []
    assert plan(router, event("action", text="!deploy web")) == []  # /me is not a command


def test_match_on_and_filters() -> None:
    router = Router()
    seen = []

    @router.match(r"ticket #(\d+)")
    def ticket(event: Message) -> None:
        seen.append(event.match.group(1))  # type: ignore[union-attr]

    @router.on("message", "user_joined", tenant="acme", protocol="irc")
    def acme(event: Event) -> None: ...

    @router.on("*", room=["r2", "r3"])
    def everything(event: Event) -> None: ...

    [(name, ev)] = plan(router, message("see ticket #42"))
    assert name == "ticket" and ev.match.group(1) == "42"
    assert [n for n, _ in plan(router, message("hi", tenant="acme"))] == ["acme"]
    assert [n for n, _ in plan(router, message("hi", tenant="acme", protocol="xmpp"))] == []
    assert [n for n, _ in plan(router, event("user_joined", room="r2", tenant="acme", nick="x"))] == [
        "acme", "everything"]
    assert [n for n, _ in plan(router, event("pong", room="r3"))] == ["everything"]


def test_own_lines_never_trigger_anything() -> None:
    router = Router(nick="bot")

    @router.command("echo")
    def echo(event: Message) -> None: ...

    @router.on("message")
    def any_message(event: Message) -> None: ...

    assert plan(router, message("!echo !echo", sender="bot"), nicks={"bot"}) == []
    assert plan(router, message("!echo x", sender="BOT_"), nicks={"bot_"}) == []
    assert [n for n, _ in plan(router, message("!echo x"), nicks={"bot"})] == ["echo", "any_message"]


def test_help_lists_commands_with_first_docstring_line() -> None:
    router = Router()

    @router.command("deploy")
    def deploy(event: Message) -> None:
        """Deploy a service: !deploy <service> <env>

        Long description.
        """

    @router.command("ping")
    def ping(event: Message) -> None: ...

    text = router.help_text()
    assert text.splitlines() == [
        "!deploy - Deploy a service: !deploy <service> <env>",
        "!ping",
        "!help [command] - list the commands, or describe one",
    ]
    assert "Long description." in router.help_text("deploy")
    assert "unknown command" in router.help_text("nope")
    [(name, ev)] = plan(router, message("!help deploy"))
    assert name == "help" and ev.args == ("deploy",)


def test_a_user_help_command_replaces_the_builtin() -> None:
    router = Router()

    @router.command("help")
    def my_help(event: Message) -> None: ...

    assert [n for n, _ in plan(router, message("!help"))] == ["my_help"]
    assert [n for n, _ in plan(Router(help_command=None), message("!help"))] == []
