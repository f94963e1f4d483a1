"""`greenroom web`: the dashboard. A Flask app served by gevent's WSGI server; it reads and writes Redis only.

Pages: overview (frontends, rooms by state, list lengths; refreshed live by a few lines of plain
JavaScript), rooms (filters; specs with secrets masked), dead letters (requeue, purge), join and part
forms. Every action needs the configured ``web_token``: the operator logs in with it once (attempts
limited per client and in total), which starts a server-side session in Redis (the HttpOnly,
SameSite=Strict cookie holds only its random id; logout deletes it); each form also carries a
per-session CSRF token, and a POST whose Origin (or Referer) is another site is refused. Scripts may
send ``Authorization: Bearer <token>`` instead. Without a token configured the dashboard is
read-only. Every request must name an allowed Host (DNS rebinding); bound beyond loopback, the read
pages need a login too unless ``web_public_reads``. The guards are in ``frontend.web.auth``.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Flask, abort, flash, jsonify, redirect, render_template, request, session, url_for
from gevent.pywsgi import WSGIServer

from .. import __version__, deadletters, status
from ..config import Settings
from ..errors import ConfigError, ProtocolError
from ..keys import Keys
from ..logs import Throttle
from ..metrics import parse_addr
from ..protocol import encode, validate_command
from ..redis_conn import client_for
from .auth import COOKIE, HostCheck, LoginLimiter, RedisSessionInterface, is_loopback, is_wildcard

log = logging.getLogger(__name__)

STATES = ("joined", "joining", "connecting", "backoff", "failed", "new", "pending", "parted")
#: the pages that only read (public on loopback; behind a login elsewhere unless web_public_reads)
READ_PAGES = {"overview", "overview_fragment", "overview_json", "rooms", "dead"}


def reads_need_login(settings: Settings) -> bool:
    """True when the read pages need a login: bound beyond loopback and not made public."""
    host, _ = parse_addr(settings.web_addr)
    return not settings.web_public_reads and (is_wildcard(host) or not is_loopback(host))


def create_app(settings: Settings, client: redis.Redis | None = None) -> Flask:
    """The dashboard for the Redis and key prefix of ``settings``."""
    app = Flask(__name__)
    token = settings.web_token
    login_for_reads = reads_need_login(settings)
    if login_for_reads and not token:
        raise ConfigError(f"the dashboard would listen on {settings.web_addr}, beyond loopback, without "
                          f"web_token: set web_token (every page then needs a login) or "
                          f"web_public_reads = true (read pages for anyone who reaches it)")
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # signs nothing we rely on: sessions live in Redis
        SESSION_COOKIE_NAME=COOKIE, SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=64 * 1024,
    )
    db = client or client_for(settings)  # any redis_url form: one server, Sentinel, Cluster
    keys = Keys(settings.key_prefix)
    sessions = RedisSessionInterface(db, keys, settings.web_session_ttl)
    app.session_interface = sessions
    hosts = HostCheck(settings.web_addr, settings.web_allowed_hosts)
    limiter = LoginLimiter(db, keys, settings.web_login_limit, settings.web_login_limit_total,
                           window=max(1.0, settings.web_login_window))
    refusals = Throttle(log, interval=10.0, max_keys=100)
    app.jinja_env.globals.update(version=__version__, states=STATES, age=_age, prefix=settings.key_prefix,
                                 clock=lambda ts: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)))

    def authed() -> bool:
        return bool(token) and session.get("auth") is True and getattr(session, "sid", None) is not None

    def bearer_ok() -> bool:
        """A valid ``Authorization: Bearer`` token; a wrong one counts as a failed login (429 past the limit)."""
        header = request.headers.get("Authorization", "")
        if not token or not header.startswith("Bearer "):
            return False
        allowed, left, counted = limiter.acquire(request.remote_addr)
        if not allowed:
            _too_many(left)
        if hmac.compare_digest(header[7:].encode("utf-8", "replace"), token.encode()):
            limiter.give_back(counted)
            return True
        return False

    @app.context_processor
    def inject() -> dict[str, Any]:
        # a CSRF token exists only in a logged-in session; forms of anonymous pages are refused anyway
        return {"csrf": session.get("csrf", "") if authed() else "", "authed": authed(), "can_act": bool(token)}

    @app.before_request
    def guard() -> Any:
        if not hosts.allows(request.host):
            refusals.warning("host", "web: refused a request for Host %r from %s (allowed: %s; see "
                             "web_allowed_hosts)", request.host[:100], request.remote_addr, hosts.describe())
            abort(400, "this dashboard is not served under that host name (web_allowed_hosts)")
        if request.method != "POST":
            if login_for_reads and request.endpoint in READ_PAGES and not authed() and not bearer_ok():
                if request.endpoint in ("overview_json", "overview_fragment"):
                    return jsonify({"error": "log in first"}), 401
                return redirect(url_for("login", next=request.full_path.rstrip("?")))
            return None
        if _cross_site(request):
            refusals.warning("cross-site", "web: refused a cross-site %s %s from %s", request.method, request.path,
                             request.headers.get("Origin") or request.headers.get("Referer"))
            abort(403, "cross-site request refused")
        if request.endpoint in ("login", "logout") or bearer_ok():
            return None
        if not token:
            abort(403, "read-only dashboard: set web_token in the config to allow actions")
        if not authed():
            abort(403, "log in with the dashboard token first")
        sent = request.form.get("csrf", "")
        if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
            abort(403, "missing or wrong CSRF token: reload the page")
        return None

    @app.errorhandler(400)
    def bad_request(exc: Any) -> Any:
        return render_template("error.html", code=400, message=exc.description, authed=False, csrf=""), 400

    @app.errorhandler(429)
    def too_many(exc: Any) -> Any:
        response = app.make_response((render_template("error.html", code=429, message=exc.description), 429))
        response.headers["Retry-After"] = str(int(getattr(exc, "retry_after", 60)))
        return response

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: Exception) -> Any:
        log.warning("web: Redis: %s", exc)
        return render_template("error.html", code=503, message=f"Redis: {exc}", authed=False, csrf=""), 503

    @app.errorhandler(403)
    def forbidden(exc: Any) -> Any:
        return render_template("error.html", code=403, message=exc.description), 403

    @app.get("/")
    def overview() -> str:
        return render_template("overview.html", data=_overview(db, keys), now=time.time())

    @app.get("/fragment/overview")
    def overview_fragment() -> str:
        return render_template("_overview.html", data=_overview(db, keys), now=time.time())

    @app.get("/api/overview")
    def overview_json() -> Any:
        return jsonify(_overview(db, keys))

    @app.get("/rooms")
    def rooms() -> str:
        wanted = {k: request.args.get(k, "") for k in ("state", "tenant", "protocol", "q")}
        rows = [r for r in status.rooms(db, keys) if _matches(r, wanted)]
        return render_template("rooms.html", rows=rows[:2000], total=len(rows), wanted=wanted, now=time.time())

    @app.get("/dead")
    def dead() -> str:
        which = request.args.get("which", "control")
        if which not in deadletters.DEAD_LISTS:
            abort(404)
        return render_template("dead.html", rows=deadletters.dead_list(db, keys, which, limit=500), which=which,
                               total=db.llen(deadletters.dead_key(keys, which)), now=time.time())

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "POST":
            if not token:
                abort(403, "read-only dashboard: set web_token in the config to allow actions")
            allowed, left, counted = limiter.acquire(request.remote_addr)
            if not allowed:
                _too_many(left)
            sent = request.form.get("token", "")
            if hmac.compare_digest(sent.encode("utf-8", "replace"), token.encode()):
                limiter.give_back(counted)
                session.clear()
                session.renew = True  # a fresh session id: a cookie from before the login is worth nothing
                session.update(auth=True, csrf=secrets.token_urlsafe(24), since=time.time())
                log.info("web: operator logged in from %s", request.remote_addr)
                return redirect(_safe_next(request.form.get("next")))
            log.warning("web: failed login from %s", request.remote_addr)
            flash("wrong token", "error")
        return render_template("login.html", next=_safe_next(request.values.get("next")))

    @app.post("/logout")
    def logout() -> Any:
        if authed():
            log.info("web: operator logged out from %s", request.remote_addr)
        sessions.revoke(session)  # the session is gone from Redis: a copy of the cookie opens nothing
        session.clear()
        return redirect(url_for("overview"))

    @app.post("/join")
    def join() -> Any:
        try:
            command = _join_command(request.form)
            validate_command(command, max_text_bytes=settings.max_text_bytes)
        except (ProtocolError, ValueError) as exc:
            flash(f"join not sent: {getattr(exc, 'detail', exc)}", "error")
            return redirect(url_for("rooms"))
        db.rpush(keys.control, encode(command))
        log.info("web: join queued for room %s", command["room"])
        flash(f"join queued for room {command['room']}", "ok")
        return redirect(url_for("rooms"))

    @app.post("/part")
    def part() -> Any:
        room = request.form.get("room", "").strip()
        command = {"type": "part", "room": room, "reason": request.form.get("reason") or "parted from the dashboard"}
        try:
            validate_command(command)
        except ProtocolError as exc:
            flash(f"part not sent: {exc.detail}", "error")
            return redirect(url_for("rooms"))
        db.rpush(keys.control, encode(command))
        log.info("web: part queued for room %s", room)
        flash(f"part queued for room {room}", "ok")
        return redirect(url_for("rooms"))

    @app.post("/dead/<action>")
    def dead_action(action: str) -> Any:
        which = request.form.get("which", "control")
        if action not in ("requeue", "purge") or which not in deadletters.DEAD_LISTS:
            abort(404)
        ids = request.form.getlist("id") or None
        if ids is None and request.form.get("all") != "1":
            flash("nothing chosen", "error")
            return redirect(url_for("dead", which=which))
        if action == "purge":
            n = deadletters.dead_purge(db, keys, which, ids=ids)
            log.info("web: purged %d dead letters of %s:dead", n, which)
            flash(f"purged {n} dead letters", "ok")
            return redirect(url_for("dead", which=which))
        done = deadletters.dead_requeue(db, keys, which, ids=ids)
        log.info("web: requeued %d dead letters of %s:dead, refused %d", done.moved, which, len(done.refused))
        flash(f"requeued {done.moved} dead letters", "ok")
        if done.refused:
            flash(f"refused {len(done.refused)}: " + "; ".join(f"{i}: {why}" for i, why in done.refused[:5])
                  + " (requeuing would push a broken command; `greenroom dead requeue --force ID` pushes it anyway)",
                  "error")
        return redirect(url_for("dead", which=which))

    return app


def _too_many(left: float) -> None:
    from werkzeug.exceptions import TooManyRequests

    exc = TooManyRequests(f"too many login attempts: try again in {max(1, round(left))} s")
    exc.retry_after = max(1, round(left))  # type: ignore[attr-defined]
    raise exc


def _cross_site(req: Any) -> bool:
    """True when the request says it comes from another origin than this dashboard."""
    source = req.headers.get("Origin") or req.headers.get("Referer")
    if not source:
        return False  # non-browser clients; browsers always send Origin on a cross-site POST
    if source == "null":
        return True
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}" != f"{req.scheme}://{req.host}"


def _safe_next(target: str | None) -> str:
    """A local path to go back to after the login; anything else (``//host``, ``/\\host``, which
    browsers read as another site, or control characters) is the overview."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return "/" if any(ord(c) < 0x20 or c == "\x7f" for c in target) else target


