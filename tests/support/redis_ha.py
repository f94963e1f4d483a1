"""Redis Sentinel and Redis Cluster for tests: real redis-server processes on loopback, free ports.

``RedisSentinelSet``: a primary, a replica and three sentinels (``redis-server --sentinel``), each a
``tests.support.servers.Server`` (foreground child, registered with the reaper, files in its own dir
under the set's work dir). Sentinel timings are low (``down-after-milliseconds`` 2000,
``failover-timeout`` 3000 by default) so a fail-over after ``kill_primary()`` takes a few seconds.
Not 1000: right after a switch-master a sentinel starts over with the new primary's link, and on a
loaded machine its first answer can take over a second: the sentinels then "fail over" the healthy
new primary back to the node ``heal()`` just restarted as its replica.
Everything binds and announces 127.0.0.1 only.

``RedisClusterSet``: a Redis Cluster of ``primaries`` (3) primaries with ``replicas`` (1) replica each,
slots split evenly, ``cluster-node-timeout`` 1000 ms by default, so ``kill_node()`` +
``wait_for_failover()`` promote a replica in a few seconds.

Both have ``start()`` (returns once the whole set works: replication linked, sentinels agreeing and
knowing each other / every slot served and every node seeing every other), ``stop()``, ``heal()``
(restart what was killed, on the same port, back in the set, and wait until it is whole again) and
``flush()``; ``tests/conftest.py`` has the fixtures.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, TypeVar

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from tests.support.ports import free_port
from tests.support.servers import RedisServer, Server, _connect, find_binary

T = TypeVar("T")

SERVICE_NAME = "greenroom"
SET_TIMEOUT = 20.0


def _wait(what: str, probe: Callable[[], Optional[T]], timeout: float, interval: float = 0.05,
          describe: Optional[Callable[[], str]] = None) -> T:
    """Poll ``probe`` until it returns something truthy (exceptions count as "not yet")."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = result
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe else ""
            raise RuntimeError(f"{what}: not within {timeout:.0f}s (last: {last!r}){extra}")
        time.sleep(interval)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port.split("@")[0])


class RedisNode(RedisServer):
    """redis-server without persistence, optionally a replica (``replicaof``), password, cluster mode.

    ``replicaof`` is read at every (re)start, so a set can restart a former primary as a replica.
    In cluster mode its ``nodes.conf`` lives in its work dir: a restarted node keeps its id and rejoins.
    """

    def __init__(self, workdir: str, *, replicaof: Optional[tuple[str, int]] = None,
                 password: Optional[str] = None, cluster_node_timeout: Optional[int] = None,
                 cluster_full_coverage: bool = True, name: str = "redis") -> None:
        self.name = name
        super().__init__(workdir)
        self.replicaof = replicaof
        self.password = password
        self.cluster_node_timeout = cluster_node_timeout
        self.cluster_full_coverage = cluster_full_coverage
        self.bus_port = 0  # cluster mode: the cluster bus, a free port of its own (not port + 10000)

    def _pick_ports(self) -> None:
        self.port = free_port()
        if self.cluster_node_timeout is not None:
            self.bus_port = free_port()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        options.setdefault("decode_responses", False)
        options.setdefault("password", self.password)
        return redis.Redis(host=self.host, port=self.port, db=0, **options)

    def _argv(self) -> list[str]:
        # a replica (re)syncs at once: no 5 s wait for more replicas to share a diskless transfer
        argv = super()._argv() + ["--replica-announce-ip", self.host, "--repl-diskless-sync-delay", "0"]
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replicaof:
            argv += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        if self.cluster_node_timeout is not None:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", os.path.join(self.workdir, "nodes.conf"),
                     "--cluster-node-timeout", str(self.cluster_node_timeout),
                     "--cluster-port", str(self.bus_port),
                     "--cluster-announce-ip", self.host,
                     "--cluster-require-full-coverage", "yes" if self.cluster_full_coverage else "no"]
        return argv

    def _ready(self) -> bool:
        with _connect(self.host, self.port) as sock:
            hello = f"AUTH {self.password}\r\n" if self.password else ""
            sock.sendall(f"{hello}PING\r\n".encode())
            received = b""
            while b"PONG" not in received:
                chunk = sock.recv(64)
                if not chunk or chunk.startswith(b"-"):
                    return False
                received += chunk
            return True

    def cluster_state(self) -> str:
        """``cluster_state`` from ``CLUSTER INFO`` ("ok" or "fail")."""
        client = self.client(socket_timeout=1, socket_connect_timeout=1, decode_responses=True)
        try:
            text = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return fields.get("cluster_state", "")

    def info(self, section: str = "replication") -> dict[str, Any]:
        client = self.client(socket_timeout=1, socket_connect_timeout=1, decode_responses=True)
        try:
            return client.info(section)
        finally:
            client.close()


