"""The dashboard's guards: allowed Host headers, login attempt limits, server-side sessions.

- ``HostCheck``: a request whose Host header is not one the dashboard is reached by is refused
  (400), so a DNS-rebinding page (a name of the attacker's that resolves to 127.0.0.1) cannot read
  it. Default: ``web_addr``'s own host and port, plus localhost, 127.0.0.1 and [::1] on that port
  when bound to loopback.
- ``LoginLimiter``: attempts per minute per client address (IPv6 by /64) and in total, counted in
  Redis (several dashboard processes share them) before the token is even compared; a successful
  attempt is given back, so only failures use the budget and the operator is never locked out for
  more than the rest of a minute by their own typos. An attack from elsewhere never locks out an
  operator who comes through loopback (an SSH tunnel): the total limit does not apply there.
- ``RedisSessionInterface``: the session lives in Redis under the SHA-256 of a random id that is
  the cookie's whole value, with an expiry; logout deletes it, so a cookie copied before is worth
  nothing after. Visitors who did not log in get no stored session.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import secrets
import socket
import time
from typing import Any

import redis
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from ..keys import Keys
from ..logs import Throttle
from ..metrics import parse_addr

log = logging.getLogger(__name__)
COOKIE = "greenroom_session"
_SID = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


# ---------------------------------------------------------------------------------------- hosts
def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


def _host_name(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if ":" in host.strip("[]") and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address, as a Host header writes it
    return host


def split_host(value: str) -> tuple[str, int | None]:
    """(name, port) of a Host header or an allowed-hosts entry; port None when there is none."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    return _host_name(name), int(port) if port.isdigit() else None


class HostCheck:
    """Which Host headers the dashboard answers (``web_allowed_hosts``, or the bind address's own)."""

    def __init__(self, web_addr: str, allowed: str = "") -> None:
        bind, port = parse_addr(web_addr)
        self.any = False
        self.exact: set[tuple[str, int]] = set()
        self.names: set[str] = set()  # entries without a port: that name on any port
        entries = [e.strip() for e in allowed.split(",") if e.strip()]
        if "*" in entries:
            self.any = True
        elif entries:
            for entry in entries:
                name, entry_port = split_host(entry)
                if entry_port is None:
                    self.names.add(name)
                else:
                    self.exact.add((name, entry_port))
        else:
            if is_wildcard(bind):
                own = {socket.gethostname(), socket.getfqdn()}
            else:
                own = {bind}
            self.exact |= {(_host_name(name), port) for name in own if name}
            if is_loopback(bind) or is_wildcard(bind):
                self.exact |= {(name, port) for name in LOOPBACK_NAMES}

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        if not host_header or len(host_header) > 300:
            return False
        name, port = split_host(host_header)
        return name in self.names or (name, 80 if port is None else port) in self.exact

    def describe(self) -> str:
        if self.any:
            return "any"
        shown = sorted(f"{n}:{p}" for n, p in self.exact) + sorted(self.names)
        return ", ".join(shown)


# ---------------------------------------------------------------------------------- login limits
def client_scope(addr: str | None) -> str:
    """The address a limit counts by: the IPv4 address, or the IPv6 /64 (one host's usual share)."""
    try:
        ip = ipaddress.ip_address((addr or "").strip("[]"))
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address) + "/64"
    return str(ip)


