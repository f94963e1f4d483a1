"""Outgoing text: strip what could inject protocol syntax, split into lines that fit the protocol.

No text that leaves here can contain CR, LF or NUL, and no IRC line it produces is longer than the
budget it was given. Splits fall on UTF-8 character boundaries, preferably at a space.
"""

from __future__ import annotations

import re

#: IRC formatting codes (bold, colour, reset, monospace, reverse, italic, strike, underline) survive
_IRC_FORMATTING = "\x02\x03\x0f\x11\x16\x1d\x1e\x1f"
_STRIP_IRC = re.compile("[%s]" % "".join(
    chr(c) for c in [*range(0x00, 0x20), 0x7f] if chr(c) not in _IRC_FORMATTING + "\n"))
# XML 1.0 allows only #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_STRIP_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NEWLINES = re.compile(r"\r\n?|\n")


def irc_lines(text: str) -> list[str]:
    """The non-empty lines of ``text`` with every control character but formatting codes removed."""
    text = _NEWLINES.sub("\n", text.encode("utf-8", "replace").decode("utf-8"))
    return [line for line in _STRIP_IRC.sub("", text).split("\n") if line.strip()]


def xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids; line breaks normalised to LF."""
    return _STRIP_XML.sub("", _NEWLINES.sub("\n", text))


def split_utf8(line: str, budget: int) -> list[str]:
    """Split ``line`` into pieces of at most ``budget`` UTF-8 bytes, on character boundaries.

    A piece ends at the last space that leaves it at least half full; otherwise it is cut hard.
    """
    if budget < 4:
        raise ValueError("budget must leave room for one UTF-8 character")
    data = line.encode("utf-8", "replace")
    if len(data) <= budget:
        return [line]
    pieces: list[str] = []
    while len(data) > budget:
        cut = budget
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # never inside a multi-byte character
            cut -= 1
        space = data.rfind(b" ", budget // 2, cut + 1)
        if space > 0:
            pieces.append(data[:space].decode("utf-8"))
            data = data[space + 1:]
        else:
            pieces.append(data[:cut].decode("utf-8"))
            data = data[cut:]
    if data:
        pieces.append(data.decode("utf-8"))
    return [p for p in pieces if p]


_LINE_BREAKERS = b"\r\n\x00"


def assert_safe_line(line: bytes) -> bytes:
    """Last guard before a socket write: one protocol line, terminated once (no CR, LF or NUL
    before its CRLF). It runs for every line written: one ``translate`` that drops CR, LF and NUL
    must drop two bytes, the final CRLF (0.56 µs; a regular expression search was 0.92)."""
    if not line.endswith(b"\r\n") or len(line.translate(None, _LINE_BREAKERS)) != len(line) - 2:
        raise ValueError(f"refusing to write an unsafe line: {line[:80]!r}")
    return line
