"""Session lifecycle: create (from the model's start, a source, a condition or imported
state), look up, fork, export, close."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from rnnserve_server.core import Core
from rnnserve_server.errors import InvalidArgument, out_of_range
from rnnserve_server.inputs import NO_INPUT, TokenInput
from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray
from rnnserve_server.session import Session


class Lifecycle:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def lookup(self, session_id: str, owner: str = "") -> Session:
        """The open session ``session_id`` of ``owner``; NOT_FOUND if there is none
        (another owner's session answers exactly like an unknown one)."""
        return await self.core.store.lookup(session_id, owner)

    async def create(
        self,
        model: Model,
        *,
        idle_timeout_s: float = 0,
        owner: str = "",
        seed: int | None = None,
        state: bytes = b"",
        source: TokenInput = NO_INPUT,
        condition: str = "",
        session_id: str = "",
    ) -> Session:
        """A new session: from the model's initial state, an encoded source, a
        condition, or imported state bytes (exactly what the model's kind needs).
        ``session_id``: an id of the caller's choosing (ABORTED while it is open)."""
        core = self.core
        manifest = model.package.manifest
        kind = manifest.initial_state.kind
        core.store.check_idle_timeout(idle_timeout_s)
        initial: FloatArray | None = None
        steps = 0
        rng = None if seed is None else np.random.Generator(np.random.PCG64(seed))
        build: Callable[[], FloatArray] | None = None  # the graph run that makes the state
        if state:
            if source.given or condition:
                raise InvalidArgument("state: an imported state excludes source and condition")
            snapshot = core.state_codec.import_state(state, manifest)
            initial, steps = snapshot.state, snapshot.steps
            if rng is None:
                rng = snapshot.rng.generator()
        elif kind == "encoder":
            if condition:
                raise InvalidArgument(
                    f"condition: model {model.name} takes a source, not a condition"
                )
            if not source.given:
                raise InvalidArgument(
                    f"source: model {model.name} encodes a source: give source_tokens or text"
                )
            build = functools.partial(
                model.runtime.encode, core.encode(model, source, field="source")
            )
        elif kind == "condition":
            if source.given:
                raise InvalidArgument(f"source: model {model.name} takes a condition, not a source")
            if condition not in manifest.conditions:
                raise out_of_range("condition", condition, f"one of {list(manifest.conditions)}")
            build = functools.partial(model.runtime.condition, manifest.conditions.index(condition))
        elif source.given or condition:
            raise InvalidArgument(
                f"model {model.name} starts from its {kind} state; it takes no source or condition"
            )
        core.store.check_capacity(owner, model)
        if build is not None:
            initial = await core.infer(build)
        core.prepare(model)  # its generation graph, built while the caller gets going
        return await core.store.open(
            model,
            idle_timeout_s=idle_timeout_s,
            owner=owner,
            initial=initial,
            steps=steps,
            rng=rng,
            session_id=session_id,
        )

    async def fork(
        self, session: Session, *, idle_timeout_s: float = 0, owner: str = ""
    ) -> Session:
        """An independent copy: state, step count and sampling generator."""
        store = self.core.store
        async with session.lock:
            await store.load(session)
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = session.rng.bit_generator.state
            copy = await store.open(
                session.model,
                idle_timeout_s=idle_timeout_s,
                owner=owner,
                initial=store.state(session),
                steps=session.steps,
                rng=rng,
            )
            session.touch()
            return copy

    async def export(self, session: Session) -> bytes:
        """The session as signed bytes (statecodec), importable by ``create``."""
        store = self.core.store
        async with session.lock:
            await store.load(session)
            session.touch()
            return self.core.state_codec.export(
                session.model.package.manifest,
                steps=session.steps,
                rng=session.rng,
                state=store.state(session),
            )

    def exported_version(self, state: bytes) -> int | None:
        """The model version signed export bytes name (None: ``create`` says why not)."""
        return self.core.state_codec.peek_version(state)

    async def close(self, session: Session) -> None:
        """Close now; a call in flight on it ends with NOT_FOUND at its next step."""
        await self.core.store.close(session)

    async def close_named(self, session_id: str, owner: str) -> int:
        """Close the session ``session_id`` of ``owner`` (``close``); its step count."""
        return await self.core.store.close_named(session_id, owner)
