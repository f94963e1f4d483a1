"""The ``greenroom`` command: ``run`` the daemon; ``join``/``part``/``say``, ``rooms``, ``status``,
``frontends``, ``drain``/``undrain``/``rebalance``, ``dead``, ``secrets``, ``tenant`` and ``web`` (the
dashboard) for ops.

The ops commands only push to ``control`` or read Redis, so they work against a running daemon
anywhere. Passwords are never taken from argv: they come from an environment variable or a prompt.
What they print comes from Redis and is hostile: control characters are escaped (``--json`` too),
secrets masked. The views are ``frontend.status``, dead letters ``frontend.deadletters``, secrets at
rest ``frontend.sealing``, the actions on several frontends ``frontend.fleetops``, on tenants
``frontend.tenantops``. A tenant's password is printed once, alone on its line of stdout, by
``tenant credentials``, and nowhere else.
"""

import os

# gevent records the spawning stack of every greenlet by default (for debugging): that doubles the cost
# of a spawn and keeps the stack alive per greenlet. GEVENT_TRACK_GREENLET_TREE=true turns it back on.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")

from gevent import monkey  # noqa: E402

monkey.patch_all()

import argparse  # noqa: E402
import getpass  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import redis  # noqa: E402

from . import __version__  # noqa: E402
from .config import Settings, load_settings  # noqa: E402
from .errors import ConfigError, ProtocolError  # noqa: E402
from .keys import Keys  # noqa: E402
from .protocol import encode, validate_command  # noqa: E402
from .redis_conn import client_for  # noqa: E402
from .status import terminal  # noqa: E402


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, overrides={
        "redis_url": args.redis_url, "key_prefix": args.key_prefix,
        "frontend_id": getattr(args, "frontend_id", None), "log_level": getattr(args, "log_level", None),
        "log_format": getattr(args, "log_format", None),
        "metrics_addr": getattr(args, "metrics_addr", None), "web_addr": getattr(args, "web_addr", None),
    })


def _client(settings: Settings) -> redis.Redis:
    return client_for(settings)  # any redis_url form: one server, Sentinel, Cluster


def _push(settings: Settings, command: dict[str, Any]) -> int:
    validate_command(command, max_text_bytes=settings.max_text_bytes)
    _client(settings).rpush(Keys(settings.key_prefix).control, encode(command))
    print(f"queued {command['type']} for room {terminal(command['room'])}")
    return 0


def _secret(env_name: str, prompt: str) -> str:
    value = os.environ.get(env_name)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigError(f"set {env_name} (passwords are never taken from the command line)")
    return getpass.getpass(prompt)


