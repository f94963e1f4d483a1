"""Properties of the command decoder and the dispatcher's routing (hypothesis).

No input raises anything but ProtocolError out of the decoder, nothing raises out of the dispatcher,
every item is either routed or dead-lettered, and an accepted text can never leave its line.
"""

import ujson
from hypothesis import given, settings, strategies as st

from frontend.chat.irc_format import LINE_LIMIT, message_lines
from frontend.config import load_settings
from frontend.counters import Counters
from frontend.errors import ProtocolError
from frontend.incoming import IncomingDispatcher
from frontend.keys import Keys
from frontend.protocol import Command, parse_command
from frontend.room import Wakes
from frontend.text import assert_safe_line

FIELDS = ["type", "room", "text", "to", "cmd_id", "spec", "reason", "expires"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=40), st.sampled_from(["say", "join", "part", "ping", "action",
                                                            "topic", "r1", "#c", "a\r\nJOIN #x"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS + ["protocol", "nick"]), inner,
                                                 max_size=5)), max_leaves=12)
COMMANDS = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6)


def outcome(raw: bytes):
    try:
        return parse_command(raw)
    except ProtocolError as exc:
        assert exc.code == "bad_command" and exc.detail
        return None


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_any_bytes_decode_or_raise_protocol_error(raw):
    result = outcome(raw)
    assert result is None or isinstance(result, Command)


@given(COMMANDS)
@settings(max_examples=800, deadline=None)
def test_any_json_command_is_accepted_safely_or_rejected(obj):
    command = outcome(ujson.dumps(obj).encode())
    if command is None or command.text is None:
        return
    assert command.cmd_id is not None  # accepted commands always carry one
    target = command.to or "#c"
    for line in message_lines("PRIVMSG", target, command.text, prefix=60, action=command.type == "action"):
        assert_safe_line(line)
        assert len(line) + 60 <= LINE_LIMIT
        assert line.count(b" ") >= 2 and line.split(b" ", 2)[1] == target.encode()


class _Outbox:
    def __init__(self):
        self.dead = []

    def dead_letter(self, item, key=None):
        self.dead.append(item)


class _Ledger:
    def __init__(self):
        self.acks = []

    def ack(self, seq):
        self.acks.append(seq)


class _Room:
    def __init__(self):
        self.submitted, self.events = [], []

    def has_spec(self, spec_json):
        return False

    def submit(self, command):
        self.submitted.append(command)

    def emit(self, type, **fields):
        self.events.append((type, fields))


class _Tenants:
    """No registered tenant: rooms' tenants are free labels (the default)."""

    def get(self, name):
        return None

    def check_join(self, tenant, *, source, require):
        return tenant

    def events_key(self, tenant, events):
        return events or "messages"


class _Registry:
    """Just what the dispatcher's routing touches of the registry."""

    def __init__(self):
        self.rooms = {"r1": _Room()}
        self.added, self.recorded = [], []
        self.parted = set()

    def plain(self, spec, spec_json):
        return spec, spec_json

    def count_new_room(self, room_id, tenant):
        return True

    def get(self, room_id):
        return self.rooms.get(room_id)

    def add(self, room_id, spec, spec_json):
        self.added.append(room_id)

    def record(self, room_id, spec_json):
        self.recorded.append(room_id)

    def forget(self, room_id):
        self.rooms.pop(room_id, None)


def _dispatcher():
    """The routing of a real IncomingDispatcher over stand-ins of the parts it receives (no Redis)."""
    registry, ledger, outbox, counters = _Registry(), _Ledger(), _Outbox(), Counters()
    dispatcher = IncomingDispatcher(link=None, ledger=ledger, registry=registry,
                                    outbox=outbox, counters=counters,
                                    settings=load_settings(env={}, overrides={"frontend_id": "prop"}),
                                    frontend_id="prop", keys=Keys(""), tenants=_Tenants(), wakes=Wakes())
    return dispatcher, registry, outbox, counters


@given(st.lists(st.one_of(st.binary(max_size=80), COMMANDS.map(lambda o: ujson.dumps(o).encode())),
                max_size=20))
@settings(max_examples=400, deadline=None)
def test_the_dispatcher_never_raises_and_accounts_for_every_item(items):
    dispatcher, registry, outbox, counters = _dispatcher()
    room = registry.rooms["r1"]
    for seq, raw in enumerate(items, 1):
        dispatcher.handle(raw, seq)
    routed = len(room.submitted) + len(registry.added)
    assert routed + len(outbox.dead) == len(items)
    assert counters["commands_received"] == len(items)
    assert counters["commands_dead"] == len(outbox.dead)
    for item in outbox.dead:
        dead = ujson.loads(item)
        assert dead["error"]["code"] in ("bad_command", "unknown_room") and dead["error"]["detail"]
