"""Encryption at rest of the specs' secrets: SpecSealer, its settings, `greenroom secrets new-key|rotate`
against a real Redis (atomic per room against a concurrent writer), and masking in status."""

import json
import os

import pytest
import redis
from cryptography.fernet import Fernet

from frontend.config import load_settings
from frontend.errors import ConfigError, GreenroomError
from frontend.keys import Keys
from frontend.sealing import SealError, SpecSealer, is_sealed, new_key, rotate_registry, sealer_from_settings
from tests.ops.helpers import cli

IRC = {"protocol": "irc", "server": "h", "nick": "n", "channel": "#c", "password": "srv-pw", "key": "chan-key",
       "sasl": {"username": "u", "password": "sasl-pw"}, "tenant": "acme"}
SECRETS = ("srv-pw", "chan-key", "sasl-pw", "xmpp-pw", "room-pw")
XMPP = {"protocol": "xmpp", "jid": "a@b", "muc": "r@c", "nick": "n", "password": "xmpp-pw", "room_password": "room-pw"}


def test_seal_open_and_rotate():
    old, new = new_key(), new_key()
    sealer = SpecSealer([old])
    assert sealer.enabled and not SpecSealer([]).enabled
    sealed = sealer.seal(IRC)
    assert sealed is not IRC and IRC["password"] == "srv-pw"  # a copy; the input is left alone
    for value in (sealed["password"], sealed["key"], sealed["sasl"]["password"]):
        assert is_sealed(value) and value.startswith("fernet:") and not any(
            secret in value for secret in ("srv-pw", "chan-key", "sasl-pw"))
    assert {k: v for k, v in sealed.items() if k not in ("password", "key", "sasl")} == \
        {k: v for k, v in IRC.items() if k not in ("password", "key", "sasl")}
    assert sealed["sasl"]["username"] == "u"
    assert sealer.seal(sealed) == sealed  # already sealed values stay
    assert sealer.open(sealed) == IRC and sealer.open(IRC) == IRC  # plaintext passes through
    x = SpecSealer([old]).seal(XMPP)
    assert is_sealed(x["password"]) and is_sealed(x["room_password"]) and SpecSealer([old]).open(x) == XMPP
    assert SpecSealer([]).seal(IRC) == IRC  # no key: nothing sealed

    # rotation: the new key first; old seals are re-sealed with it, new ones stay as they are
    both = SpecSealer([new, old])
    rotated = both.rotate(sealed)
    assert rotated["password"] != sealed["password"] and SpecSealer([new]).open(rotated) == IRC
    assert both.rotate(rotated) == rotated
    assert SpecSealer([new]).rotate(IRC)["password"].startswith("fernet:")  # plaintext gets sealed
    with pytest.raises(SealError, match="none of the configured secrets keys opens") as caught:
        SpecSealer([new]).open(sealed)
    assert isinstance(caught.value, GreenroomError) and old not in str(caught.value)
    with pytest.raises(SealError, match="no secrets key is configured"):
        SpecSealer([]).open(sealed)
    with pytest.raises(SealError):
        SpecSealer([new]).rotate(sealed)
    with pytest.raises(SealError):
        sealer.open({**sealed, "password": "fernet:garbage"})
    # sealing off: what is sealed still opens, rotate writes clear values
    assert SpecSealer([old], seal=False).rotate(sealed) == IRC and not SpecSealer([old], seal=False).enabled


