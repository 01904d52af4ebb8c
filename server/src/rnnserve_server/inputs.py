"""What requests carry, checked: token ids or text, top-k, request ids.

Every front (rnnserve.v1, KServe v2, the HTTP front) hands the core its inputs in these
forms; the checks here are the one place their limits are enforced, each failure an
INVALID_ARGUMENT naming the field, the value and the allowed range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rnnserve_server.errors import InvalidArgument, out_of_range, over_limit
from rnnserve_server.repository import Model
from rnnserve_server.runtime import IntArray
from rnnserve_server.sampling import MAX_TOP_K
from rnnserve_server.tokenizer import TokenizeError

DEFAULT_TOP_K = 5
MAX_REQUEST_ID = 64


class TokenInput(NamedTuple):
    """Token ids or text, as a request carries them (exactly one is set). A named
    tuple: one is made for every step."""

    ids: Sequence[int] | None = None
    text: str | None = None

    @property
    def given(self) -> bool:
        return self.ids is not None or self.text is not None


NO_INPUT = TokenInput()


class InputLimits(NamedTuple):
    """The server's limits on one input (max_tokens_per_request, max_text_chars)."""

    tokens: int
    text_chars: int


def encode_input(model: Model, given: TokenInput, *, field: str, limits: InputLimits) -> IntArray:
    """Token ids from ids or text, checked: non-empty, in range, within ``limits``.

    The sizes are checked before any work that grows with them (converting the ids,
    tokenizing the text), so an oversized input costs next to nothing.
    """
    if not given.given:
        raise InvalidArgument(f"{field}: give token ids or text")
    if given.text is not None:
        if len(given.text) > limits.text_chars:
            raise over_limit(
                f"{field}.text code points", len(given.text), limits.text_chars, "max_text_chars"
            )
        try:
            encoded: Sequence[int] = model.package.tokenizer.encode(given.text)
        except TokenizeError as exc:
            raise InvalidArgument(f"{field}.text: {exc}") from None
    else:
        encoded = given.ids or ()
    if not encoded:
        raise InvalidArgument(f"{field} is empty; at least one token is required")
    if len(encoded) > limits.tokens:
        raise over_limit(f"{field} tokens", len(encoded), limits.tokens, "max_tokens_per_request")
    ids = np.asarray(encoded, dtype=np.int64)
    size = model.package.tokenizer.size
    bad = np.flatnonzero((ids < 0) | (ids >= size))
    if len(bad):
        position = int(bad[0])
        raise out_of_range(f"{field}.ids[{position}]", int(ids[position]), f"0 .. {size - 1}")
    return ids


def one_token(model: Model, given: TokenInput) -> int | None:
    """The id of a single-token input given as ids (checked), else None."""
    ids = given.ids
    if ids is None or len(ids) != 1:
        return None
    token = ids[0]
    size = model.package.tokenizer.size
    if not 0 <= token < size:
        raise out_of_range("input.ids[0]", token, f"0 .. {size - 1}")
    return token


def check_top_k(k: int | None) -> int:
    """The top_k a request asks for (the default if unset), checked."""
    k = DEFAULT_TOP_K if k is None else k
    if not 0 <= k <= MAX_TOP_K:
        raise out_of_range("top_k", k, f"0 .. {MAX_TOP_K}")
    return k


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID:
        raise out_of_range("request_id", request_id, f"at most {MAX_REQUEST_ID} characters")
