"""The dashboard's guards, through the real dashboard app on a free port and a real Redis: allowed Host
headers (DNS rebinding), login attempt limits, server-side sessions that logout revokes, a login for
the read pages beyond loopback, and no secret on any page."""

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import gevent.pool
import pytest

from frontend.config import load_settings
from frontend.errors import ConfigError
from frontend.protocol import dead_letter
from frontend.sealing import SpecSealer, new_key
from frontend.web.dashboard import create_app
from tests.ops.helpers import dashboard, http, own_address
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
TOKEN = "guard-token-456"


def login(base: str, **kw) -> str:
    """Log in; the session cookie."""
    answer = http(base, "POST", "/login", form={"token": TOKEN, "next": "/rooms"}, **kw)
    assert answer.status == 302, answer.text
    return answer.cookies["greenroom_session"]


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_only_the_dashboards_own_host_names_are_answered(redis_url):
    with dashboard(redis_url, web_token=TOKEN) as (base, _):
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LocalHost.:{port}"):
            assert http(base, "GET", "/", host=host).status == 200, host
        # a DNS-rebinding page reaches us under its own name: nothing to read there, no login to try
        for host in (f"rebind.attacker.example:{port}", f"127.0.0.1.attacker.example:{port}", "127.0.0.1:1",
                     "localhost", ""):
            answer = http(base, "GET", "/api/overview", host=host)
            assert answer.status == 400 and b"frontends" not in answer.body, host
        refused = http(base, "POST", "/login", host=f"rebind.attacker.example:{port}", form={"token": TOKEN})
        assert refused.status == 400 and "web_allowed_hosts" in refused.text and not refused.cookies
    with dashboard(redis_url, web_token=TOKEN, web_allowed_hosts="dash.example.org, Other.example:8080") as (base, _):
        port = base.rsplit(":", 1)[1]
        assert http(base, "GET", "/", host="dash.example.org").status == 200
        assert http(base, "GET", "/", host="dash.example.org:443").status == 200  # a name alone: any port
        assert http(base, "GET", "/", host="other.example:8080").status == 200
        assert http(base, "GET", "/", host="other.example:8081").status == 400
        assert http(base, "GET", "/", host=f"127.0.0.1:{port}").status == 400  # configured: only those


def test_login_guesses_are_limited_per_client_logged_and_never_lock_out_for_long(redis_url, caplog):
    caplog.set_level(logging.WARNING, logger="frontend.web")
    with dashboard(redis_url, web_token=TOKEN, web_login_limit=5) as (base, _):
        for _ in range(8):  # successful logins cost nothing
            login(base)
        # 60 guesses at once: the count is taken before the token is compared
        answers = gevent.pool.Pool(30).map(
            lambda n: http(base, "POST", "/login", form={"token": f"guess-{n}"}), range(60))
        evaluated = [a for a in answers if a.status == 200]
        refused = [a for a in answers if a.status == 429]
        assert len(evaluated) + len(refused) == 60
        assert 5 <= len(evaluated) <= 10, len(evaluated)  # 10: the guesses straddled a window's end
        assert all("wrong token" in a.text for a in evaluated)
        assert "too many login attempts: try again in" in refused[0].text
        assert 1 <= int(refused[0].headers["retry-after"]) <= 60
        lines = [r.getMessage() for r in caplog.records if "too many login attempts from 127.0.0.1" in r.getMessage()]
        assert 1 <= len(lines) <= 2, lines  # one line (with a count) per 10 s, not one per guess
        # the right token is refused too for the rest of the window: no oracle
        assert http(base, "POST", "/login", form={"token": TOKEN}).status == 429
        # and a Bearer header is no way around the limit
        assert http(base, "POST", "/part", form={"room": "x"},
                    headers={"Authorization": "Bearer guess"}).status == 429
    # the operator is not locked out for long: the window ends (here 1 s) and the login works
    with dashboard(redis_url, key_prefix="short:", web_token=TOKEN, web_login_limit=2,
                   web_login_window=1) as (base, _):
        for n in range(6):
            http(base, "POST", "/login", form={"token": f"typo-{n}"})
        wait_until(lambda: http(base, "POST", "/login", form={"token": TOKEN}).status == 302, timeout=4,
                   step=0.2, what="the login after the window")