class RedisSentinel(Server):
    """``redis-server <conf> --sentinel`` monitoring ``service`` on ``primary``; its config is rewritten
    by the sentinel itself (what it learned), and kept across ``restart()``."""

    name = "sentinel"

    def __init__(self, workdir: str, service: str, primary: tuple[str, int], *, quorum: int = 2,
                 down_after_ms: int = 2000, failover_timeout_ms: int = 3000,
                 password: Optional[str] = None) -> None:
        super().__init__(workdir)
        self.service = service
        self.primary = primary
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        self.conf_path = os.path.join(self.workdir, "sentinel.conf")
        self._conf_port = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _prepare(self) -> None:
        if self._conf_port == self.port and os.path.exists(self.conf_path):
            return  # a restart: keep what the sentinel wrote (epochs, known sentinels and replicas)
        host, port = self.primary
        lines = [
            f"port {self.port}", f"bind {self.host}", "daemonize no", "protected-mode no",
            f"dir {self.workdir}", 'logfile ""',
            f"sentinel announce-ip {self.host}", f"sentinel announce-port {self.port}",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {self.service} {host} {port} {self.quorum}",
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.service} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {self.service} {self.password}")
        with open(self.conf_path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self._conf_port = self.port

    def _argv(self) -> list[str]:
        return [find_binary("redis-server"), self.conf_path, "--sentinel"]

    def _ready(self) -> bool:
        with _connect(self.host, self.port) as sock:
            sock.sendall(f"SENTINEL get-master-addr-by-name {self.service}\r\n".encode())
            return sock.recv(256).startswith(b"*2")

    def client(self, **options: Any) -> redis.Redis:
        options.setdefault("decode_responses", True)
        options.setdefault("socket_timeout", 1)
        options.setdefault("socket_connect_timeout", 1)
        return redis.Redis(host=self.host, port=self.port, **options)

    def ask(self, *command: Any) -> Any:
        client = self.client()
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def primary_address(self) -> Optional[tuple[str, int]]:
        reply = self.ask("SENTINEL", "get-master-addr-by-name", self.service)
        return (reply[0], int(reply[1])) if reply else None


class RedisSentinelSet:
    """A primary, a replica and three sentinels on loopback, all in ``workdir``.

    ``sentinels`` (addresses), ``service_name``, ``url(db=0)`` (``redis+sentinel://[:password@]h1:p1,
    h2:p2,h3:p3/<service>/<db>``), ``sentinel_client()`` (redis-py ``Sentinel``), ``master()`` (a
    redis-py client for the current primary through the sentinels), ``primary`` / ``replica`` (the
    nodes in their current roles), ``kill_primary()``, ``wait_for_promotion(timeout)``, ``heal()``.
    """

    def __init__(self, workdir: str, *, service_name: str = SERVICE_NAME, password: Optional[str] = None,
                 down_after_ms: int = 2000, failover_timeout_ms: int = 3000) -> None:
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.service_name = service_name
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.nodes = [RedisNode(os.path.join(self.workdir, f"node{i}"), password=password, name=f"redis{i}")
                      for i in range(2)]
        self.sentinel_servers: list[RedisSentinel] = []
        self._killed_primary: Optional[tuple[str, int]] = None
        self.last_failover_seconds: Optional[float] = None
        self._killed_at: Optional[float] = None

    # -- addresses ----------------------------------------------------------------------------------
    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [s.address for s in self.sentinel_servers]

    def url(self, db: int = 0, password: Optional[str] = None) -> str:
        """``redis+sentinel://[:password@]h1:p1,h2:p2,h3:p3/<service>/<db>`` (the set's password by default)."""
        secret = self.password if password is None else password
        auth = f":{secret}@" if secret else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.service_name}/{db}"

    def sentinel_client(self, **options: Any) -> Sentinel:
        """redis-py's ``Sentinel`` over the three sentinels (``options`` go to the data connections)."""
        options.setdefault("socket_timeout", 2)
        options.setdefault("socket_connect_timeout", 2)
        if self.password:
            options.setdefault("password", self.password)
        return Sentinel(self.sentinels, sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1},
                        **options)

    def master(self, **options: Any) -> redis.Redis:
        """A client for the current primary, through the sentinels (it follows a promotion)."""
        return self.sentinel_client(**options).master_for(self.service_name)

    def node_at(self, address: tuple[str, int]) -> RedisNode:
        return next(node for node in self.nodes if node.address == tuple(address))

    def primary_address(self) -> tuple[str, int]:
        """What a majority of the running sentinels say the primary is."""
        votes: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinel_servers:
            if sentinel.running:
                try:
                    addr = sentinel.primary_address()
                except (redis.RedisError, OSError):
                    continue
                if addr:
                    votes[addr] = votes.get(addr, 0) + 1
        if not votes:
            raise RuntimeError("no sentinel answers")
        return max(votes, key=lambda a: votes[a])

    @property
    def primary(self) -> RedisNode:
        return self.node_at(self.primary_address())

    @property
    def replica(self) -> RedisNode:
        primary = self.primary
        return next(node for node in self.nodes if node is not primary)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = SET_TIMEOUT) -> "RedisSentinelSet":
        primary, replica = self.nodes
        primary.start()
        replica.replicaof = primary.address
        replica.start()
        for i in range(3):
            sentinel = RedisSentinel(os.path.join(self.workdir, f"sentinel{i}"), self.service_name, primary.address,
                                     down_after_ms=self.down_after_ms,
                                     failover_timeout_ms=self.failover_timeout_ms, password=self.password)
            self.sentinel_servers.append(sentinel)
            sentinel.start()
        self.wait_whole(timeout)
        return self

    def stop(self) -> None:
        for server in [*self.sentinel_servers, *self.nodes]:
            server.stop()

    def wait_whole(self, timeout: float = SET_TIMEOUT) -> tuple[str, int]:
        """Until the primary has its replica in sync and every sentinel knows it, the replica and the
        two other sentinels (a fail-over needs that). Returns the primary's address."""
        def whole() -> Optional[tuple[str, int]]:
            addr = self.primary_address()
            primary = self.node_at(addr)
            info = primary.info()
            if info.get("role") != "master" or info.get("connected_slaves") != 1:
                return None
            replica = next(node for node in self.nodes if node is not primary)
            rinfo = replica.info()
            if rinfo.get("master_link_status") != "up" or rinfo.get("master_port") != addr[1]:
                return None
            for sentinel in self.sentinel_servers:
                if sentinel.primary_address() != addr:
                    return None
                master = _pairs(sentinel.ask("SENTINEL", "master", self.service_name))
                if int(master["num-other-sentinels"]) != 2 or int(master["num-slaves"]) < 1:
                    return None
                if "s_down" in master["flags"] or "o_down" in master["flags"]:
                    return None
                replicas = [_pairs(r) for r in sentinel.ask("SENTINEL", "replicas", self.service_name)]
                if not any(int(r["port"]) == replica.port and "s_down" not in r["flags"]
                           and "disconnected" not in r["flags"] for r in replicas):
                    return None
            return addr

        return _wait("the sentinel set to be whole", whole, timeout, interval=0.1, describe=self.describe)

    def kill_primary(self) -> RedisNode:
        """SIGKILL the current primary; returns its node (``heal()`` brings it back as a replica)."""
        node = self.primary
        self._killed_primary = node.address
        node.kill()
        self._killed_at = time.monotonic()
        return node

    def wait_for_promotion(self, timeout: float = SET_TIMEOUT) -> tuple[str, int]:
        """After ``kill_primary()``: the new primary's address, once every running sentinel names it and
        it answers as a master. ``last_failover_seconds`` is the time since the kill."""
        old = self._killed_primary

        def promoted() -> Optional[tuple[str, int]]:
            addrs = {s.primary_address() for s in self.sentinel_servers if s.running}
            if len(addrs) != 1:
                return None
            addr = addrs.pop()
            if addr is None or addr == old:
                return None
            return addr if self.node_at(addr).info().get("role") == "master" else None

        addr = _wait("a replica to be promoted", promoted, timeout, interval=0.05, describe=self.describe)
        if self._killed_at is not None:
            self.last_failover_seconds = time.monotonic() - self._killed_at
        return addr

    def heal(self, timeout: float = SET_TIMEOUT) -> tuple[str, int]:
        """Restart whatever is not running (a killed primary comes back as a replica of the current one;
        sentinels on their ports with what they learned) and wait until the set is whole again."""
        for sentinel in self.sentinel_servers:
            if sentinel.paused:
                sentinel.resume()
            sentinel.start()
        for node in self.nodes:
            if node.paused:
                node.resume()
        dead = [node for node in self.nodes if not node.running]
        if dead and len(dead) < len(self.nodes):
            try:
                current = self.primary_address()
            except RuntimeError:
                current = None
            if current is not None and not self.node_at(current).running:
                # killed and not yet replaced: let the sentinels promote the survivor first, or the
                # restarted node would follow a replica
                self._killed_primary = current
                self.wait_for_promotion(timeout)
        if len(dead) == len(self.nodes):  # nothing left to follow: start over from the first
            self.nodes[0].replicaof = None
            self.nodes[0].start()
            dead = dead[1:]
        if dead:
            alive = next(node for node in self.nodes if node.running)
            for node in dead:
                node.replicaof = alive.address
                node.start()
        self._killed_primary = None
        return self.wait_whole(timeout)

    def flush(self) -> None:
        """FLUSHALL on the primary, and wait for the replica to have applied it."""
        primary = self.primary
        client = primary.client(socket_timeout=5)
        try:
            client.flushall()
            client.execute_command("WAIT", 1, 5000)
        finally:
            client.close()

    def describe(self) -> str:
        out = []
        for server in [*self.nodes, *self.sentinel_servers]:
            out.append(f"{server!r}\n{server.log_tail(8)}")
        return "\n".join(out)

    def __enter__(self) -> "RedisSentinelSet":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisSentinelSet {self.service_name} nodes={[n.port for n in self.nodes]} sentinels={self.sentinels}>"


