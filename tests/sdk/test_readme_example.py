"""README's "Writing a backend" examples run as written: the ops bot, and its tests with TestClient
(no Redis: the bot's URL points nowhere unless GREENROOM_REDIS_URL is set, and it is not here)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Writing a backend", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_bot_and_its_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    bot_source, tests_source = blocks()[:2]
    monkeypatch.setenv("GREENROOM_REDIS_URL", "redis://127.0.0.1:1/0")
    module = types.ModuleType("ops_bot")
    monkeypatch.setitem(sys.modules, "ops_bot", module)
    exec(compile(bot_source, "README:ops_bot", "exec"), module.__dict__)
    tests: dict[str, Any] = {}
    exec(compile(tests_source, "README:tests", "exec"), tests)
    names = [name for name in tests if name.startswith("test_")]
    assert len(names) == 2
    for name in names:
        with monkeypatch.context() as patch:
            tests[name](patch)
