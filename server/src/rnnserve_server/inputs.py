"""What requests carry, checked: token ids, text or float vectors, top-k, request ids.

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
from rnnserve_server.runtime import FloatArray, Inputs
from rnnserve_server.sampling import MAX_TOP_K
from rnnserve_server.tokenizer import TokenizeError

DEFAULT_TOP_K = 5
MAX_REQUEST_ID = 64


class VectorInput(NamedTuple):
    """Float vectors as a request carries them: row-major values of ``steps`` vectors
    (``steps`` None: as many as the values fill, as StepMany's columns carry them)."""

    values: Sequence[float]
    steps: int | None = None


class TokenInput(NamedTuple):
    """A step's input as a request carries it: token ids, text, or (for a model of
    vector inputs) float vectors; exactly one is set. A named tuple: one is made for
    every step."""

    ids: Sequence[int] | None = None
    text: str | None = None
    vectors: VectorInput | None = None

    @property
    def given(self) -> bool:
        return self.ids is not None or self.text is not None or self.vectors is not None


NO_INPUT = TokenInput()


class InputLimits(NamedTuple):
    """The server's limits on one input (max_tokens_per_request, max_text_chars)."""

    tokens: int
    text_chars: int


def encode_input(model: Model, given: TokenInput, *, field: str, limits: InputLimits) -> Inputs:
    """What the model's graphs read, checked: token ids [T] (from ids or text: non-empty,
    in range) or vectors [T, n_x] (``vectors_of``); within ``limits``.

    The sizes are checked before any work that grows with them (converting the ids,
    tokenizing the text), so an oversized input costs next to nothing.
    """
    if not given.given:
        what = "float vectors" if model.package.tokenizer is None else "token ids or text"
        raise InvalidArgument(f"{field}: give {what}")
    _check_kind(model, given, field)
    if given.vectors is not None:
        return vectors_of(model, given.vectors, field=f"{field}.vectors", limit=limits.tokens)
    if given.text is not None:
        if len(given.text) > limits.text_chars:
            raise over_limit(
                f"{field}.text code points", len(given.text), limits.text_chars, "max_text_chars"
            )
        try:
            encoded: Sequence[int] = model.package.vocabulary.encode(given.text)
        except TokenizeError as exc:
            raise InvalidArgument(f"{field}.text: {exc}") from None
    else:
        encoded = given.ids or ()
    if not encoded:
        raise InvalidArgument(f"{field} is empty; at least one token is required")
    if len(encoded) > limits.tokens:
        raise over_limit(f"{field} tokens", len(encoded), limits.tokens, "max_tokens_per_request")
    ids = np.asarray(encoded, dtype=np.int64)
    size = model.package.vocabulary.size
    bad = np.flatnonzero((ids < 0) | (ids >= size))
    if len(bad):
        position = int(bad[0])
        raise out_of_range(f"{field}.ids[{position}]", int(ids[position]), f"0 .. {size - 1}")
    return ids


def _check_kind(model: Model, given: TokenInput, field: str) -> None:
    """INVALID_ARGUMENT for an input of the other kind than the model reads."""
    size = model.package.manifest.input.size
    if given.vectors is None and size:
        raise InvalidArgument(
            f"{field}: model {model.name} reads vectors of {size} floats ({field}.vectors), "
            "not token ids or text"
        )
    if given.vectors is not None and not size:
        raise InvalidArgument(
            f"{field}.vectors: model {model.name} reads token ids or text, not float vectors"
        )


def vectors_of(model: Model, given: VectorInput, *, field: str, limit: int) -> FloatArray:
    """Float vectors [T, n_x], checked: 1 .. ``limit`` steps, exactly steps * n_x
    values, every one finite (INVALID_ARGUMENT naming the step and index otherwise).
    The counts are checked before the values are copied out of the request."""
    size = model.package.manifest.input.size
    count = len(given.values)
    steps = given.steps
    if steps is None:
        if count % size:
            raise InvalidArgument(
                f"{field}: {count} values are not whole vectors of {size} floats "
                "(the model's input size)"
            )
        steps = count // size
    if steps < 1:
        raise InvalidArgument(f"{field} is empty; at least one vector is required")
    if steps > limit:
        raise over_limit(f"{field} steps", steps, limit, "max_tokens_per_request")
    if count != steps * size:
        raise InvalidArgument(
            f"{field}.values holds {count} floats; expected steps x input size = "
            f"{steps} x {size} = {steps * size}"
        )
    values = np.asarray(given.values, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        at = int(np.argmin(finite))
        raise InvalidArgument(
            f"{field}.values[{at}] = {float(values[at])} (step {at // size}, index "
            f"{at % size}) is not finite; every value must be a finite float"
        )
    return values.reshape(steps, size)


def one_input(model: Model, given: TokenInput) -> int | FloatArray | None:
    """The one input of a single-step request given as one id or one vector (checked):
    a token id, or a vector [n_x]; else None."""
    if given.vectors is not None:
        size = model.package.manifest.input.size
        if not size or len(given.vectors.values) != size or given.vectors.steps not in (1, None):
            return None
        vector: FloatArray = vectors_of(model, given.vectors, field="input.vectors", limit=1)[0]
        return vector
    ids = given.ids
    if ids is None or len(ids) != 1 or model.package.tokenizer is None:
        return None
    token = ids[0]
    size = model.package.vocabulary.size
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
