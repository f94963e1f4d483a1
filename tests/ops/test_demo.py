"""Issue 16, item 5: the ``make demo`` banner names a ``greenroom`` command that a new shell finds.

The banner used to say ``greenroom rooms --redis-url ...``, which only works where the venv's bin is
on PATH; a new shell has not. The demo runs here as ``make demo`` runs it (``python -m
tests.support.demo`` in the repository), and the command it prints is run in a shell with a bare PATH.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.demo import greenroom_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_the_command_is_the_venvs_script_relative_to_the_repository(tmp_path):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.touch()
    assert greenroom_command(str(python), cwd=str(tmp_path)) == f"{sys.executable} -m frontend.cli".replace(
        sys.executable, str(python))  # no script installed: the module
    (bin_dir / "greenroom").touch()
    assert greenroom_command(str(python), cwd=str(tmp_path)) == ".venv/bin/greenroom"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert greenroom_command(str(python), cwd=str(elsewhere)) == str(bin_dir / "greenroom")


def test_the_banner_command_runs_in_a_new_shell():
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.demo"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    banner: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        found = re.search(r"^\s*(\S+ rooms --redis-url \S+)\s*$", text, re.M)
        assert found, text
        command = found.group(1)
        assert not command.startswith("greenroom "), command
        clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
        for _ in range(40):  # the demo's rooms are joined a moment after the banner
            ran = subprocess.run(["sh", "-c", command], cwd=REPO, env=clean, capture_output=True, text=True,
                                 timeout=60)
            assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
            if re.search(r"^demo\s", ran.stdout, re.M):
                break
            time.sleep(0.5)
        assert re.search(r"^demo\s+irc\s", ran.stdout, re.M), ran.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
