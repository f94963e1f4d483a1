"""Routing events to handlers: ``@on(type)``, ``@command(name)``, ``@match(regex)`` and ``!help``.

Every handler takes one argument, the event. Command handlers get a ``Message`` whose ``command``,
``args`` (``!deploy web "prod eu"`` -> ``("web", "prod eu")``) and ``arg_text`` (``'web "prod eu"'``)
are filled; regex handlers get one whose ``match`` is the ``re.Match``. A command is a message that
starts with one of ``prefixes`` (default ``"!"``), or addresses the bot (``botnick: deploy web``), or
any private message. Lines sent by the bot itself are never dispatched (no loops).

``@command(name, accounts={"alice"})`` runs only for senders whose identity the chat server vouches
for: the IRC services account (``event.account``, IRCv3) or, on XMPP, the real bare JID
(``event.jid``), compared case-insensitively; a nick is never enough (anyone can take one). Anyone
else gets a reply saying so (``denial_text``) and the handler does not run.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Iterator, TypeVar

from .events import Event, Message

F = TypeVar("F", bound=Callable[..., Any])
Filter = str | Collection[str] | None


@dataclass(frozen=True)
class Handler:
    """One registered handler and what it reacts to."""

    func: Callable[[Any], Any]
    name: str
    types: frozenset[str]  # event types; "*" is every type
    command: str | None = None
    aliases: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    filters: dict[str, Filter] = field(default_factory=dict)
    retries: int | None = None  # None: the backend's default
    #: the identities (folded: ``identity_key``) allowed to run this command; None: anyone
    accounts: frozenset[str] | None = None
    #: the built-in handler that answers a refused command (``Router.denied``)
    denial: bool = False

    def admits(self, event: Event) -> bool:
        """True when ``accounts`` allows the event's sender (IRC account, or XMPP real JID)."""
        if self.accounts is None:
            return True
        who = sender_identity(event)
        return who is not None and identity_key(who) in self.accounts

    @property
    def summary(self) -> str:
        """The first line of the docstring."""
        doc = inspect.getdoc(self.func) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def accepts(self, event: Event) -> bool:
        if "*" not in self.types and event.type not in self.types:
            return False
        for name, wanted in self.filters.items():
            value = getattr(event, name, None)
            if wanted is not None and (value != wanted if isinstance(wanted, str) else value not in wanted):
                return False
        return True


_RFC1459 = str.maketrans("[]\\~", "{}|^")


def identity_key(name: str) -> str:
    """An account name or bare JID as compared: case-insensitive (IRC's RFC 1459 folding too)."""
    return name.translate(_RFC1459).casefold()


def sender_identity(event: Event) -> str | None:
    """Who the chat server says sent ``event``: its services account (IRC) or real bare JID (XMPP);
    None when it does not say (not logged in, an anonymous room, an older frontend)."""
    return getattr(event, "account", None) or (getattr(event, "jid", None) if event.protocol == "xmpp" else None)


