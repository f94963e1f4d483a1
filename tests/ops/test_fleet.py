"""The ops side of several frontends, with three real `greenroom run` processes on one Redis and ngircd:
`status` (leases, rooms held, whether every room is held), `rooms` (the HOLDER column, --frontend),
`frontends`, `drain` / `undrain` (the rooms go to the peers and are joined there), `rebalance`
(--dry-run moves nothing; the moves even the rooms out and keep a share group together), and each
frontend's `/readyz` speaking for its own rooms."""

import json
import time

import pytest

from tests.ops.helpers import cli, http_json
from tests.support.frontend import FrontendProcess, irc_spec, push
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
IDS = ("fleet-a", "fleet-b", "fleet-c")
#: fast leases: renewed every second, so a drain starts within a second
FLEET = {"heartbeat_interval": 0.5, "lease_time": 3.0, "lease_margin": 1.0}


def _holders(client) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall("rooms:holder").items()}


def _joined_on(client, rooms, holders=None) -> bool:
    """Every room joined, and its state written by its holder (the frontend that joined it)."""
    holders = holders or _holders(client)
    for room in rooms:
        raw = client.hget("rooms:state", room)
        state = json.loads(raw) if raw else {}
        if state.get("state") != "joined" or state.get("frontend") != holders.get(room):
            return False
    return True


def _stop_all(procs) -> None:
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            try:
                proc.terminate(10)
            except Exception:
                proc.kill()


