"""Generation: sample tokens one by one from a session, feeding each back (Generate).

A call validates its options, feeds the prompt, samples the first token, and then hands
itself to the model's chunked generation as a job (``generation.Generation``,
``chunks``): every generating session advances K tokens per run of the generation graph,
fed and sampled inside onnxruntime. Where a model has no generation graph (or
generate_chunk_tokens is 0) the job goes to the step batcher instead, one token per run
of the step graph, sampled together in numpy: the reference the chunks must equal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve_server import limits, tracing
from rnnserve_server.core import Core
from rnnserve_server.errors import FailedPrecondition, out_of_range, over_limit
from rnnserve_server.generation import GenerateEvent, Generation
from rnnserve_server.inputs import TokenInput, check_request_id
from rnnserve_server.repository import Model
from rnnserve_server.sampling import SamplingParams
from rnnserve_server.session import LastCall, Session
from rnnserve_server.shield import shielded

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_STOP_TOKENS = 64


@dataclass(frozen=True)
class GenerateOptions:
    max_tokens: int = 0
    temperature: float | None = None
    top_k: int = 0
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    tokens_per_message: int = 1  # events handed over at a time (the caller's grouping)


class Generating:
    def __init__(self, core: Core) -> None:
        self.core = core

    def checked(self, model: Model, options: GenerateOptions) -> tuple[int, SamplingParams]:
        manifest = model.package.manifest
        if manifest.output.kind != "vocabulary":
            raise FailedPrecondition(
                f"model {manifest.name} outputs {manifest.output.kind}, not tokens: "
                "Generate needs a vocabulary output head; use Step"
            )
        options = self.with_model_defaults(model, options)
        max_tokens = options.max_tokens
        limit = self.core.config.max_generate_tokens
        if max_tokens > limit:
            raise over_limit("max_tokens", max_tokens, limit, "max_generate_tokens")
        size = model.package.vocabulary.size
        params = SamplingParams.checked(
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            vocabulary=size,
        )
        allowed = model.config.allowed
        for name, value in (
            ("temperature", params.temperature),
            ("top_k", params.top_k),
            ("top_p", params.top_p),
            ("max_tokens", max_tokens),
        ):
            if name in allowed and value not in allowed[name]:
                shown = round(value, 6)  # the float32 the request carried, as it was written
                raise out_of_range(
                    name, shown, f"{allowed[name]} (model {model.name}: {model.config.path})"
                )
        if len(options.stop) > MAX_STOP_STRINGS:
            raise out_of_range(
                "stop", f"{len(options.stop)} strings", f"at most {MAX_STOP_STRINGS}"
            )
        for i, s in enumerate(options.stop):
            if not 0 < len(s) <= MAX_STOP_LENGTH:
                raise out_of_range(f"stop[{i}]", s[:20], f"1 .. {MAX_STOP_LENGTH} characters")
        if len(options.stop_token_ids) > MAX_STOP_TOKENS:
            raise out_of_range(
                "stop_token_ids", f"{len(options.stop_token_ids)} ids", f"at most {MAX_STOP_TOKENS}"
            )
        for i, token in enumerate(options.stop_token_ids):
            if not 0 <= token < size:
                raise out_of_range(f"stop_token_ids[{i}]", token, f"0 .. {size - 1}")
        return max_tokens, params

    @staticmethod
    def with_model_defaults(model: Model, options: GenerateOptions) -> GenerateOptions:
        """The call's sampling values, where it leaves one unset (None, or 0 for top_k and
        max_tokens) the model's config.toml's, else the built-in default."""
        config = model.config
        return dataclasses.replace(
            options,
            max_tokens=options.max_tokens or int(config.default_sampling("max_tokens")),
            temperature=(
                config.sampling.get("temperature")
                if options.temperature is None
                else options.temperature
            ),
            top_k=options.top_k or int(config.default_sampling("top_k")),
            top_p=config.sampling.get("top_p") if options.top_p is None else options.top_p,
        )

    async def generate(
        self,
        session: Session,
        prompt: TokenInput,
        options: GenerateOptions,
        *,
        request_id: str = "",
    ) -> AsyncGenerator[GenerateEvent, None]:
        """Sample tokens one by one, feeding each back; see GenerateRequest in the proto.

        Raises its validation errors before the first event. If the caller goes away
        the task is cancelled at its next await: every token already yielded has been
        fed into the session, and nothing after it. A retry (``request_id`` of the
        session's last call) yields that call's tokens again and, if it was cut off,
        continues it with the sampling state it stopped at.
        """
        started = time.perf_counter()
        model = session.model
        max_tokens, params = self.checked(model, options)
        stats = self.core.stats.generation_of(f"{model.name}/{model.version}")
        check_request_id(request_id)
        tokenizer = model.package.vocabulary
        batcher = self.core.batcher(model)
        chunker = await self.core.chunker(model)
        advance = batcher.advance if chunker is None else chunker.advance
        budget = limits.current()
        budget.spend(max_tokens)  # the tokens not generated are given back at the end
        fed = 0
        gone = False
        try:
            ids = self.core.encode(model, prompt, field="prompt") if prompt.given else None
            async with session.lock:
                await self.core.store.load(session)
                last = session.last
                earlier = last.reply if last and session.answered(request_id) else None
                if earlier is None:  # a retry continues a call that had room for all of it
                    session.ensure_room((0 if ids is None else len(ids)) + max_tokens)
                rng = session.rng
                if options.seed is not None:
                    rng = np.random.Generator(np.random.PCG64(options.seed))
                    if earlier is not None and earlier["rng"] is not None:
                        rng.bit_generator.state = earlier["rng"]
                reply: dict[str, Any] = earlier or {
                    "base": -1,
                    "tokens": [],
                    "finish": None,
                    "rng": None,
                }
                generation = Generation(
                    session,
                    params,
                    rng,
                    tokenizer,
                    max_tokens=max_tokens,
                    stop=options.stop,
                    stop_tokens=frozenset(options.stop_token_ids),
                    per_message=options.tokens_per_message,
                    record=reply["tokens"],
                    keep_draws=bool(request_id),
                    stats=stats,
                )
                for token, probability in reply["tokens"]:  # the retried call's tokens, again
                    steps = reply["base"] + generation.produced + 1
                    yield generation.replay(token, probability, steps)
                    if generation.finished:
                        return
                if reply["finish"] == "end_token":
                    yield GenerateEvent(None, session.steps, "end_token")
                    return
                try:
                    logits = await (  # the prompt, unless a cut-off earlier try fed it
                        self.core.feed(session, ids)
                        if ids is not None and reply["base"] < 0
                        else self.core.current_logits(session)
                    )
                    if reply["base"] < 0:
                        reply["base"] = session.steps
                    before_draw = rng.bit_generator.state
                    token, probability = params.sample(logits, rng)
                    if token == generation.end_token:
                        reply["finish"] = "end_token"
                        session.touch()
                        yield GenerateEvent(None, session.steps, "end_token")
                        return
                    # From here this generation advances together with every other one: K
                    # tokens per run (or one), the next tokens sampled for all of them at once.
                    generation.start(token, probability, before_draw)
                    with tracing.span("rnnserve.decode", max_tokens=max_tokens) as decoding:
                        generation.trace = tracing.link()  # the runs link to it
                        first = True
                        while not generation.finished:
                            # what a run left is taken without a coroutine (once per token)
                            if generation.buffered:
                                events = generation.take(1)
                            else:
                                events = await advance(generation)
                            if first:  # the call's first token is on its way to the caller
                                stats.first_token.add(time.perf_counter() - started)
                                first = False
                            fed += len(events) - (events[-1].token is None)
                            for out in events:
                                reply["finish"] = out.finish_reason
                                yield out
                        if decoding is not None:
                            decoding.set_attribute("rnnserve.tokens", generation.produced)
                except (GeneratorExit, asyncio.CancelledError):
                    gone = True  # the caller went away: nobody to tell how the save went
                    raise
                finally:
                    # The state after the last token delivered; cut off with a token sampled
                    # but not fed: as if it was never drawn.
                    generation.settle(self.core.store.pool(model).states)
                    if chunker is not None:
                        chunker.leave(generation)
                    # What a retry needs: the tokens fed and, with a seed of the call's own,
                    # where its generator stands; then the session as it now is.
                    seeded = options.seed is not None
                    reply["rng"] = dict(rng.bit_generator.state) if seeded else None
                    session.last = LastCall(request_id, reply) if request_id else None
                    await shielded(
                        self.core.store.save(session), f"saving session {session.id}", gone
                    )
        finally:
            budget.refund(max_tokens - fed)