def _matches(row: dict[str, Any], wanted: dict[str, str]) -> bool:
    if wanted["state"] and row["state"] != wanted["state"]:
        return False
    if wanted["tenant"] and (row.get("tenant") or "") != wanted["tenant"]:
        return False
    if wanted["protocol"] and row.get("protocol") != wanted["protocol"]:
        return False
    return not wanted["q"] or wanted["q"].lower() in (row["room"] + " " + row["where"]).lower()


def _join_command(form: Any) -> dict[str, Any]:
    protocol = form.get("protocol", "irc")
    nick = form.get("nick", "").strip()
    if protocol == "irc":
        port = form.get("port", "").strip()
        spec: dict[str, Any] = {"protocol": "irc", "server": form.get("server", "").strip(),
                                "tls": form.get("tls") == "on", "nick": nick,
                                "channel": form.get("channel", "").strip()}
        if port:
            spec["port"] = int(port)
        if form.get("no_flood") == "on":
            spec["flood"] = False
    else:
        spec = {"protocol": "xmpp", "jid": form.get("jid", "").strip(), "muc": form.get("muc", "").strip(),
                "nick": nick, "password": form.get("password", ""), "tls": form.get("tls") == "on"}
        host = form.get("host", "").strip()
        if host:
            name, _, port = host.partition(":")
            spec["host"] = name
            if port:
                spec["port"] = int(port)
    for name in ("tenant", "key"):
        value = form.get(name, "").strip()
        if value and (name != "key" or protocol == "irc"):
            spec[name] = value
    return {"type": "join", "room": form.get("room", "").strip(), "spec": spec}


def _overview(db: redis.Redis, keys: Keys) -> dict[str, Any]:
    data = status.overview(db, keys)
    data["attention"] = [r for r in status.rooms(db, keys) if r["state"] not in ("joined", "parted")][:50]
    return data


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return status._age(seconds)


def serve(settings: Settings) -> int:
    """Run the dashboard on ``web_addr`` until interrupted."""
    import signal

    import gevent.event

    app = create_app(settings)
    host, _ = parse_addr(settings.web_addr)
    if is_wildcard(host) or not is_loopback(host):
        log.warning("web: the dashboard listens on %s, beyond loopback: anyone who reaches it can try the "
                    "token; %s; serve it behind a TLS reverse proxy", settings.web_addr,
                    "its read pages are public (web_public_reads)" if settings.web_public_reads
                    else "every page needs a login")
    server = WSGIServer(parse_addr(settings.web_addr), app, log=None, error_log=log)
    server.start()
    log.info("dashboard on http://%s/ (redis %s)%s", settings.web_addr, settings.redacted_redis_url(),
             "" if settings.web_token else "; read-only: no web_token configured")
    done = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, done.set)
    done.wait()
    server.stop(timeout=2)
    log.info("dashboard stopped")
    return 0
