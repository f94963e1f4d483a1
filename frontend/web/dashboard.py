"""`greenroom web`: the dashboard. A Flask app served by gevent's WSGI server; it reads and writes Redis only.

Pages: overview (frontends with their lease, rooms held and Drain/Undrain buttons, rooms by state,
whether every room is held, list lengths; refreshed live by a few lines of plain JavaScript, and live
charts per frontend of commands and events per second and list lengths, drawn as inline SVG from
``/api/history``), rooms (filters, each room's holder; specs with secrets masked), rebalance (the plan,
and a button that starts it), dead letters (requeue, purge), join and part forms, tenants (limits, quota
use, rooms by state, lines sent and drops; add, set and remove: credentials are the CLI's alone, this
dashboard never shows a tenant's password). Every action needs the configured ``web_token``: the operator logs in with it once (attempts
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

from .. import __version__, deadletters, fleetops, status, tenantops
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
READ_PAGES = {"overview", "overview_fragment", "overview_json", "history_json", "rooms", "dead", "rebalance_page",
              "tenants_page"}


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
                                 fleet_word=status.fleet_word, lease_text=status.lease_text,
                                 quota_text=status.quota_text, unregistered=status.UNREGISTERED,
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
                if request.endpoint in ("overview_json", "overview_fragment", "history_json"):
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

    @app.get("/api/history")
    def history_json() -> Any:
        try:
            since = max(0, int(request.args.get("since", "0")))
        except ValueError:
            since = 0
        return jsonify(status.history(db, keys, since))

    @app.get("/rooms")
    def rooms() -> str:
        wanted = {k: request.args.get(k, "") for k in ("state", "tenant", "protocol", "q", "frontend", "unregistered")}
        registered = set(status.registry(db, keys)[0]) if wanted["unregistered"] else set()
        rows = [r for r in status.rooms(db, keys) if _matches(r, wanted, registered)]
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

    @app.post("/frontends/<action>")
    def frontend_action(action: str) -> Any:
        if action not in ("drain", "undrain"):
            abort(404)
        fid = request.form.get("frontend", "")
        if not fid:
            flash("no frontend named", "error")
        elif action == "undrain":
            was = fleetops.undrain(db, keys, fid)
            log.info("web: undrain of frontend %s (%s)", fid, "done" if was else "it was not draining")
            flash(f"frontend {fid} takes new rooms again (the rooms it gave away stay where they are: "
                  f"Rebalance moves some back)" if was else f"frontend {fid} was not draining", "ok")
        else:
            try:
                done = fleetops.drain(db, keys, fid)
            except fleetops.Refused as exc:
                log.info("web: drain of frontend %s refused: %s", fid, exc)
                flash(f"not drained: {exc} (`greenroom drain --force` drains anyway)", "error")
                return redirect(url_for("overview"))
            log.info("web: drain of frontend %s", fid)
            flash(f"frontend {fid} was draining already" if done["already"] else
                  f"frontend {fid} drains: at its next lease renewal it hands its {done['rooms']} rooms to "
                  f"{', '.join(done['peers'])}, and takes no new rooms until Undrain", "ok")
        return redirect(url_for("overview"))

    @app.get("/rebalance")
    def rebalance_page() -> str:
        limit = _positive(request.args.get("max"))
        result = fleetops.plan(db, keys, max_rooms=limit)
        return render_template("rebalance.html", plan=result.view(), digest=_plan_digest(result), limit=limit or "")

    @app.post("/rebalance")
    def rebalance_action() -> Any:
        limit = _positive(request.form.get("max"))
        result = fleetops.plan(db, keys, max_rooms=limit)
        back = redirect(url_for("rebalance_page", **({"max": limit} if limit else {})))
        if not result.moves:
            flash(f"nothing to move: {result.why}", "ok")
            return back
        if request.form.get("plan") != _plan_digest(result):
            flash("the rooms changed since the plan was shown: here is the new plan; nothing was moved", "error")
            return back
        fleetops.rebalance(db, keys, result.moves)
        started = [m for m in result.moves if m.result == "ok"]
        refused = [m for m in result.moves if m.result != "ok"]
        log.info("web: rebalance started %d moves, %d refused", len(started), len(refused))
        if started:
            flash(f"started {len(started)} moves: " + "; ".join(
                f"{m.view()['room']} {m.view()['from']} → {m.view()['to']}" for m in started[:20])
                + (" …" if len(started) > 20 else ""), "ok")
        if refused:
            flash(f"refused {len(refused)}: " + "; ".join(f"{m.view()['room']}: {m.result}" for m in refused[:20]),
                  "error")
        return back

    # ---------------------------------------------------------------------------------- tenants
    @app.get("/tenants")
    def tenants_page() -> str:
        reg = status.registry(db, keys)
        state = status.fleet(db, keys)
        view = status.tenants_view(db, keys, status.rooms(db, keys, state), status.fleet_frontends(db, keys, state),
                                   reg)
        return render_template("tenants.html", view=view, note=status.live_note(view, "Sent and drops"),
                               limits=tenantops.LIMITS)

    def tenant_form_limits(form: Any) -> dict[str, int | None]:
        return {key: tenantops.parse_limit(form.get(key, ""), key) for key in tenantops.LIMITS}

    @app.post("/tenants/add")
    def tenant_add() -> Any:
        from ..tenants import Tenant, check_name

        back = redirect(url_for("tenants_page"))
        try:
            name = check_name(request.form.get("name", "").strip())
            done = tenantops.add(db, keys, Tenant(name, **tenant_form_limits(request.form)))
        except (ConfigError, tenantops.Refused) as exc:
            flash(f"tenant not added: {exc}", "error")
            return back
        limits = ", ".join(f"{k} {tenantops.limit_text(getattr(done['tenant'], k))}" for k in tenantops.LIMITS)
        log.info("web: tenant %s added (%s)", name, limits)
        flash(f"tenant {name} added: {limits}; {done['rooms']} rooms naming it already count towards its "
              f"max_rooms" if done["rooms"] else f"tenant {name} added: {limits}", "ok")
        return back

    @app.post("/tenants/set")
    def tenant_set() -> Any:
        from ..tenants import check_name

        back = redirect(url_for("tenants_page"))
        try:
            name = check_name(request.form.get("name", ""))
            before, after = tenantops.change(db, keys, name, tenant_form_limits(request.form))
        except (ConfigError, tenantops.Refused) as exc:
            flash(f"limits not changed: {exc}", "error")
            return back
        changes = [f"{k} {tenantops.limit_text(getattr(before, k))} → {tenantops.limit_text(getattr(after, k))}"
                   for k in tenantops.LIMITS if getattr(before, k) != getattr(after, k)]
        log.info("web: tenant %s limits %s", name, "; ".join(changes) or "unchanged")
        flash(f"tenant {name}: {', '.join(changes)}" if changes else f"tenant {name}: unchanged", "ok")
        return back

    @app.post("/tenants/remove")
    def tenant_remove() -> Any:
        from ..tenants import check_name

        back = redirect(url_for("tenants_page"))
        try:
            name = check_name(request.form.get("name", ""))
            done = tenantops.remove(db, keys, name, force=request.form.get("force") == "on")
        except (ConfigError, tenantops.Refused) as exc:
            flash(f"not removed: {exc} (tick “also with its rooms” to remove it anyway: they stay joined)", "error")
            return back
        log.info("web: tenant %s removed (%d rooms left joined, ACL user %s)", name, len(done["rooms"]),
                 "deleted" if done["acl_user_deleted"] else "none")
        flash(f"tenant {name} removed" + ("; its ACL user is deleted (its backends' connections are closed)"
                                          if done["acl_user_deleted"] else "")
              + (f"; its rooms stay joined ({len(done['rooms'])}), as rooms of an unregistered tenant"
                 if done["rooms"] else ""), "ok")
        return back

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


def _positive(value: str | None) -> int | None:
    try:
        n = int(value or "")
    except ValueError:
        return None
    return n if n > 0 else None


def _plan_digest(result: Any) -> str:
    """Names a plan, so that a POST starts exactly the moves the operator was shown."""
    import hashlib

    h = hashlib.sha256()
    for move in result.moves:
        h.update(b"\0".join((move.room, move.source, move.target)) + b"\n")
    return h.hexdigest()[:32]


def _matches(row: dict[str, Any], wanted: dict[str, str], registered: frozenset[str] | set[str] = frozenset()) -> bool:
    if wanted["state"] and row["state"] != wanted["state"]:
        return False
    if wanted.get("unregistered") and (row.get("tenant") or "") in registered:
        return False
    if wanted.get("frontend") and row.get("holder") != wanted["frontend"]:
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
    return status.overview(db, keys, attention=50)


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
