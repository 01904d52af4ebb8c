"""The serving core as the fronts see it: one ``Engine`` per server, transport-free.

Each kind of call is a module of its own, all over one ``core.Core`` (models, session
store, batchers, inference threads):

    engine.sessions      lifecycle.Lifecycle        create, look up, fork, export, close
    engine.steps         stepping.Stepping          Step, StepStream, StepMany
    engine.generation    generating.Generating      Generate
    engine.conveniences  conveniences.Conveniences  Classify, Translate

The gRPC servicer (rnnserve.v1) is a thin layer over these, and so is every other front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from rnnserve_server.batcher import StepBatcher
from rnnserve_server.config import ServerConfig
from rnnserve_server.conveniences import Conveniences
from rnnserve_server.core import Core
from rnnserve_server.generating import Generating
from rnnserve_server.lifecycle import Lifecycle
from rnnserve_server.limits import Limits
from rnnserve_server.repository import Model, ReloadResult, Repository
from rnnserve_server.sessions import SessionStore
from rnnserve_server.stats import BatchStats, EngineStats
from rnnserve_server.stepping import Stepping


class Engine:
    def __init__(self, config: ServerConfig, repository: Repository) -> None:
        self.core = Core(config, repository)
        self.sessions = Lifecycle(self.core)
        self.steps = Stepping(self.core)
        self.generation = Generating(self.core)
        self.conveniences = Conveniences(self.core, self.sessions, self.generation)

    @property
    def config(self) -> ServerConfig:
        return self.core.config

    @property
    def repository(self) -> Repository:
        return self.core.repository

    @property
    def store(self) -> SessionStore:
        return self.core.store

    @property
    def limits(self) -> Limits:
        return self.core.limits

    @property
    def stats(self) -> EngineStats:
        return self.core.stats

    def batcher(self, model: Model) -> StepBatcher:
        """The batcher of a loaded model (made on first use)."""
        return self.core.batcher(model)

    def batch_stats(self) -> Iterator[tuple[str, BatchStats]]:
        for model, batcher in list(self.core.batchers.items()):
            yield f"{model.name}/{model.version}", batcher.stats

    def chunk_stats(self) -> Iterator[tuple[str, BatchStats]]:
        for model, building in list(self.core.chunkers.items()):
            chunker = self.core.built(building)
            if chunker is not None:
                yield f"{model.name}/{model.version}", chunker.stats

    @property
    def on_models_changed(self) -> Callable[[ReloadResult], Any] | None:
        return self.core.on_models_changed

    @on_models_changed.setter
    def on_models_changed(self, callback: Callable[[ReloadResult], Any] | None) -> None:
        self.core.on_models_changed = callback

    async def reload(self) -> ReloadResult:
        return await self.core.reload()

    async def load_model(self, name: str) -> ReloadResult:
        return await self.core.load_model(name)

    async def unload_model(self, name: str, version: int = 0) -> tuple[list[str], int]:
        return await self.core.unload_model(name, version)

    async def poll_repository(self, interval_s: float) -> None:
        await self.core.poll_repository(interval_s)

    async def close(self) -> None:
        await self.core.close()
