"""The ``greenroom`` command: ``run`` the daemon; ``join``/``part``/``say``, ``rooms``, ``status``,
``dead``, ``secrets`` and ``web`` (the dashboard) for ops.

The ops commands only push to ``control`` or read Redis, so they work against a running daemon
anywhere. Passwords are never taken from argv: they come from an environment variable or a prompt.
What they print comes from Redis and is hostile: control characters are escaped (``--json`` too),
secrets masked. The views are ``frontend.status``, dead letters ``frontend.deadletters``, secrets at
rest ``frontend.sealing``.
"""

import os

# gevent records the spawning stack of every greenlet by default (for debugging): that doubles the cost
# of a spawn and keeps the stack alive per greenlet. GEVENT_TRACK_GREENLET_TREE=true turns it back on.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")

from gevent import monkey  # noqa: E402

monkey.patch_all()

import argparse  # noqa: E402
import getpass  # noqa: E402
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


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    import asyncio_gevent

    from .app import Frontend
    from .logs import setup_logging

    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
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
    print(terminal_json({"rooms": rows}) if args.json else format_rooms(rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import format_status, overview, terminal_json

    settings = _settings(args)
    data = overview(_client(settings), Keys(settings.key_prefix))
    print(terminal_json(data) if args.json else format_status(data))
    return 0 if data["frontends"] else 1


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

    rooms = sub.add_parser("rooms", parents=[common], help="the registry with each room's live state")
    rooms.add_argument("--json", action="store_true")
    rooms.set_defaults(func=cmd_rooms)

    status = sub.add_parser("status", parents=[common],
                            help="live frontends, rooms by state, list lengths (exit 1: no frontend alive)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

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
