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
# ``redis_client``, ``events`` (an ``EventLog`` of ``messages``), ``irc_client`` (factory of connected
# ``IrcTestClient``), ``xmpp_account`` (factory of fresh prosody accounts). Monkey-patching comes
# first, before anything imports socket/threading.
#
# Real networks and Redis HA (started only by the tests that ask for them; see the section at the end):
# ``tls_pki`` (a test CA and certificates), ``inspircd`` + ``atheme`` (InspIRCd 3 with IRCv3 and SASL,
# Atheme services linked to it), ``inspircd_client``, ``irc_account``, ``prosody_tls``,
# ``prosody_self_signed``, the factories ``make_inspircd``, ``make_ngircd``, ``make_prosody`` (a
# server of the test's own with the options it wants, stopped after it), and ``redis_sentinel_set`` /
# ``redis_sentinel``, ``redis_cluster_set`` / ``redis_cluster``.

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

from tests.support.events import EventLog  # noqa: E402
from tests.support.inspircd import AthemeServices, InspircdServer  # noqa: E402
from tests.support.irc_client import IrcTestClient  # noqa: E402
from tests.support.redis_ha import RedisClusterSet, RedisSentinelSet  # noqa: E402
from tests.support.servers import NgircdServer, ProsodyServer, RedisServer, kill_all  # noqa: E402
from tests.support.tls import TestPKI  # noqa: E402

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
    """Every key, and every ACL user but the default one (tenant credentials of an earlier test)."""
    client = server.client(socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        client.flushall()
        for user in client.acl_users():
            name = user.decode() if isinstance(user, bytes) else user
            if name != "default":
                client.acl_deluser(name)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def events(redis_client: redis.Redis) -> EventLog:
    """An ``EventLog`` of ``messages`` on the session Redis (through ``redis_client``)."""
    return EventLog(redis_client)


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


# -- real networks: TLS, InspIRCd + Atheme, server variants ------------------------------------------

@pytest.fixture(scope="session")
def tls_pki() -> Iterator[TestPKI]:
    """A private test CA (``ca_file``), a server certificate it signed (``server``) and a self-signed one
    (``self_signed``), both for localhost, 127.0.0.1 and the test servers' names."""
    with _server_dir("pki") as path:
        yield TestPKI(path)


@pytest.fixture(scope="session")
def inspircd(tls_pki: TestPKI) -> Iterator[InspircdServer]:
    """InspIRCd 3 without flood or channel limits: ``port`` (plain), ``tls_port`` (the CA-signed
    certificate of ``tls_pki``), IRCv3 capabilities; SASL once ``atheme`` is linked to it."""
    with _server_dir("inspircd") as path, _running(InspircdServer(path, tls=tls_pki.server)) as server:
        yield server


@pytest.fixture(scope="session")
def _atheme_services(inspircd: InspircdServer) -> Iterator[AthemeServices]:
    with _server_dir("atheme") as path, _running(AthemeServices(path, inspircd)) as services:
        yield services


@pytest.fixture
def atheme(_atheme_services: AthemeServices) -> AthemeServices:
    """Atheme services linked to ``inspircd`` (NickServ, ChanServ, SaslServ), restarted first when an
    earlier test stopped or killed them. ``atheme.register(account, password)``."""
    if _atheme_services.paused:
        _atheme_services.resume()
    return _atheme_services.start()


_irc_account_seq = itertools.count(1)


@pytest.fixture
def irc_account(atheme: AthemeServices) -> Callable[..., tuple[str, str]]:
    """Factory ``irc_account(stem="user") -> (account, password)``: a fresh NickServ account on
    ``inspircd`` (log in with ``inspircd_client(nick, sasl=(account, password))``)."""

    def make(stem: str = "user") -> tuple[str, str]:
        account, password = f"{stem.lower()}{os.getpid() % 1000}n{next(_irc_account_seq)}", secrets.token_hex(8)
        atheme.register(account, password)
        return account, password

    return make


@pytest.fixture
def inspircd_client(inspircd: InspircdServer) -> Iterator[Callable[..., IrcTestClient]]:
    """Factory ``inspircd_client(nick, caps=(...), sasl=(account, password), ...) -> IrcTestClient``
    connected to ``inspircd`` (``port=inspircd.tls_port`` is not TLS: use a socket of your own); all
    closed after."""
    clients: list[IrcTestClient] = []

    def make(nick: str, **options: Any) -> IrcTestClient:
        client = IrcTestClient(inspircd.host, inspircd.port, nick, **options)
        clients.append(client)
        return client.connect()

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def prosody_tls(tls_pki: TestPKI) -> Iterator[ProsodyServer]:
    """prosody with the CA-signed certificate, STARTTLS required (``tls_port``: direct TLS)."""
    with _server_dir("prosody-tls") as path, \
            _running(ProsodyServer(path, tls=tls_pki.server, require_encryption=True)) as server:
        yield server


@pytest.fixture(scope="session")
def prosody_self_signed(tls_pki: TestPKI) -> Iterator[ProsodyServer]:
    """prosody with a self-signed certificate, STARTTLS required (ejabberd as shipped does the same)."""
    with _server_dir("prosody-self") as path, \
            _running(ProsodyServer(path, tls=tls_pki.self_signed, require_encryption=True)) as server:
        yield server


@contextlib.contextmanager
def _server_factory(kind: type, name: str) -> Iterator[Callable[..., Any]]:
    with contextlib.ExitStack() as stack:
        def make(**options: Any) -> Any:
            path = stack.enter_context(_server_dir(name))
            return stack.enter_context(_running(kind(path, **options)))

        yield make


@pytest.fixture
def make_inspircd() -> Iterator[Callable[..., InspircdServer]]:
    """Factory ``make_inspircd(threshold=20, commandrate=1000, maxchans=N, tls=..., ...)``: a started
    InspIRCd of the test's own (e.g. one that kills floods), stopped after the test."""
    with _server_factory(InspircdServer, "inspircd") as make:
        yield make


@pytest.fixture
def make_ngircd() -> Iterator[Callable[..., NgircdServer]]:
    """Factory ``make_ngircd(max_joins=N, password=None)``: a started ngircd of the test's own."""
    with _server_factory(NgircdServer, "ngircd") as make:
        yield make


@pytest.fixture
def make_prosody() -> Iterator[Callable[..., ProsodyServer]]:
    """Factory ``make_prosody(tls=tls_pki.server, require_encryption=False)``: a started prosody of the
    test's own."""
    with _server_factory(ProsodyServer, "prosody") as make:
        yield make


# -- Redis HA: Sentinel and Cluster --------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_sentinel_set() -> Iterator[RedisSentinelSet]:
    """A primary, a replica and three sentinels (service ``greenroom``); prefer ``redis_sentinel``."""
    with _server_dir("sentinel") as path, RedisSentinelSet(path) as servers:
        yield servers


@pytest.fixture
def redis_sentinel(redis_sentinel_set: RedisSentinelSet) -> RedisSentinelSet:
    """The session's sentinel set, whole (what an earlier test killed is back, as a replica) and empty.
    ``url()``, ``sentinels``, ``service_name``, ``master()``, ``kill_primary()``, ``wait_for_promotion()``."""
    redis_sentinel_set.heal()
    redis_sentinel_set.flush()
    return redis_sentinel_set


@pytest.fixture(scope="session")
def redis_cluster_set() -> Iterator[RedisClusterSet]:
    """A Redis Cluster of 3 primaries with a replica each; prefer ``redis_cluster``."""
    with _server_dir("cluster") as path, RedisClusterSet(path) as servers:
        yield servers


@pytest.fixture
def redis_cluster(redis_cluster_set: RedisClusterSet) -> RedisClusterSet:
    """The session's cluster, whole (killed nodes are back) and empty. ``url``, ``startup_nodes``,
    ``client()``, ``kill_node()``, ``wait_for_failover()``."""
    redis_cluster_set.heal()
    redis_cluster_set.flush()
    return redis_cluster_set