def test_bearer_guesses_count_as_failed_logins(redis_url, redis_client):
    with dashboard(redis_url, web_token=TOKEN, web_login_limit=5) as (base, _):
        statuses = [http(base, "POST", "/part", form={"room": "x"}, headers={"Authorization": f"Bearer g{n}"}).status
                    for n in range(12)]
        assert statuses.count(403) in range(5, 11) and statuses.count(429) >= 2, statuses
        assert redis_client.llen("control") == 0


def test_the_total_limit_holds_beyond_the_per_address_one(redis_url):
    addr = own_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    with dashboard(redis_url, host=addr, web_token=TOKEN, web_login_limit=100, web_login_limit_total=3) as (base, _):
        statuses = [http(base, "POST", "/login", form={"token": f"g{n}"}).status for n in range(8)]
        assert statuses.count(200) in (3, 4, 5, 6) and statuses.count(429) >= 2, statuses


def test_logout_revokes_the_session_also_for_a_copied_cookie(redis_url, redis_client):
    with dashboard(redis_url, web_token=TOKEN) as (base, settings):
        cookie = login(base)
        # the cookie is a random id, nothing derived from the token
        assert len(cookie) >= 40 and TOKEN not in cookie
        assert hashlib.sha256(b"greenroom-auth\0" + TOKEN.encode()).hexdigest()[:32] not in cookie
        key = "web:session:" + hashlib.sha256(cookie.encode()).hexdigest()
        assert 0 < redis_client.ttl(key) <= settings.web_session_ttl
        assert TOKEN.encode() not in redis_client.get(key)
        # several dashboard processes share the sessions (they live in Redis)
        with dashboard(redis_url, web_token=TOKEN) as (other, _):
            page = http(other, "GET", "/rooms", cookie=cookie)
            assert 'id="logout"' in page.text
        csrf = csrf_of(page.text)
        copied = cookie
        done = http(base, "POST", "/part", cookie=cookie, form={"room": "x", "csrf": csrf})
        assert done.status == 302 and json.loads(redis_client.lpop("control"))["room"] == "x"

        assert http(base, "POST", "/logout", cookie=cookie).status == 302
        assert not redis_client.exists(key)
        refused = http(base, "POST", "/part", cookie=copied, form={"room": "x", "csrf": csrf})
        assert refused.status == 403 and "log in" in refused.text
        assert 'id="logout"' not in http(base, "GET", "/rooms", cookie=copied).text
        assert redis_client.llen("control") == 0

        # a login always starts a new session: the one before it is gone (no fixation)
        first = login(base)
        second = login(base, cookie=first)
        assert second != first
        assert http(base, "POST", "/part", cookie=first, form={"room": "x", "csrf": "x"}).status == 403


def test_sessions_expire(redis_url):
    with dashboard(redis_url, web_token=TOKEN, web_session_ttl=1) as (base, _):
        cookie = login(base)
        assert 'id="logout"' in http(base, "GET", "/rooms", cookie=cookie).text
        wait_until(lambda: 'id="logout"' not in http(base, "GET", "/rooms", cookie=cookie).text, timeout=4,
                   step=0.2, what="the session to expire")


