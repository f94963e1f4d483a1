"""A small TCP proxy on loopback for fault injection, built on gevent (tests run monkey-patched).

    proxy = TcpProxy("127.0.0.1", upstream_port).start()
    ... point the system under test at proxy.port ...
    proxy.blackhole()   # stop forwarding in both directions; sockets stay open (a silent network)
    proxy.heal()        # forward again; bytes held during the blackhole are delivered then
    proxy.reset()       # close every link at once with an RST; new connections are forwarded
    proxy.stop()

While blackholed, new connections are accepted (the kernel completes the handshake) but nothing is
forwarded in either direction until ``heal()``, which is what a client sees when a route goes dead.
``reset(refuse_for=s)`` also refuses new connections for ``s`` seconds (they get an RST at once).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Optional

import gevent
import gevent.event
import gevent.lock

_LINGER_RST = struct.pack("ii", 1, 0)


_TCPI_LAST_ACK_RECV = struct.Struct("I")  # offset 56 in struct tcp_info (linux/tcp.h), in ms


def _arrival_time(sock: socket.socket) -> float:
    """When the client's last packet reached the kernel, as ``time.monotonic()``.

    The accept loop shares this process with every link it relays, so under load a connection may wait
    in the backlog for tens of milliseconds and several get accepted in one go. The kernel knows when
    the handshake (or the client's first write right after it) arrived: use that for pacing figures.
    """
    now = time.monotonic()
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return now - _TCPI_LAST_ACK_RECV.unpack_from(info, 56)[0] / 1000.0
    except (OSError, AttributeError, struct.error):
        return now


def _rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One client connection and its upstream connection, pumped by two greenlets."""

    def __init__(self, proxy: "TcpProxy", client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: Optional[socket.socket] = None
        self.greenlets: list[gevent.Greenlet] = []
        self.closed = False
        self.bytes_up = 0
        self.bytes_down = 0

    def run(self) -> None:
        proxy = self.proxy
        try:
            proxy._open.wait()  # a blackholed proxy does not even connect upstream
            if self.closed:
                return
            self.upstream = socket.create_connection((proxy.upstream_host, proxy.upstream_port), timeout=5)
            self.upstream.settimeout(None)
        except OSError:
            self.close(rst=True)
            return
        up = gevent.spawn(self._pump, self.client, self.upstream, True)
        down = gevent.spawn(self._pump, self.upstream, self.client, False)
        self.greenlets = [up, down]
        gevent.joinall(self.greenlets)
        self.close(rst=False)

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        gate = self.proxy._open
        try:
            while not self.closed:
                gate.wait()  # blackholed: stop reading, so the sender's data waits in buffers
                data = src.recv(65536)
                if not data:
                    break
                gate.wait()  # read just before a blackhole started: held until heal()
                if self.closed:
                    return
                dst.sendall(data)
                if upward:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except OSError:
            pass
        # one side ended: end the other side too (FIN), as a real connection would
        self.close(rst=False)

    def close(self, rst: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if rst:
                _rst_close(sock)
            else:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    sock.close()
                except OSError:
                    pass
        current = gevent.getcurrent()
        for g in self.greenlets:
            if g is not current:
                g.kill(block=False)
        self.proxy._links.discard(self)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream_host:upstream_port``; blackhole, heal and reset on command."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(1024)
        self.port: int = self._listener.getsockname()[1]
        self._open = gevent.event.Event()
        self._open.set()
        self._refuse_until = 0.0
        self._links: set[_Link] = set()
        self._acceptor: Optional[gevent.Greenlet] = None
        self.accepted = 0
        #: time.monotonic() at which every accepted connection arrived, for measuring connect pacing
        self.accept_times: list[float] = []
        self.resets = 0

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> "TcpProxy":
        self._acceptor = gevent.spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=2)
            self._acceptor = None
        try:
            self._listener.close()
        except OSError:
            pass
        self._open.set()  # release pumps waiting at the gate so they can end
        for link in list(self._links):
            link.close(rst=True)

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url_host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def links(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------------------------ faults
    def blackhole(self) -> None:
        """Stop forwarding in both directions; every socket stays open."""
        self._open.clear()

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    def heal(self) -> None:
        """Forward again (held bytes flow on, held connections connect upstream)."""
        self._open.set()

    def reset(self, refuse_for: float = 0.0) -> int:
        """Close every current link with an RST (both sides); returns how many were closed.

        The proxy keeps forwarding new connections (after ``refuse_for`` seconds of refusing them).
        """
        self._refuse_until = time.monotonic() + refuse_for
        links = list(self._links)
        for link in links:
            link.close(rst=True)
        self.resets += len(links)
        return len(links)

    # ------------------------------------------------------------------------------ internals
    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                _rst_close(client)
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            self.accept_times.append(_arrival_time(client))
            link = _Link(self, client)
            self._links.add(link)
            gevent.spawn(link.run)