def worker_count(value: str) -> int:
    from .workers import worker_count as count

    try:
        return count(value)
    except ValueError as exc:
        raise ConfigError(f"--workers: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from . import compiled

    states = compiled.status()  # before the hot-path modules are imported
    if "stale" in states.values():  # compiled code that is not the checkout's: never run it
        print(f"greenroom: {compiled.describe(states)}; run `make compiled` again or `make clean-compiled`",
              file=sys.stderr)
        return 2

    import asyncio

    import asyncio_gevent

    from .app import Frontend
    from .logs import setup_logging

    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    logging.getLogger("frontend").info("%s", compiled.describe(states))
    workers = worker_count(args.workers) if args.workers else 1
    if workers > 1 and not os.environ.get("GREENROOM_WORKER"):
        from .workers import WorkerSupervisor

        base = args.frontend_id or os.environ.get("GREENROOM_FRONTEND_ID") or socket.gethostname()
        passed = [f"--{name.replace('_', '-')}={value}" for name, value in (
            ("config", args.config), ("redis_url", args.redis_url), ("key_prefix", args.key_prefix),
            ("log_level", args.log_level), ("log_format", args.log_format)) if value]
        return WorkerSupervisor(settings, workers, passed, base_id=base).run()
    asyncio.set_event_loop_policy(asyncio_gevent.EventLoopPolicy())
    frontend = Frontend(settings)
    frontend.config_loader = lambda: _settings(args)  # SIGHUP re-reads the same file, env and flags
    return frontend.run_forever()


def cmd_join(args: argparse.Namespace) -> int:
    settings = _settings(args)
    spec: dict[str, Any]
    if args.irc:
        host, _, port = args.irc.partition(":")
        spec = {"protocol": "irc", "server": host, "port": int(port) if port else None,
                "tls": args.tls, "nick": args.nick, "channel": args.channel, "key": args.key}
        if args.sasl_user:
            spec["sasl"] = {"username": args.sasl_user,
                            "password": _secret("GREENROOM_SASL_PASSWORD", "SASL password: ")}
        if args.server_password:
            spec["password"] = _secret("GREENROOM_SERVER_PASSWORD", "Server password: ")
        if args.no_flood_control:
            spec["flood"] = False
    else:
        spec = {"protocol": "xmpp", "jid": args.xmpp, "muc": args.muc, "nick": args.nick,
                "password": _secret("GREENROOM_XMPP_PASSWORD", f"Password for {args.xmpp}: "),
                "tls": args.tls or not args.plaintext}
        if args.host:
            host, _, port = args.host.partition(":")
            spec["host"] = host
            if port:
                spec["port"] = int(port)
    if args.tenant:
        spec["tenant"] = args.tenant
    if args.events:
        spec["events"] = args.events
    return _push(settings, {"type": "join", "room": args.room,
                            "spec": {k: v for k, v in spec.items() if v is not None}})


def cmd_part(args: argparse.Namespace) -> int:
    return _push(_settings(args), {"type": "part", "room": args.room, "reason": args.reason})


def cmd_say(args: argparse.Namespace) -> int:
    command = {"type": "action" if args.action else "say", "room": args.room, "text": args.text}
    if args.to:
        command["to"] = args.to
    return _push(_settings(args), command)


def cmd_rooms(args: argparse.Namespace) -> int:
    from .status import format_rooms, rooms, terminal_json

    settings = _settings(args)
    rows = rooms(_client(settings), Keys(settings.key_prefix))
    if args.frontend is not None:
        rows = [r for r in rows if r["holder"] == args.frontend]
    print(terminal_json({"rooms": rows}) if args.json else format_rooms(rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import format_status, overview, status_exit, terminal_json

    settings = _settings(args)
    data = overview(_client(settings), Keys(settings.key_prefix))
    print(terminal_json(data) if args.json else format_status(data))
    return status_exit(data)


def cmd_frontends(args: argparse.Namespace) -> int:
    from .status import format_frontends, frontend_rooms, terminal_json

    settings = _settings(args)
    data = frontend_rooms(_client(settings), Keys(settings.key_prefix))
    print(terminal_json(data) if args.json else format_frontends(data))
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    from .fleetops import Refused, drain, wait_drained

    settings = _settings(args)
    client, keys = _client(settings), Keys(settings.key_prefix)
    try:
        done = drain(client, keys, args.frontend, force=args.force)
    except Refused as exc:
        print(f"greenroom: not drained: {terminal(exc)}", file=sys.stderr)
        return 1
    name = terminal(args.frontend)
    if done["already"]:
        print(f"frontend {name} was draining already ({done['rooms']} rooms left)")
    else:
        print(f"frontend {name} drains: it takes no new rooms, and at its next lease renewal hands its "
              f"{done['rooms']} rooms to {', '.join(map(terminal, done['peers'])) or 'nobody (forced)'}")
    if args.wait:
        left = wait_drained(client, keys, args.frontend, args.wait)
        if left:
            print(f"greenroom: frontend {name} still holds {left} rooms after {args.wait:g}s", file=sys.stderr)
            return 1
        print(f"frontend {name} holds no room")
    return 0


def cmd_undrain(args: argparse.Namespace) -> int:
    from .fleetops import undrain

    settings = _settings(args)
    name = terminal(args.frontend)
    if undrain(_client(settings), Keys(settings.key_prefix), args.frontend):
        print(f"frontend {name} takes new rooms again (the rooms it gave away stay where they are: "
              f"`greenroom rebalance` moves some back)")
    else:
        print(f"frontend {name} was not draining")
    return 0


def cmd_rebalance(args: argparse.Namespace) -> int:
    from .fleetops import Move, plan, rebalance, wait_moved
    from .status import terminal_json

    settings = _settings(args)
    client, keys = _client(settings), Keys(settings.key_prefix)
    if args.max is not None and args.max < 1:
        raise ConfigError("--max must be at least 1")
    moves = plan(client, keys, max_rooms=args.max)
    if not args.json:
        print(_format_plan(moves))

    def show(move: Move) -> None:
        if not args.json:
            view = move.view()
            print(f"move {terminal(view['room']):24} {terminal(view['from'])} -> {terminal(view['to'])}: "
                  f"{terminal(move.result)}", flush=True)

    if moves.moves and not args.dry_run:
        rebalance(client, keys, moves.moves, on_result=show)
    still = wait_moved(client, keys, moves.moves, args.wait) if args.wait and not args.dry_run else []
    refused = [m for m in moves.moves if m.result not in ("ok", "planned")]
    if args.json:
        print(terminal_json({**moves.view(), "dry_run": args.dry_run,
                             "still_moving": [m.view()["room"] for m in still]}))
    elif moves.moves and not args.dry_run:
        ok = len(moves.moves) - len(refused)
        print(f"{ok} rooms moving, {len(refused)} refused" + (
            "; each leaves its frontend once its earlier commands are out, then joins on the new one "
            "(`greenroom rooms` shows the holders)" if ok else ""))
        if args.wait:
            print(f"{len(still)} still moving after {args.wait:g}s" if still else "every move finished")
    return 1 if refused or still else 0


def _format_plan(result: Any) -> str:
    from .status import terminal

    view = result.view()
    if not result.moves:
        return f"nothing to move: {terminal(view['why'])}"
    lines = [f"{'FRONTEND':24} {'WEIGHT':>6} {'ROOMS':>6} {'AFTER':>6}"]
    for fe in view["frontends"]:
        lines.append(f"{terminal(fe['id'])[:24]:24} {fe['weight']:>6g} {fe['rooms']:>6} {fe['after']:>6}")
    groups = sum(1 for m in view["moves"] if m["group"])
    lines.append(f"plan: move {len(view['moves'])} rooms" + (f" ({groups} of them with their share group)"
                                                             if groups else ""))
    for move in view["moves"]:
        lines.append(f"  {terminal(move['room']):24} {terminal(move['from'])} -> {terminal(move['to'])}"
                     + ("  (share group)" if move["group"] else ""))
    return "\n".join(lines)


def cmd_dead(args: argparse.Namespace) -> int:
    from .deadletters import dead_list, dead_purge, dead_requeue, format_dead
    from .status import terminal, terminal_json

    settings = _settings(args)
    client, keys = _client(settings), Keys(settings.key_prefix)
    if args.action == "list":
        rows = dead_list(client, keys, args.which, limit=args.limit)
        print(terminal_json({"dead": rows}) if args.json else format_dead(rows))
        return 0
    if not args.ids and not args.all and not args.code:
        raise ConfigError(f"dead {args.action}: name the ids, or --code CODE, or --all")
    ids = args.ids or None
    if args.action == "purge":
        n = dead_purge(client, keys, args.which, ids=ids, code=args.code)
        print(f"purged {n} dead letters from {args.which}:dead")
        return 0 if n or args.all else 1
    done = dead_requeue(client, keys, args.which, ids=ids, code=args.code, force=args.force)
    print(f"requeued {done.moved} dead letters from {args.which}:dead")
    for ident, why in done.refused:
        print(f"greenroom: refused to requeue {terminal(ident)}: {terminal(why)}; requeuing it would push "
              f"a broken command (--force pushes it anyway, where that is possible)", file=sys.stderr)
    if done.refused:
        return 1
    return 0 if done.moved or args.all else 1


def cmd_secrets(args: argparse.Namespace) -> int:
    from .sealing import new_key, rotate_registry, sealer_from_settings
    from .status import terminal

    if args.action == "new-key":
        print(new_key())
        return 0

    settings = _settings(args)
    sealer = sealer_from_settings(settings)
    if not sealer.keys:
        raise ConfigError("secrets rotate: no key configured (secrets_keys, GREENROOM_SECRETS_KEYS or "
                          "secrets_keys_file); make one with `greenroom secrets new-key`")
    result = rotate_registry(_client(settings), Keys(settings.key_prefix), sealer)
    print(f"{'sealed' if sealer.enabled else 'opened'} {result.changed} of {result.total} room specs "
          f"({result.unchanged} already as wanted)")
    for room, why in result.failed:
        print(f"greenroom: room {terminal(room)} left as it was: {why}", file=sys.stderr)
    return 1 if result.failed else 0


# ------------------------------------------------------------------------------------------ tenants
#: when a registry change reaches the frontends
APPLIED = "the frontends apply it at their next lease renewal (every lease_time/3, 2 s by default)"


def _rooms(n: int) -> str:
    return f"{n} room" if n == 1 else f"{n} rooms"


def _limits_text(tenant: Any) -> str:
    from .tenantops import LIMITS, limit_text

    return ", ".join(f"{key} {limit_text(getattr(tenant, key))}" for key in LIMITS)


def _over_quota(name: str, used: int, limit: int | None) -> str | None:
    if limit is None or used <= limit:
        return None
    return (f"tenant {name} has {_rooms(used)}, more than its max_rooms {limit}: none is parted; joins of new "
            f"rooms are refused until it has fewer")


def _limit_arg(text: str) -> int | str:
    """``--max-rooms`` and friends: a whole number >= 0, or ``none`` (no limit)."""
    from .tenantops import parse_limit

    try:
        value = parse_limit(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "none" if value is None else value


def cmd_tenant(args: argparse.Namespace) -> int:
    from . import tenantops
    from .status import terminal_json
    from .tenants import Tenant, check_name

    settings = _settings(args)
    client, keys = _client(settings), Keys(settings.key_prefix)
    action = args.action
    if action == "list":
        return _tenant_list(client, keys, args.json)
    name = check_name(args.name)
    try:
        if action == "show":
            from .status import format_tenant, tenant_detail

            detail = tenant_detail(client, keys, name)
            if detail is None:
                raise tenantops.Refused(f"no tenant {name} (`greenroom tenant list` lists them)")
            print(terminal_json(detail) if args.json else format_tenant(detail))
            return 0
        if action == "add":
            limits = {key: None if value in (None, "none") else value for key, value in _limit_args(args).items()}
            done = tenantops.add(client, keys, Tenant(name, **limits))
            print(f"tenant {name} added: {_limits_text(done['tenant'])}")
            print(APPLIED)
            if done["rooms"]:
                print(f"{_rooms(done['rooms'])} naming tenant {name} already: counted towards its max_rooms")
            over = _over_quota(name, done["rooms"], done["tenant"].max_rooms)
            if over:
                print(over)
            return 0
        if action == "set":
            given = {key: None if value == "none" else value for key, value in _limit_args(args).items()
                     if value is not None}
            if not given:
                raise ConfigError("tenant set: name a limit to change (--max-rooms, --lines-per-minute, "
                                  "--max-queued; 'none' lifts one)")
            before, after = tenantops.change(client, keys, name, given)
            changes = [f"{key} {tenantops.limit_text(getattr(before, key))} -> {tenantops.limit_text(value)}"
                       for key, value in given.items() if getattr(before, key) != value]
            if not changes:
                print(f"tenant {name}: unchanged ({_limits_text(after)})")
                return 0
            print(f"tenant {name}: {', '.join(changes)}")
            print(APPLIED)
            from .tenants import rooms_of

            over = _over_quota(name, rooms_of(client, keys, name), after.max_rooms)
            if over:
                print(over)
            return 0
        if action == "remove":
            return _tenant_remove(client, keys, name, args.force)
        if action == "credentials":
            return _tenant_credentials(settings, client, keys, name, args.rotate)
        if action == "revoke":
            done = tenantops.revoke_credentials(client, keys, name)
            if not done["existed"] and not done["was_scoped"]:
                print(f"tenant {name} had no credentials: nothing to revoke")
                return 0
            print(f"tenant {name}: ACL user {done['acl_user']} deleted (Redis closed its connections)")
            print(f"its intake {keys.tenant_control(name)} is no longer read ({done['intake']} commands wait "
                  f"there); {APPLIED}")
            print(f"its rooms stay joined; their events now go to the shared events lists (`messages`, "
                  f"`messages.<name>`), not {keys.tenant(name)}messages")
            _acl_note(done["acl_saved"])
            return 0
    except tenantops.Refused as exc:
        print(f"greenroom: tenant {action}: {terminal(exc)}", file=sys.stderr)
        return 1
    raise ConfigError(f"unknown tenant action {action!r}")


def _limit_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_rooms": args.max_rooms, "lines_per_minute": args.lines_per_minute, "max_queued": args.max_queued}


def _tenant_list(client: redis.Redis, keys: Keys, as_json: bool) -> int:
    from .status import (fleet, fleet_frontends, format_tenant_list, registry, rooms, tenants_view,
                         terminal_json)

    reg = registry(client, keys)
    state = fleet(client, keys)
    view = tenants_view(client, keys, rooms(client, keys, state), fleet_frontends(client, keys, state), reg)
    print(terminal_json(view) if as_json else format_tenant_list(view))
    if view["invalid"]:
        print(f"greenroom: {len(view['invalid'])} entries of `{terminal(keys.tenants)}` are invalid and "
              f"ignored, by the frontends too: {', '.join(terminal(repr(n)) for n in view['invalid'][:20])}",
              file=sys.stderr)
    return 0


def _tenant_remove(client: redis.Redis, keys: Keys, name: str, force: bool) -> int:
    from .tenantops import remove

    done = remove(client, keys, name, force=force)
    print(f"tenant {name} removed; {APPLIED}")
    if done["acl_user_deleted"]:
        print(f"its ACL user {done['acl_user']} is deleted: its backends' connections are closed and its "
              f"password no longer works")
    else:
        print("it had no ACL user (no credentials)")
    rooms = done["rooms"]
    if rooms:
        shown = ", ".join(terminal(r) for r in rooms[:10]) + (", ..." if len(rooms) > 10 else "")
        print(f"its {_rooms(len(rooms))} ({shown}) stay joined as rooms whose tenant is a free label: they count "
              f"against no quota, `control` reaches them"
              + (f" (its intake no longer does), and their events go to the shared events lists (`messages`, "
                 f"`messages.<name>`), not {keys.tenant(name)}messages" if done["scoped"] else "")
              + f"; with require_tenants, joins naming {name} are refused. `greenroom part ROOM` parts one")
    else:
        print("it had no rooms")
    print(f"its keys under {keys.tenant(name)} stay for its backends to finish with ({keys.tenant_control(name)} "
          f"{done['intake']} commands, no longer read; {keys.tenant_dead(name)} {done['dead']} dead letters; "
          f"its events lists): delete them when they are done")
    if done["acl_user_deleted"]:
        _acl_note(done["acl_saved"])
    return 0


def _acl_note(problem: str | None) -> None:
    if problem:
        print(f"greenroom: note: {terminal(problem)}", file=sys.stderr)


def _tenant_credentials(settings: Settings, client: redis.Redis, keys: Keys, name: str, rotate: bool) -> int:
    """Print the tenant's URL alone on stdout; everything else goes to stderr, and never the password."""
    import dataclasses
    from urllib.parse import urlsplit

    from .tenantops import issue_credentials

    url, info = issue_credentials(client, keys, name, settings.redis_url, rotate=rotate)
    print(terminal(url), flush=True)
    user = info["acl_user"]
    err = sys.stderr
    if info["rotated"]:
        print(f"greenroom: rotated the password of ACL user {user}: the old one no longer works, and the "
              f"connections opened with it are closed; give the URL above to the tenant's backends", file=err)
    else:
        print(f"greenroom: created ACL user {user}: it may touch only {keys.tenant(name)}* (backend_sdk: "
              f"Backend(url, tenant=\"{name}\")); the frontends read its intake {keys.tenant_control(name)} "
              f"from their next lease renewal on. Running this again makes a new password only with --rotate", file=err)
    if info["left_out"]:
        print(f"greenroom: note: the URL leaves out these options of redis_url: "
              f"{', '.join(terminal(o) for o in info['left_out'])} (credentials are never copied; the sentinels' "
              f"password, when they need one, must be one of the tenant's own)", file=err)
    if info["several_servers"]:
        print("greenroom: note: Redis ACL users are per server and are not replicated: create this user on "
              "every node that may serve the tenant (replicas, cluster nodes, a promoted primary)", file=err)
    _acl_note(info["acl_saved"])
    secret = urlsplit(url).password or ""
    try:
        check = _client(dataclasses.replace(settings, redis_url=url))
        try:  # it logs in as the tenant's user, and reaches the tenant's keys
            info = check.execute_command("CLIENT", "INFO")
            info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
            if f" user={user} " not in f" {info} ":
                raise redis.RedisError(f"it does not log in as {user}")
            check.llen(keys.tenant_control(name))
        finally:
            check.close()
    except (redis.RedisError, ConfigError, ValueError) as exc:
        why = str(exc).replace(url, "<the URL>").replace(secret, "***") if secret else str(exc)
        print(f"greenroom: warning: the URL does not work from here: {terminal(why)}", file=err)
        return 1
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .web.dashboard import serve

    settings = _settings(args)
    setup_logging(getattr(args, "log_level", None) or settings.log_level, settings.log_format)
    return serve(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greenroom", description=__doc__)
    parser.add_argument("--version", action="version", version=f"greenroom {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (env GREENROOM_CONFIG)")
    common.add_argument("--redis-url", help="redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL "
                        "(env GREENROOM_REDIS_URL; README: Redis for production)")
    common.add_argument("--key-prefix", help="prefix of every Redis key (env GREENROOM_KEY_PREFIX)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run the frontend daemon")
    run.add_argument("--frontend-id", help="this process's id (default host:pid)")
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    run.add_argument("--log-format", choices=["text", "json"])
    run.add_argument("--metrics-addr", help="host:port for /metrics, /healthz, /readyz ('' = off; "
                                            "default 127.0.0.1:9478)")
    run.add_argument("--workers", default=os.environ.get("GREENROOM_WORKERS"),
                     help="N frontend processes under one supervisor, or 'auto' (one per core); default 1. "
                          "Worker ids are <frontend-id or host>:w<i>; one metrics address for all")
    run.set_defaults(func=cmd_run)

    join = sub.add_parser("join", parents=[common], help="join a room (pushes a join command)")
    join.add_argument("room")
    where = join.add_mutually_exclusive_group(required=True)
    where.add_argument("--irc", metavar="HOST[:PORT]")
    where.add_argument("--xmpp", metavar="JID", help="the bot's JID; password from GREENROOM_XMPP_PASSWORD or a prompt")
    join.add_argument("--channel", help="IRC channel, e.g. '#ops'")
    join.add_argument("--muc", help="XMPP room JID, e.g. ops@conference.example.org")
    join.add_argument("--nick", required=True)
    join.add_argument("--key", help="IRC channel key")
    join.add_argument("--tls", action="store_true", help="IRC: use TLS; XMPP: require TLS (default)")
    join.add_argument("--plaintext", action="store_true", help="XMPP: allow a plaintext stream (local servers)")
    join.add_argument("--host", metavar="HOST[:PORT]", help="XMPP: connect here instead of DNS discovery")
    join.add_argument("--sasl-user", help="IRC SASL PLAIN user; password from GREENROOM_SASL_PASSWORD or a prompt")
    join.add_argument("--server-password", action="store_true",
                      help="IRC server password from GREENROOM_SERVER_PASSWORD or a prompt")
    join.add_argument("--no-flood-control", action="store_true", help="IRC: for servers you run yourself")
    join.add_argument("--tenant")
    join.add_argument("--events", help="list for this room's events (default messages)")
    join.set_defaults(func=cmd_join)

    part = sub.add_parser("part", parents=[common], help="leave a room and forget it")
    part.add_argument("room")
    part.add_argument("--reason", default="bye")
    part.set_defaults(func=cmd_part)

    say = sub.add_parser("say", parents=[common], help="say something in a room")
    say.add_argument("room")
    say.add_argument("text")
    say.add_argument("--to", help="private message to this nick through the room's connection")
    say.add_argument("--action", action="store_true", help="/me")
    say.set_defaults(func=cmd_say)

    rooms = sub.add_parser("rooms", parents=[common],
                           help="the registry with each room's live state and holder")
    rooms.add_argument("--frontend", metavar="ID", help="only the rooms this frontend holds")
    rooms.add_argument("--json", action="store_true")
    rooms.set_defaults(func=cmd_rooms)

    status = sub.add_parser("status", parents=[common],
                            help="frontends (lease, rooms held, draining), rooms by state, whether every room is "
                                 "held, list lengths (exit 1: no frontend alive; 3: rooms not held)",
                            description="Exit status: 0 when a frontend is alive and every room of `rooms` is "
                                        "held by a live frontend; 1 when no frontend is alive; 3 when some room "
                                        "has no holder or a holder whose lease expired (they are listed).")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    frontends = sub.add_parser("frontends", parents=[common], help="each frontend's lease and the rooms it holds")
    frontends.add_argument("--json", action="store_true")
    frontends.set_defaults(func=cmd_frontends)

    visible = ("Moving an IRC room is visible in its channel: the bot parts, and another frontend's bot "
               "joins (XMPP: leaves and joins the MUC).")
    drain = sub.add_parser("drain", parents=[common], help="hand a frontend's rooms to its live peers, "
                           "and give it no new rooms (maintenance)",
                           description="Adds FRONTEND to fleet:draining. At its next lease renewal (within a "
                                       "third of lease_time) it leaves its rooms and hands them to live peers; "
                                       "it keeps running and takes no new rooms until `greenroom undrain`. "
                                       "Refused when FRONTEND is not alive or no other live frontend takes "
                                       "rooms (--force drains anyway). " + visible)
    drain.add_argument("frontend", metavar="FRONTEND")
    drain.add_argument("--force", action="store_true",
                       help="drain even when the checks refuse (unknown, not alive, no live peer)")
    drain.add_argument("--wait", type=float, metavar="SECONDS", default=0,
                       help="wait until it holds no room (exit 1 if it still does then)")
    drain.set_defaults(func=cmd_drain)

    undrain = sub.add_parser("undrain", parents=[common], help="let a drained frontend take new rooms again")
    undrain.add_argument("frontend", metavar="FRONTEND")
    undrain.set_defaults(func=cmd_undrain)

    rebalance = sub.add_parser("rebalance", parents=[common],
                               help="move rooms so that live frontends hold rooms in proportion to their weight",
                               description="Computes moves that even out rooms per frontend by weight "
                                           "(fleet:weight) between the live frontends that are not draining, "
                                           "keeping each share group (rooms on one chat connection) together, "
                                           "and starts each (move_begin.lua): the room leaves its frontend once "
                                           "its earlier commands are out, and joins on the new one; its commands "
                                           "wait meanwhile and keep their order. Nothing moves by itself. "
                                           + visible + " Exit status 1 when a move was refused.")
    rebalance.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")
    rebalance.add_argument("--max", type=int, metavar="N", help="move at most N rooms (a share group moves "
                                                                 "whole or not at all)")
    rebalance.add_argument("--wait", type=float, metavar="SECONDS", default=0,
                           help="wait until the moves finished (exit 1 if some did not)")
    rebalance.add_argument("--json", action="store_true")
    rebalance.set_defaults(func=cmd_rebalance)

    dead = sub.add_parser("dead", parents=[common], help="list, requeue or purge dead letters")
    dead.add_argument("action", choices=["list", "requeue", "purge"])
    dead.add_argument("ids", nargs="*", help="dead-letter ids (from `dead list`)")
    dead.add_argument("--which", choices=["control", "messages"], default="control",
                      help="control:dead (default) or messages:dead")
    dead.add_argument("--code", help="only the dead letters with this reason (e.g. unknown_room)")
    dead.add_argument("--all", action="store_true", help="every dead letter of the list")
    dead.add_argument("--limit", type=int, default=1000, help="list: at most this many")
    dead.add_argument("--json", action="store_true")
    dead.add_argument("--force", action="store_true",
                      help="requeue: also dead letters whose item was cut or masked (pushes them as they are)")
    dead.set_defaults(func=cmd_dead)

    secrets = sub.add_parser("secrets", parents=[common],
                             help="encryption at rest of the room specs' secrets (secrets_keys)")
    secrets.add_argument("action", choices=["new-key", "rotate"],
                         help="new-key: print a fresh key; rotate: re-seal every spec in `rooms` with the "
                              "first key")
    secrets.set_defaults(func=cmd_secrets)

    tenant = sub.add_parser("tenant", help="the tenant registry: add, list, show, set, remove; credentials, revoke",
                            description="Tenants of a hosted greenroom (README: Hosting many tenants). Every "
                                        "change reaches the frontends at their next lease renewal, no restart.")
    actions = tenant.add_subparsers(dest="action", required=True, metavar="ACTION")
    limit_help = {"max_rooms": "most rooms over every frontend (a join past it: quota_exceeded)",
                  "lines_per_minute": "outbound lines per minute over all its rooms",
                  "max_queued": "most lines queued over all its rooms (past it: flood_dropped)"}

    def limits(p: argparse.ArgumentParser, unset: str) -> None:
        for key, text in limit_help.items():
            p.add_argument("--" + key.replace("_", "-"), type=_limit_arg, metavar="N|none",
                           help=f"{text}; 'none': no limit; {unset}")

    add = actions.add_parser("add", parents=[common], help="register a tenant with its limits")
    add.add_argument("name", metavar="NAME", help="1-63 of a-z, 0-9, '_', '-'")
    limits(add, "omitted: no limit")
    t_list = actions.add_parser("list", parents=[common], help="every tenant: limits, quota use, rooms by state, "
                                                               "lines sent, drops")
    t_list.add_argument("--json", action="store_true")
    show = actions.add_parser("show", parents=[common], help="one tenant, with its rooms")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true")
    t_set = actions.add_parser("set", parents=[common], help="change a tenant's limits ('none' lifts one)")
    t_set.add_argument("name", metavar="NAME")
    limits(t_set, "omitted: unchanged")
    remove = actions.add_parser("remove", parents=[common], help="remove a tenant (refused while it has rooms)",
                                description="Removes the tenant's entry, its room count and its ACL user (its "
                                            "backends' connections are closed). Refused while it has rooms, "
                                            "unless --force: its rooms then stay joined, as rooms whose tenant "
                                            "is a free label (no quota; their events go to the shared events "
                                            "lists). Its other keys under tenant:NAME: stay.")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("--force", action="store_true", help="remove it even though it has rooms (they stay "
                                                             "joined)")
    cred = actions.add_parser("credentials", parents=[common],
                              help="print a Redis URL for the tenant's backends (its own ACL user)",
                              description="Creates the tenant's Redis ACL user, which may touch only "
                                          "tenant:NAME:*, and prints the Redis URL with its user and password "
                                          "on stdout, alone on its line (notes go to stderr); the password is "
                                          "shown nowhere else, and never on the dashboard. Running it again "
                                          "is refused unless --rotate, which makes a new password: the old "
                                          "one stops working at once and the connections opened with it are "
                                          "closed.")
    cred.add_argument("name", metavar="NAME")
    cred.add_argument("--rotate", action="store_true",
                      help="the tenant has credentials: make a new password (the old one stops working)")
    revoke = actions.add_parser("revoke", parents=[common], help="delete the tenant's ACL user; its intake is "
                                                                 "no longer read")
    revoke.add_argument("name", metavar="NAME")
    tenant.set_defaults(func=cmd_tenant)

    web = sub.add_parser("web", parents=[common], help="the web dashboard (reads and writes only Redis)")
    web.add_argument("--web-addr", help="host:port to listen on (default 127.0.0.1:9479)")
    web.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    web.set_defaults(func=cmd_web)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "join":
        if args.irc and not args.channel:
            parser.error("--irc needs --channel")
        if args.xmpp and not args.muc:
            parser.error("--xmpp needs --muc")
    try:
        return args.func(args)
    except (ConfigError, ProtocolError) as exc:
        print(f"greenroom: {terminal(exc)}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"greenroom: Redis: {terminal(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
