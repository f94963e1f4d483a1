"""A link's batch written and its replies read on the connection's socket, without redis-py's per-command
layers.

A ``DirectLink`` round trip through redis-py costs, per batch, a pack through its serializer (a
generator over the arguments), a ``sendall`` per packed chunk (gevent's: a ``getsockopt`` and a
chunk loop each time), and per reply ``Redis.parse_response`` (a case-insensitive callback lookup)
over ``Connection.read_response`` (a host string formatted for its error messages) over the hiredis
parser's own socket read. At a paced load every line takes its own round trips, and these layers
cost a third of a round trip's CPU (``python -m tests.bench.redis_wire_cost``: 126 against 86 µs
here; BENCHMARKS.md "Hot path, session 7").

``Wire`` does the same with what redis-py does it with: ``hiredis.pack_command`` for each command,
one ``send`` loop, and a ``hiredis.Reader`` built the way redis-py builds its own (error replies become
redis-py's exception classes, by its own ``parse_error``), fed from ``recv``. Replies are what
``parse_response`` returns: a command that redis-py post-processes (``response_callbacks``) gets its
callback. Socket failures raise redis-py's ``TimeoutError``/``ConnectionError``, as its connection
does; the caller drops the connection then (``DirectLink``), and the next connection gets a new
``Wire``.

Only a plain TCP or Unix connection gets one (``for_connection``); the others keep redis-py's path: a
Sentinel or Cluster connection reads ``READONLY``/``MOVED`` in its own ``read_response``, and TLS is
left to redis-py. The connection's handshake (AUTH, SELECT, HELLO) is redis-py's, on connect; RESP2
and RESP3 replies are read as its parser reads them.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Sequence

import hiredis
import redis
from redis.exceptions import InvalidResponse

#: connection classes whose ``read_response`` adds nothing to reading a reply (checked exactly: a
#: subclass may, as the Sentinel and Cluster ones do)
PLAIN_CONNECTIONS = (redis.Connection, redis.UnixDomainSocketConnection)
#: bytes asked of one ``recv``
READ_SIZE = 65536


class Wire:
    """One connected socket of a connection: batches written, replies read."""

    __slots__ = ("sock", "_reader", "_callbacks", "_where", "_on_push")

    def __init__(self, sock: socket.socket, reader: Any, callbacks: dict[str, Callable[..., Any]], where: str,
                 on_push: Callable[[Any], Any] | None = None) -> None:
        self.sock = sock
        self._reader = reader
        self._callbacks = callbacks
        self._where = where
        self._on_push = on_push

    @classmethod
    def for_connection(cls, conn: Any, client: redis.Redis) -> "Wire | None":
        """A ``Wire`` on ``conn``'s socket (connected), or None where redis-py's own path must stay."""
        sock = getattr(conn, "_sock", None)
        parser = getattr(conn, "_parser", None)
        encoder = getattr(conn, "encoder", None)
        if (sock is None or type(conn) not in PLAIN_CONNECTIONS or parser is None
                or not hasattr(parser, "parse_error") or encoder is None):
            return None
        # the reader redis-py's hiredis parser builds (``_HiredisParser.on_connect``)
        options: dict[str, Any] = {"protocolError": InvalidResponse, "replyError": parser.parse_error,
                                   "errors": encoder.encoding_errors, "notEnoughData": _NOT_ENOUGH}
        if encoder.decode_responses:
            options["encoding"] = encoder.encoding
        callbacks = {str(name).upper(): callback for name, callback in client.response_callbacks.items()}
        return cls(sock, hiredis.Reader(**options), callbacks,
                   f"{getattr(conn, 'host', '')}:{getattr(conn, 'port', '')}",
                   getattr(parser, "handle_push_response", None))

    @staticmethod
    def pack(commands: Sequence[tuple[Any, ...]]) -> bytes:
        """The commands in RESP, as redis-py's hiredis serializer packs them; raises ``TypeError`` (or
        ``UnicodeEncodeError``) for an argument that cannot be sent."""
        pack = hiredis.pack_command
        return b"".join([pack(command) for command in commands])

    def send(self, data: bytes) -> None:
        sock = self.sock
        try:
            view = memoryview(data)
            while view:
                view = view[sock.send(view):]
        except socket.timeout:
            raise redis.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            raise redis.ConnectionError(f"Error while writing to {self._where}: {exc}") from None

    def read(self, name: str) -> Any:
        """The next reply, as ``Redis.parse_response(conn, name)`` returns it, except that an error
        reply is returned (a ``redis.ResponseError``), not raised. Errors that mean the connection
        is unusable (``LOADING``, ``max number of clients``: redis-py maps them to ``ConnectionError``)
        are raised, as redis-py's parser raises them; a push notification (RESP3) goes to
        redis-py's handler and the reply after it is read."""
        reader = self._reader
        while True:
            reply = reader.gets()
            while reply is _NOT_ENOUGH:
                try:
                    data = self.sock.recv(READ_SIZE)
                except socket.timeout:
                    raise redis.TimeoutError(f"Timeout reading from {self._where}") from None
                except OSError as exc:
                    raise redis.ConnectionError(f"Error while reading from {self._where}: {exc}") from None
                if not data:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(data)
                reply = reader.gets()
            if _PUSH is not None and isinstance(reply, _PUSH):
                if self._on_push is not None:
                    self._on_push(reply)
                continue
            break
        if isinstance(reply, redis.ConnectionError):
            raise reply
        if isinstance(reply, list) and reply and isinstance(reply[0], redis.ConnectionError):
            raise reply[0]
        if self._callbacks and not isinstance(reply, redis.ResponseError):
            callback = self._callbacks.get(name) or self._callbacks.get(name.upper())
            if callback is not None:
                return callback(reply)
        return reply


#: what ``hiredis.Reader.gets`` returns while a reply is incomplete (RESP3 has a ``False`` reply)
_NOT_ENOUGH = object()
#: RESP3 push notifications (hiredis 3.2 and later)
_PUSH = getattr(hiredis, "PushNotification", None)
