"""PROTOCOL.md is the contract: the code and the page say the same.

Pins the page to the code: the command and event types, the spec fields of each protocol, the error
codes the daemon emits, the Redis keys it names (``frontend/keys.py``), and the event classes of
``backend_sdk``. A change to one without the other fails here.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

from backend_sdk.events import EVENT_TYPES as SDK_EVENT_TYPES
from frontend import protocol
from frontend.keys import EventKeys, Keys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGE = (ROOT / "PROTOCOL.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = PAGE.index(title)
    nxt = re.search(r"^#{2,3} ", PAGE[start + len(title):], re.M)
    return PAGE[start:start + len(title) + (nxt.start() if nxt else len(PAGE))]


def _first_column(text: str) -> set[str]:
    """The backticked names in the first column of the section's tables."""
    return {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", text, re.M)}


def _key_rows() -> list[re.Pattern]:
    """The key table's names as patterns: a ``<placeholder>`` stands for one or more characters."""
    rows = _first_column(_section("## Encoding"))
    return [re.compile("^" + ".+".join(re.escape(part) for part in re.split(r"<[^>]*>", r)) + "$")
            for r in rows]


def test_command_types():
    assert _first_column(_section("## Commands (`control`)")) >= protocol.COMMAND_TYPES
    table = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \| ", _section("## Commands (`control`)"), re.M)}
    assert table & {"join", "part", "say", "action", "topic", "ping"} == set(protocol.COMMAND_TYPES)


def test_event_types_of_the_daemon_and_the_sdk():
    table = _first_column(_section("## Events (`messages`)"))
    assert table == set(protocol.EVENT_TYPES)
    assert set(SDK_EVENT_TYPES) == set(protocol.EVENT_TYPES)


@pytest.mark.parametrize("title, fields", [("### Room spec: IRC", protocol._IRC_KEYS),
                                            ("### Room spec: XMPP", protocol._XMPP_KEYS)])
def test_spec_fields(title, fields):
    documented = _first_column(_section(title))
    common = {"tenant", "events"}  # documented once, for both, under the XMPP table
    assert documented | common == set(fields), (sorted(set(fields) - documented - common),
                                                sorted(documented - set(fields)))


def _codes_in_code() -> set[str]:
    codes: set[str] = set()
    for path in (ROOT / "frontend").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        codes.update(re.findall(r'ProtocolError\(\s*"(\w+)"', text))
        codes.update(re.findall(r'code="(\w+)"', text))
        codes.update(re.findall(r'reject\([^)]*?"(\w+)",', text))
    return codes - {"x"}


def test_every_error_code_the_daemon_emits_is_documented():
    events = _section("## Events (`messages`)")
    documented = set(re.findall(r"`(\w+)`\s+\(", events))
    missing = sorted(_codes_in_code() - documented)
    assert not missing, f"error codes the code emits that PROTOCOL.md does not name: {missing}"


#: arguments as the callers pass them, where one placeholder stands for more than one part
SAMPLE_ARGS = {"web_login": "addr:127.0.0.1:1790000000"}


def _key_names() -> list[tuple[str, str]]:
    """Every key ``Keys``/``EventKeys`` can name, with placeholder arguments."""
    keys, events = Keys(""), EventKeys("")
    out = []
    for obj in (keys, events):
        for name, member in inspect.getmembers(type(obj)):
            if name.startswith("_") or name in ("key", "events", "prefix", "name"):
                continue
            value = getattr(obj, name)
            if callable(value):
                params = [p for p in inspect.signature(value).parameters]
                if len(params) != 1:
                    continue
                value = value(SAMPLE_ARGS.get(name, "X1"))
            if isinstance(value, str):
                out.append((f"{type(obj).__name__}.{name}", value))
    return out


def test_every_key_the_code_names_is_in_the_table():
    rows = _key_rows()
    missing = [(where, key) for where, key in _key_names()
               if not any(row.match(key) for row in rows)]
    assert not missing, f"keys named in frontend/keys.py and missing from PROTOCOL.md: {missing}"