def test_beyond_loopback_the_read_pages_need_a_login(redis_url):
    addr = own_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    with dashboard(redis_url, host=addr, web_token=TOKEN) as (base, _):
        for path in ("/", "/rooms", "/dead?which=messages"):
            answer = http(base, "GET", path)
            assert answer.status == 302 and "/login?next=" in answer.headers["location"], path
        assert http(base, "GET", "/api/overview").status == 401
        assert http(base, "GET", "/fragment/overview").status == 401
        assert http(base, "GET", "/api/history").status == 401
        answer = http(base, "GET", "/rebalance")
        assert answer.status == 302 and "/login?next=" in answer.headers["location"]
        assert http(base, "GET", "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        assert http(base, "GET", "/login").status == 200
        cookie = login(base)
        assert http(base, "GET", "/dead", cookie=cookie).status == 200
    with dashboard(redis_url, host=addr, web_token=TOKEN, web_public_reads=True) as (base, _):
        assert http(base, "GET", "/rooms").status == 200
    with pytest.raises(ConfigError, match="beyond loopback, without web_token"):
        create_app(load_settings(env={}, overrides={"redis_url": redis_url, "web_addr": f"{addr}:1"}))


def test_greenroom_web_beyond_loopback_warns_or_refuses(redis_url, tmp_path):
    port = free_port()
    env = {**os.environ, "GREENROOM_REDIS_URL": redis_url, "GREENROOM_WEB_ADDR": f"0.0.0.0:{port}"}
    env.pop("GREENROOM_WEB_TOKEN", None)
    refused = subprocess.run([sys.executable, "-m", "frontend.cli", "web"], env=env, capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode == 2 and "without web_token" in refused.stderr
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "frontend.cli", "web"], env={**env, "GREENROOM_WEB_TOKEN": TOKEN},
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "dashboard on" in log_path.read_text(), what="the dashboard's start")
        text = log_path.read_text()
        assert "WARNING" in text and "beyond loopback" in text and "every page needs a login" in text
        assert TOKEN not in text
        assert http(f"http://127.0.0.1:{port}", "GET", "/rooms").status == 302
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_no_secret_on_any_page_and_hostile_strings_render(redis_url, redis_client):
    secrets_ = ["old-clear-pw", "old-sasl-pw", "old-chan-key", "old-room-pw", "escaped-name-pw", "new-pw",
                "spec-clear-pw", "spec-sasl-pw", "spec-sealed-pw"]
    # a dead letter written by an older version: the join as received, secrets in clear
    raw = json.dumps({"type": "join", "room": "r1", "spec": {
        "protocol": "irc", "server": "h", "nick": "n", "channel": "#c", "password": "old-clear-pw",
        "key": "old-chan-key", "sasl": {"username": "u", "password": "old-sasl-pw"}}})
    redis_client.rpush("control:dead", json.dumps({"error": {"code": "bad_command", "detail": "x"}, "raw": raw,
                                                   "frontend": "old", "ts": time.time()}))
    redis_client.rpush("control:dead", json.dumps({
        "error": {"code": "bad_command", "detail": "y"}, "frontend": "old", "ts": time.time(),
        "raw": '{"type":"join","room":"r2","spec":{"room_password":"old-room-pw","pass\\u0077ord":"escaped-name-pw"}}'}))
    # one written by this version (masked already), and one with a lone surrogate (valid JSON, not UTF-8)
    redis_client.rpush("control:dead", dead_letter(json.dumps({"type": "join", "room": "r3", "spec": {
        "password": "new-pw"}}).encode(), "bad_command", "z", "fe"))
    redis_client.rpush("control:dead", b'{"error":{"code":"bad_command","detail":"\\ud800"},"raw":"<b>\\ud800</b>"}')
    key = new_key()
    sealed = SpecSealer([key]).seal({"protocol": "xmpp", "jid": "a@b", "muc": "r@c", "nick": "n",
                                     "password": "spec-sealed-pw"})
    redis_client.hset("rooms", mapping={
        "irc1": json.dumps({"protocol": "irc", "server": "h", "nick": "n", "channel": "#c",
                            "password": "spec-clear-pw", "sasl": {"username": "u", "password": "spec-sasl-pw"}}),
        "xmpp1": json.dumps(sealed)})
    redis_client.hset("rooms:state", mapping={"irc1": json.dumps({"state": "backoff", "error": "<script>x</script>"}),
                                              "xmpp1": json.dumps({"state": "backoff"})})
    # several frontends: hostile frontend ids as leases and holders, with a history
    sec, usec = redis_client.time()
    now = sec * 1000 + usec // 1000
    evil, other = "<script>x</script>fe", "fe-<b>"
    redis_client.zadd("fleet:leases", {evil: now + 60000, other: now + 60000})
    redis_client.hset("rooms:holder", mapping={"irc1": evil, "xmpp1": evil})
    redis_client.sadd(f"rooms:held:{evil}", "irc1", "xmpp1")
    redis_client.lpush(f"fleet:history:{evil}", json.dumps({"ts": now, "received": 1}))
    with dashboard(redis_url, web_token=TOKEN) as (base, _):
        cookie = login(base)
        for path in ("/", "/fragment/overview", "/api/overview", "/rooms", "/dead", "/dead?which=messages",
                     "/rebalance", "/api/history"):
            for who in (None, cookie):
                answer = http(base, "GET", path, cookie=who)
                assert answer.status == 200, (path, answer.text[:500])
                for secret in secrets_:
                    assert secret not in answer.text, (path, secret)
                assert "fernet:" not in answer.text, (path, answer.text[answer.text.find("fernet:") - 200:][:400])
                if "json" not in answer.headers["content-type"]:
                    assert "<script>x" not in answer.text and "&lt;script&gt;" in answer.text or path.startswith("/dead")
        dead = http(base, "GET", "/dead", cookie=cookie).text
        assert dead.count("masked") >= 2 and "&lt;b&gt;" in dead
        assert json.loads(http(base, "GET", "/api/history").body)["frontends"][0]["id"] == evil
        plan = http(base, "GET", "/rebalance", cookie=cookie).text
        assert "<code>&lt;script&gt;x&lt;/script&gt;fe</code>" in plan and "<code>fe-&lt;b&gt;</code>" in plan


