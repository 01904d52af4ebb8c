"""A model package's graphs in plain onnxruntime, read from its manifest alone.

Used by the baseline server and the raw in-process measurements, so neither depends on
the server's code: this is what anyone would write against the package format
(docs/model-package.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


def ort_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """onnxruntime's defaults (``threads`` 0: one intra-op thread per core)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class StepGraph:
    """The step graph ``(tokens [B], state [L,B,H]) -> (logits [B,K], state_out)``, the
    head graph ``state -> logits``, the vocabulary, the initial state, and the sequence
    graph where the package has one."""

    step_session: ort.InferenceSession
    head_session: ort.InferenceSession
    sequence_session: ort.InferenceSession | None
    layers: int
    hidden: int
    vocabulary: tuple[str, ...]
    special: dict[str, int]
    initial_state: FloatArray  # [L, H]

    @classmethod
    def load(cls, package: Path, threads: int = 0) -> StepGraph:
        manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
        tokenizer = manifest["tokenizer"]
        vocab = json.loads((package / tokenizer["vocabulary_file"]).read_text(encoding="utf-8"))
        graphs = manifest["graphs"]
        sequence = graphs.get("sequence")
        graph = cls(
            step_session=ort_session(package / graphs["step"]["file"], threads),
            head_session=ort_session(package / graphs["head"]["file"], threads),
            sequence_session=(
                ort_session(package / sequence["file"], threads) if sequence else None
            ),
            layers=int(manifest["layers"]),
            hidden=int(manifest["hidden_size"]),
            vocabulary=tuple(vocab["tokens"]),
            special=dict(tokenizer["special_tokens"]),
            initial_state=np.zeros((manifest["layers"], manifest["hidden_size"]), np.float32),
        )
        initial = manifest.get("initial_state", {})
        if initial.get("kind") == "after_token":
            token = np.array([graph.special[initial["token"]]], dtype=np.int64)
            _, state = graph.step(token, graph.zeros(1))
            graph.initial_state = np.ascontiguousarray(state[:, 0, :])
        return graph

    @property
    def outputs(self) -> int:
        return len(self.vocabulary)

    def zeros(self, batch: int) -> FloatArray:
        return np.zeros((self.layers, batch, self.hidden), dtype=np.float32)

    def initial(self, batch: int) -> FloatArray:
        """The initial state for ``batch`` sessions, ``[L, B, H]``."""
        return np.ascontiguousarray(
            np.broadcast_to(self.initial_state[:, None, :], (self.layers, batch, self.hidden))
        )

    def step(self, tokens: IntArray, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        logits, new_state = self.step_session.run(None, {"tokens": tokens, "state": state})
        return logits, new_state

    def head(self, state: FloatArray) -> FloatArray:
        (logits,) = self.head_session.run(None, {"state": state})
        return logits  # type: ignore[no-any-return]

    def run_sequence(self, tokens: IntArray, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """One run of the sequence graph over ``tokens`` [T] for one session:
        ``(tokens [B,T], lengths [B], state) -> (logits [B,K], state_out)``."""
        assert self.sequence_session is not None
        logits, new_state = self.sequence_session.run(
            None,
            {
                "tokens": tokens.reshape(1, -1),
                "lengths": np.array([len(tokens)], dtype=np.int64),
                "state": state,
            },
        )
        return logits, new_state


def softmax_rows(logits: FloatArray) -> FloatArray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def sample_rows(logits: FloatArray, rng: np.random.Generator) -> IntArray:
    """One token per row from softmax(logits) at temperature 1 (inverse CDF)."""
    cumulative = np.cumsum(softmax_rows(logits), axis=1)
    draws = rng.random((logits.shape[0], 1), dtype=np.float32) * cumulative[:, -1:]
    picked = (cumulative < draws).sum(axis=1)
    tokens: IntArray = np.minimum(picked, logits.shape[1] - 1).astype(np.int64)
    return tokens


def top_k_row(probabilities: FloatArray, k: int) -> list[tuple[int, float]]:
    """The k most probable ids of one row, most probable first (partial selection)."""
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    ordered = candidates[np.argsort(-probabilities[candidates], kind="stable")]
    return [(int(i), float(probabilities[i])) for i in ordered]
