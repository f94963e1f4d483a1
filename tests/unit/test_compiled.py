"""The optional compiled build (``frontend.compiled``): which modules run compiled, a stale build
told apart and refused, ``clean`` back to the sources. Files in a temporary package stand for the
built extension modules (building one takes Cython minutes: ``make compiled`` does that, and
BENCHMARKS.md measures it); ``make test`` itself runs the sources."""

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


def test_the_checkout_runs_its_sources():
    states = compiled.status()
    assert set(states) == set(compiled.HOT_MODULES)
    assert set(states.values()) == {"source"}  # make test never runs a compiled build
    assert compiled.describe(states) == "hot-path modules run from their Python sources"


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
