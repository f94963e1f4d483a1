"""Pure helpers for the IRC adapter: outgoing lines within 512 bytes, nick fallbacks, case folding, and
the few server strings that go back out (a PING's token, a nick the server gave us), checked first.

Everything here is unit-tested byte for byte; nothing here does I/O.
"""

from __future__ import annotations

import base64
import re
from typing import Iterator

from ..text import assert_safe_line, irc_lines, split_utf8

#: RFC 2812: 512 bytes per line including CRLF
LINE_LIMIT = 512
#: what the server prepends when it relays our line: ":nick!user@host " — user and host unknown
#: until we see our own JOIN, so assume the longest usual ones (USERLEN 10, HOSTLEN 63)
UNKNOWN_USERHOST_LEN = 1 + 10 + 1 + 63
#: the most a line budget reserves for ":nick!user@host " whatever the server claims (nick 64 bytes)
MAX_PREFIX_LEN = 1 + 64 + UNKNOWN_USERHOST_LEN + 1
#: a PING token is echoed back at most this long
MAX_PING_TOKEN = 400
_LINE_UNSAFE = re.compile("[\x00\r\n]")
_NICK_UNSAFE = re.compile(r"[\s,\x00-\x1f\x7f]")

_UPPER, _LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
_RFC1459 = str.maketrans(_UPPER + "[]\\~", _LOWER + "{}|^")
_STRICT_RFC1459 = str.maketrans(_UPPER + "[]\\", _LOWER + "{}|")
_ASCII = str.maketrans(_UPPER, _LOWER)


#: folded names remembered per case mapping (every inbound line folds its nick and its target, and a
#: ``str.translate`` costs several times a dict lookup); bounded: names longer than
#: ``FOLD_CACHE_NAME`` characters are not kept, and the whole cache is dropped at ``FOLD_CACHE_MAX``
FOLD_CACHE_MAX = 4096
FOLD_CACHE_NAME = 64


def _cached_fold(table: dict[int, int], doc: str):
    cache: dict[str, str] = {}

    def fold(name: str) -> str:
        folded = cache.get(name)
        if folded is None:
            folded = name.translate(table)
            if len(name) <= FOLD_CACHE_NAME:
                if len(cache) >= FOLD_CACHE_MAX:
                    cache.clear()
                cache[name] = folded
        return folded

    fold.__doc__ = doc
    fold.cache = cache  # type: ignore[attr-defined]  # for tests and probes (also when compiled)
    return fold


fold = _cached_fold(_RFC1459, """RFC 1459 case folding, how IRC servers compare nicks and channel names
    (unless their ISUPPORT ``CASEMAPPING`` says otherwise: ``folder``).""")
_strict_rfc1459 = _cached_fold(_STRICT_RFC1459, "strict RFC 1459 case folding (no ``~`` / ``^``)")
_ascii = _cached_fold(_ASCII, "ASCII case folding")


#: ISUPPORT ``CASEMAPPING`` values -> how that server folds names; others (``rfc7613``, unknown
#: ones) fold as RFC 1459, the default when a server says nothing
FOLDS = {"rfc1459": fold, "strict-rfc1459": _strict_rfc1459, "ascii": _ascii}


def folder(casemapping: str | None):
    """The case folding of a server's ``CASEMAPPING`` (RFC 1459 when unknown or absent)."""
    return FOLDS.get((casemapping or "").lower(), fold)


def connection_nick(nick: str, index: int) -> str:
    """The nick connection ``index`` of one identity asks for first: ``nick`` for the first (0), then
    ``nick2``, ``nick3``, ... (the pool opens another connection past a server's channel limit or
    ``channels_per_connection``); a taken one falls back as ``nick_candidates`` says."""
    return nick if index <= 0 else f"{nick}{index + 1}"


def nick_candidates(nick: str) -> Iterator[str]:
    """The nicks to try when one is taken: nick, nick_, nick__, nick1, nick2, ..."""
    yield nick
    yield nick + "_"
    yield nick + "__"
    n = 1
    while True:
        yield f"{nick}{n}"
        n += 1