def test_status_rooms_drain_rebalance_with_three_frontends(redis_url, redis_client, ngircd, tmp_path):
    ports = {fid: free_port() for fid in IDS}
    procs = {fid: FrontendProcess(redis_url, str(tmp_path / f"{fid}.log"), frontend_id=fid,
                                  metrics_addr=f"127.0.0.1:{ports[fid]}", **FLEET) for fid in IDS}
    group = lambda room: {"type": "join", "room": room,  # noqa: E731
                          "spec": irc_spec(ngircd, f"#{room}", nick="flgbot")}  # one nick: one connection
    try:
        # six rooms on fleet-a alone (four alone, two sharing one connection), then two more frontends
        procs["fleet-a"].start()
        wait_until(lambda: redis_client.zcard("fleet:leases") == 1, timeout=20, what="fleet-a's lease")
        rooms = [f"fl{i}" for i in range(4)] + ["flg1", "flg2"]
        push(redis_client, *[{"type": "join", "room": f"fl{i}", "spec": irc_spec(ngircd, f"#fl{i}", nick=f"fl{i}bot")}
                             for i in range(4)], group("flg1"), group("flg2"))
        wait_until(lambda: _joined_on(redis_client, rooms), timeout=20, what="six rooms joined")
        assert set(_holders(redis_client).values()) == {"fleet-a"}
        procs["fleet-b"].start()
        procs["fleet-c"].start()
        wait_until(lambda: redis_client.zcard("fleet:leases") == 3, timeout=20, what="three leases")

        # status: each frontend's lease and rooms held; every room held
        result = cli("status", "--redis-url", redis_url)
        assert result.returncode == 0, result.stdout + result.stderr
        for fid, n in (("fleet-a", 6), ("fleet-b", 0), ("fleet-c", 0)):
            line = next(line for line in result.stdout.splitlines() if line.startswith(fid))
            fields = line.split()
            assert fields[1] == "alive" and 0 < float(fields[2].rstrip("s")) <= 3.0 and fields[3] == str(n), line
        assert "held: every room is held by a live frontend (6 rooms)" in result.stdout
        data = json.loads(cli("status", "--json", "--redis-url", redis_url).stdout)
        assert {fe["id"]: fe["held"] for fe in data["frontends"]} == {"fleet-a": 6, "fleet-b": 0, "fleet-c": 0}
        assert data["alive"] == 3 and data["holding"]["ok"] and data["holding"]["held"] == 6

        # rebalance --dry-run: the plan (the group whole to one frontend, two rooms to the other), no move
        result = cli("rebalance", "--dry-run", "--json", "--redis-url", redis_url)
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert [(m["room"], m["from"], m["to"]) for m in plan["moves"]] == [
            ("flg1", "fleet-a", "fleet-c"), ("flg2", "fleet-a", "fleet-c"),
            ("fl0", "fleet-a", "fleet-b"), ("fl1", "fleet-a", "fleet-b")]
        assert {fe["id"]: (fe["rooms"], fe["after"]) for fe in plan["frontends"]} == {
            "fleet-a": (6, 2), "fleet-b": (0, 2), "fleet-c": (0, 2)}
        time.sleep(0.3)
        assert set(_holders(redis_client).values()) == {"fleet-a"} and not redis_client.exists("rooms:moving")

        # rebalance: the moves, each printed with its result; the rooms are joined on their new frontends
        result = cli("rebalance", "--wait", "20", "--redis-url", redis_url)
        assert result.returncode == 0, result.stdout + result.stderr
        moved = [line.split() for line in result.stdout.splitlines() if line.startswith("move ")]
        assert moved == [["move", "flg1", "fleet-a", "->", "fleet-c:", "ok"],
                         ["move", "flg2", "fleet-a", "->", "fleet-c:", "ok"],
                         ["move", "fl0", "fleet-a", "->", "fleet-b:", "ok"],
                         ["move", "fl1", "fleet-a", "->", "fleet-b:", "ok"]]
        assert "4 rooms moving, 0 refused" in result.stdout and "every move finished" in result.stdout
        wait_until(lambda: _joined_on(redis_client, rooms), timeout=20, what="the moved rooms joined")
        held = {"fleet-a": ["fl2", "fl3"], "fleet-b": ["fl0", "fl1"], "fleet-c": ["flg1", "flg2"]}
        assert {fid: sorted(r for r, h in _holders(redis_client).items() if h == fid) for fid in IDS} == held
        # a new room of the moved share group joins it where it went (one connection, not a second bot)
        push(redis_client, group("flg3"))
        rooms.append("flg3")
        held["fleet-c"].append("flg3")
        wait_until(lambda: _joined_on(redis_client, rooms), timeout=15, what="flg3 joined")
        assert _holders(redis_client)["flg3"] == "fleet-c"
        assert "nothing to move" in cli("rebalance", "--dry-run", "--redis-url", redis_url).stdout

        # rooms: the HOLDER column, and --frontend; frontends: each one's rooms
        holders = _holders(redis_client)
        table = cli("rooms", "--redis-url", redis_url).stdout.splitlines()
        for line in table[1:-1]:
            assert line.split()[-1] == holders[line.split()[0]], line
        for fid in IDS:
            only = json.loads(cli("rooms", "--json", "--frontend", fid, "--redis-url", redis_url).stdout)["rooms"]
            assert sorted(r["room"] for r in only) == held[fid] and all(r["holder_alive"] for r in only)
        fes = {fe["id"]: fe["rooms"] for fe in
               json.loads(cli("frontends", "--json", "--redis-url", redis_url).stdout)["frontends"]}
        assert fes == held

        # /readyz of each frontend speaks for its own rooms
        for fid in IDS:
            wait_until(lambda: http_json(f"http://127.0.0.1:{ports[fid]}/readyz")[1].get("rooms") == len(held[fid]),
                       timeout=10, what=f"{fid}'s /readyz")
            code, body = http_json(f"http://127.0.0.1:{ports[fid]}/readyz")
            assert code == 200 and body["rooms"] == len(held[fid]) == body["joined"], (fid, body)

        # drain the frontend with the share group: its rooms go to the others, the group stays together
        result = cli("drain", "fleet-c", "--wait", "15", "--redis-url", redis_url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "frontend fleet-c drains" in result.stdout and "frontend fleet-c holds no room" in result.stdout
        wait_until(lambda: _joined_on(redis_client, rooms), timeout=20, what="the drained rooms joined elsewhere")
        after = _holders(redis_client)
        assert "fleet-c" not in after.values() and after["flg1"] == after["flg2"] == after["flg3"]
        status = cli("status", "--redis-url", redis_url)
        assert status.returncode == 0
        line = next(line for line in status.stdout.splitlines() if line.startswith("fleet-c"))
        assert line.split()[1] == "draining" and line.split()[3] == "0"
        # a new room never goes to a draining frontend
        push(redis_client, {"type": "join", "room": "fl-new", "spec": irc_spec(ngircd, "#flnew", nick="flnewbot")})
        rooms.append("fl-new")
        wait_until(lambda: _joined_on(redis_client, rooms), timeout=15, what="the new room joined")
        assert _holders(redis_client)["fl-new"] != "fleet-c"

        # rebalance leaves a draining frontend out; undrained, it gets rooms back
        plan = json.loads(cli("rebalance", "--dry-run", "--json", "--redis-url", redis_url).stdout)
        assert "fleet-c" not in {fe["id"] for fe in plan["frontends"]}
        assert "takes new rooms again" in cli("undrain", "fleet-c", "--redis-url", redis_url).stdout
        result = cli("rebalance", "--wait", "20", "--redis-url", redis_url)
        assert result.returncode == 0, result.stdout + result.stderr
        moved = [line for line in result.stdout.splitlines() if line.startswith("move ")]
        assert moved and all(line.endswith("-> fleet-c: ok") for line in moved)
        wait_until(lambda: _joined_on(redis_client, rooms), timeout=20, what="the moved rooms joined")
        final = _holders(redis_client)
        counts = sorted(sum(1 for h in final.values() if h == fid) for fid in IDS)
        assert counts[0] >= 1 and counts[-1] - counts[0] <= 3, final  # 8 rooms, a group of 3
        assert final["flg1"] == final["flg2"] == final["flg3"]
        assert cli("status", "--redis-url", redis_url).returncode == 0
    finally:
        _stop_all(procs.values())
