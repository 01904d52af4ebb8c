"""How secrets are shown: URLs without their passwords, secrets as ***."""

import pytest

from rnnserve_server.redaction import redacted, without_password


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw1@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host/2", "rediss://user:***@host/2"),
        ("redis://user:p@ss@host:1", "redis://user:***@host:1"),  # the last @ ends it
        ("unix:///run/redis.sock?password=pw1&db=3", "unix:///run/redis.sock?password=***&db=3"),
        ("redis://:pw1@host/0?password=pw2", "redis://:***@host/0?password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis://[::1:6379/0", "***"),  # unparseable: nothing of it is shown
        ("", ""),
    ],
)
def test_urls_lose_their_passwords_only(url: str, shown: str) -> None:
    assert without_password(url) == shown


def test_secrets_show_whether_they_are_set() -> None:
    assert redacted("anything") == "***"
    assert redacted("") == ""
