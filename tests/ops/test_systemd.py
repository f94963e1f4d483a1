"""The notify protocol against a socket the test listens on, and the unit file through systemd-analyze."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from frontend import systemd
from tests.support.frontend import FrontendProcess, irc_spec

pytestmark = pytest.mark.e2e
UNIT = Path(__file__).resolve().parents[2] / "configs" / "greenroom.service"


def test_ready_watchdog_and_stopping(redis_url, redis_client, ngircd, notify_socket, tmp_path):
    redis_client.hset("rooms", "sd1", json.dumps(irc_spec(ngircd, "#systemd", nick="sdbot")))
    proc = FrontendProcess(redis_url, str(tmp_path / "fe.log"), frontend_id="fe-sd", metrics_addr="")
    proc.env.update(NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC="200000")
    proc.env.pop("WATCHDOG_PID", None)
    proc.start()
    try:
        notify_socket.wait_for("READY=1")
        log = proc.log()
        assert "restored 1 rooms from the registry" in log  # READY=1 comes after the registry is loaded
        assert redis_client.exists("frontends:fe-sd")
        before = len(notify_socket.messages)
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
        notify_socket.messages.clear()
        notify_socket.wait_for("WATCHDOG=1", timeout=2)  # and again: it keeps pinging
        assert before >= 1
        code, _ = proc.terminate()
        notify_socket.wait_for("STOPPING=1", timeout=2)
        assert code == 0
    finally:
        proc.kill()


def test_notify_is_a_no_op_without_a_socket_and_supports_abstract_names():
    assert systemd.notify("READY=1", env={}) is False
    name = f"greenroom-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(64) == b"READY=1"
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) == 0.0
    assert systemd.watchdog_interval({}) == 0.0


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here (Debian package: systemd)")
    text = UNIT.read_text()
    for needed in ("Type=notify", "WatchdogSec=", "DynamicUser=yes", "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert needed in text
    # verify checks that ExecStart exists: point it at this checkout's entry point
    greenroom = Path(sys.executable).with_name("greenroom")
    if not greenroom.exists():
        pytest.skip(f"{greenroom} is not installed (pip install -e .)")
    unit = tmp_path / "greenroom.service"
    unit.write_text(text.replace("/opt/greenroom/.venv/bin/greenroom", str(greenroom)))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    problems = [ln for ln in (result.stdout + result.stderr).splitlines()
                if "greenroom.service" in ln and ln.strip()]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