def test_keys_are_checked_and_never_shown(tmp_path):
    secret = Fernet.generate_key().decode()
    with pytest.raises(ConfigError, match="key #2 is not a Fernet key") as caught:
        SpecSealer([secret, "not-a-key-at-all"])
    assert "not-a-key-at-all" not in str(caught.value)
    assert secret not in repr(SpecSealer([secret]))
    settings = load_settings(env={"GREENROOM_SECRETS_KEYS": f"{secret}, {new_key()}"})
    assert secret not in repr(settings) and sealer_from_settings(settings).keys == 2
    path = tmp_path / "keys"
    path.write_text(f"# newest first\n{secret}\n{new_key()}\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        sealer_from_settings(load_settings(env={}, overrides={"secrets_keys_file": str(path)}))
    os.chmod(path, 0o600)
    from_file = sealer_from_settings(load_settings(env={}, overrides={"secrets_keys_file": str(path)}))
    assert from_file.keys == 2 and from_file.open(SpecSealer([secret]).seal(XMPP)) == XMPP
    with pytest.raises(ConfigError, match="not both"):
        sealer_from_settings(load_settings(env={}, overrides={"secrets_keys_file": str(path),
                                                              "secrets_keys": secret}))
    assert not sealer_from_settings(load_settings(env={})).enabled


def test_secrets_cli_rotates_the_registry_and_status_masks_it(redis_url, redis_client, monkeypatch):
    done = cli("secrets", "new-key")
    old = done.stdout.strip()
    assert done.returncode == 0 and Fernet(old.encode())
    new, stranger = new_key(), new_key()
    redis_client.hset("rooms", mapping={
        "clear": json.dumps(IRC), "old": json.dumps(SpecSealer([old]).seal(XMPP)),
        "nosecret": json.dumps({"protocol": "irc", "server": "h", "nick": "n", "channel": "#x"}),
        "lost": json.dumps(SpecSealer([stranger]).seal(XMPP)), "junk": b"\xff not json"})
    before = redis_client.hgetall("rooms")

    monkeypatch.delenv("GREENROOM_SECRETS_KEYS", raising=False)
    refused = cli("secrets", "rotate", "--redis-url", redis_url)
    assert refused.returncode == 2 and "no key configured" in refused.stderr

    monkeypatch.setenv("GREENROOM_SECRETS_KEYS", f"{new},{old}")
    done = cli("secrets", "rotate", "--redis-url", redis_url)
    assert done.returncode == 1, done.stderr  # two rooms could not be rotated: said, left alone
    assert "sealed 2 of 5 room specs (1 already as wanted)" in done.stdout
    assert "room lost left as it was" in done.stderr and "room junk left as it was" in done.stderr
    assert new not in done.stdout + done.stderr and old not in done.stdout + done.stderr
    after = redis_client.hgetall("rooms")
    assert after[b"lost"] == before[b"lost"] and after[b"junk"] == before[b"junk"]
    assert after[b"nosecret"] == before[b"nosecret"]
    only_new = SpecSealer([new])
    assert only_new.open(json.loads(after[b"clear"])) == IRC and only_new.open(json.loads(after[b"old"])) == XMPP
    assert b"srv-pw" not in after[b"clear"] and b"sasl-pw" not in after[b"clear"]
    again = cli("secrets", "rotate", "--redis-url", redis_url)
    assert "sealed 0 of 5 room specs (3 already as wanted)" in again.stdout

    # what ops see: secrets masked, sealed or not
    for args in (["rooms", "--json"], ["status", "--json"], ["rooms"]):
        out = cli(*args, "--redis-url", redis_url).stdout
        assert "fernet:" not in out and not any(secret in out for secret in SECRETS)
    rows = {r["room"]: r for r in json.loads(cli("rooms", "--json", "--redis-url", redis_url).stdout)["rooms"]}
    assert rows["clear"]["spec"]["password"] == "***" and rows["clear"]["spec"]["sasl"]["password"] == "***"
    assert rows["old"]["spec"]["room_password"] == "***"


class RacingRedis(redis.Redis):
    """A real Redis client whose transactions meet a concurrent writer: the first time a rotation has
    read the spec of room ``room`` (inside its WATCH), another connection writes the ``rooms`` hash,
    as a running daemon's join or part would."""

    def __init__(self, url, room, race):
        super().__init__(connection_pool=redis.ConnectionPool.from_url(url))
        self.room, self.race, self.raced = room, race, False

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        original = pipe.hget

        def hget(name, key):
            value = original(name, key)
            if not self.raced and pipe.watching and key == self.room:
                self.raced = True
                self.race()
            return value

        pipe.hget = hget
        return pipe


def test_rotate_loses_no_concurrent_write(redis_url, redis_client):
    key = new_key()
    redis_client.hset("rooms", mapping={"a": json.dumps(IRC), "b": json.dumps(XMPP)})
    joined = {**IRC, "channel": "#moved", "password": "newer-pw"}
    other = redis.Redis.from_url(redis_url)

    # a join that changed room a's spec (written by a daemon without a key) while rotate works on it
    client = RacingRedis(redis_url, b"a", lambda: other.hset("rooms", "a", json.dumps(joined)))
    done = rotate_registry(client, Keys(""), SpecSealer([key]))
    assert client.raced and not done.failed and done.changed == 2
    sealer = SpecSealer([key])
    assert sealer.open(json.loads(redis_client.hget("rooms", "a"))) == joined  # the daemon's write won
    assert sealer.open(json.loads(redis_client.hget("rooms", "b"))) == XMPP

    # a room parted while rotate works on it is not brought back
    client = RacingRedis(redis_url, b"b", lambda: other.hdel("rooms", "b"))
    done = rotate_registry(client, Keys(""), SpecSealer([new_key(), key]))
    assert client.raced and not redis_client.hexists("rooms", "b") and done.total == 1 and done.changed == 1
