from gevent import monkey

monkey.patch_all()

import asyncio  # noqa: E402

import asyncio_gevent  # noqa: E402

asyncio.set_event_loop_policy(asyncio_gevent.EventLoopPolicy())

# Shared fixtures: real redis-server, ngircd and prosody for the whole session, on loopback.
#
# Session fixtures: ``redis_server``, ``ngircd``, ``prosody`` (each in its own temp dir under /tmp,
# removed at the end; set GREENROOM_KEEP_TEST_DIRS=1 to keep them and their logs).
# Function fixtures: ``redis_url`` (flushed, and healed if a test killed or paused the server),
# ``redis_client``, ``irc_client`` (factory of connected ``IrcTestClient``), ``xmpp_account`` (factory
# of fresh prosody accounts). Monkey-patching comes first, before anything imports socket/threading.

import atexit  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from tests.support.irc_client import IrcTestClient  # noqa: E402
from tests.support.servers import NgircdServer, ProsodyServer, RedisServer, kill_all  # noqa: E402

atexit.register(kill_all)  # the safety net: SIGKILL any server child still running at exit


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running test")
    config.addinivalue_line("markers", "e2e: end-to-end through real servers")


@contextlib.contextmanager
def _server_dir(name: str) -> Iterator[str]:
    """A fresh dir under /tmp, mode 0755 (prosody's user must be able to traverse it), removed after."""
    path = tempfile.mkdtemp(prefix=f"greenroom-{name}-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        if not os.environ.get("GREENROOM_KEEP_TEST_DIRS"):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _running(server: Any) -> Iterator[Any]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with _server_dir("redis") as path, _running(RedisServer(path)) as server:
        yield server


@pytest.fixture(scope="session")
def ngircd() -> Iterator[NgircdServer]:
    with _server_dir("ngircd") as path, _running(NgircdServer(path)) as server:
        yield server


@pytest.fixture(scope="session")
def prosody() -> Iterator[ProsodyServer]:
    with _server_dir("prosody") as path, _running(ProsodyServer(path)) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, empty; restarted first when an earlier test killed, stopped or paused it."""
    if redis_server.paused:
        redis_server.resume()
    redis_server.start()  # a no-op while it runs
    try:
        _flush(redis_server)
    except redis.RedisError:  # hung (stopped by someone else?) or broken: start over on the same port
        redis_server.kill()
        redis_server.start()
        _flush(redis_server)
    return redis_server.url


def _flush(server: RedisServer) -> None:
    client = server.client(socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        client.flushall()
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def irc_client(ngircd: NgircdServer) -> Iterator[Callable[..., IrcTestClient]]:
    """Factory ``irc_client(nick, **options) -> IrcTestClient`` connected to ``ngircd``; all closed after."""
    clients: list[IrcTestClient] = []

    def make(nick: str, **options: Any) -> IrcTestClient:
        client = IrcTestClient(ngircd.host, ngircd.port, nick, **options)
        clients.append(client)
        return client.connect()

    yield make
    for client in clients:
        client.close()


_account_seq = itertools.count(1)


@pytest.fixture
def xmpp_account(prosody: ProsodyServer) -> Callable[..., tuple[str, str]]:
    """Factory ``xmpp_account(stem="user") -> (jid, password)``: a fresh account on ``prosody``."""

    def make(stem: str = "user") -> tuple[str, str]:
        password = secrets.token_hex(8)
        jid = prosody.create_user(f"{stem.lower()}{next(_account_seq)}", password)
        return jid, password

    return make
