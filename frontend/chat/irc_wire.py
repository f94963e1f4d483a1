"""IRC on the wire, inbound: bounded lines out of a byte stream, and lines parsed into ``Message``.

Pure: no sockets, no gevent. Everything a server sends is hostile until it is checked here:

- ``LineReader`` cuts the stream at LF (a CR before it is dropped) and decodes each line as UTF-8
  with U+FFFD for invalid bytes, so nothing that reaches Redis is unencodable. A line longer than
  ``MAX_LINE`` bytes (8 KiB of IRCv3 tags plus the 512 bytes of the message itself, the most a
  server may send) is dropped up to its newline, without ever being held whole: the reader keeps at
  most ``MAX_LINE`` bytes of an unfinished line, so a line without a newline costs memory and CPU in
  proportion to what was read, never quadratically.
- ``parse`` splits ``[@tags ][:source ]COMMAND[ params][ :trailing]`` (RFC 1459 / IRCv3
  message-tags) with string methods only (no regular expression: it is the hot path, measured in
  ``tests/bench/floor.py``); tags are kept raw and parsed only when asked for (``Message.tags``).
- ``command_name`` names a command as the ``irc`` package does (``irc.events``): numerics by their
  names (``"001"`` -> ``"welcome"``, ``"433"`` -> ``"nicknameinuse"``), verbs lower-cased
  (``"PRIVMSG"`` -> ``"privmsg"``). The adapter dispatches on these names, in one table.
"""

from __future__ import annotations

from typing import Optional

from irc.events import numeric as _NUMERIC_NAMES

#: the longest line accepted, in bytes without the line ending: IRCv3 allows 8191 bytes of tags
#: (with the '@' and the space after them) in front of the 512 bytes RFC 1459 allows a message
MAX_LINE = 8191 + 512

#: numerics the ``irc`` package has no name for (all join refusals, see ``irc_channels``)
_EXTRA_NAMES = {
    "479": "badchanname",      # illegal channel name (hybrid, ratbox, solanum)
    "489": "secureonlychan",   # +z / +S: TLS users only (unreal, inspircd)
}
_NAMES: dict[str, str] = {**_NUMERIC_NAMES, **_EXTRA_NAMES}

_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def command_name(command: str) -> str:
    """``irc.events``' name of a command: numerics by name (unknown ones stay as digits), verbs lower."""
    name = _NAMES.get(command)
    if name is not None:
        return name
    return command if command.isdigit() else command.lower()


def commands_named(name: str) -> list[str]:
    """The commands as they arrive that ``command_name`` calls ``name`` (``"welcome"`` -> ``["001"]``)."""
    codes = [code for code, known in _NAMES.items() if known == name]
    return codes or [name.upper()]


class Message:
    """One parsed line. ``params`` includes the trailing parameter (without its ':')."""

    __slots__ = ("raw_tags", "source", "command", "params")

    def __init__(self, raw_tags: Optional[str], source: Optional[str], command: str,
                 params: list[str]) -> None:
        self.raw_tags = raw_tags  # the tags section without '@', or None
        self.source = source      # "nick!user@host" or "server.name", or None
        self.command = command    # upper-cased: "PRIVMSG", "001"
        self.params = params

    @property
    def nick(self) -> Optional[str]:
        """The nick (or server name) of the source; None without a source."""
        source = self.source
        if source is None:
            return None
        return source.partition("!")[0]

    @property
    def tags(self) -> dict[str, Optional[str]]:
        """The IRCv3 tags, values unescaped (``None`` for a tag without a value). Parsed on each
        access (most lines never need them). Values may hold CR, LF or anything else: validate one
        for what will carry it before use."""
        out: dict[str, Optional[str]] = {}
        if not self.raw_tags:
            return out
        for item in self.raw_tags.split(";"):
            if not item:
                continue
            key, sep, value = item.partition("=")
            out[key] = _unescape_tag(value) if value else None
        return out

    def __repr__(self) -> str:
        return f"Message({self.raw_tags!r}, {self.source!r}, {self.command!r}, {self.params!r})"


