"""Several frontends (issue 15) on Sentinel and on a Redis Cluster: two frontends share the rooms, every
command reaches its room's holder in order, none is dead-lettered — the routing and placement scripts
(``lua/route.lua``, ``lua/placement.lua``) on the deployment's one slot, through connections that follow
the primary."""

from __future__ import annotations

import contextlib

import pytest

from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.irc_client import Observer
from tests.support.names import uniq
from tests.support.waiting import wait_until
from frontend.config import load_settings
from frontend.redis_conn import shared_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOMS = 6
SAYS = 10


@pytest.fixture(params=["sentinel", "cluster"])
def deployment(request):
    """(redis_url, key_prefix) of a fresh Sentinel set or cluster."""
    if request.param == "sentinel":
        return request.getfixturevalue("redis_sentinel").url(), uniq("fl") + ":"
    cluster = request.getfixturevalue("redis_cluster")
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.addresses), "{" + uniq("fl") + "}:"


def test_two_frontends_share_the_rooms(deployment, ngircd):
    url, prefix = deployment
    client = shared_client(load_settings(env={}, overrides={"redis_url": url, "key_prefix": prefix}))
    channels = {f"f{i}": "#" + uniq(f"fl{i}-") for i in range(ROOMS)}
    observer = Observer(ngircd.host, ngircd.port, uniq("flobs"), channels.values())
    ids = [uniq("fl-a-"), uniq("fl-b-")]
    try:
        with contextlib.ExitStack() as stack:
            fronts = [stack.enter_context(running_frontend(url, frontend_id=fid, key_prefix=prefix)) for fid in ids]
            push(client, *[{"type": "join", "room": r, "spec": irc_spec(ngircd, c, nick=uniq("flb"))}
                           for r, c in channels.items()], key=prefix + "control")

            def held() -> dict[str, list[str]]:
                return {fe.settings.frontend_id: sorted(r for r in channels if fe.registry.get(r) is not None
                                                        and fe.registry.get(r).state == "joined")
                        for fe in fronts}

            wait_until(lambda: sum(map(len, held().values())) == ROOMS, 30, what="every room joined")
            spread = held()
            assert all(spread.values()), f"placement left a frontend without rooms: {spread}"
            assert not set(spread[ids[0]]) & set(spread[ids[1]])
            push(client, *[{"type": "say", "room": r, "text": f"{r}-{n}"} for n in range(SAYS) for r in channels],
                 key=prefix + "control")
            wait_until(lambda: len(observer.privmsgs()) >= ROOMS * SAYS, 20, what="every say")
            for room, chan in channels.items():
                assert [ln.text for ln in observer.privmsgs(chan)] == [f"{room}-{n}" for n in range(SAYS)]
            assert client.llen(prefix + "control:dead") == 0
    finally:
        observer.close()
        client.close()
