"""The floor under greenroom's CPU per line: what the unavoidable steps of the design cost in this Python.

    .venv/bin/python -m tests.bench.floor

Each step is timed alone, in a loop, in one process (no servers; a socketpair stands in for the IRC
socket). A ``say`` must at least be decoded (ujson), handed from the incoming dispatcher to its room
greenlet through a gevent Queue (one greenlet switch there and back), and written to a socket (one
``send`` system call unless several lines share it). An inbound line must at least be read, split,
parsed, encoded (ujson) and handed to the outgoing dispatcher (an Event wake-up). Their sum is a lower
bound for the per-line figures in BENCHMARKS.md that no tuning of greenroom's own code goes below.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.queue  # noqa: E402
import ujson  # noqa: E402

N = 200_000
SAY = b'{"type":"say","room":"r17","text":"bench:1234567890123:42 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
LINE = b":nick!user@host PRIVMSG #r17 :bench:1234567890123:42 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"


def per_call(fn: Callable[[], None], n: int = N) -> float:
    """CPU µs per call (process time, so other processes on the machine do not count)."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def queue_handoff(n: int = N) -> float:
    """put() from one greenlet, get() in another that blocks on the queue: a room receiving a command."""
    q: gevent.queue.Queue = gevent.queue.Queue()
    done = gevent.event.Event()

    def consumer() -> None:
        for _ in range(n):
            q.get()
        done.set()

    gevent.spawn(consumer)
    gevent.sleep(0)
    t0 = time.process_time()
    for _ in range(n):
        q.put(1)
        gevent.sleep(0)  # the dispatcher yields; the room runs (the switch is the cost measured)
    done.wait()
    return (time.process_time() - t0) / n * 1e6


def room_wakeup(n: int = N) -> float:
    """The same hand-off as ``Room`` makes it (session 8): the command put in the room's gevent queue,
    and the greenlet parked in the hub on an empty queue switched back into by one hub callback
    (``frontend.room._resume``) instead of a ``get()`` that waits (a Waiter, a getters entry, an unlock);
    the room's queue lets its deque go before it parks (``RoomQueue.idle``, session 9)."""
    from frontend.room import RoomQueue, _resume
    q = RoomQueue()
    hub = gevent.get_hub()
    parked: list = [None]
    count = 0

    def consumer() -> None:
        nonlocal count
        while count < n:
            if not q.qsize():
                q.idle()
                parked[0] = gevent.getcurrent()
                hub.switch()
                continue
            q.get_nowait()
            count += 1

    g = gevent.spawn(consumer)
    gevent.sleep(0)
    t0 = time.process_time()
    for _ in range(n):
        q.put(1)
        waiting, parked[0] = parked[0], None
        if waiting is not None:
            hub.loop.run_callback(_resume, waiting)
        gevent.sleep(0)  # the dispatcher yields; the room runs
    g.join()
    return (time.process_time() - t0) / n * 1e6


def event_wakeup(n: int = N) -> float:
    """Event.set() waking a greenlet blocked in wait(): the writer or the outgoing dispatcher waking."""
    ev = gevent.event.Event()
    count = 0

    def waiter() -> None:
        nonlocal count
        while count < n:
            ev.wait()
            ev.clear()
            count += 1

    g = gevent.spawn(waiter)
    gevent.sleep(0)
    t0 = time.process_time()
    while count < n:
        ev.set()
        gevent.sleep(0)
    g.join()
    return (time.process_time() - t0) / n * 1e6


def spawn_run(n: int = N) -> float:
    """gevent.spawn of a short function and running it: the on-demand IRC writer."""
    t0 = time.process_time()
    for _ in range(n):
        gevent.spawn(lambda: None)
        gevent.sleep(0)
    return (time.process_time() - t0) / n * 1e6


