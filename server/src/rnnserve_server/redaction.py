"""How secrets are shown: in the configuration log line, in error messages, anywhere.

A secret setting's value never leaves the process as it is: it is shown as ``***`` when
set (``""`` when empty), or, for a URL, with only its password replaced.
"""

from __future__ import annotations

import urllib.parse

REDACTED = "***"


def redacted(value: object) -> str:
    """``***`` for a value that is set, ``""`` for an empty one."""
    return REDACTED if value else ""


def without_password(url: str) -> str:
    """The URL as logs and messages show it: any password replaced by ***, the one in
    ``user:password@`` and a ``password=`` query parameter (which Redis URLs accept)."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:  # unparseable: nothing of it can be shown safely
        return redacted(url)
    if password is not None:
        user = f"{parts.username}:" if parts.username else ":"
        host = parts.netloc.rsplit("@", 1)[1]
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{REDACTED}@{host}"))
    base, question, rest = url.partition("?")
    query, hash_sign, fragment = rest.partition("#")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if not any(key == "password" for key, _ in pairs):
        return url
    shown = [(key, REDACTED if key == "password" else value) for key, value in pairs]
    return f"{base}{question}{urllib.parse.urlencode(shown, safe='*')}{hash_sign}{fragment}"
