"""The parity gate: the numpy reference, the torch module and onnxruntime must agree.

Each implementation runs on its own, with its own graphs:

1. it builds a session's initial state the way the manifest says: zeros, ``bos`` fed to
   zeros, or the encoder's state for a source (the condition's state for a condition),
   then the start token;
2. it decodes greedily for ``steps`` steps, feeding back its own state and its own
   argmax. Row 0 starts from the head's output; the other rows are forced to a different
   first token so the batch holds different sequences. A model whose output is not the
   next token (a classifier, a model of float vectors) is fed the same seeded random
   inputs by every implementation instead (its state is still its own, fed back);
3. it consumes a batch of random prompts of different lengths in one call of its
   sequence graph, from the initial state (as a session's first prompt).

Checks, against the float64 reference:

* exactness of every function, at ``tolerance`` (1e-5): the initial state; and every step
  of the step graph, and of the sequence graph fed one token, *given the reference's
  state and token at that step* (so each step is checked on its own);
* the free-running runs: identical greedy tokens, and states within ``DRIFT_TOLERANCE``;
  the ragged prompts (which check the per-row lengths), within the same. Feeding back its
  own state, a float32 implementation drifts from a float64 one by its rounding times the
  recurrence's amplification, which a trained model can make 1e-5 in a few dozen steps
  without any error in the graph; an error in the graph is orders of magnitude larger.

Logits get ``tolerance * (1 + ‖W_ya‖∞) + LOGITS_RTOL * |reference logit|``: a logit is
``W_ya a + b_y``, so a state off by ε moves it by up to ε‖W_ya‖∞ (the largest row sum of
|W_ya|; a trained classifier's head easily has 20), and it is a float32 dot product whose
rounding grows with its magnitude (onnxruntime's GEMM alone is 3e-6 off a float64
reference at |logit| = 13 for a 256-unit layer; 1e-6 is about 16 ulps).
"""

from __future__ import annotations

from collections.abc import Mapping
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
PROMPT_STEPS = 33
DRIFT_TOLERANCE = 1e-3


class ParityError(RuntimeError):
    """Two implementations of one model disagree."""