def socket_round(n: int = N) -> float:
    """One send() of one line and the recv() of it on a connected pair of sockets: two system calls,
    what a line costs at the IRC socket at best (the frontend writes; the frontend reads)."""
    a, b = socket.socketpair()

    def once() -> None:
        a.send(LINE)
        b.recv(65536)

    us = per_call(once, n // 4)
    a.close()
    b.close()
    return us


def irc_paths() -> tuple:
    """The per-line parse before issue 14 (jaraco's private regex, its Arguments and NickMask, the
    command upper-cased for a dict of raw commands) and now (``irc_wire.parse``, one lookup in the
    table keyed by raw command, the nick); and the two line buffers."""
    import irc.client
    from irc.message import Arguments
    from jaraco.stream.buffer import DecodingLineBuffer

    from frontend.chat.irc import _BY_COMMAND
    from frontend.chat.irc_wire import LineReader, parse

    regex, nickmask, from_group = irc.client._rfc_1459_command_regexp, irc.client.NickMask, Arguments.from_group
    table = _BY_COMMAND

    def old(line: str) -> tuple:
        group = regex.match(line).group
        command = group("command").upper()
        args = from_group(group("argument"))
        prefix = group("prefix")
        source = nickmask(prefix) if prefix else None
        return table.get(command), args, source.nick

    def new(line: str) -> tuple:
        msg = parse(line)
        return table.get(msg.command), msg.params, msg.nick

    def old_buffer(chunk: bytes) -> list:
        buffer = DecodingLineBuffer()
        buffer.errors = "replace"
        buffer.feed(chunk)
        return list(buffer)

    reader = LineReader()
    return old, new, old_buffer, reader.feed


def identity_path(text: str) -> tuple:
    """What ``IrcChannels.on_privmsg`` adds per line for ``account``/``msgid``/``server_ts``: the
    constant where the server offers no identity capability, the tag checks where it does."""
    from frontend.chat.irc_identity import NO_ACCOUNT, Identity
    from frontend.chat.irc_wire import parse

    identity = Identity()
    for cap in ("account-tag", "server-time", "message-tags"):
        identity.enable(cap)

    def fields(ident, msg) -> dict:
        return NO_ACCOUNT if ident is None else ident.fields("nick", msg)

    tagged = parse("@account=alice;msgid=1GR~AAAAB;time=2026-01-01T00:00:00.000Z " + text)
    return fields, identity, parse(text), tagged


def main() -> None:
    text = LINE[:-2].decode()
    tagged = "@time=2026-01-01T00:00:00.000Z;account=alice " + text
    chunk = LINE * 500
    irc_old_path, irc_new_path, irc_old_buffer, irc_reader = irc_paths()
    identity_fields, identity, untagged, full_tags = identity_path(text)
    rows = [
        ("ujson.loads of a say command", per_call(lambda: ujson.loads(SAY))),
        ("ujson.dumps of a message event", per_call(lambda: ujson.dumps(
            {"type": "message", "room": "r17", "protocol": "irc", "from": "nick", "text": "x" * 60,
             "private": False, "event_id": "0123456789ab-1f", "ts": 1763900000.123}))),
        ("IRC line parse, before issue 14 (irc.client regex, Arguments, NickMask)",
         per_call(lambda: irc_old_path(text))),
        ("IRC line parse, irc_wire.parse + table lookup + nick", per_call(lambda: irc_new_path(text))),
        ("IRC line parse with IRCv3 tags, before", per_call(lambda: irc_old_path(tagged))),
        ("IRC line parse with IRCv3 tags, irc_wire", per_call(lambda: irc_new_path(tagged))),
        ("IRCv3 identity of a PRIVMSG, server without the caps (identity None: the constant)",
         per_call(lambda: identity_fields(None, untagged))),
        ("IRCv3 identity of a tagged PRIVMSG (account-tag, server-time, message-tags)",
         per_call(lambda: identity_fields(identity, full_tags))),
        ("IRC lines out of 500-line chunks, before (DecodingLineBuffer), per line",
         per_call(lambda: irc_old_buffer(chunk), N // 500) / 500),
        ("IRC lines out of 500-line chunks, irc_wire.LineReader, per line",
         per_call(lambda: irc_reader(chunk), N // 500) / 500),
        ("gevent Queue hand-off to a blocked greenlet (put, switch, get, switch back)", queue_handoff()),
        ("a room's hand-off since session 8 (put, one callback into the parked greenlet, back)", room_wakeup()),
        ("the dispatcher's own yield in both rows above (gevent.sleep(0) alone)", per_call(lambda: gevent.sleep(0))),
        ("Event.set waking a blocked greenlet (and back)", event_wakeup()),
        ("gevent.spawn + run + finish a greenlet (gevent's default: spawn tree tracked)", spawn_run()),
    ]
    gevent.config.track_greenlet_tree = False  # as the daemon runs (frontend/cli.py)
    rows.append(("gevent.spawn + run + finish a greenlet (tree not tracked)", spawn_run()))
    rows.append(("socket send() + recv() of one line (two system calls)", socket_round()))
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  CPU µs per call")
    for name, us in rows:
        print(f"{name:<{width}}  {us:6.2f}")


if __name__ == "__main__":
    main()
