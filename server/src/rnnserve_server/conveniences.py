"""One-call conveniences over sessions: classify a whole sequence (Classify), encode a
source and decode it (Translate). Neither leaves a session behind."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from rnnserve_server import outputs
from rnnserve_server.core import Core
from rnnserve_server.errors import FailedPrecondition
from rnnserve_server.generating import GenerateOptions, Generating
from rnnserve_server.generation import GeneratedToken
from rnnserve_server.inputs import NO_INPUT, TokenInput, check_top_k
from rnnserve_server.lifecycle import Lifecycle
from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray, Inputs
from rnnserve_server.sampling import Top


@dataclass(frozen=True)
class Classification:
    top: Top
    final: list[float]
    steps: list[list[float]] = field(default_factory=list)


class Conveniences:
    def __init__(self, core: Core, lifecycle: Lifecycle, generating: Generating) -> None:
        self.core = core
        self.lifecycle = lifecycle
        self.generating = generating

    async def classify(
        self, model: Model, given: TokenInput, *, k: int | None, every_step: bool
    ) -> Classification:
        """Label probabilities for a whole sequence (tokens, text or float vectors) from
        the model's initial state."""
        kind = model.package.manifest.output.kind
        if kind in ("vocabulary", "regression"):
            raise FailedPrecondition(
                f"model {model.name} outputs a {kind}, not labels: Classify needs a "
                "label or sigmoid head; use Step" + (" or Generate" if kind == "vocabulary" else "")
            )
        k = check_top_k(k)
        inputs = self.core.encode(model, given, field="input")
        initial = model.runtime.initial_state[:, None, :]
        if every_step:
            rows: list[FloatArray] = await self.core.infer(
                _outputs_per_step, model, inputs, initial
            )
            per_step = [outputs.probabilities(model, r).astype(np.float32).tolist() for r in rows]
            last = rows[-1]
        else:
            logits, _ = await self.core.infer(model.runtime.run_inputs, inputs, initial)
            last, per_step = logits[0], []
        top, final, _ = outputs.describe(model, last, k, True)
        assert final is not None
        return Classification(top=top, final=final, steps=per_step)

    async def translate(
        self, model: Model, source: TokenInput, options: GenerateOptions, *, owner: str = ""
    ) -> tuple[list[GeneratedToken], str]:
        """Encode, decode until the end token or max_tokens; no session outlives the call."""
        if model.package.manifest.initial_state.kind != "encoder":
            raise FailedPrecondition(
                f"model {model.name} is not an encoder-decoder (its state starts from "
                f"{model.package.manifest.initial_state.kind}); Translate needs a seq2seq model"
            )
        if options.temperature is None and "temperature" not in model.config.sampling:
            options = dataclasses.replace(options, temperature=0.0)  # greedy, unless asked
        self.generating.checked(model, options)
        session = await self.lifecycle.create(model, owner=owner, source=source)
        tokens: list[GeneratedToken] = []
        finish = "length"
        try:
            async for event in self.generating.generate(session, NO_INPUT, options):
                if event.token is not None:
                    tokens.append(event.token)
                finish = event.finish_reason or finish
        finally:
            await self.lifecycle.close(session)
        return tokens, finish


def _outputs_per_step(model: Model, inputs: Inputs, state: FloatArray) -> list[FloatArray]:
    """The output row after every input of one sequence (worker thread)."""
    rows = []
    for x in inputs:
        row, state = model.runtime.step(x[None], state)
        rows.append(row[0])
    return rows