def prefix_len(nick: str, userhost_len: int | None) -> int:
    """Length of ':nick!user@host ' as the server will relay it (bounded: a server cannot make our
    lines' budget vanish by claiming a huge host)."""
    length = 1 + len(nick.encode()) + (UNKNOWN_USERHOST_LEN if userhost_len is None else userhost_len) + 1
    return min(length, MAX_PREFIX_LEN)


def valid_server_nick(nick: str) -> bool:
    """A nick a server gave us (001, NICK) that we may adopt: non-empty, at most 64 bytes, no
    spaces, commas or control characters."""
    return bool(nick) and len(nick.encode()) <= 64 and not _NICK_UNSAFE.search(nick)


def pong_line(token: str) -> bytes:
    """``PONG :token`` for a server's PING: the token without NUL, CR or LF, cut to fit."""
    token = _LINE_UNSAFE.sub("", token)
    if len(token.encode()) > MAX_PING_TOKEN:
        token = split_utf8(token, MAX_PING_TOKEN)[0]
    return assert_safe_line(f"PONG :{token}\r\n".encode())


def message_lines(verb: str, target: str, text: str, *, prefix: int, action: bool = False) -> list[bytes]:
    """PRIVMSG/NOTICE lines for ``text``: sanitised, one per input line, split to fit 512 bytes."""
    head = f"{verb} {target} :".encode()
    wrap_len = 9 if action else 0  # \x01ACTION ... \x01
    budget = LINE_LIMIT - 2 - prefix - len(head) - wrap_len
    if text.isascii() and text.isprintable() and len(text) <= budget and budget >= 4 and text \
            and not text.isspace():
        # the common case, one short line of printable ASCII: what the general path makes of it
        # (nothing to strip, one line, no split), without its regular expressions
        body = text.encode()
        return [head + (b"\x01ACTION " + body + b"\x01" if action else body) + b"\r\n"]
    out = []
    for line in irc_lines(text):
        for piece in split_utf8(line, budget):
            body = piece.encode("utf-8")
            if action:
                body = b"\x01ACTION " + body + b"\x01"
            out.append(head + body + b"\r\n")
    return out


def topic_line(channel: str, text: str, *, prefix: int) -> bytes | None:
    """One TOPIC line: the text's lines joined by spaces, cut to fit."""
    head = f"TOPIC {channel} :".encode()
    joined = " ".join(irc_lines(text))
    if not joined:
        return None
    piece = split_utf8(joined, LINE_LIMIT - 2 - prefix - len(head))[0]
    return head + piece.encode("utf-8") + b"\r\n"


def reason_line(head: str, reason: str) -> bytes:
    """``PART #c :reason`` / ``QUIT :reason``: the reason's first line, cut to fit."""
    lines = irc_lines(reason)
    data = f"{head} :".encode()
    if lines:
        data += split_utf8(lines[0], LINE_LIMIT - 2 - len(data))[0].encode("utf-8")
    return data + b"\r\n"


def join_lines(channels: list[tuple[str, str | None]]) -> list[bytes]:
    """JOIN lines for (channel, key) pairs, several channels per line (keyed ones first)."""
    keyed = [(c, k) for c, k in channels if k]
    plain = [c for c, k in channels if not k]
    lines: list[bytes] = []
    for start in range(0, len(keyed), 10):
        part = keyed[start:start + 10]
        lines.append(("JOIN %s %s\r\n" % (",".join(c for c, _ in part), ",".join(k for _, k in part))).encode())
    batch: list[str] = []
    for channel in plain:
        if batch and len(",".join(batch)) + len(channel) > 400:
            lines.append(("JOIN %s\r\n" % ",".join(batch)).encode())
            batch = []
        batch.append(channel)
    if batch:
        lines.append(("JOIN %s\r\n" % ",".join(batch)).encode())
    return lines


def sasl_plain_lines(username: str, password: str) -> list[bytes]:
    """AUTHENTICATE lines carrying the PLAIN credentials, in 400-byte chunks (IRCv3 SASL)."""
    blob = base64.b64encode(f"{username}\0{username}\0{password}".encode()).decode()
    chunks = [blob[i:i + 400] for i in range(0, len(blob), 400)] or ["+"]
    if len(chunks[-1]) == 400:
        chunks.append("+")
    return [f"AUTHENTICATE {c}\r\n".encode() for c in chunks]
