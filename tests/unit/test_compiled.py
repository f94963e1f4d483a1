"""The optional compiled build (``frontend.compiled``): which modules run compiled, a stale build
told apart and refused, ``clean`` back to the sources. Files in a temporary package stand for the
built extension modules (building one takes Cython minutes: ``make compiled`` does that, and
BENCHMARKS.md measures it). ``make test`` runs what the checkout has: the sources on a clean clone
(CI), the compiled build after ``make compiled``."""

from __future__ import annotations

import importlib.machinery
import os

import pytest

from frontend import compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path):
    (tmp_path / "chat").mkdir()
    for module in compiled.HOT_MODULES:
        (tmp_path / module).write_text("# source\n")
    return tmp_path


def _build(package, module: str, *, age: float = 0.0):
    """An extension module beside ``module``'s source, ``age`` s older than it (negative: newer)."""
    path = package / (module[:-3] + SUFFIX)
    path.write_bytes(b"\x7fELF")
    source_time = os.path.getmtime(package / module)
    os.utime(path, (source_time - age, source_time - age))
    return path


def test_the_checkout_is_told_as_it_is():
    states = compiled.status()
    assert set(states) == set(compiled.HOT_MODULES)
    assert "stale" not in states.values()  # a stale build is never what the suite runs
    line = compiled.describe(states)
    if set(states.values()) == {"source"}:  # a clean clone, as in CI
        assert line == "hot-path modules run from their Python sources"
    else:  # after make compiled: the suite runs the compiled build
        assert line.startswith("hot-path modules compiled: ")


def test_compiled_and_stale_modules_are_told_apart(package):
    _build(package, "protocol.py", age=-10)
    _build(package, "chat/irc.py", age=-10)
    _build(package, "room.py", age=10)  # its source changed after the build
    states = compiled.status(str(package))
    assert states["protocol.py"] == states["chat/irc.py"] == "compiled"
    assert states["room.py"] == "stale"
    assert states["inflight.py"] == "source"
    assert compiled.stale_modules(str(package)) == ["room.py"]
    line = compiled.describe(states)
    assert f"compiled: 2 of {len(compiled.HOT_MODULES)}" in line and "stale" in line and "room.py" in line


def test_clean_goes_back_to_the_sources(package):
    built = [_build(package, m, age=-10) for m in ("protocol.py", "chat/sendqueue.py")]
    (package / "room.c").write_text("/* generated */")
    removed = compiled.clean(str(package))
    assert sorted(removed) == sorted([str(p) for p in built] + [str(package / "room.c")])
    assert set(compiled.status(str(package)).values()) == {"source"}
    assert all((package / m).exists() for m in compiled.HOT_MODULES)  # the sources stay


def test_every_hot_module_exists():
    for module in compiled.HOT_MODULES:
        assert os.path.isfile(os.path.join(compiled.PACKAGE_DIR, module)), module


def test_greenroom_run_refuses_a_stale_build(tmp_path):
    """A copy of the package whose compiled ``chat/tenant_share`` is older than its source: the
    daemon must not start on it (exit 2, and it says why and what to do)."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(compiled.PACKAGE_DIR, tmp_path / "frontend",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    stale = _build(tmp_path / "frontend", "chat/tenant_share.py", age=60)
    proc = subprocess.run([sys.executable, "-m", "frontend.cli", "run", "--redis-url", "redis://127.0.0.1:1/0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "stale" in proc.stderr and "chat/tenant_share.py" in proc.stderr and "make compiled" in proc.stderr
    assert stale.exists()  # left for the operator to rebuild or clean
