"""A hostile IRC server of the test suite's own, as a separate process: it floods at full speed.

    python -m tests.support.flood_ircd MODE [--seconds S] [--nicks N]

No packaged IRC server sends a 16 MB line, an endless stream, or NAMES with millions of nicks, so
the hostile-server tests (issue 13, items 3 and 5) use this script. It runs in its own process with
plain blocking sockets (no gevent), so it sends as fast as the kernel takes it while the frontend
under test reads on the other core; an in-process stub would yield to the frontend's hub and flood
far less. It prints its port on stdout, accepts one client, registers it (001), echoes its JOIN
and then, in the first joined channel:

- ``long``: one line of 16 MiB without a newline, then its newline and ``PRIVMSG <chan> :after-long``,
  then ``--seconds`` of short lines as fast as possible (NOTICEs: parsed, never events), then
  ``PRIVMSG <chan> :after-flood``;
- ``endless``: ``--seconds`` of bytes without any newline, then a newline and
  ``PRIVMSG <chan> :after-endless``;
- ``names``: NAMES replies (353) listing ``--nicks`` distinct nicks, 366, then
  ``PRIVMSG <chan> :after-names``.

After its script it answers PINGs until the client goes. Loopback only.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

MiB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("long", "endless", "names"))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--nicks", type=int, default=2_000_000)
    args = ap.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(listener.getsockname()[1], flush=True)
    listener.settimeout(60)
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    nick, channel = "*", None
    while channel is None:  # register and wait for the JOIN
        raw = reader.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        verb, _, rest = line.partition(" ")
        if verb == "CAP" and rest.startswith("LS"):
            sock.sendall(b":flood CAP * LS :\r\n")
        elif verb == "NICK":
            nick = rest.lstrip(":")
            sock.sendall(f":flood 001 {nick} :Welcome\r\n".encode())
        elif verb == "JOIN":
            channel = rest.split()[0].split(",")[0]
            sock.sendall(f":{nick}!u@127.0.0.1 JOIN {channel}\r\n".encode())
    chan = channel.encode()
    if args.mode == "long":
        sock.sendall(b":evil!u@h PRIVMSG " + chan + b" :")
        block = b"a" * MiB
        for _ in range(16):
            sock.sendall(block)
        sock.sendall(b"\r\n:evil!u@h PRIVMSG " + chan + b" :after-long\r\n")
        notice = b":evil!u@h NOTICE " + chan + b" :flood flood flood flood flood flood\r\n"
        burst = notice * 2000
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            sock.sendall(burst)
        sock.sendall(b":evil!u@h PRIVMSG " + chan + b" :after-flood\r\n")
    elif args.mode == "endless":
        block = b"b" * (256 * 1024)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            sock.sendall(block)
        sock.sendall(b"\r\n:evil!u@h PRIVMSG " + chan + b" :after-endless\r\n")
    else:
        per_line = 600  # "n1234567 " * 600 is ~5.4 KB: legal with the 8 KiB IRCv3 budget
        n = 0
        while n < args.nicks:
            names = " ".join(f"n{i}" for i in range(n, min(args.nicks, n + per_line)))
            n += per_line
            sock.sendall(f":flood 353 {nick} = {channel} :{names}\r\n".encode())
        sock.sendall(f":flood 366 {nick} {channel} :End of NAMES list\r\n".encode())
        sock.sendall(b":evil!u@h PRIVMSG " + chan + b" :after-names\r\n")
    sock.settimeout(120)
    while True:  # stay: answer PINGs until the client goes
        raw = reader.readline()
        if not raw:
            break
        if raw.startswith(b"PING"):
            sock.sendall(b":flood PONG flood :" + raw.partition(b":")[2].rstrip(b"\r\n") + b"\r\n")
    sock.close()


if __name__ == "__main__":
    sys.exit(main())