class LoginLimiter:
    """At most ``per_addr`` failed attempts per window from one client, ``total`` from all (not
    counting loopback clients), checked before the token is compared. Fixed windows in Redis."""

    def __init__(self, db: redis.Redis, keys: Keys, per_addr: int, total: int, window: float = 60.0) -> None:
        self.db, self.keys = db, keys
        self.per_addr, self.total, self.window = per_addr, total, window
        self._throttle = Throttle(log, interval=10.0, max_keys=200)

    def _keys(self, addr: str | None) -> tuple[str, str | None, float]:
        now = time.time()
        bucket = int(now // self.window)
        left = self.window - (now % self.window)
        per = self.keys.web_login(f"addr:{client_scope(addr)}:{bucket}")
        total = None if is_loopback(addr or "") else self.keys.web_login(f"all:{bucket}")
        return per, total, left

    def acquire(self, addr: str | None) -> tuple[bool, float, tuple[str, str | None]]:
        """Count one attempt; (allowed, seconds until the window ends, what to give back on success)."""
        per, total, left = self._keys(addr)
        pipe = self.db.pipeline(transaction=True)
        pipe.incr(per)
        pipe.expire(per, int(self.window * 2))
        if total is not None:
            pipe.incr(total)
            pipe.expire(total, int(self.window * 2))
        counts = pipe.execute()
        n_addr, n_all = counts[0], counts[2] if total is not None else 0
        if n_addr > self.per_addr or (total is not None and n_all > self.total):
            scope = client_scope(addr)
            if n_addr > self.per_addr:
                self._throttle.warning(f"addr:{scope}", "web: too many login attempts from %s (%d in %.0fs, "
                                       "%d allowed): refused for %.0fs", scope, n_addr, self.window, self.per_addr,
                                       left)
            else:
                self._throttle.warning("all", "web: too many login attempts from all clients (%d in "
                                       "%.0fs, %d allowed): refused for %.0fs", n_all, self.window, self.total, left)
            return False, left, (per, total)
        return True, left, (per, total)

    def give_back(self, counted: tuple[str, str | None]) -> None:
        """A successful attempt costs nothing."""
        pipe = self.db.pipeline(transaction=False)
        for key in counted:
            if key is not None:
                pipe.decr(key)
        pipe.execute()


# -------------------------------------------------------------------------------------- sessions
class RedisSession(CallbackDict, SessionMixin):
    """A session stored in Redis; ``sid`` is None until a login makes it a stored one."""

    def __init__(self, data: dict[str, Any] | None = None, sid: str | None = None, stale: bool = False) -> None:
        def changed(_: Any) -> None:
            self.modified = True

        super().__init__(data or {}, changed)
        self.sid = sid
        self.stale = stale  # the request carried a cookie that names no live session
        self.renew = False  # set by a login: store under a fresh id
        self.modified = False


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


class RedisSessionInterface(SessionInterface):
    """Flask sessions in Redis, under ``web:session:<sha256 of the id>``, expiring after ``ttl``."""

    def __init__(self, db: redis.Redis, keys: Keys, ttl: float) -> None:
        self.db, self.keys, self.ttl = db, keys, max(1, int(ttl))

    def open_session(self, app: Any, request: Any) -> RedisSession:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return RedisSession()
        if not _SID.match(sid):
            return RedisSession(stale=True)
        try:
            raw = self.db.get(self.keys.web_session(_digest(sid)))
        except redis.RedisError as exc:  # the page says Redis is down; the session is not needed for that
            log.warning("web: cannot read the session from Redis: %s", exc)
            return RedisSession()
        if raw is None:
            return RedisSession(stale=True)
        try:
            data = json.loads(raw)
        except ValueError:
            return RedisSession(stale=True)
        return RedisSession(data if isinstance(data, dict) else {}, sid)

    def revoke(self, session: RedisSession) -> None:
        if session.sid:
            self.db.delete(self.keys.web_session(_digest(session.sid)))

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        name, path = self.get_cookie_name(app), self.get_cookie_path(app)
        if not isinstance(session, RedisSession):
            return
        if session.renew:
            self.revoke(session)
            sid = secrets.token_urlsafe(32)
            self.db.set(self.keys.web_session(_digest(sid)), json.dumps(dict(session)), ex=self.ttl)
            response.set_cookie(name, sid, max_age=self.ttl, path=path, httponly=True, samesite="Strict",
                                secure=self.get_cookie_secure(app))
            return
        if session.sid is None:
            if session.stale:
                response.delete_cookie(name, path=path)
            return
        if not session:  # cleared: logout
            self.revoke(session)
            response.delete_cookie(name, path=path)
        elif session.modified:
            self.db.set(self.keys.web_session(_digest(session.sid)), json.dumps(dict(session)), keepttl=True,
                        xx=True)
