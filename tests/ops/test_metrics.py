"""/metrics, /healthz, /readyz of a live frontend through real redis-server and ngircd."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.helpers import http_get, http_json
from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana-dashboard.json"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    code, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def dashboard_metric_names() -> set[str]:
    doc = json.loads(DASHBOARD.read_text())
    found = set()
    for panel in doc["panels"]:
        for target in panel["targets"]:
            found.update(re.findall(r"\b((?:greenroom|process)_[a-z0-9_]+)\b", target["expr"]))
    for var in doc.get("templating", {}).get("list", []):
        found.update(re.findall(r"\b(greenroom_[a-z0-9_]+)\b", str(var.get("query", ""))))
    return found


def test_every_metric_of_the_grafana_dashboard_exists(redis_url, redis_client, ngircd, irc_client):
    port = free_port()
    events = EventLog(redis_client)
    watcher = irc_client("mwatch")
    watcher.join("#metrics")
    with running_frontend(redis_url, metrics_addr=f"127.0.0.1:{port}"):
        push(redis_client, {"type": "join", "room": "m1", "spec": irc_spec(ngircd, "#metrics", nick="mbot")})
        events.wait(type="joined", room="m1")
        push(redis_client, {"type": "say", "room": "m1", "text": "counted"},
             {"type": "say", "room": "nowhere", "text": "x"}, b"not json")
        watcher.expect(r":mbot!\S+ PRIVMSG #metrics :counted")
        watcher.privmsg("#metrics", "hello bot")
        events.wait(type="message", room="m1")
        wait_until(lambda: redis_client.llen("control:dead") == 2, what="two dead letters")
        samples = wait_until(lambda: (s := scrape(port)).get(("greenroom_commands_applied_total", ())) and s,
                             what="applied commands in /metrics")

    wanted = dashboard_metric_names()
    assert len(wanted) >= 15, wanted
    missing = sorted(name for name in wanted
                     if not any(n == name or n.startswith(name + "_") for n in names(samples)))
    assert not missing, f"the dashboard names metrics /metrics lacks: {missing}"

    assert samples[("greenroom_rooms", (("protocol", "irc"), ("state", "joined")))] == 1
    assert samples[("greenroom_commands_received_total", ())] == 4
    assert samples[("greenroom_commands_applied_total", ())] == 2
    assert samples[("greenroom_commands_dead_total", (("reason", "bad_command"),))] == 1
    assert samples[("greenroom_commands_dead_total", (("reason", "unknown_room"),))] == 1
    assert samples[("greenroom_events_pushed_total", ())] >= 2  # joined, message (+ the error event)
    assert samples[("greenroom_command_latency_seconds_count", ())] >= 1
    assert samples[("greenroom_event_latency_seconds_count", ())] >= 2
    assert samples[("greenroom_chat_sessions", (("protocol", "irc"),))] == 1
    assert ("greenroom_room_queue_depth_bucket", (("le", "+Inf"),)) in samples
    assert samples[("process_resident_memory_bytes", ())] > 0
    # never one series per room
    assert not any("room" in dict(labels) for _, labels in samples)


def test_readyz_waits_for_the_share_of_joined_rooms(redis_url, redis_client, ngircd):
    port = free_port()
    closed = free_port()  # nothing listens there: that room stays in backoff
    redis_client.hset("rooms", mapping={
        "ok": json.dumps(irc_spec(ngircd, "#ready", nick="readybot")),
        "down": json.dumps({**irc_spec(ngircd, "#down", nick="downbot"), "port": closed}),
    })
    url = f"http://127.0.0.1:{port}"
    with running_frontend(redis_url, metrics_addr=f"127.0.0.1:{port}", ready_share=0.95) as fe:
        code, body = http_json(url + "/readyz")
        assert code == 503 and body["ready"] is False and "rooms joined" in body["reason"]
        wait_until(lambda: fe.rooms["ok"].state == "joined", what="room ok joined")
        wait_until(lambda: fe.rooms["down"].state == "backoff", what="room down in backoff")
        code, body = http_json(url + "/readyz")
        assert (code, body["joined"], body["rooms"]) == (503, 1, 2)
        assert body["reason"] == "1 of 2 rooms joined, 95% required"
        push(redis_client, {"type": "part", "room": "down"})
        code, body = wait_until(lambda: (r := http_json(url + "/readyz"))[0] == 200 and r, what="ready")
        assert body == {"ready": True, "rooms": 1, "joined": 1, "share": 1.0, "required": 0.95}
        assert http_json(url + "/healthz")[0] == 200
        assert http_get(url + "/nope")[0] == 404


def test_readyz_before_the_registry_is_loaded(redis_url):
    from frontend.config import load_settings
    from frontend.app import Frontend
    fe = Frontend(load_settings(env={}, overrides={"redis_url": redis_url, "frontend_id": "x"}))
    code, body = fe.metrics.health.readiness()
    assert code == 503 and body["reason"].startswith("starting")


def test_healthz_follows_redis(tmp_path, ngircd):
    from tests.support.servers import RedisServer

    server = RedisServer(str(tmp_path / "redis")).start()  # private: the session server is not disturbed
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with running_frontend(server.url, metrics_addr=f"127.0.0.1:{port}", health_redis_age=1.5,
                              shutdown_timeout=2.0):
            code, body = wait_until(lambda: (r := http_json(url))[0] == 200 and r, what="healthy")
            assert body["ok"] is True
            server.stop()
            code, body = wait_until(lambda: (r := http_json(url))[0] == 503 and r, timeout=10, what="unhealthy")
            assert body["ok"] is False and "Redis" in body["reason"]
            metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()
            assert "greenroom_redis_last_ok_age_seconds" in metrics
            server.start()
            wait_until(lambda: http_json(url)[0] == 200, timeout=15, what="healthy again")
    finally:
        server.stop()


def test_metrics_can_be_turned_off(redis_url):
    with running_frontend(redis_url, metrics_addr="") as fe:
        assert fe.metrics.port == 0