def test_drain_undrain_and_rebalance_need_a_login_csrf_and_the_plan_shown(redis_url, redis_client):
    sec, usec = redis_client.time()
    now = sec * 1000 + usec // 1000
    redis_client.zadd("fleet:leases", {"fe-a": now + 60000, "fe-b": now + 60000})
    for room in ("r1", "r2"):
        redis_client.hset("rooms", room, json.dumps({"protocol": "irc", "server": "h", "nick": room, "channel": "#c"}))
        redis_client.hset("rooms:holder", room, "fe-b")
        redis_client.sadd("rooms:held:fe-b", room)
    with dashboard(redis_url, web_token=TOKEN) as (base, _):
        page = http(base, "GET", "/")
        assert page.status == 200 and 'class="drain"' in page.text
        refused = http(base, "POST", "/frontends/drain", form={"frontend": "fe-a"})
        assert refused.status == 403 and "log in" in refused.text
        cookie = login(base)
        csrf = csrf_of(http(base, "GET", "/", cookie=cookie).text)
        assert http(base, "POST", "/frontends/drain", cookie=cookie, form={"frontend": "fe-a"}).status == 403
        assert http(base, "POST", "/frontends/drain", cookie=cookie, form={"frontend": "fe-a", "csrf": csrf},
                    headers={"Origin": "http://evil.example"}).status == 403
        assert not redis_client.exists("fleet:draining")

        done = http(base, "POST", "/frontends/drain", cookie=cookie, form={"frontend": "fe-a", "csrf": csrf})
        assert done.status == 302 and redis_client.smembers("fleet:draining") == {b"fe-a"}
        flashed = http(base, "GET", "/", cookie=cookie).text
        assert "frontend fe-a drains" in flashed and 'class="undrain"' in flashed
        # the last frontend that takes rooms is refused, with the reason
        http(base, "POST", "/frontends/drain", cookie=cookie, form={"frontend": "fe-b", "csrf": csrf})
        assert "not drained: no other live frontend takes rooms" in http(base, "GET", "/", cookie=cookie).text
        assert http(base, "POST", "/frontends/undrain", cookie=cookie, form={"frontend": "fe-a", "csrf": csrf}).status == 302
        assert not redis_client.exists("fleet:draining")
        assert http(base, "POST", "/frontends/nuke", cookie=cookie, form={"frontend": "fe-a", "csrf": csrf}).status == 404

        # rebalance: only the plan the operator was shown is started
        shown = http(base, "GET", "/rebalance", cookie=cookie).text
        digest = re.search(r'name="plan" value="([0-9a-f]+)"', shown).group(1)
        assert http(base, "POST", "/rebalance", form={"plan": digest}).status == 403
        assert http(base, "POST", "/rebalance", cookie=cookie, form={"plan": digest}).status == 403  # no CSRF
        http(base, "POST", "/rebalance", cookie=cookie, form={"plan": "0" * 32, "csrf": csrf})
        assert "the rooms changed since the plan was shown" in http(base, "GET", "/rebalance", cookie=cookie).text
        assert not redis_client.exists("rooms:moving")
        assert http(base, "POST", "/rebalance", cookie=cookie, form={"plan": digest, "csrf": csrf}).status == 302
        assert redis_client.hgetall("rooms:moving") == {b"r1": b"fe-a"}
        assert redis_client.lrange("control:inbox:fe-b", 0, -1) == [b"\0!release\0r1"]  # what move_begin.lua sends
        assert "started 1 moves: r1 fe-b → fe-a" in http(base, "GET", "/rebalance", cookie=cookie).text


def test_next_after_login_stays_on_the_dashboard(redis_url):
    with dashboard(redis_url, web_token=TOKEN) as (base, _):
        for target, expected in (("/rooms?state=joined", "/rooms?state=joined"), ("//evil.example/", "/"),
                                 ("/\\evil.example/", "/"), ("https://evil.example/", "/"), ("/\r\nx", "/")):
            answer = http(base, "POST", "/login", form={"token": TOKEN, "next": target})
            assert answer.status == 302 and answer.headers["location"] == expected, target
