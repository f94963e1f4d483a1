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

from tests.ops.helpers import http_get
from tests.support.events import EventLog
from tests.support.frontend import irc_spec, push, running_frontend
from tests.support.ports import free_port
from tests.support.waiting import wait_until

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
    """The text of the first element matching ``css``, waiting for the page to have one. Found and read
    in one script: an element found first and read after a re-render or a navigation is stale."""
    found = wait_until(lambda: driver.execute_script(
        "var e = document.querySelector(arguments[0]); return e ? [e.innerText] : null;", css),
        timeout=timeout, what=css)
    return found[0].strip()


def next_page(driver, act, timeout: float = 10.0) -> None:
    """Run ``act`` (a click that submits a form) and wait for the page it leads to: until then the old
    page, with the old flash message, is still there to be read."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    old = driver.find_element("tag name", "html")
    act()

    def gone() -> bool:
        try:
            old.get_attribute("id")
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # the same fact, when chromedriver looks the node up mid-navigation
            if "does not belong to the document" in str(exc):
                return True
            raise

    wait_until(gone, timeout=timeout, what="the next page")


def test_dashboard_in_a_real_browser(redis_url, redis_client, ngircd, irc_client, web, browser, tmp_path):
    events = EventLog(redis_client)
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


FLEET = {"heartbeat_interval": 0.5, "lease_time": 3.0, "lease_margin": 1.0}
#: the README's picture of several frontends (refreshed with GREENROOM_SCREENSHOT=1, like the other)
README_FLEET_SCREENSHOT = README_SCREENSHOT.with_name("dashboard-fleet.png")


def _held(client, fid: str) -> set[str]:
    return {r.decode() for r in client.smembers(f"rooms:held:{fid}")}


def _all_joined(client, rooms) -> bool:
    holders = {k.decode(): v.decode() for k, v in client.hgetall("rooms:holder").items()}
    states = [json.loads(client.hget("rooms:state", r) or b"{}") for r in rooms]
    return all(s.get("state") == "joined" and s.get("frontend") == holders.get(r) for r, s in zip(rooms, states))


def test_several_frontends_in_a_real_browser(redis_url, redis_client, ngircd, web, browser, tmp_path):
    from tests.support.frontend import FrontendProcess

    procs = [FrontendProcess(redis_url, str(tmp_path / f"{fid}.log"), frontend_id=fid, **FLEET)
             for fid in ("fe-wa", "fe-wb")]
    rooms = [f"wf{i}" for i in range(4)]
    try:
        for proc in procs:
            proc.start()
        wait_until(lambda: redis_client.zcard("fleet:leases") == 2, timeout=20, what="two leases")
        push(redis_client, *[{"type": "join", "room": r, "spec": irc_spec(ngircd, f"#{r}", nick=f"{r}bot")}
                             for r in rooms])
        wait_until(lambda: _all_joined(redis_client, rooms), timeout=20, what="four rooms joined")
        push(redis_client, *[{"type": "say", "room": r, "text": f"line {n}"} for n in range(10) for r in rooms])
        # nobody consumes `messages` here: its length grows with the events (the lists chart shows it)

        # the overview re-renders its figures and charts every 2 s: read them in one script each time,
        # and click what is there now (an element found before a refresh is stale after it)
        def shown(css: str) -> str | None:
            return browser.execute_script("var e = document.querySelector(arguments[0]);"
                                          "return e ? e.textContent.trim() : null;", css)

        def click(css: str) -> None:
            from selenium.common.exceptions import StaleElementReferenceException

            for _ in range(20):
                try:
                    return browser.find_element("css selector", css).click()
                except StaleElementReferenceException:
                    continue
            raise AssertionError(f"{css} kept going stale")

        def drawn(fid: str, name: str, series: str) -> bool:
            got = browser.execute_script(
                "var svg = document.querySelector(arguments[0]); if (!svg) return null;"
                "var path = svg.querySelector('path[data-series=\"' + arguments[1] + '\"]');"
                "return [Number(svg.getAttribute('data-max')), path ? Number(path.getAttribute('data-points')) : 0];",
                f'.fleet-chart[data-frontend="{fid}"] .chart[data-chart="{name}"] svg', series)
            return bool(got) and got[0] > 0 and got[1] >= 2

        # overview: each frontend's lease, rooms held, and its live charts drawn from real samples
        browser.get(web + "/")
        assert text(browser, "#frontends-count") == "2"
        assert shown("#rooms-not-held") == "0"
        for fid in ("fe-wa", "fe-wb"):
            row = f'#frontends tr[data-frontend="{fid}"]'
            assert "alive" in shown(row)
            assert shown(row + " td.held") == str(len(_held(redis_client, fid)))
            assert 0 < float(shown(row + " td.lease").rstrip("s")) <= 3

        for fid in ("fe-wa", "fe-wb"):
            if _held(redis_client, fid):
                wait_until(lambda: drawn(fid, "commands", "received"), timeout=15, what=f"{fid}'s commands/s")
                wait_until(lambda: drawn(fid, "events", "pushed"), timeout=15, what=f"{fid}'s events/s")
            wait_until(lambda: drawn(fid, "lists", "messages"), timeout=15, what=f"{fid}'s list lengths")
        legend = shown('.fleet-chart[data-frontend="fe-wa"] .chart[data-chart="lists"] .legend span[data-series="messages"]')
        assert int(legend.split()[-1]) > 0

        # rooms: each room's holder
        browser.get(web + "/rooms")
        for room in rooms:
            holder = redis_client.hget("rooms:holder", room).decode()
            cell = browser.find_element("id", f"room-{room}").find_element("css selector", "td.holder")
            assert cell.text == holder
        browser.get(web + "/rooms?frontend=fe-wa")
        assert {r.get_attribute("id") for r in browser.find_elements("css selector", "#rooms tr[id^=room-]")} == \
            {f"room-{r}" for r in _held(redis_client, "fe-wa")}

        # drain from the overview (logged in): fe-wa's rooms go to fe-wb and are joined there
        browser.get(web + "/login?next=/")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "login-submit").click()
        wait_until(lambda: browser.find_elements("id", "logout"), what="logged in")
        next_page(browser, lambda: click('#frontends tr[data-frontend="fe-wa"] button.drain'))
        assert "frontend fe-wa drains" in text(browser, "#flash")
        wait_until(lambda: not _held(redis_client, "fe-wa"), timeout=15, what="fe-wa drained")
        wait_until(lambda: _all_joined(redis_client, rooms), timeout=20, what="the rooms joined on fe-wb")
        assert _held(redis_client, "fe-wb") == set(rooms)
        wait_until(lambda: "draining" in (shown('#frontends tr[data-frontend="fe-wa"]') or ""), timeout=10,
                   what="draining shown live")
        next_page(browser, lambda: click('#frontends tr[data-frontend="fe-wa"] button.undrain'))
        assert "frontend fe-wa takes new rooms again" in text(browser, "#flash")
        assert not redis_client.sismember("fleet:draining", "fe-wa")

        # rebalance: the plan, then the moves (behind the same login and CSRF guards)
        browser.get(web + "/rebalance")
        assert int(text(browser, "#plan-count")) == 2
        assert {e.text for e in browser.find_elements("css selector", "#plan-moves tr.move td:nth-child(3)")} == {"fe-wa"}
        next_page(browser, lambda: browser.find_element("id", "rebalance-submit").click())
        assert "started 2 moves" in text(browser, "#flash")
        wait_until(lambda: len(_held(redis_client, "fe-wa")) == 2 and not redis_client.exists("rooms:moving"),
                   timeout=20, what="two rooms moved to fe-wa")
        wait_until(lambda: _all_joined(redis_client, rooms), timeout=20, what="the moved rooms joined")
        browser.get(web + "/rebalance")
        assert "Nothing to move" in text(browser, "#plan-none")

        # a hostile frontend id (anyone with write access to Redis) is text in the charts, never markup
        evil = '<img src=x onerror="window.__pwned=1">'
        sec, usec = redis_client.time()
        now = sec * 1000 + usec // 1000
        redis_client.sadd("fleet:draining", evil)  # so that placement never gives it a room
        redis_client.zadd("fleet:leases", {evil: now + 60000})
        redis_client.lpush(f"fleet:history:{evil}", *[json.dumps({"ts": now - 1000 + 500 * i, "received": i,
                                                                  "applied": i, "pushed": i, "control": 0,
                                                                  "messages": 0, "ledger": 0, "inbox": 0})
                                                      for i in range(3)])
        browser.get(web + "/")
        wait_until(lambda: browser.execute_script(
            "var id = arguments[0]; return Array.from(document.querySelectorAll('.fleet-chart h3'))"
            ".some(function (h) { return h.textContent === id; });", evil), timeout=10, what="the hostile id as text")
        wait_until(lambda: drawn("fe-wa", "lists", "messages"), timeout=10, what="the charts")
        assert not browser.find_elements("css selector", "#charts img, #frontends img")
        assert browser.execute_script("return window.__pwned") is None
        redis_client.zrem("fleet:leases", evil)
        redis_client.delete(f"fleet:history:{evil}")
        redis_client.srem("fleet:draining", evil)
        browser.get(web + "/")
        wait_until(lambda: drawn("fe-wb", "lists", "messages") and drawn("fe-wa", "lists", "messages"), timeout=10,
                   what="the charts for the screenshot")
        shot = README_FLEET_SCREENSHOT if os.environ.get("GREENROOM_SCREENSHOT") else tmp_path / "dashboard-fleet.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        for proc in procs:
            try:
                proc.terminate(10)
            except Exception:
                proc.kill()


#: the README's picture of the Tenants page (refreshed with GREENROOM_SCREENSHOT=1, like the others)
README_TENANTS_SCREENSHOT = README_SCREENSHOT.with_name("dashboard-tenants.png")


def test_tenants_in_a_real_browser(redis_url, redis_client, ngircd, web, browser, tmp_path):
    from frontend import tenantops
    from frontend.keys import Keys
    from frontend.tenants import Tenant
    from tests.ops.helpers import http

    keys = Keys("")
    redis_client.execute_command("ACL", "DELUSER", "greenroom-tenant-globex")  # ACL users outlive FLUSHALL
    tenantops.add(redis_client, keys, Tenant("globex", max_rooms=10))
    tenantops.issue_credentials(redis_client, keys, "globex", redis_url)
    secret_url, _ = tenantops.issue_credentials(redis_client, keys, "globex", redis_url, rotate=True)
    password = secret_url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    events = EventLog(redis_client)
    evil = '<img src=x onerror="window.__pwned=1">'

    def rows(css: str = "#rooms tr[id^=room-]") -> list[str]:
        return [r.get_attribute("id") for r in browser.find_elements("css selector", css)]

    def submit(css: str) -> str:
        """Click ``css`` and return the flash message of the page it leads to (not the old page's)."""
        next_page(browser, lambda: browser.find_element("css selector", css).click())
        return text(browser, "#flash")

    def cell(tenant: str, css: str) -> str:
        return browser.find_element("css selector", f'#tenants tr[data-tenant="{tenant}"] {css}').text.strip()

    with running_frontend(redis_url, frontend_id="fe-tweb", heartbeat_interval=0.5, lease_time=3.0,
                          lease_margin=1.0) as fe:
        # anonymous: the page reads, says where credentials are made, and shows no password
        browser.get(web + "/tenants")
        assert "Credentials are made on the command line only" in text(browser, "#credentials-note")
        assert cell("globex", ".scoped") == "yes" and cell("globex", ".quota-text") == "0/10 0%"
        assert password not in browser.page_source and "greenroom-tenant-globex:" not in browser.page_source
        browser.find_element("css selector", "#tenant-add input[name=name]").send_keys("acme")
        browser.find_element("id", "tenant-add-submit").click()
        assert text(browser, "#error-code") == "403 refused" and not redis_client.hexists("tenants", "acme")
        # the same guards as every action: no session, no CSRF token, another origin
        assert http(web, "POST", "/tenants/add", form={"name": "acme"}).status == 403
        assert http(web, "POST", "/tenants/remove", form={"name": "globex", "force": "on"},
                    headers={"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}).status == 403
        assert not redis_client.hexists("tenants", "acme") and redis_client.hexists("tenants", "globex")

        browser.get(web + "/login?next=/tenants")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "login-submit").click()
        wait_until(lambda: browser.current_url.endswith("/tenants"), what="logged in, on /tenants")

        # add: a hostile name is refused, as text; acme with max_rooms 1
        form = browser.find_element("id", "tenant-add")
        form.find_element("name", "name").send_keys(evil)
        assert "tenant not added: a tenant name is" in submit("#tenant-add-submit")
        assert not browser.find_elements("css selector", "#flash img")
        form = browser.find_element("id", "tenant-add")
        form.find_element("name", "name").send_keys("acme")
        form.find_element("name", "max_rooms").send_keys("1")
        form.find_element("name", "lines_per_minute").send_keys("600")
        assert "tenant acme added: max_rooms 1, lines_per_minute 600, max_queued no limit" in submit(
            "#tenant-add-submit")
        assert json.loads(redis_client.hget("tenants", "acme")) == {
            "max_rooms": 1, "lines_per_minute": 600, "max_queued": None, "scoped": False}

        # a real frontend takes the registry: one room of acme joins, the second is past its quota
        wait_until(lambda: fe.tenants.get("acme") is not None, timeout=10, what="the frontend's registry")
        push(redis_client, *[{"type": "join", "room": f"web-t{i}", "spec": irc_spec(ngircd, f"#webt{i}",
                                                                                  nick=f"webt{i}", tenant="acme")}
                             for i in (1, 2)],
             {"type": "join", "room": "web-evil", "spec": irc_spec(ngircd, "#webevil", nick="webevil", tenant=evil)})
        events.wait(type="joined", room="web-t1")
        events.wait(type="joined", room="web-evil")
        assert events.wait(type="error", room="web-t2")["code"] == "quota_exceeded"
        # a second live frontend whose heartbeat carries per-tenant counters (hostile names too)
        sec, usec = redis_client.time()
        redis_client.zadd("fleet:leases", {"fe-counted": sec * 1000 + usec // 1000 + 60_000})
        redis_client.sadd("fleet:draining", "fe-counted")  # so that placement gives it no room
        redis_client.hset("frontends:fe-counted", mapping={"host": "h", "started": "1", "tenants": json.dumps(
            {"acme": {"rooms": 0, "lines_sent": 42, "drops": 3}, evil: {"lines_sent": 5, "drops": 1}})})
        browser.get(web + "/tenants")
        assert cell("acme", ".quota-text") == "1/1 100%" and cell("acme", ".rooms") == "1"
        assert cell("acme", ".states") == "joined 1"
        assert cell("acme", ".sent") == "42" and cell("acme", ".drops") == "3"
        assert cell("globex", ".sent") == "0" and "summed over" not in browser.page_source  # both report: no note
        unregistered = browser.find_element("id", "tenant-unregistered")
        assert unregistered.find_element("css selector", ".rooms").text == "1"
        assert unregistered.find_element("css selector", ".sent").text == "5"
        shot = README_TENANTS_SCREENSHOT if os.environ.get("GREENROOM_SCREENSHOT") else tmp_path / "tenants.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

        # the rooms of a tenant, and those of no registered tenant (hostile labels as text)
        browser.find_element("css selector", '#tenants tr[data-tenant="acme"] a.rooms-link').click()
        wait_until(lambda: "tenant=acme" in browser.current_url, what="the rooms page")
        assert rows() == ["room-web-t1"]
        browser.get(web + "/tenants")
        browser.find_element("css selector", "#tenant-unregistered a.rooms-link").click()
        wait_until(lambda: "unregistered=1" in browser.current_url, what="the unregistered rooms")
        assert rows() == ["room-web-evil"] and evil in browser.find_element("id", "room-web-evil").text
        assert not browser.find_elements("css selector", "#rooms img")
        assert browser.execute_script("return window.__pwned") is None

        # set: a higher max_rooms
        browser.get(web + "/tenants")
        browser.find_element("css selector", '#tenants tr[data-tenant="acme"] details summary').click()
        field = browser.find_element("css selector", '#tenants tr[data-tenant="acme"] form.tenant-set '
                                                     'input[name=max_rooms]')
        field.clear()
        field.send_keys("2")
        assert "tenant acme: max_rooms 1 → 2" in submit('#tenants tr[data-tenant="acme"] button.set')
        assert json.loads(redis_client.hget("tenants", "acme"))["max_rooms"] == 2
        assert cell("acme", ".quota-text") == "1/2 50%"

        # remove: refused while it has rooms, then forced (its room stays joined); globex's ACL user goes
        browser.find_element("css selector", '#tenants tr[data-tenant="acme"] details summary').click()
        assert "not removed: tenant acme has 1 room (web-t1)" in submit(
            '#tenants tr[data-tenant="acme"] button.remove')
        assert redis_client.hexists("tenants", "acme")
        browser.find_element("css selector", '#tenants tr[data-tenant="acme"] details summary').click()
        browser.find_element("css selector", '#tenants tr[data-tenant="acme"] form.tenant-remove '
                                             'input[name=force]').click()
        assert "tenant acme removed; its rooms stay joined (1), as rooms of an unregistered tenant" in submit(
            '#tenants tr[data-tenant="acme"] button.remove')
        assert not redis_client.hexists("tenants", "acme") and redis_client.hexists("rooms", "web-t1")
        browser.find_element("css selector", '#tenants tr[data-tenant="globex"] details summary').click()
        assert "its ACL user is deleted" in submit('#tenants tr[data-tenant="globex"] button.remove')
        assert redis_client.execute_command("ACL", "GETUSER", "greenroom-tenant-globex") is None
        assert text(browser, "#tenants-count") == "0"
        assert password not in browser.page_source
    redis_client.delete("frontends:fe-counted")
