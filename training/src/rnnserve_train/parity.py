"""The parity gate: the numpy reference, the torch module and onnxruntime must agree.

Each implementation runs on its own: it builds its initial state (``bos`` fed to a zero
state), then decodes greedily for ``steps`` steps, feeding back its own argmax. Row 0
starts from the head's output for the initial state; the other rows are forced to a
different first token so the batch holds different sequences. Every step's state must
agree with the reference to ``tolerance`` (max abs diff), every step's logits to
``tolerance + LOGITS_RTOL * |reference logit|``, and the tokens must be identical.

Why the relative term for logits only: states are bounded by tanh, but a logit is a
float32 dot product whose rounding grows with its magnitude; onnxruntime's GEMM alone is
3e-6 off a float64 reference at |logit| = 13 for a 256-unit layer. 1e-6 is about 16 ulps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import torch

from rnnserve_train.model import RNNLanguageModel
from rnnserve_train.reference import ReferenceModel

DEFAULT_STEPS = 200
DEFAULT_TOLERANCE = 1e-5
LOGITS_RTOL = 1e-6
DEFAULT_BATCH = 4


class ParityError(RuntimeError):
    """Two implementations of one model disagree."""


class StepModel(Protocol):
    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def head(self, state: np.ndarray) -> np.ndarray: ...


class TorchStepModel:
    def __init__(self, model: RNNLanguageModel) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, new = self.model.step(torch.from_numpy(tokens), torch.from_numpy(state))
        return logits.numpy(), new.numpy()

    @torch.no_grad()
    def head(self, state: np.ndarray) -> np.ndarray:
        return self.model.head(torch.from_numpy(state)).numpy()


class OnnxStepModel:
    """The step and head graphs on onnxruntime's CPU provider."""

    def __init__(self, step_path: Path, head_path: Path) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.step_session = ort.InferenceSession(str(step_path), options, providers=providers)
        self.head_session = ort.InferenceSession(str(head_path), options, providers=providers)

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, new = self.step_session.run(
            ["logits", "state_out"], {"tokens": tokens, "state": state}
        )
        return logits, new

    def head(self, state: np.ndarray) -> np.ndarray:
        (logits,) = self.head_session.run(["logits"], {"state": state})
        return logits  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Trajectory:
    tokens: np.ndarray  # [steps, B] the token fed at each step
    logits: np.ndarray  # [steps + 1, B, K] head of the initial state, then each step's
    states: np.ndarray  # [steps + 1, L, B, H] initial state, then each step's


@dataclass(frozen=True)
class ParityReport:
    steps: int
    batch: int
    max_abs_diff: dict[str, float]  # "torch" and "onnxruntime", against the reference

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "batch": self.batch, "max_abs_diff": self.max_abs_diff}


def run_greedy(
    impl: StepModel,
    *,
    start_token: int,
    forced: np.ndarray,
    layers: int,
    hidden: int,
    steps: int,
) -> Trajectory:
    """``forced`` [B]: the first token of each row, -1 for the greedy choice."""
    batch = len(forced)
    state = np.zeros((layers, batch, hidden), dtype=np.float32)
    _, state = impl.step(np.full(batch, start_token, dtype=np.int64), state)
    state = state.astype(np.float32)
    logits = impl.head(state)
    tokens, all_logits, all_states = [], [logits], [state]
    for t in range(steps):
        chosen = np.argmax(logits, axis=-1).astype(np.int64)
        if t == 0:
            chosen = np.where(forced >= 0, forced, chosen)
        logits, state = impl.step(chosen, state)
        state = state.astype(np.float32)  # the served state is float32 between steps
        tokens.append(chosen)
        all_logits.append(logits)
        all_states.append(state)
    return Trajectory(np.stack(tokens), np.stack(all_logits), np.stack(all_states))


def check_parity(
    model: RNNLanguageModel,
    weights: dict[str, np.ndarray],
    step_path: Path,
    head_path: Path,
    start_token: int,
    *,
    steps: int = DEFAULT_STEPS,
    batch: int = DEFAULT_BATCH,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Raise ParityError unless reference, torch and onnxruntime agree (see module doc)."""
    vocab = model.vocab_size
    forced = np.array([-1, *((7 * np.arange(1, batch) + 3) % vocab)], dtype=np.int64)

    def decode(impl: StepModel) -> Trajectory:
        return run_greedy(
            impl,
            start_token=start_token,
            forced=forced,
            layers=model.layers,
            hidden=model.hidden_size,
            steps=steps,
        )

    reference = decode(ReferenceModel(model.cell_name, weights))
    runs = {
        "torch": decode(TorchStepModel(model)),
        "onnxruntime": decode(OnnxStepModel(step_path, head_path)),
    }
    diffs: dict[str, float] = {}
    for name, run in runs.items():
        mismatch = np.nonzero((run.tokens != reference.tokens).any(axis=1))[0]
        # Values are compared up to the logits that chose the first differing token, so
        # a numerical difference is reported as such rather than as its consequence.
        horizon = int(mismatch[0]) + 1 if len(mismatch) else steps + 1
        for what, ours, theirs, rtol in (
            ("logits", run.logits[:horizon], reference.logits[:horizon], LOGITS_RTOL),
            ("state", run.states[:horizon], reference.states[:horizon], 0.0),
        ):
            error = np.abs(ours - theirs).reshape(len(ours), -1)
            allowed = tolerance + rtol * np.abs(theirs).reshape(len(theirs), -1)
            excess = (error - allowed).max(axis=1)
            worst = int(np.argmax(excess))
            if excess[worst] > 0:
                raise ParityError(
                    f"{what} of {name} and the numpy reference differ by "
                    f"{error[worst].max():.3g} after step {worst} (tolerance {tolerance:g}"
                    + (f" + {rtol:g} * |reference|)" if rtol else ")")
                )
            diffs[name] = max(diffs.get(name, 0.0), float(error.max()))
        if len(mismatch):
            t = int(mismatch[0])
            raise ParityError(
                f"greedy tokens of {name} and the numpy reference differ at step {t}: "
                f"{run.tokens[t].tolist()} vs {reference.tokens[t].tolist()}"
            )
    return ParityReport(steps=steps, batch=batch, max_abs_diff=diffs)