def _unescape_tag(value: str) -> str:
    if "\\" not in value:
        return value
    out, i, n = [], 0, len(value)
    while i < n:
        char = value[i]
        if char == "\\":
            i += 1
            if i < n:  # a lone backslash at the end is dropped (message-tags)
                out.append(_TAG_ESCAPES.get(value[i], value[i]))
        else:
            out.append(char)
        i += 1
    return "".join(out)


def parse(line: str) -> Optional[Message]:
    """Parse one line (without its line ending); None when it has no command."""
    if not line:
        return None
    tags = source = None
    if line[0] == "@":
        tags, _, line = line.partition(" ")
        tags = tags[1:]
        line = line.lstrip(" ")
        if not line:
            return None
    if line[0] == ":":
        source, _, line = line.partition(" ")
        source = source[1:] or None
        line = line.lstrip(" ")
    head, sep, trailing = line.partition(" :")
    params = head.split(" ")
    if "" in params:  # runs of spaces: IRC separates parameters by one or more spaces, nothing else
        params = [p for p in params if p]
        if not params:
            return None
    command = params[0].upper()
    if command[0] == ":":  # no command before the trailing parameter
        return None
    del params[0]
    if sep:
        params.append(trailing)
    return Message(tags, source, command, params)


def parse_privmsg(line: str) -> Optional[tuple[str, str, str, str]]:
    """The lean parse of the commonest line, ``:nick!user@host PRIVMSG <target> :<text>`` without
    tags: ``(source, nick, target, text)`` exactly as ``parse`` gives them (``Message.source``,
    ``.nick``, ``.params``), or None for a line of any other shape, which ``parse`` then handles
    (tags, no source, an empty nick, runs of spaces, a target that is not one word, any other
    command or spelling). It checks nothing ``parse`` does not: the line is ``LineReader``'s."""
    if line[:1] != ":":
        return None
    sp = line.find(" ")
    if sp < 2 or not line.startswith("PRIVMSG ", sp + 1):
        return None
    end = line.find(" :", sp + 8)
    if end <= sp + 9:  # no trailing text, or no target before it
        return None
    target = line[sp + 9:end]
    if " " in target:
        return None
    source = line[1:sp]
    nick = source.partition("!")[0]
    if not nick:
        return None
    return source, nick, target, line[end + 2:]


class LineReader:
    """Complete lines out of a byte stream, each at most ``limit`` bytes; longer ones are dropped.

    ``feed(data)`` returns the decoded lines that ``data`` completed (empty lines left out).
    ``too_long`` counts the lines dropped; the caller reports the first of a series (see
    ``logs.Throttle``). Memory: at most ``limit`` bytes of an unfinished line are kept.
    """

    __slots__ = ("limit", "too_long", "_partial", "_skipping")

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.too_long = 0
        self._partial = b""
        self._skipping = False  # inside a line that was too long: drop up to its newline

    def feed(self, data: bytes) -> list[str]:
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return []
            self._skipping = False
            data = data[end + 1:]
        last = data.rfind(b"\n")
        if last < 0:  # no line ends here: keep what fits of the unfinished line
            if len(self._partial) + len(data) > self.limit:
                self._drop_partial()
            else:
                self._partial += data
            return []
        if self._partial:
            head = self._partial + data[:last]
        else:
            head = data[:last]
        rest = data[last + 1:]
        if len(rest) > self.limit:
            self._partial = b""
            self._drop_partial()
        else:
            self._partial = rest
        lines = head.decode("utf-8", "replace").split("\n")
        out = []
        limit = self.limit
        quarter = limit // 4  # n characters are at most 4n bytes of UTF-8: shorter lines fit
        for line in lines:
            if len(line) > quarter and len(line.encode("utf-8")) > limit + 1:  # + the CR
                # measured as decoded (U+FFFD counts 3 bytes): only invalid UTF-8 can make it more
                self.too_long += 1
                continue
            if line[-1:] == "\r":
                line = line[:-1]
            if line:
                out.append(line)
        return out

    def _drop_partial(self) -> None:
        self._partial = b""
        self._skipping = True
        self.too_long += 1
