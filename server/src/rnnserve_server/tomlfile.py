"""Reading the server's TOML files (the server-wide ``--config`` file and each model's
``config.toml``): one-line errors that name the file and the key, never a traceback.

tomllib is the standard library's TOML parser from Python 3.11; tomli is the same code
for 3.10.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the development and CI interpreter is 3.11
    import tomli as tomllib

_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class TomlError(ValueError):
    """A TOML file that cannot be used; the message names the file and, where one is at
    fault, the key."""


def read_table(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TomlError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TomlError(f"{path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(f"{path}: not valid TOML: {exc}") from None


def check_keys(path: Path, table: dict[str, Any], known: Iterable[str], prefix: str = "") -> None:
    """Refuse the first key of ``table`` that is not ``known``: suggest the closest
    known key, or list them all where none is close."""
    names = list(known)
    for key in table:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(names)}"
            raise TomlError(f"{path}: unknown key {prefix + key!r}; {hint}")


def typed(path: Path, key: str, value: Any, kind: type, *, secret: bool = False) -> Any:
    """``value`` if it is of ``kind`` (an integer is also a number); a TomlError naming
    the file and the key if not, showing the value unless it is a secret's."""
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, kind) and not isinstance(value, bool)
    )
    if not ok:
        shown = "" if secret else f" = {value!r}"
        raise TomlError(f"{path}: {key}{shown}: expected {_KIND_NAMES.get(kind, kind.__name__)}")
    return float(value) if kind is float else value
