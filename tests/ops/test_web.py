"""`greenroom web` in Debian's headless chromium (selenium) against a live frontend with rooms in several states."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from gevent.pywsgi import WSGIServer

from tests.ops.helpers import free_port, http_get, wait_until
from tests.support.frontend import Events, irc_spec, push, running_frontend

pytestmark = pytest.mark.e2e
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: the README's screenshot is refreshed only on request (GREENROOM_SCREENSHOT=1), so a test run never
#: changes a tracked file; otherwise the screenshot goes to the test's temp dir
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
TOKEN = "web-test-token-123"


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="greenroom-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={profile}",
                # a DNS-rebinding attacker's name for our loopback address
                "--host-resolver-rules=MAP rebind.test 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        _kill_leftovers(profile)
        shutil.rmtree(profile, ignore_errors=True)


def _kill_leftovers(marker: str) -> None:
    """Chromium processes started with our profile that outlived quit(): end them by pid."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def web(redis_url, tmp_path):
    port = free_port()
    env = {**os.environ, "GREENROOM_REDIS_URL": redis_url, "GREENROOM_WEB_ADDR": f"127.0.0.1:{port}",
           "GREENROOM_WEB_TOKEN": TOKEN}
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "frontend.cli", "web"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_get(base + "/")[0] == 200, what="the dashboard")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def text(driver, css: str, timeout: float = 10.0) -> str:
    """The text of the first element matching ``css``, waiting for the page to have one."""
    found = wait_until(lambda: driver.find_elements("css selector", css), timeout=timeout, what=css)
    return found[0].text.strip()


def test_dashboard_in_a_real_browser(redis_url, redis_client, ngircd, irc_client, web, browser, tmp_path):
    events = Events(redis_client)
    watcher = irc_client("webwatch")
    watcher.join("#weblate")
    closed = free_port()
    with running_frontend(redis_url, frontend_id="fe-web", heartbeat_interval=0.5) as fe:
        push(redis_client,
             {"type": "join", "room": "web-ok", "spec": irc_spec(ngircd, "#webok", nick="webok", tenant="acme")},
             {"type": "join", "room": "web-down", "spec": {**irc_spec(ngircd, "#webdown", nick="webdown",
                                                                      tenant="globex"),
                                                           "port": closed, "password": "hunter2-secret"}},
             {"type": "say", "room": "web-late", "text": "requeued from the dashboard"},
             b'{"type":"say","room":"web-ok"}')
        events.wait(type="joined", room="web-ok")
        wait_until(lambda: fe.rooms["web-down"].state == "backoff", what="web-down in backoff")
        wait_until(lambda: redis_client.llen("control:dead") == 2, what="two dead letters")
        wait_until(lambda: b'"backoff":1' in (redis_client.hget("frontends:fe-web", "rooms_by_state") or b""),
                   what="the heartbeat")

        # overview: the right figures
        browser.get(web + "/")
        assert text(browser, "#frontends-count") == "1"
        assert text(browser, "#rooms-total") == "2"
        assert text(browser, "#state-joined") == "1" and text(browser, "#state-backoff") == "1"
        assert text(browser, "#list-control-dead") == "2"
        assert "fe-web" in text(browser, "#frontends")
        assert "web-down" in text(browser, "#attention") and "web-ok" not in text(browser, "#attention")

        # rooms: filters, and secrets masked
        browser.get(web + "/rooms?state=backoff")
        rows = browser.find_elements("css selector", "#rooms tr[id^=room-]")
        assert [r.get_attribute("id") for r in rows] == ["room-web-down"]
        browser.get(web + "/rooms?tenant=acme")
        assert [r.get_attribute("id") for r in browser.find_elements("css selector", "#rooms tr[id^=room-]")] \
            == ["room-web-ok"]
        browser.get(web + "/rooms")
        assert "hunter2-secret" not in browser.page_source and '"password": "***"' in browser.page_source

        # an action without the token is refused
        browser.find_element("css selector", "#join-form input[name=room]").send_keys("web-late")
        browser.find_element("css selector", "#join-form input[name=nick]").send_keys("weblate")
        browser.find_element("css selector", "#join-submit").click()
        assert text(browser, "#error-code") == "403 refused"
        assert "log in" in text(browser, "#error-message")
        assert redis_client.llen("control") == 0

        # log in with the token
        browser.get(web + "/login?next=/rooms")
        browser.find_element("id", "token").send_keys("wrong")
        browser.find_element("id", "login-submit").click()
        assert "wrong token" in text(browser, "#flash")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "login-submit").click()
        wait_until(lambda: browser.current_url.endswith("/rooms"), what="back on /rooms, logged in")
        assert text(browser, "#logout") == "Log out"

        # a cross-site POST (a form on another origin, submitted with our cookie) is refused
        evil_port = free_port()
        page = (f'<form id="f" method="post" action="{web}/part"><input name="room" value="web-ok">'
                f'<input name="csrf" value="guess"></form><script>document.getElementById("f").submit()</script>')
        evil = WSGIServer(("127.0.0.1", evil_port),
                          lambda env, start: (start("200 OK", [("Content-Type", "text/html")]), [page.encode()])[1],
                          log=None)
        evil.start()
        try:
            browser.get(f"http://127.0.0.1:{evil_port}/")
            wait_until(lambda: "403" in browser.title or "refused" in browser.page_source, what="the refusal")
            assert "cross-site request refused" in browser.page_source
        finally:
            evil.stop()
        assert redis_client.hexists("rooms", "web-ok")

        # a join from the form ends with the room joined
        browser.get(web + "/rooms")
        form = browser.find_element("id", "join-form")
        for name, value in {"room": "web-late", "nick": "weblate", "server": ngircd.host,
                            "port": str(ngircd.port), "channel": "#weblate", "tenant": "acme"}.items():
            form.find_element("name", name).send_keys(value)
        form.find_element("name", "no_flood").click()
        browser.find_element("id", "join-submit").click()
        assert "join queued for room web-late" in text(browser, "#flash")
        events.wait(type="joined", room="web-late")
        watcher.expect(r":weblate!\S+ JOIN :?#weblate")
        browser.get(web + "/rooms?q=web-late")
        assert browser.find_element("id", "room-web-late").get_attribute("data-state") == "joined"

        # the requeued dead letter is applied
        browser.get(web + "/dead")
        assert text(browser, "#dead-total") == "2"
        reasons = [e.text for e in browser.find_elements("css selector", "#dead td.reason")]
        assert sorted(reasons) == ["bad_command", "unknown_room"]
        late = [r for r in browser.find_elements("css selector", "#dead tr[id^=dead-]")
                if "unknown_room" in r.text][0]
        late.find_element("css selector", "button.requeue").click()
        assert "requeued 1 dead letters" in text(browser, "#flash")
        watcher.expect(r":weblate!\S+ PRIVMSG #weblate :requeued from the dashboard")
        assert text(browser, "#dead-total") == "1"

        # the overview follows live, then the screenshot for the README
        browser.get(web + "/")
        wait_until(lambda: text(browser, "#state-joined") == "2", timeout=10, what="live refresh")
        assert text(browser, "#list-control-dead") == "1"
        wait_until(lambda: b'"joined":2' in redis_client.hget("frontends:fe-web", "rooms_by_state"), what="beat")
        wait_until(lambda: "joined 2" in text(browser, "#frontends"), timeout=10, what="live frontends table")
        shot = README_SCREENSHOT if os.environ.get("GREENROOM_SCREENSHOT") else tmp_path / "dashboard.png"
        shot.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

        # part from the rooms page
        browser.get(web + "/rooms?q=web-down")
        browser.find_element("css selector", "#room-web-down button.part").click()
        assert "part queued for room web-down" in text(browser, "#flash")
        wait_until(lambda: not redis_client.hexists("rooms", "web-down"), what="web-down parted")