class Implementation(Protocol):
    """The graphs of a package, as one implementation computes them."""

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def head(self, state: np.ndarray) -> np.ndarray: ...
    def sequence(
        self, tokens: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def encode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...
    def condition(self, indices: np.ndarray) -> np.ndarray: ...


class TorchImplementation:
    def __init__(self, model: RNNLanguageModel) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, new = self.model.step(torch.from_numpy(tokens), torch.from_numpy(state))
        return logits.numpy(), new.numpy()

    @torch.no_grad()
    def head(self, state: np.ndarray) -> np.ndarray:
        return self.model.head(torch.from_numpy(state)).numpy()

    @torch.no_grad()
    def sequence(
        self, tokens: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, new = self.model.sequence(
            torch.from_numpy(tokens), torch.from_numpy(lengths), torch.from_numpy(state)
        )
        return logits.numpy(), new.numpy()

    @torch.no_grad()
    def encode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.model.encode(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()

    @torch.no_grad()
    def condition(self, indices: np.ndarray) -> np.ndarray:
        return self.model.condition_state(torch.from_numpy(indices)).numpy()


class OnnxImplementation:
    """The package's graphs on onnxruntime's CPU provider."""

    def __init__(self, graphs: Mapping[str, Path]) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.sessions = {
            kind: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for kind, path in graphs.items()
        }

    def _run(self, kind: str, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run a graph on its inputs in order (its first is ``tokens`` or ``inputs``)."""
        session = self.sessions[kind]
        names = [arg.name for arg in session.get_inputs()]
        return list(session.run(None, dict(zip(names, inputs, strict=True))))

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, new = self._run("step", tokens, state)
        return logits, new

    def head(self, state: np.ndarray) -> np.ndarray:
        return self._run("head", state)[0]

    def sequence(
        self, tokens: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, new = self._run("sequence", tokens, lengths, state)
        return logits, new

    def encode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self._run("encoder", tokens, lengths)[0]

    def condition(self, indices: np.ndarray) -> np.ndarray:
        return self._run("condition", indices)[0]


@dataclass(frozen=True)
class Start:
    """How a session's state begins (the manifest's ``initial_state``) and, for an
    encoder or condition, the inputs the check feeds it."""

    kind: str  # zeros, after_token, encoder or condition
    token: int | None  # fed after the graph's state (or to zeros for after_token)
    conditions: int = 0


@dataclass(frozen=True)
class Trajectory:
    start: np.ndarray  # [S, B, H] the encoder's or condition's state (zeros otherwise)
    tokens: np.ndarray  # [steps, B] the token fed at each step ([steps, B, n_x] vectors)
    logits: np.ndarray  # [steps + 1, B, K] head of the initial state, then each step's
    states: np.ndarray  # [steps + 1, S, B, H] initial state, then each step's
    prompt_logits: np.ndarray  # [B, K] the sequence graph's output for the prompts
    prompt_state: np.ndarray  # [S, B, H]


@dataclass(frozen=True)
class ParityReport:
    steps: int
    batch: int
    graphs: tuple[str, ...]
    # against the reference, per implementation: "torch"/"onnxruntime" (the states of each
    # step given the reference's state), "... logits" (their logits), "... drift" (the
    # states when feeding back their own)
    max_abs_diff: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "batch": self.batch,
            "graphs": list(self.graphs),
            "max_abs_diff": self.max_abs_diff,
        }


@dataclass(frozen=True)
class Probe:
    """The inputs every implementation gets: forced first tokens (or, for a model of
    float vectors, the vectors of every step), a source or conditions for the start, and
    prompts for the sequence graph."""

    forced: np.ndarray  # [B]: the first token of each row, -1 for the greedy choice
    source: np.ndarray  # [B, S]
    source_lengths: np.ndarray  # [B]
    conditions: np.ndarray  # [B]
    prompts: np.ndarray  # [B, PROMPT_STEPS] (tokens) or [B, PROMPT_STEPS, n_x] (vectors)
    prompt_lengths: np.ndarray  # [B]
    # [steps, B] tokens or [steps, B, n_x] vectors: every step's inputs, for a model whose
    # output is not fed back as its next input (None: greedy decoding)
    inputs: np.ndarray | None = None


def make_probe(
    vocab: int,
    batch: int,
    conditions: int,
    *,
    input_size: int = 0,
    steps: int = 0,
    greedy: bool = True,
) -> Probe:
    """The probe of a token model (``vocab``) or, with ``input_size``, of a model reading
    float vectors (standard normal, as standardised features are); ``greedy``: a token
    model feeds back its own choices, else seeded random tokens."""
    rng = np.random.default_rng(20261127)
    lengths = np.array([PROMPT_STEPS, 1, *rng.integers(2, PROMPT_STEPS, batch)])[:batch]
    source_lengths = np.array([12, 1, *rng.integers(2, 12, batch)])[:batch]
    vocab = max(vocab, 1)
    inputs: np.ndarray | None = None
    if input_size:
        prompts = rng.standard_normal((batch, PROMPT_STEPS, input_size)).astype(np.float32)
        inputs = rng.standard_normal((steps, batch, input_size)).astype(np.float32)
    else:
        prompts = rng.integers(0, vocab, (batch, PROMPT_STEPS)).astype(np.int64)
        if not greedy:
            inputs = rng.integers(0, vocab, (steps, batch)).astype(np.int64)
    return Probe(
        forced=np.array([-1, *((7 * np.arange(1, batch) + 3) % vocab)], dtype=np.int64),
        source=rng.integers(0, vocab, (batch, 12)).astype(np.int64),
        source_lengths=source_lengths.astype(np.int64),
        conditions=(np.arange(batch) % max(conditions, 1)).astype(np.int64),
        prompts=prompts,
        prompt_lengths=lengths.astype(np.int64),
        inputs=inputs,
    )


def run(
    impl: Implementation,
    start: Start,
    probe: Probe,
    *,
    rows: int,
    hidden: int,
    steps: int,
) -> Trajectory:
    batch = len(probe.forced)
    if start.kind == "encoder":
        state = impl.encode(probe.source, probe.source_lengths)
    elif start.kind == "condition":
        state = impl.condition(probe.conditions)
    else:
        state = np.zeros((rows, batch, hidden))
    state = state.astype(np.float32)  # the served state is float32 between steps
    begin = state
    if start.token is not None:
        _, state = impl.step(np.full(batch, start.token, dtype=np.int64), state)
        state = state.astype(np.float32)
    logits = impl.head(state)
    tokens, all_logits, all_states = [], [logits], [state]
    for t in range(steps):
        if probe.inputs is not None:
            chosen = probe.inputs[t]
        else:
            chosen = np.argmax(logits, axis=-1).astype(np.int64)
            if t == 0:
                chosen = np.where(probe.forced >= 0, probe.forced, chosen)
        logits, state = impl.step(chosen, state)
        state = state.astype(np.float32)
        tokens.append(chosen)
        all_logits.append(logits)
        all_states.append(state)
    prompt_logits, prompt_state = impl.sequence(probe.prompts, probe.prompt_lengths, all_states[0])
    return Trajectory(
        begin,
        np.stack(tokens) if tokens else np.zeros((0, batch), np.int64),
        np.stack(all_logits),
        np.stack(all_states),
        prompt_logits,
        prompt_state,
    )


def _compare(
    name: str, what: str, ours: np.ndarray, theirs: np.ndarray, *, tolerance: float, rtol: float
) -> float:
    """Max abs difference; ParityError (naming the first bad step) if beyond tolerance."""
    ours, theirs = np.atleast_2d(ours), np.atleast_2d(theirs)
    error = np.abs(ours - theirs).reshape(len(ours), -1)
    allowed = tolerance + rtol * np.abs(theirs).reshape(len(theirs), -1)
    excess = (error - allowed).max(axis=1)
    worst = int(np.argmax(excess))
    if excess[worst] > 0:
        raise ParityError(
            f"{what} of {name} and the numpy reference differ by {error[worst].max():.3g} "
            f"at step {worst} (tolerance {tolerance:.3g}"
            + (f" + {rtol:g} * |reference|)" if rtol else ")")
        )
    return float(error.max())


@dataclass(frozen=True)
class Stepwise:
    """An implementation's outputs when fed the reference's own state and token."""

    logits: np.ndarray  # [steps, B, K]
    states: np.ndarray  # [steps, S, B, H]
    sequence_states: np.ndarray  # [steps, S, B, H]: the sequence graph, one token each


def stepwise(impl: Implementation, reference: Trajectory) -> Stepwise:
    logits, states, sequence_states = [], [], []
    ones = np.ones(reference.tokens.shape[1], dtype=np.int64)
    for t, tokens in enumerate(reference.tokens):
        state = reference.states[t].astype(np.float32)
        step_logits, step_state = impl.step(tokens, state)
        logits.append(step_logits)
        states.append(step_state)
        sequence_states.append(impl.sequence(tokens[:, None], ones, state)[1])
    return Stepwise(np.stack(logits), np.stack(states), np.stack(sequence_states))


def check_parity(
    model: RNNLanguageModel,
    weights: dict[str, np.ndarray],
    graphs: Mapping[str, Path],
    start: Start,
    *,
    steps: int = DEFAULT_STEPS,
    batch: int = DEFAULT_BATCH,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Raise ParityError unless reference, torch and onnxruntime agree (see module doc)."""
    probe = make_probe(
        model.vocab_size,
        batch,
        start.conditions,
        input_size=model.input_size,
        steps=steps,
        greedy=model.output_size == model.vocab_size,
    )

    def trajectory(impl: Implementation) -> Trajectory:
        return run(
            impl,
            start,
            probe,
            rows=model.state_rows,
            hidden=model.hidden_size,
            steps=steps,
        )

    reference = trajectory(ReferenceModel(model.cell_name, weights, vectors=bool(model.input_size)))
    implementations: dict[str, Implementation] = {
        "torch": TorchImplementation(model),
        "onnxruntime": OnnxImplementation(graphs),
    }
    output_gain = float(np.abs(weights["W_ya"]).sum(axis=1).max())
    logits_tolerance = tolerance * (1.0 + output_gain)
    diffs: dict[str, float] = {}
    for name, impl in implementations.items():
        exact = stepwise(impl, reference)
        free = trajectory(impl)
        checks = [
            ("initial state", free.start[None], reference.start[None], tolerance, 0.0),
            ("state", exact.states, reference.states[1:], tolerance, 0.0),
            ("logits", exact.logits, reference.logits[1:], logits_tolerance, LOGITS_RTOL),
            ("sequence state", exact.sequence_states, reference.states[1:], tolerance, 0.0),
        ]
        for what, ours, theirs, allowed, rtol in checks:
            key = f"{name} logits" if what == "logits" else name
            diffs[key] = max(
                diffs.get(key, 0.0),
                _compare(name, what, ours, theirs, tolerance=allowed, rtol=rtol),
            )
        mismatch = np.nonzero((free.tokens != reference.tokens).any(axis=1))[0]
        if len(mismatch):
            t = int(mismatch[0])
            raise ParityError(
                f"greedy tokens of {name} and the numpy reference differ at step {t}: "
                f"{free.tokens[t].tolist()} vs {reference.tokens[t].tolist()}"
            )
        drift = [
            ("free-running state", free.states, reference.states),
            ("prompt state", free.prompt_state[None], reference.prompt_state[None]),
        ]
        for what, ours, theirs in drift:
            diffs[f"{name} drift"] = max(
                diffs.get(f"{name} drift", 0.0),
                _compare(name, what, ours, theirs, tolerance=DRIFT_TOLERANCE, rtol=0.0),
            )
    return ParityReport(steps=steps, batch=batch, graphs=tuple(graphs), max_abs_diff=diffs)
