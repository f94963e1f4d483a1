"""Encryption at rest for the secrets of room specs in the ``rooms`` hash (Fernet, key rotation).

A spec's secret strings (top-level ``password``, ``key``, ``room_password`` and ``sasl.password``)
are written as ``"fernet:" + token``: AES-128-CBC with HMAC-SHA256 from ``cryptography``'s Fernet.
Keys are configured newest first (``secrets_keys`` or ``secrets_keys_file``); the first one seals,
any of them opens (MultiFernet), so a key is rotated by putting a new one first, running
``greenroom secrets rotate``, and dropping the old one once no spec uses it. A plaintext value
opens as itself, so a registry written before sealing was turned on keeps working.

The daemon seals a spec when it writes ``rooms`` and opens it when it reads it; ops tools never
need to open one (status and the dashboard mask every secret, sealed or not).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigError, GreenroomError
from .protocol import SECRET_FIELDS

PREFIX = "fernet:"
#: where the secret strings of a spec are: top-level fields, and fields of a nested object
TOP_LEVEL = tuple(SECRET_FIELDS)
NESTED = {"sasl": ("password",)}


class SealError(GreenroomError):
    """A sealed value that none of the configured keys opens (or no key is configured)."""


def is_sealed(value: Any) -> bool:
    """True for a string that ``SpecSealer.seal`` produced."""
    return isinstance(value, str) and value.startswith(PREFIX)


def new_key() -> str:
    """A fresh random Fernet key (32 bytes, url-safe base64)."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(text: str) -> list[str]:
    """Keys from a comma- or newline-separated text (``#`` starts a comment line)."""
    out = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        out.extend(part.strip() for part in line.split(",") if part.strip())
    return out