def test_the_api_refuses_actions_without_the_token(redis_url, redis_client, web):
    import urllib.request

    def post(path: str, data: bytes, headers: dict) -> int:
        req = urllib.request.Request(web + path, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert post("/part", b"room=x", form) == 403
    assert post("/part", b"room=x", {**form, "Authorization": "Bearer nope"}) == 403
    assert post("/part", b"room=x", {**form, "Authorization": f"Bearer {TOKEN}",
                                     "Origin": "http://evil.example"}) == 403
    assert redis_client.llen("control") == 0
    status = post("/part", b"room=x", {**form, "Authorization": f"Bearer {TOKEN}"})
    assert status in (200, 302) and json.loads(redis_client.lpop("control")) == {
        "type": "part", "room": "x", "reason": "parted from the dashboard"}


def test_dns_rebinding_and_a_cookie_kept_after_logout_in_a_real_browser(redis_client, web, browser):
    port = web.rsplit(":", 1)[1]
    redis_client.hset("rooms", "rebind-room", json.dumps({"protocol": "irc", "server": "h", "nick": "n",
                                                          "channel": "#c"}))
    # a page of the attacker's name, resolved to 127.0.0.1 (DNS rebinding), gets no dashboard to read
    browser.get(f"http://rebind.test:{port}/rooms")
    assert "not served under that host name" in browser.page_source
    assert "rebind-room" not in browser.page_source
    browser.get(f"http://rebind.test:{port}/api/overview")
    assert "frontends" not in browser.page_source

    # log in, keep a copy of the session cookie, log out: the copy opens nothing any more
    browser.get(web + "/login?next=/rooms")
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("id", "login-submit").click()
    wait_until(lambda: browser.current_url.endswith("/rooms"), what="logged in")
    assert "rebind-room" in browser.page_source
    (kept,) = [c for c in browser.get_cookies() if c["name"] == "greenroom_session"]
    assert kept["httpOnly"] and kept["sameSite"] == "Strict" and TOKEN not in kept["value"]
    browser.find_element("id", "logout").click()
    wait_until(lambda: browser.find_elements("id", "login-link"), what="logged out")
    browser.add_cookie({k: kept[k] for k in ("name", "value", "path", "httpOnly", "sameSite")})
    browser.get(web + "/rooms")
    assert not browser.find_elements("id", "logout") and browser.find_elements("id", "login-link")
