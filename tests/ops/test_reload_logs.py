"""SIGHUP reload, --log-format json, and secrets that never reach the log (real `greenroom run`)."""

import base64
import json
import logging
import signal

import pytest

from tests.ops.helpers import PasswordRedis, http_get
from tests.support.events import EventLog
from tests.support.frontend import FrontendProcess, irc_spec, push, running_frontend
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_sighup_applies_a_valid_file_and_refuses_an_invalid_one(redis_url, redis_client, ngircd, irc_client,
                                                                tmp_path):
    first, second = free_port(), free_port()
    config = tmp_path / "greenroom.toml"
    config.write_text(f'log_level = "INFO"\nmetrics_addr = "127.0.0.1:{first}"\nflood_burst = 5\n')
    watcher = irc_client("hupwatch")
    watcher.join("#hup")
    events = EventLog(redis_client)
    proc = FrontendProcess(redis_url, str(tmp_path / "fe.log"), frontend_id="fe-hup")
    proc.env["GREENROOM_CONFIG"] = str(config)
    proc.start()
    try:
        push(redis_client, {"type": "join", "room": "hup", "spec": irc_spec(ngircd, "#hup", nick="hupbot")})
        events.wait(type="joined", room="hup", timeout=20)
        assert http_get(f"http://127.0.0.1:{first}/metrics")[0] == 200
        watcher.privmsg("#hup", "before reload")
        events.wait(type="message", room="hup")
        assert "FROM SERVER" not in proc.log()  # a DEBUG line

        config.write_text(f'log_level = "DEBUG"\nmetrics_addr = "127.0.0.1:{second}"\nflood_burst = 7\n')
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in proc.log(), what="the reload log line")
        reloaded = [ln for ln in proc.log().splitlines() if "configuration reloaded" in ln][0]
        assert "log_level" in reloaded and "metrics_addr" in reloaded and "flood_burst" in reloaded
        assert "1 rooms stay joined" in reloaded
        wait_until(lambda: http_get(f"http://127.0.0.1:{second}/metrics")[0] == 200, what="metrics moved")
        assert http_get(f"http://127.0.0.1:{first}/metrics")[0] == 0
        watcher.privmsg("#hup", "after reload")
        events.wait(type="message", room="hup", text="after reload")
        wait_until(lambda: "FROM SERVER" in proc.log(), what="DEBUG lines after the reload")

        config.write_text('log_level = "DEBUG"\nflood_burst = [\n')
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in proc.log(), what="the refusal")
        refused = [ln for ln in proc.log().splitlines() if "reload" in ln and "refused" in ln]
        assert len(refused) == 1 and "not valid TOML" in refused[0] and "ERROR" in refused[0]
        config.write_text('log_level = "LOUD"\n')
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sum("reload refused" in ln for ln in proc.log().splitlines()) == 2, what="2nd refusal")
        assert http_get(f"http://127.0.0.1:{second}/metrics")[0] == 200  # the old config stays
        # the room never left: no PART/QUIT seen, still joined, still speaking
        push(redis_client, {"type": "say", "room": "hup", "text": "still here"})
        watcher.expect(r":hupbot!\S+ PRIVMSG #hup :still here")
        lifecycle = [e["type"] for e in events.seen if e["room"] == "hup" and e["type"] in ("joined", "parted")]
        assert lifecycle == ["joined"]
        assert b'"joined"' in redis_client.hget("rooms:state", "hup")
        code, _ = proc.terminate()
        assert code == 0
    finally:
        proc.kill()


def test_reload_in_process_reaches_sessions(redis_url, redis_client, ngircd, tmp_path):
    """The new Settings reach the frontend, the Outbox, the pool and each live session."""
    from frontend.config import load_settings

    events = EventLog(redis_client)
    with running_frontend(redis_url) as fe:
        push(redis_client, {"type": "join", "room": "rl", "spec": irc_spec(ngircd, "#rl", nick="rlbot", flood=None)})
        events.wait(type="joined", room="rl")
        config = tmp_path / "g.toml"
        config.write_text('room_queue_max = 77\nflood_burst = 9\nflood_rate = 3.0\nmax_line_age = 12.0\n')
        fe.config_loader = lambda: load_settings(str(config), env={}, overrides={
            "redis_url": "redis://elsewhere:1/0", "frontend_id": "other"})
        level = logging.getLogger().level
        try:
            assert fe.reload()
        finally:
            logging.getLogger().setLevel(level)
        (session,) = fe.sessions.sessions()
        assert fe.settings.room_queue_max == 77 and fe.outbox._settings is fe.settings
        assert session.settings is fe.settings and fe.sessions.settings is fe.settings
        assert session.queue.max_per_room == 77 and session.queue.bucket.rate == 3.0
        assert fe.settings.redis_url == redis_url and fe.settings.frontend_id == "test-fe"  # identity kept
        config.write_text("room_queue_max = 'many'\n")
        assert not fe.reload() and fe.settings.room_queue_max == 77


