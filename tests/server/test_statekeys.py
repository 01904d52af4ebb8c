"""State keys: where they come from, what a bad one says (never the key), rotation."""

import logging
from pathlib import Path

import pytest

from rnnserve_server.config import ServerConfig
from rnnserve_server.statekeys import StateKeys

KEY = "a-state-key-of-forty-characters-0123456"


def test_the_setting_then_the_file_in_order(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text(f"# rotated in March\n\n  {KEY}-file  # the old one\n")
    keys = StateKeys.from_config(ServerConfig(state_keys=KEY, state_keys_file=str(file)))
    assert keys.keys == (KEY.encode(), f"{KEY}-file".encode()) and keys.configured
    assert KEY not in repr(keys)


def test_the_first_key_signs_and_every_key_verifies() -> None:
    old, new = StateKeys((b"o" * 32,), True), StateKeys((b"n" * 32, b"o" * 32), True)
    payload = b"some state"
    assert new.verify(payload, old.sign(payload)) and new.verify(payload, new.sign(payload))
    assert not old.verify(payload, new.sign(payload))
    assert not new.verify(payload + b"!", new.sign(payload))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("short-key\n", "line 1: a key needs 32+ characters"),
        (f"{KEY}\n{KEY}\n", "line 2: the same key as an earlier entry"),
        ("".join(f"{KEY}{i}\n" for i in range(17)), "17 state keys given; at most 16"),
    ],
)
def test_a_bad_key_file_stops_the_start_without_showing_a_key(
    tmp_path: Path, lines: str, message: str
) -> None:
    file = tmp_path / "keys"
    file.write_text(lines)
    with pytest.raises(RuntimeError) as refused:
        StateKeys.from_config(ServerConfig(state_keys_file=str(file)))
    assert message in str(refused.value)
    assert "short-key" not in str(refused.value) and KEY not in str(refused.value)


def test_an_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"state_keys_file .*missing: unreadable"):
        StateKeys.from_config(ServerConfig(state_keys_file=str(tmp_path / "missing")))


def test_without_keys_a_random_key_of_this_process(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        one, two = StateKeys.from_config(ServerConfig()), StateKeys.from_config(ServerConfig())
    assert not one.configured and one.keys != two.keys and len(one.keys[0]) == 32
    assert "imports only into this process" in caplog.text
