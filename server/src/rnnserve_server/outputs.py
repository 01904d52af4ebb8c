"""What a model's output rows become for the caller: probabilities, the top k, values.

An output row is the step graph's logits [K] then its real values [R] (regression), one
array (``runtime.ModelRuntime``); here they are split again. Selection happens on the
logits (``sampling.top_outputs``): no [B, K] distribution is made unless a caller asks
for the whole of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray, IntArray
from rnnserve_server.sampling import Described, Top, sigmoid, softmax, top_outputs


def split(model: Model, rows: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Output rows [B, K + R] (or one row [K + R]) as the logits [.., K] and the
    values [.., R]."""
    size = model.runtime.output_size
    return rows[..., :size], rows[..., size:]


def probabilities(model: Model, logits: FloatArray) -> np.ndarray[Any, Any]:
    """One output row's distribution (softmax, or independent sigmoids), float64; empty
    for a model without logits (regression)."""
    vector = split(model, logits.reshape(-1))[0].astype(np.float64)
    if not len(vector):
        return vector
    return sigmoid(vector) if model.package.manifest.output.kind == "sigmoid" else softmax(vector)


def names(model: Model) -> tuple[str, ...]:
    """The names of the model's outputs, by id: its labels, its vocabulary, or none."""
    package = model.package
    if package.manifest.output.labels or package.tokenizer is None:
        return package.manifest.output.labels
    return package.tokenizer.tokens


def top_rows(model: Model, rows: FloatArray, k: int) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per output row [B, K + R]: the ids and probabilities of the k most probable
    outputs, [B, k] each (selected on the logits), and the values [B, R]."""
    logits, values = split(model, rows)
    sigmoid_head = model.package.manifest.output.kind == "sigmoid"
    ids, chosen = top_outputs(logits, k, sigmoid_head=sigmoid_head)
    return ids, chosen, values


def describe_rows(
    model: Model, rows: FloatArray, ks: list[int], fulls: list[bool]
) -> list[Described]:
    """Per output row [B, K + R]: the top k, selected on the logits (no [B, K]
    distribution is made unless a row asks for it: ``full``), and the values."""
    labels = names(model)
    most = max(ks, default=0)
    ids, chosen, values = top_rows(model, rows, most)
    value_rows: list[list[float] | None] = values.tolist() if values.shape[-1] else [None] * len(ks)
    return [
        Described(
            (
                Top(row_ids, row_chosen, labels)
                if k == most
                else Top(row_ids[:k], row_chosen[:k], labels)
            ),
            probabilities(model, rows[r]).astype(np.float32).tolist() if full else None,
            row_values,
        )
        for r, (row_ids, row_chosen, k, full, row_values) in enumerate(
            zip(ids.tolist(), chosen.tolist(), ks, fulls, value_rows, strict=True)
        )
    ]


def describe(model: Model, row: FloatArray, k: int, full: bool) -> Described:
    """The top k of one output row (and all of it if ``full``), and its values."""
    return describe_rows(model, row.reshape(1, -1), [k], [full])[0]