def _pairs(flat: Any) -> dict[str, str]:
    """A sentinel reply ``[k1, v1, k2, v2, ...]`` (or redis-py's already parsed dict) as a dict."""
    if isinstance(flat, dict):
        return {str(k): str(v) if not isinstance(v, (list, set, tuple)) else ",".join(map(str, v))
                for k, v in flat.items()}
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


class RedisClusterSet:
    """A Redis Cluster on loopback: ``primaries`` primaries with ``replicas`` replica(s) each.

    Node ``i < primaries`` is a primary for the ``i``-th share of the 16384 slots; node
    ``primaries + k`` replicates primary ``k % primaries``. ``nodes``, ``addresses``, ``startup_nodes``
    (redis-py ``ClusterNode``), ``url`` (``redis://127.0.0.1:<first port>/0``: redis-py's
    ``RedisCluster.from_url`` discovers the rest), ``client()`` (a ``RedisCluster``),
    ``kill_node(node=None)``, ``wait_for_failover(timeout)``, ``heal()``, ``flush()``.
    """

    def __init__(self, workdir: str, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 password: Optional[str] = None, full_coverage: bool = True) -> None:
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.nodes = [RedisNode(os.path.join(self.workdir, f"node{i}"), password=password,
                                cluster_node_timeout=node_timeout_ms, cluster_full_coverage=full_coverage,
                                name=f"cluster{i}")
                      for i in range(primaries * (1 + replicas))]
        self._killed: Optional[RedisNode] = None
        self._killed_slot: Optional[int] = None
        self._killed_at: Optional[float] = None
        self.last_failover_seconds: Optional[float] = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(host, port) for host, port in self.addresses]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        running = next((node for node in self.nodes if node.running), self.nodes[0])
        return f"redis://{auth}{running.host}:{running.port}/0"

    @property
    def cluster_url(self) -> str:
        """``redis+cluster://h1:p1,h2:p2,...``: every node, as the frontend's ``redis_url`` takes it."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.addresses)

    def client(self, **options: Any) -> RedisCluster:
        options.setdefault("socket_timeout", 2)
        options.setdefault("socket_connect_timeout", 2)
        if self.password:
            options.setdefault("password", self.password)
        running = [ClusterNode(*node.address) for node in self.nodes if node.running]
        return RedisCluster(startup_nodes=running, **options)

    # -- topology ------------------------------------------------------------------------------------
    def cluster_nodes(self, via: Optional[RedisNode] = None) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by ``via`` (a running node by default), one dict per node."""
        via = via or next(node for node in self.nodes if node.running)
        client = via.client(socket_timeout=1, socket_connect_timeout=1, decode_responses=True)
        try:
            text = client.execute_command("CLUSTER", "NODES")  # no redis-py parsing: the raw lines
        finally:
            client.close()
        out = []
        for line in text.strip().splitlines():
            parts = line.split()
            out.append({"id": parts[0], "address": _addr(parts[1]), "flags": set(parts[2].split(",")),
                        "master": parts[3], "link": parts[7], "slots": parts[8:]})
        return out

    def primary_nodes(self) -> list[RedisNode]:
        """The running nodes that currently are primaries with slots."""
        view = self.cluster_nodes()
        addrs = {n["address"] for n in view if "master" in n["flags"] and n["slots"] and "fail" not in n["flags"]}
        return [node for node in self.nodes if node.address in addrs and node.running]

    def replicas_of(self, node: RedisNode) -> list[RedisNode]:
        view = self.cluster_nodes()
        me = next(n for n in view if n["address"] == node.address)
        addrs = {n["address"] for n in view if n["master"] == me["id"]}
        return [other for other in self.nodes if other.address in addrs]

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = SET_TIMEOUT) -> "RedisClusterSet":
        for node in self.nodes:
            node.start()
        clients = [node.client(socket_timeout=2, decode_responses=True) for node in self.nodes]
        try:
            share = 16384 // self.primaries
            for i in range(self.primaries):
                last = 16383 if i == self.primaries - 1 else (i + 1) * share - 1
                clients[i].execute_command("CLUSTER ADDSLOTSRANGE", i * share, last)
            first = self.nodes[0]
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", first.host, first.port, first.bus_port)
            ids = [c.execute_command("CLUSTER MYID") for c in clients]
            _wait("every cluster node to know every other",
                  lambda: all(len(self.cluster_nodes(node)) == len(self.nodes) for node in self.nodes),
                  timeout, describe=self.describe)
            for k, client in enumerate(clients[self.primaries:]):
                primary_id = ids[k % self.primaries]
                _wait("the replica to see its primary",
                      lambda: client.execute_command("CLUSTER REPLICATE", primary_id), timeout,
                      describe=self.describe)
        finally:
            for client in clients:
                client.close()
        self.wait_whole(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_whole(self, timeout: float = SET_TIMEOUT) -> list[RedisNode]:
        """Until every node runs, says ``cluster_state:ok``, sees all the others connected and without
        failure flags, every primary has its replicas linked and in sync. Returns the primaries."""
        def whole() -> Optional[list[RedisNode]]:
            for node in self.nodes:
                if not node.running or node.cluster_state() != "ok":
                    return None
                view = self.cluster_nodes(node)
                if len(view) != len(self.nodes) or any(
                        n["link"] != "connected" or n["flags"] & {"fail", "fail?", "handshake", "noaddr"}
                        for n in view):
                    return None
            view = self.cluster_nodes()
            masters = [n for n in view if "master" in n["flags"] and n["slots"]]
            if len(masters) != self.primaries:
                return None
            for master in masters:
                if sum(n["master"] == master["id"] for n in view) != self.replicas:
                    return None
            for node in self.nodes:
                info = node.info()
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return None
            return self.primary_nodes()

        return _wait("the cluster to be whole", whole, timeout, interval=0.1, describe=self.describe)

    def kill_node(self, node: Optional[RedisNode] = None) -> RedisNode:
        """SIGKILL ``node`` (default: the primary serving slot 0, which has a replica); returns it."""
        if node is None:
            node = self._node_for_slot(0)
        owned = self._first_slot_of(node)
        node.kill()
        self._killed, self._killed_slot = node, owned
        self._killed_at = time.monotonic()
        return node

    def _slot_owners(self, via: Optional[RedisNode] = None) -> list[tuple[int, int, dict[str, Any]]]:
        owners = []
        for entry in self.cluster_nodes(via):
            if "master" in entry["flags"]:
                for spec in entry["slots"]:
                    if not spec.startswith("["):  # "[slot->-id]": a slot being migrated
                        lo, _, hi = spec.partition("-")
                        owners.append((int(lo), int(hi or lo), entry))
        return owners

    def _first_slot_of(self, node: RedisNode) -> Optional[int]:
        slots = [lo for lo, _, entry in self._slot_owners() if entry["address"] == node.address]
        return min(slots) if slots else None

    def _node_for_slot(self, slot: int, via: Optional[RedisNode] = None) -> RedisNode:
        for lo, hi, entry in self._slot_owners(via):
            if lo <= slot <= hi:
                return next(n for n in self.nodes if n.address == entry["address"])
        raise RuntimeError(f"no primary serves slot {slot}")

    def wait_for_failover(self, timeout: float = SET_TIMEOUT) -> tuple[str, int]:
        """After ``kill_node()`` of a primary: the address of the replica that took over its slots, once
        every surviving node flags the dead one ``fail``, names the new owner and says
        ``cluster_state:ok``, and the new owner answers as a master. ``last_failover_seconds`` is the
        time since the kill."""
        killed, slot = self._killed, self._killed_slot
        if killed is None or slot is None:
            raise RuntimeError("kill_node() a primary first")

        def promoted() -> Optional[tuple[str, int]]:
            owners = set()
            for node in self.nodes:
                if not node.running:
                    continue
                if node.cluster_state() != "ok":
                    return None
                view = self.cluster_nodes(node)
                if "fail" not in next(n for n in view if n["address"] == killed.address)["flags"]:
                    return None
                owners.add(self._node_for_slot(slot, node).address)
            if len(owners) != 1 or killed.address in owners:
                return None
            owner = owners.pop()
            return owner if self._node(owner).info().get("role") == "master" else None

        addr = _wait("a cluster replica to be promoted", promoted, timeout, interval=0.05, describe=self.describe)
        if self._killed_at is not None:
            self.last_failover_seconds = time.monotonic() - self._killed_at
        return addr

    def _node(self, address: tuple[str, int]) -> RedisNode:
        return next(node for node in self.nodes if node.address == tuple(address))

    def heal(self, timeout: float = SET_TIMEOUT) -> list[RedisNode]:
        """Restart the nodes that are not running (same port and nodes.conf: they rejoin, a former primary
        as a replica of its successor) and wait until the cluster is whole."""
        for node in self.nodes:
            if node.paused:
                node.resume()
            node.start()
        self._killed = None
        return self.wait_whole(timeout)

    def flush(self) -> None:
        """FLUSHALL on every primary, replicated before returning."""
        for node in self.primary_nodes():
            client = node.client(socket_timeout=5)
            try:
                client.flushall()
                if self.replicas:
                    client.execute_command("WAIT", self.replicas, 5000)
            finally:
                client.close()

    def describe(self) -> str:
        return "\n".join(f"{node!r}\n{node.log_tail(8)}" for node in self.nodes)

    def __enter__(self) -> "RedisClusterSet":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisClusterSet {[n.port for n in self.nodes]}>"


__all__ = ["RedisClusterSet", "RedisNode", "RedisSentinel", "RedisSentinelSet", "SERVICE_NAME"]