class SpecSealer:
    """Seals and opens the secret fields of room specs with the keys ``keys`` (newest first).

    ``enabled`` is true when at least one key is configured and ``seal`` is on (the default):
    then ``seal()`` seals; otherwise it returns an unchanged copy (``open()`` still opens with the
    keys there are, so ``seal=False`` with ``greenroom secrets rotate`` turns sealing back off).
    """

    def __init__(self, keys: Sequence[str], *, seal: bool = True) -> None:
        fernets = []
        for n, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.strip().encode("ascii") if isinstance(key, str) else key))
            except (ValueError, TypeError, UnicodeEncodeError):
                # never say the key itself
                raise ConfigError(f"secrets key #{n} is not a Fernet key (32 bytes, url-safe base64: "
                                  f"make one with `greenroom secrets new-key`)") from None
        self._first = fernets[0] if fernets else None
        self._multi = MultiFernet(fernets) if fernets else None
        self.keys = len(fernets)
        self.enabled = bool(fernets) and seal

    def __repr__(self) -> str:  # never the keys
        return f"SpecSealer(keys={self.keys}, enabled={self.enabled})"

    # ---------------------------------------------------------------------------------------- API
    def seal(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``spec`` whose secret strings are sealed (values already sealed stay)."""
        if not self.enabled:
            return _copy(spec)
        return _map_secrets(spec, self._seal_value)

    def open(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``spec`` with its sealed values opened; plaintext values pass through.
        Raises ``SealError`` for a sealed value that no configured key opens."""
        return _map_secrets(spec, self._open_value)

    def rotate(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A copy sealed with the first key: values sealed with an older key are re-sealed,
        plaintext ones sealed; a value already sealed with the first key stays as it is.
        With sealing off (``seal=False``), every value is opened instead."""
        if not self.enabled:
            return self.open(spec)
        return _map_secrets(spec, self._rotate_value)

    # ------------------------------------------------------------------------------------ values
    def _seal_value(self, value: str) -> str:
        if is_sealed(value):
            return value
        assert self._first is not None
        return PREFIX + self._first.encrypt(value.encode("utf-8")).decode("ascii")

    def _open_value(self, value: str) -> str:
        if not is_sealed(value):
            return value
        if self._multi is None:
            raise SealError("a sealed secret in a room spec, and no secrets key is configured "
                            "(secrets_keys or secrets_keys_file)")
        try:
            return self._multi.decrypt(value[len(PREFIX):].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SealError("a sealed secret in a room spec that none of the configured secrets keys "
                            "opens (a key missing from secrets_keys, or a damaged value)") from None

    def _rotate_value(self, value: str) -> str:
        if not is_sealed(value):
            return self._seal_value(value)
        assert self._first is not None
        token = value[len(PREFIX):].encode("ascii", "replace")
        try:
            self._first.decrypt(token)
            return value  # already sealed with the newest key
        except InvalidToken:
            pass
        self._open_value(value)  # raises SealError when no key opens it
        assert self._multi is not None
        return PREFIX + self._multi.rotate(token).decode("ascii")


def _copy(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()}


def _map_secrets(spec: Mapping[str, Any], fn: Any) -> dict[str, Any]:
    out = _copy(spec)
    for name in TOP_LEVEL:
        if isinstance(out.get(name), str) and out[name]:
            out[name] = fn(out[name])
    for outer, inner in NESTED.items():
        sub = out.get(outer)
        if isinstance(sub, dict):
            for name in inner:
                if isinstance(sub.get(name), str) and sub[name]:
                    sub[name] = fn(sub[name])
    return out


def sealer_from_settings(settings: Any) -> SpecSealer:
    """The sealer of ``secrets_keys`` or the keys in ``secrets_keys_file`` (one of them), sealing
    unless ``secrets_seal`` is off. A keys file must be readable by its owner only."""
    inline, path = settings.secrets_keys, settings.secrets_keys_file
    if inline and path:
        raise ConfigError("set secrets_keys or secrets_keys_file, not both")
    if path:
        try:
            info = os.stat(path)
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"secrets_keys_file {path} is readable by others "
                                  f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it")
            with open(path, encoding="ascii") as fh:
                keys = parse_keys(fh.read())
        except OSError as exc:
            raise ConfigError(f"cannot read secrets_keys_file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"secrets_keys_file {path} is not a list of Fernet keys") from None
        if not keys:
            raise ConfigError(f"secrets_keys_file {path} holds no key")
    else:
        keys = parse_keys(inline)
    return SpecSealer(keys, seal=settings.secrets_seal)


@dataclass
class Rotated:
    """What ``rotate_registry`` did."""

    total: int = 0
    changed: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def rotate_registry(client: Any, keys: Any, sealer: SpecSealer, *, attempts: int = 20) -> Rotated:
    """Re-seal every spec of the ``rooms`` hash with the first key (``SpecSealer.rotate``).

    Each room is rewritten atomically against concurrent writers: WATCH the hash, read the spec,
    write the rotated one in MULTI/EXEC, and start over for that room when anything wrote the hash
    in between (a join or part by a running daemon is never lost, and a room parted meanwhile is
    not brought back). A spec that is not a JSON object, or that no key opens, is left as it is.
    """
    import redis  # only the CLI needs it here

    from .protocol import decode, encode

    done = Rotated()
    for name in client.hkeys(keys.rooms):
        done.total += 1
        room = name.decode("utf-8", "replace")
        for _ in range(attempts):
            try:
                with client.pipeline(transaction=True) as pipe:
                    pipe.watch(keys.rooms)
                    raw = pipe.hget(keys.rooms, name)
                    if raw is None:  # parted meanwhile
                        done.total -= 1
                        break
                    try:
                        spec = decode(raw)
                        if not isinstance(spec, dict):
                            raise ValueError("not a JSON object")
                        new = sealer.rotate(spec)
                        changed = new != spec
                        data = encode(new) if changed else b""
                    except SealError as exc:
                        done.failed.append((room, str(exc)))
                        break
                    except (ValueError, TypeError, UnicodeEncodeError, OverflowError) as exc:
                        done.failed.append((room, f"its spec is not valid ({type(exc).__name__})"))
                        break
                    if not changed:
                        done.unchanged += 1
                        break
                    pipe.multi()
                    pipe.hset(keys.rooms, name, data)
                    pipe.execute()
                    done.changed += 1
                    break
            except redis.WatchError:
                continue
        else:
            done.failed.append((room, f"the registry kept changing ({attempts} tries): run it again"))
    return done