def _split_args(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError:  # unbalanced quotes: plain words
        return tuple(text.split())


class Router:
    """The handler registry shared by ``Backend`` and ``AsyncBackend``."""

    def __init__(self, *, prefixes: Iterable[str] = ("!",), nick: str | None = None,
                 help_command: str | None = "help") -> None:
        self.prefixes = tuple(prefixes)
        self.nick = nick
        self.handlers: list[Handler] = []
        self._help_command = help_command
        self._check_handler: Callable[[Callable[..., Any]], None] = lambda func: None

    # ----------------------------------------------------------------------------------- decorators
    def on(self, *types: str, tenant: Filter = None, protocol: Filter = None, room: Filter = None,
           retries: int | None = None) -> Callable[[F], F]:
        """Handle events of these types (``"message"``, ``"user_joined"``, ... or ``"*"``).

        ``tenant``/``protocol``/``room`` filter on the event's field (a value or a collection);
        ``retries`` overrides the backend's number of retries for this handler.
        """
        if not types:
            raise TypeError("on() needs at least one event type, e.g. on('message')")
        return self._register(types, tenant=tenant, protocol=protocol, room=room, retries=retries)

    def command(self, name: str, *, aliases: Iterable[str] = (), tenant: Filter = None,
                protocol: Filter = None, room: Filter = None, retries: int | None = None,
                accounts: Iterable[str] | None = None) -> Callable[[F], F]:
        """Handle ``!name args...`` (and ``botnick: name args...``, and private ``name args...``).

        ``accounts``: only these services accounts (IRC; XMPP: real bare JIDs) may run it; others
        get a reply saying they may not. The first docstring line of the handler is its ``!help`` text.
        """
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"a command name is one word, not {name!r}")
        allowed = None
        if accounts is not None:
            if isinstance(accounts, str):
                raise TypeError("accounts is a collection of names, e.g. accounts={'alice'}")
            allowed = frozenset(identity_key(a) for a in accounts)
            if not all(allowed):
                raise ValueError("an account name is not empty")
        return self._register(("message",), command=name.lower(),
                              aliases=tuple(a.lower() for a in aliases), tenant=tenant,
                              protocol=protocol, room=room, retries=retries, accounts=allowed)

    def match(self, pattern: str | re.Pattern[str], *, flags: int = 0, tenant: Filter = None,
              protocol: Filter = None, room: Filter = None, retries: int | None = None) -> Callable[[F], F]:
        """Handle messages whose text matches ``pattern`` (``re.search``); ``event.match`` is the match."""
        compiled = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
        return self._register(("message",), pattern=compiled, tenant=tenant, protocol=protocol,
                              room=room, retries=retries)

    def _register(self, types: Iterable[str], *, tenant: Filter, protocol: Filter, room: Filter,
                  **options: Any) -> Callable[[F], F]:
        filters = {k: v for k, v in (("tenant", tenant), ("protocol", protocol), ("room", room)) if v is not None}

        def decorator(func: F) -> F:
            if not callable(func):
                raise TypeError(f"a handler must be callable, not {func!r}")
            self._check_handler(func)
            name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
            self.handlers.append(Handler(func=func, name=name, types=frozenset(types), filters=filters,
                                         **options))
            return func

        return decorator

    # -------------------------------------------------------------------------------------- routing
    def parse_command(self, text: str, *, private: bool = False,
                      nicks: Collection[str] = ()) -> tuple[str, str] | None:
        """``(name, arg_text)`` when ``text`` is a command, else ``None``."""
        body = None
        stripped = text.strip()
        for prefix in self.prefixes:
            if prefix and stripped.startswith(prefix):
                body = stripped[len(prefix):]
                break
        else:
            for nick in nicks:
                m = re.match(rf"{re.escape(nick)}\s*[:,]\s*(.*)$", stripped, re.IGNORECASE | re.DOTALL)
                if m:
                    body = m.group(1)
                    break
            else:
                body = stripped if private else None
        if not body or body[0].isspace():
            return None
        name, _, rest = body.partition(" ")
        return name.lower(), rest.strip()

    def plan(self, event: Event, nicks: Collection[str] = ()) -> Iterator[tuple[Handler, Event]]:
        """The handlers for ``event``, each with the event it gets, in registration order.

        ``nicks`` are the bot's own nicks in this room: its lines are skipped, addressing uses them.
        """
        if isinstance(event, Message):
            lowered = {n.lower() for n in nicks}
            if event.sender.lower() in lowered:
                return
        parsed = None
        if type(event) is Message:
            parsed = self.parse_command(event.text, private=event.private, nicks=nicks)
        command_found = False
        for handler in self.handlers:
            if not handler.accepts(event):
                continue
            if handler.command is not None:
                if parsed and (parsed[0] == handler.command or parsed[0] in handler.aliases):
                    command_found = True
                    yield handler if handler.admits(event) else self._denial(handler), dataclasses.replace(
                        event, command=parsed[0], arg_text=parsed[1], args=_split_args(parsed[1]))
            elif handler.pattern is not None:
                m = handler.pattern.search(event.text) if isinstance(event, Message) else None
                if m:
                    yield handler, dataclasses.replace(event, match=m)
            else:
                yield handler, event
        if parsed and not command_found and parsed[0] == self._help_command:
            yield self._help_handler(), dataclasses.replace(
                event, command=parsed[0], arg_text=parsed[1], args=_split_args(parsed[1]))

    # ----------------------------------------------------------------------------------------- help
    def help_text(self, name: str | None = None) -> str:
        """The ``!help`` answer: one line per command, or the full docstring of ``name``."""
        prefix = self.prefixes[0] if self.prefixes else ""
        commands = sorted({h.command: h for h in reversed(self.handlers) if h.command}.values(),
                          key=lambda h: h.command or "")
        if name:
            wanted = name.lower().lstrip(prefix)
            for h in commands:
                if wanted == h.command or wanted in h.aliases:
                    return f"{prefix}{h.command}: {inspect.getdoc(h.func) or 'no description'}"
            return f"unknown command {name!r}; {prefix}{self._help_command} lists them"
        lines = [f"{prefix}{h.command}" + (f" - {h.summary}" if h.summary else "")
                 + (" (some accounts only)" if h.accounts is not None else "") for h in commands]
        lines.append(f"{prefix}{self._help_command} [command] - list the commands, or describe one")
        return "\n".join(lines)

    def denial_text(self, event: Message) -> str:
        """What a sender hears when ``accounts`` refuses them a command."""
        prefix = self.prefixes[0] if self.prefixes else ""
        who = sender_identity(event)
        if who is None:
            why = ("I cannot tell who you are: log in to the network's services (NickServ) first"
                   if event.protocol != "xmpp" else "this room does not show me who you are")
            return f"{prefix}{event.command} is for some accounts only, and {why}"
        return f"{prefix}{event.command} is for some accounts only, and {who} is not one of them"

    def _denial(self, handler: Handler) -> Handler:
        """The built-in handler that answers, in the place of ``handler``, a sender it refuses."""
        def denied(event: Message) -> Any:
            """Refuse a restricted command."""
            return event.reply(self.denial_text(event))

        return Handler(func=denied, name="backend_sdk.denied", types=frozenset({"message"}),
                       command=handler.command, aliases=handler.aliases, retries=0, denial=True)

    def _help_handler(self) -> Handler:
        def builtin_help(event: Message) -> Any:
            """List the commands, or describe one."""
            return event.reply(self.help_text(event.args[0] if event.args else None))

        return Handler(func=builtin_help, name="backend_sdk.help", types=frozenset({"message"}),
                       command=self._help_command, retries=0)
