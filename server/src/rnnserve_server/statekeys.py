"""The keys that sign exported session state and shared session records (HMAC-SHA256).

Keys come from the setting ``state_keys`` (comma-separated) and then the file
``state_keys_file`` (one per line; ``#`` starts a comment). The first key signs; every
key verifies, so a deployment rotates by putting a new key first and dropping the old
one once no export signed with it is needed. Without any key the server makes a random
one at start: its exports then import only into the same process.

A key never appears in a log line or an error message; messages name its position.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve_server.config import MAX_STATE_KEYS, MIN_STATE_KEY_LENGTH, ServerConfig

log = logging.getLogger(__name__)

MAC_BYTES = hashlib.sha256().digest_size


@dataclass(frozen=True)
class StateKeys:
    """Signing and verifying keys, the first one signing. ``repr`` shows no key."""

    keys: tuple[bytes, ...] = field(repr=False)
    configured: bool

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("at least one state key is needed")

    @classmethod
    def random(cls) -> StateKeys:
        return cls((secrets.token_bytes(32),), configured=False)

    @classmethod
    def from_config(cls, config: ServerConfig) -> StateKeys:
        """The configured keys, or a random key of this process (logged as such).

        RuntimeError (the server's start-up failure) if the key file is unreadable or
        holds a key that is too short, a duplicate or one too many."""
        entries = [(f"state_keys entry {n + 1}", k) for n, k in enumerate(config.inline_state_keys)]
        if config.state_keys_file:
            try:
                text = Path(config.state_keys_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise RuntimeError(
                    f"state_keys_file {config.state_keys_file}: unreadable ({exc})"
                ) from None
            for n, raw in enumerate(text.splitlines()):
                key = raw.split("#", 1)[0].strip()
                if key:
                    entries.append((f"state_keys_file {config.state_keys_file} line {n + 1}", key))
        if not entries:
            log.warning(
                "state_keys is not set: exported session state is signed with a random key "
                "made at start, so it imports only into this process (not after a restart, "
                "nor on another server); set state_keys to keep exports importable"
            )
            return cls.random()
        if len(entries) > MAX_STATE_KEYS:
            raise RuntimeError(f"{len(entries)} state keys given; at most {MAX_STATE_KEYS}")
        keys: list[bytes] = []
        for where, key in entries:
            encoded = key.encode()
            if len(key) < MIN_STATE_KEY_LENGTH:
                raise RuntimeError(f"{where}: a key needs {MIN_STATE_KEY_LENGTH}+ characters")
            if encoded in keys:
                raise RuntimeError(f"{where}: the same key as an earlier entry")
            keys.append(encoded)
        log.info("exported state signed with the first of %d state keys", len(keys))
        return cls(tuple(keys), configured=True)

    def sign(self, payload: bytes | memoryview) -> bytes:
        return hmac.digest(self.keys[0], payload, "sha256")

    def verify(self, payload: bytes | memoryview, mac: bytes | memoryview) -> bool:
        """Whether any key made ``mac``; every key is tried, each compared in constant time."""
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(hmac.digest(key, payload, "sha256"), mac)
        return matched
