"""IRCv3 identity on one connection: who sent a line (the sender's services account), when the server
says it was sent, and its id: the ``account``, ``server_ts`` and ``msgid`` of ``message``/``action``
events, and the ``account`` of ``user_joined``.

Made only where the server acknowledged one of ``IDENTITY_CAPS`` (``IrcSession.identity`` stays None
elsewhere, so a server without them costs one ``is None`` per line). What the server sends is trusted
only for what was negotiated, and every value is checked before it goes into an event:

- ``account-tag``: the ``account`` tag of a line is the sender's account, its absence means "not
  logged in" (the tag is authoritative for that one line, private messages included);
- without it, ``extended-join`` + ``account-notify`` together: accounts tracked per nick from JOINs
  (``JOIN #chan <account|*> :realname``) and ``ACCOUNT <account|*>`` lines, for the members tracked
  in our channels only (a nick that left every channel we share is forgotten, so whoever takes the
  nick next does not inherit it); members listed by NAMES are unknown (``null``). One of the two
  alone is not enough (a logout would go unseen), so nothing is tracked then;
- ``server-time``: the ``time`` tag, strict ISO 8601 UTC (``2026-01-01T12:00:00.000Z``) -> unix
  seconds (``server_ts``); ``message-tags``: the ``msgid`` tag (printable ASCII, at most 128 bytes).
An account is at most 100 characters with no spaces or control characters, never ``*``; a value that
fails is ``null`` (an account) or left out (``msgid``, ``server_ts``). Tags a server sends without
having negotiated them are never read.
"""

from __future__ import annotations

import calendar
import datetime
import re
from typing import Any, Optional

from .irc_wire import Message

#: the capabilities requested where offered, for identity
IDENTITY_CAPS = ("account-tag", "extended-join", "account-notify", "server-time", "message-tags")
#: accounts tracked per connection at most (as many as members: ``irc_channels``)
MAX_ACCOUNTS = 20_000

#: ``account`` of a line whose sender is not logged in or not known
NO_ACCOUNT: dict[str, Any] = {"account": None}


def valid_account(value: Optional[str]) -> Optional[str]:
    """An account name a server sent, if it is one (``*`` and empty mean none)."""
    if not value or value == "*" or len(value) > 100 or not value.isprintable() or " " in value:
        return None
    return value


def valid_msgid(value: Optional[str]) -> Optional[str]:
    """A ``msgid`` a server sent, if it is one: printable ASCII without spaces, at most 128 bytes."""
    if not value or len(value) > 128 or not value.isascii() or not value.isprintable() or " " in value:
        return None
    return value


#: "YYYY-MM-DDThh:mm" -> unix time of that minute (UTC): a minute's lines share one validation
_MINUTES: dict[str, int] = {}
_MINUTE_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)$")
_SECONDS_RE = re.compile(r"^:(\d\d)(?:\.(\d{1,9}))?Z$")


def _minute(head: str) -> Optional[int]:
    m = _MINUTE_RE.match(head) if head.isascii() else None
    if m is None:
        return None
    year, month, day, hour, minute = (int(x) for x in m.groups())
    if year < 1970:
        return None
    try:
        stamp = calendar.timegm(datetime.datetime(year, month, day, hour, minute).timetuple())
    except (ValueError, OverflowError):
        return None
    if len(_MINUTES) >= 256:
        _MINUTES.clear()
    _MINUTES[head] = stamp
    return stamp


def parse_server_time(value: Optional[str]) -> Optional[float]:
    """IRCv3 ``server-time`` (``YYYY-MM-DDThh:mm:ss[.fff]Z``) -> unix seconds; None unless strict."""
    if not value or len(value) > 40:
        return None
    minute = _MINUTES.get(value[:16])
    if minute is None:
        minute = _minute(value[:16])
        if minute is None:
            return None
    rest = value[16:]
    if len(rest) == 8 and rest[3] == "." and rest[7] == "Z" and rest[0] == ":" and rest.isascii() \
            and rest[1:3].isdigit() and rest[4:7].isdigit():  # the usual form: milliseconds
        second, fraction = int(rest[1:3]), int(rest[4:7]) / 1000
    else:
        m = _SECONDS_RE.match(rest) if rest.isascii() else None
        if m is None:
            return None
        second, digits = int(m.group(1)), m.group(2)
        fraction = int(digits) / 10 ** len(digits) if digits else 0.0
    if second > 60:
        return None
    return minute + second + fraction


class Identity:
    """The identity capabilities acknowledged on one connection, and the accounts tracked."""

    __slots__ = ("account_tag", "extended_join", "account_notify", "server_time", "message_tags",
                 "accounts")

    def __init__(self) -> None:
        self.account_tag = self.extended_join = self.account_notify = False
        self.server_time = self.message_tags = False
        #: folded nick -> account, only while ``tracking`` (extended-join + account-notify)
        self.accounts: dict[str, str] = {}

    def enable(self, cap: str, on: bool = True) -> None:
        attr = cap.replace("-", "_")
        if attr in self.__slots__ and attr != "accounts":
            setattr(self, attr, on)
        if not self.tracking:
            self.accounts.clear()

    @property
    def tracking(self) -> bool:
        return self.extended_join and self.account_notify

    # ------------------------------------------------------------------------------ event fields
    def fields(self, folded: str, msg: Message) -> dict[str, Any]:
        """``account`` (always), ``server_ts`` and ``msgid`` (when given) of a line from ``folded``."""
        tags = msg.tags if msg.raw_tags and (self.account_tag or self.server_time or self.message_tags) else {}
        if self.account_tag:
            account = valid_account(tags.get("account"))
        elif self.tracking:
            account = self.accounts.get(folded)
        else:
            account = None
        out: dict[str, Any] = {"account": account}
        if self.server_time:
            stamp = parse_server_time(tags.get("time"))
            if stamp is not None:
                out["server_ts"] = stamp
        if self.message_tags:
            msgid = valid_msgid(tags.get("msgid"))
            if msgid is not None:
                out["msgid"] = msgid
        return out

    # --------------------------------------------------------------------------------- tracking
    def joined(self, folded: str, msg: Message, tracked: bool) -> Optional[str]:
        """Someone joined one of our channels: their account (None: none or unknown); remembered
        when ``tracked`` (a member within the tracking bounds)."""
        account = None
        if self.extended_join and len(msg.params) >= 2:
            account = valid_account(msg.params[1])
        elif self.account_tag and msg.raw_tags:
            account = valid_account(msg.tags.get("account"))
        if self.tracking and tracked:
            self._remember(folded, account)
        return account

    def on_account(self, folded: str, msg: Message, tracked: bool) -> None:
        """``:nick!u@h ACCOUNT <account|*>`` (account-notify) for a member of our channels."""
        if self.tracking and tracked and msg.params:
            self._remember(folded, valid_account(msg.params[0]))

    def renamed(self, old: str, new: str) -> None:
        account = self.accounts.pop(old, None)
        self.accounts.pop(new, None)
        if account is not None:
            self.accounts[new] = account

    def forget(self, folded: str) -> None:
        self.accounts.pop(folded, None)

    def reset(self) -> None:
        """The connection dropped: nobody is known any more."""
        self.accounts.clear()

    def _remember(self, folded: str, account: Optional[str]) -> None:
        if account is None:
            self.accounts.pop(folded, None)
        elif folded in self.accounts or len(self.accounts) < MAX_ACCOUNTS:
            self.accounts[folded] = account
