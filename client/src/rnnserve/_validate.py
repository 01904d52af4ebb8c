"""Checks on call arguments made before anything is sent.

Only what the client can know for certain is checked here: the shape of the input (exactly one
of tokens and text, of the right types) and values the wire format cannot carry (negative or
oversized unsigned integers). Everything else (empty input, ranges that depend on the model or
the server's limits) is the server's to check; it answers INVALID_ARGUMENT naming the field and
the allowed range.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import SupportsIndex


def string(name: str, value: object) -> str:
    """`value` must be a str (whether it names anything is the server's to say)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {value!r}")
    return value


def unsigned(name: str, value: object, *, bits: int) -> int:
    """`value` must be an integer in 0 .. 2**bits - 1 (the proto field's range).

    Anything with `__index__` counts (numpy integers too); bool does not, it is a mistake.
    """
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ValueError(f"{name} must be an int, got {value!r}")
    number = operator.index(value)
    if not 0 <= number < 1 << bits:
        raise ValueError(f"{name} must be in 0 .. {(1 << bits) - 1}, got {number}")
    return number


def data(name: str, value: object) -> bytes:
    """`value` must be bytes (or bytearray or memoryview, copied)."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def real(name: str, value: object) -> float:
    """`value` must be an int or a float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def one_input(
    tokens: Sequence[int] | None, text: str | None, *, names: tuple[str, str]
) -> tuple[int, ...] | None:
    """Exactly one of `tokens` and `text`; returns the tokens as a tuple."""
    tokens_name, text_name = names
    if (tokens is None) == (text is None):
        which = "both" if tokens is not None else "neither"
        raise ValueError(f"pass exactly one of {tokens_name}= and {text_name}= ({which} given)")
    if text is not None:
        if not isinstance(text, str):
            raise ValueError(f"{text_name} must be a str, got {type(text).__name__}")
        return None
    if isinstance(tokens, str | bytes):
        raise ValueError(
            f"{tokens_name} must be a sequence of token ids; pass {text_name}= for text"
        )
    return token_ids(tokens_name, tokens)


def vectors(name: str, value: object) -> tuple[tuple[float, ...], ...]:
    """A non-empty sequence of float vectors of one size, every value finite (the server
    refuses NaN and infinity too, naming the step and index)."""
    if isinstance(value, str | bytes):
        raise ValueError(f"{name} must be a sequence of float vectors, got {type(value).__name__}")
    try:
        rows = [tuple(row) for row in value]  # type: ignore[attr-defined]
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of float vectors (sequences of floats)"
        ) from None
    if not rows or not rows[0]:
        raise ValueError(f"{name} must hold at least one non-empty vector")
    checked = []
    for t, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise ValueError(f"{name}[{t}] has {len(row)} values; {name}[0] has {len(rows[0])}")
        values = tuple(real(f"{name}[{t}][{i}]", v) for i, v in enumerate(row))
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"{name}[{t}][{bad[0]}] = {values[bad[0]]}: not finite")
        checked.append(values)
    return tuple(checked)


def token_ids(name: str, value: object) -> tuple[int, ...]:
    """A sequence of token ids, each in the uint32 range; a str is text, not ids."""
    if isinstance(value, str | bytes):
        raise ValueError(f"{name} must be a sequence of token ids, got {type(value).__name__}")
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"{name} must be a sequence of token ids") from None
    return tuple(unsigned(f"{name}[{i}]", token, bits=32) for i, token in enumerate(items))


def text_or_tokens(name: str, value: object) -> str | tuple[int, ...]:
    """One argument that is either text (a str) or token ids (a sequence of ints)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        raise ValueError(f"{name} must be a str or a sequence of token ids, got bytes")
    return token_ids(name, value)


def stop_strings(stop: str | Sequence[str]) -> tuple[str, ...]:
    """One stop string or several; a lone string is one stop, not one per character."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for item in stops:
        if not isinstance(item, str):
            raise ValueError(f"stop strings must be str, got {item!r}")
    return stops


def timeout(value: float | None) -> float | None:
    """A timeout is None (no deadline) or a positive, finite number of seconds."""
    if value is None:
        return None
    seconds = real("timeout", value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {value}")
    return seconds
