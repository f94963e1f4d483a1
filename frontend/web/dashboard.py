"""`greenroom web`: the dashboard. A Flask app served by gevent's WSGI server; it reads and writes Redis only.

Pages: overview (frontends, rooms by state, list lengths; refreshed live by a few lines of plain
JavaScript), rooms (filters; specs with secrets masked), dead letters (requeue, purge), join and part
forms. Every action needs the configured ``web_token``: the operator logs in with it once, which
sets a signed, HttpOnly, SameSite=Strict session cookie; each form also carries a per-session CSRF
token, and a POST whose Origin (or Referer) is another site is refused. Scripts may send
``Authorization: Bearer <token>`` instead. Without a token configured the dashboard is read-only.
"""

from __future__ import annotations

import hashlib
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
from ..errors import ProtocolError
from ..keys import Keys
from ..metrics import parse_addr
from ..protocol import encode, validate_command

log = logging.getLogger(__name__)

STATES = ("joined", "joining", "connecting", "backoff", "failed", "new", "pending", "parted")


def create_app(settings: Settings, client: redis.Redis | None = None) -> Flask:
    """The dashboard for the Redis and key prefix of ``settings``."""
    app = Flask(__name__)
    token = settings.web_token
    app.config.update(
        SECRET_KEY=hashlib.sha256(b"greenroom-web\0" + (token or secrets.token_hex(16)).encode()).digest(),
        SESSION_COOKIE_NAME="greenroom_session", SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=64 * 1024,
    )
    db = client or redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
    keys = Keys(settings.key_prefix)
    app.jinja_env.globals.update(version=__version__, states=STATES, age=_age, prefix=settings.key_prefix,
                                 clock=lambda ts: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)))

    def authed() -> bool:
        return bool(token) and session.get("auth") == _fingerprint(token)

    def bearer_ok() -> bool:
        header = request.headers.get("Authorization", "")
        return bool(token) and header.startswith("Bearer ") and hmac.compare_digest(
            header[7:].encode(), token.encode())

    @app.context_processor
    def inject() -> dict[str, Any]:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(24)
        return {"csrf": session["csrf"], "authed": authed(), "can_act": bool(token)}

    @app.before_request
    def guard() -> Any:
        if request.method != "POST":
            return None
        if _cross_site(request):
            log.warning("web: refused a cross-site %s %s from %s", request.method, request.path,
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
            sent = request.form.get("token", "")
            if token and hmac.compare_digest(sent.encode(), token.encode()):
                session.clear()
                session["auth"] = _fingerprint(token)
                session["csrf"] = secrets.token_urlsafe(24)
                log.info("web: operator logged in from %s", request.remote_addr)
                return redirect(_safe_next(request.form.get("next")))
            log.warning("web: failed login from %s", request.remote_addr)
            flash("wrong token", "error")
        return render_template("login.html", next=_safe_next(request.values.get("next")))

    @app.post("/logout")
    def logout() -> Any:
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


def _fingerprint(token: str) -> str:
    return hashlib.sha256(b"greenroom-auth\0" + token.encode()).hexdigest()[:32]


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
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


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
