"""What a model's output rows become for the caller: probabilities and the top k.

Selection happens on the logits (``sampling.top_outputs``): no [B, K] distribution is
made unless a caller asks for the whole of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray, IntArray
from rnnserve_server.sampling import Described, Top, sigmoid, softmax, top_outputs


def probabilities(model: Model, logits: FloatArray) -> np.ndarray[Any, Any]:
    """One output row's distribution (softmax, or independent sigmoids), float64."""
    vector = logits.reshape(-1).astype(np.float64)
    return sigmoid(vector) if model.package.manifest.output.kind == "sigmoid" else softmax(vector)


def names(model: Model) -> tuple[str, ...]:
    """The names of the model's outputs, by id: its labels or its vocabulary."""
    return model.package.manifest.output.labels or model.package.tokenizer.tokens


def top_rows(model: Model, logits: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
    """Per row of logits [B, K]: the ids and probabilities of the k most probable
    outputs, [B, k] each (selected on the logits)."""
    return top_outputs(logits, k, sigmoid_head=model.package.manifest.output.kind == "sigmoid")


def describe_rows(
    model: Model, logits: FloatArray, ks: list[int], fulls: list[bool]
) -> list[Described]:
    """Per row of logits [B, K]: the top k, selected on the logits (no [B, K]
    distribution is made unless a row asks for it: ``full``)."""
    labels = names(model)
    most = max(ks, default=0)
    ids, values = top_rows(model, logits, most)
    return [
        (
            Top(row_ids, row_values, labels)
            if k == most
            else Top(row_ids[:k], row_values[:k], labels),
            probabilities(model, logits[r]).astype(np.float32).tolist() if full else None,
        )
        for r, (row_ids, row_values, k, full) in enumerate(
            zip(ids.tolist(), values.tolist(), ks, fulls, strict=True)
        )
    ]


def describe(model: Model, logits: FloatArray, k: int, full: bool) -> Described:
    """The top k of one output row (and all of it if ``full``)."""
    return describe_rows(model, logits.reshape(1, -1), [k], [full])[0]