def test_the_garbage_collector_threshold_is_set_at_start_and_by_a_reload(redis_url, tmp_path):
    import gc

    from frontend import gc_tuning
    from frontend.config import load_settings

    before = gc.get_threshold()
    try:
        gc.set_threshold(*gc_tuning.PYTHON_THRESHOLDS)
        with running_frontend(redis_url) as fe:
            wait_until(lambda: gc.get_threshold()[0] == fe.settings.gc_young_threshold == 5_000,
                       what="the frontend's threshold")
            config = tmp_path / "g.toml"
            config.write_text("gc_young_threshold = 0\n")
            fe.config_loader = lambda: load_settings(str(config), env={})
            level = logging.getLogger().level
            try:
                assert fe.reload()
            finally:
                logging.getLogger().setLevel(level)
            assert gc.get_threshold() == gc_tuning.PYTHON_THRESHOLDS
    finally:
        gc.set_threshold(*before)


def test_json_log_format_with_room_ids(redis_url, redis_client, ngircd, tmp_path):
    events = EventLog(redis_client)
    proc = FrontendProcess(redis_url, str(tmp_path / "fe.log"), frontend_id="fe-json", log_format="json")
    proc.start()
    try:
        push(redis_client, {"type": "join", "room": "jr1", "spec": irc_spec(ngircd, "#json", nick="jsonbot")},
             {"type": "say", "room": "ghost-room", "text": "x"})
        events.wait(type="joined", room="jr1", timeout=20)
        wait_until(lambda: "ghost-room" in proc.log(), what="the rejection line")
        assert proc.terminate()[0] == 0
    finally:
        proc.kill()
    lines = [json.loads(line) for line in proc.log().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)
    room_lines = [e["msg"] for e in lines if e["logger"] == "frontend.room"]
    assert room_lines and all(msg.startswith("room jr1: ") for msg in room_lines)
    assert any("room ghost-room" in e["msg"] and e["level"] == "WARNING" for e in lines)


def test_secrets_never_reach_the_log_even_at_debug(ngircd, prosody, tmp_path):
    from tests.support.servers import NgircdServer

    redis_pw, server_pw, sasl_pw, xmpp_pw = "r3dis-Pa55word", "1rc-Serv3r-pw", "sasl-S3cret-pw", "xmpp-S3cret-pw"
    secrets = [redis_pw, server_pw, sasl_pw, xmpp_pw]
    for user, pw in (("saslbot", sasl_pw), ("secretbot", xmpp_pw), ("secretbot@localhost", xmpp_pw)):
        for blob in (f"{user}\0{user}\0{pw}", f"\0{user}\0{pw}"):
            secrets.append(base64.b64encode(blob.encode()).decode())  # SASL PLAIN as sent
    private = PasswordRedis(str(tmp_path / "redis"), password=redis_pw).start()
    jid = prosody.create_user("secretbot", xmpp_pw)
    ircd = NgircdServer(str(tmp_path / "ircd"), password=server_pw)
    ircd.start()
    proc = FrontendProcess(private.url, str(tmp_path / "fe.log"), frontend_id="fe-secret", log_level="DEBUG",
                           metrics_addr="")
    try:
        import redis

        client = redis.Redis.from_url(private.url)
        proc.start()
        push(client,
             {"type": "join", "room": "pw", "spec": irc_spec(ircd, "#pw", nick="pwbot", password=server_pw)},
             {"type": "join", "room": "pw-bad", "spec": irc_spec(ircd, "#pw", nick="pwbad", password=server_pw + "x")},
             {"type": "join", "room": "sasl", "spec": irc_spec(ngircd, "#sasl", nick="saslbot",
                                                              sasl={"username": "saslbot", "password": sasl_pw})},
             {"type": "join", "room": "xmpp", "spec": {"protocol": "xmpp", "jid": jid, "password": xmpp_pw,
                                                      "muc": f"secrets@{prosody.muc_domain}", "nick": "bot",
                                                      "host": prosody.host, "port": prosody.port, "tls": False}})

        def state(room: str) -> str:
            return json.loads(client.hget("rooms:state", room) or b"{}").get("state", "")

        wait_until(lambda: state("pw") == "joined", timeout=20, what="the room behind a server password")
        wait_until(lambda: state("xmpp") == "joined", timeout=30, what="the XMPP room (SASL with prosody)")
        wait_until(lambda: state("pw-bad") == "backoff", timeout=20, what="the wrong server password refused")
        wait_until(lambda: "does not offer SASL" in proc.log(), timeout=20, what="SASL refused by ngircd")
        before = len(proc.log())
        private.stop()  # Redis errors are logged too
        wait_until(lambda: "failed" in proc.log()[before:], what="Redis errors in the log")
        private.start()
        proc.terminate()
    finally:
        proc.kill()
        ircd.stop()
        private.stop()
    log = proc.log()
    assert "DEBUG" in log and "FROM SERVER" in log and "***@127.0.0.1" in log
    leaked = [s for s in secrets if s in log]
    assert not leaked, f"secrets in the log: {leaked}"
