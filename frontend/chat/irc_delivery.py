"""When a line written to an IRC server counts as delivered, so its command may leave the in-flight list.

- ``echo``: the server offers IRCv3 ``echo-message``; a PRIVMSG is delivered when it comes back
  (echoes arrive in the order the lines were sent).
- ``pong`` (default otherwise): after a batch, the writer sends ``PING :gr-ack-N``; the lines written
  before it are delivered when the matching PONG arrives, because a server handles a client's lines
  in order. One PING is outstanding at a time, so under load one PING covers a whole batch.
- ``write``: delivered once ``sendall`` returned. Cheapest, but a line still in a socket buffer when
  the process or the link dies is lost (servers such as ngircd discard unread input on close).

Lines written but not confirmed when the connection drops are handed back to be sent again: at
least once, never lost.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Hashable

import gevent.event

from .sendqueue import OutLine

Deliver = Callable[[Hashable, OutLine], None]
PING_PREFIX = "gr-ack-"


class DeliveryTracker:
    """Holds written lines until the server confirms them, then calls ``deliver`` for each."""

    __slots__ = ("mode", "echo", "_deliver", "_unechoed", "_unconfirmed", "_pinged", "_seq", "settled")

    def __init__(self, mode: str, deliver: Deliver) -> None:
        if mode not in ("pong", "write"):
            raise ValueError(f"irc_ack must be 'pong' or 'write', not {mode!r}")
        self.mode = mode
        self.echo = False
        self._deliver = deliver
        #: made when echo-message is on (a deque is 0.6 KB; most servers have no echo)
        self._unechoed: deque[tuple[Hashable, OutLine]] | None = None
        self._unconfirmed: list[tuple[Hashable, OutLine]] = []
        self._pinged: tuple[str, list[tuple[Hashable, OutLine]]] | None = None
        self._seq = 0
        #: set while nothing written waits for a confirmation
        self.settled = gevent.event.Event()
        self.settled.set()

    def reset(self) -> list[tuple[Hashable, OutLine]]:
        """The connection is gone: every unconfirmed line, oldest first, to be sent again."""
        lines = list(self._pinged[1]) if self._pinged else []
        lines += self._unconfirmed
        if self._unechoed:
            lines += self._unechoed
            self._unechoed.clear()
        self._pinged, self._unconfirmed = None, []
        self.echo = False
        self.settled.set()
        return lines

    def written(self, key: Hashable, line: OutLine) -> None:
        data = line.data
        if self.echo and data is not None and data.startswith(b"PRIVMSG "):
            if self._unechoed is None:
                self._unechoed = deque()
            self._unechoed.append((key, line))
            self.settled.clear()
        elif self.mode == "pong" and line.on_sent is None:
            self._unconfirmed.append((key, line))
            self.settled.clear()
        else:
            self._deliver(key, line)

    def written_all(self, lines: list[tuple[Hashable, OutLine]]) -> None:
        """``written`` for each of a batch's lines, in order (one call and one ``settled`` change for
        the batch when they all await a PONG, the commonest case)."""
        if self.echo or self.mode != "pong":
            for key, line in lines:
                self.written(key, line)
            return
        unconfirmed = self._unconfirmed
        waiting = len(unconfirmed)
        for item in lines:
            if item[1].on_sent is None:
                unconfirmed.append(item)
            else:  # a barrier: delivered when written, as ``written`` does, once settled says so
                if len(unconfirmed) > waiting:
                    self.settled.clear()
                self._deliver(*item)
        if len(unconfirmed) > waiting:
            self.settled.clear()

    def ping_line(self) -> bytes | None:
        """The PING that asks the server to confirm what was written since the last one, if due."""
        if not self._unconfirmed or self._pinged is not None:
            return None
        self._seq += 1
        token = f"{PING_PREFIX}{self._seq}"
        self._pinged, self._unconfirmed = (token, self._unconfirmed), []
        return f"PING :{token}\r\n".encode()

    def on_pong(self, token: str) -> bool:
        """A PONG arrived; True when it confirmed lines and lines written since are owed the next
        PING (the writer sends it)."""
        if self._pinged is None or token != self._pinged[0]:
            return False
        lines = self._pinged[1]
        self._pinged = None
        for key, line in lines:
            self._deliver(key, line)
        self._check_settled()
        return bool(self._unconfirmed)

    def on_echo(self) -> None:
        """Our own PRIVMSG came back (echo-message)."""
        if self._unechoed:
            key, line = self._unechoed.popleft()
            self._deliver(key, line)
            self._check_settled()

    def _check_settled(self) -> None:
        if not self._unechoed and not self._unconfirmed and self._pinged is None:
            self.settled.set()
