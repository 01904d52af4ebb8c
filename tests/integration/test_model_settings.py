"""A model's config.toml applied by the serving core: batching, session limits and idle
timeouts, sampling defaults and allowed ranges; read again on every reload."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ServerThread, copy_package, server_config

from rnnserve import AsyncClient, Client, InvalidArgument, ResourceExhausted
from rnnserve_server.modelconfig import ModelConfig, ModelConfigError, ModelLimits

TUNED = "tuned"


def configure(repository: Path, text: str) -> Path:
    path = repository / TUNED / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def repository(tiny_package: Path, model_name: str, tmp_path: Path) -> Path:
    copy_package(tiny_package, tmp_path, TUNED)
    copy_package(tiny_package, tmp_path, model_name)  # no config.toml: the server's settings
    return tmp_path


@pytest.fixture
def served(repository: Path) -> Iterator[ServerThread]:
    configure(repository, "[batching]\nmax_batch = 2\nbatch_window_us = 2000\n")
    with ServerThread(server_config(repository, session_idle_timeout_s=600)) as server:
        yield server


def batch_sizes(server: ServerThread, name: str) -> list[int]:
    def read() -> list[int]:
        engine = server.running.engine  # type: ignore[union-attr]
        return list(engine.batcher(engine.repository.get(name)).stats.recent_batch_sizes)

    return server.run(read)


async def step_together(address: str, model: str, count: int) -> None:
    async with AsyncClient(address) as client:
        sessions = [await client.create_session(model) for _ in range(count)]
        for _ in range(3):
            await asyncio.gather(*(s.step(tokens=[5]) for s in sessions))
        for session in sessions:
            await session.close()


def test_batching_follows_the_models_config_and_its_reloads(
    served: ServerThread, repository: Path, model_name: str
) -> None:
    asyncio.run(step_together(served.address, TUNED, 8))
    assert max(batch_sizes(served, TUNED)) == 2  # its max_batch, with steps to spare
    configure(repository, "[batching]\nmax_batch = 8\nbatch_window_us = 2000\n")
    with Client(served.address) as client:
        assert client.reload_models().refused == []
    asyncio.run(step_together(served.address, TUNED, 8))
    assert max(batch_sizes(served, TUNED)) > 2  # the new max_batch holds at once


def test_session_limits_and_idle_timeouts_are_the_models(repository: Path, model_name: str) -> None:
    path = configure(repository, "[sessions]\nmax_sessions = 2\nidle_timeout_s = 30\n")
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        first, second = client.create_session(TUNED), client.create_session(TUNED, 0, 45)
        assert (first.idle_timeout_s, second.idle_timeout_s) == (30, 45)
        with pytest.raises(ResourceExhausted) as refused:
            client.create_session(TUNED)
        assert refused.value.details == (
            f"open sessions of model {TUNED} = 3 exceeds the server's limit of 2 "
            f"(sessions.max_sessions in {path})"
        )
        other = client.create_session(model_name)  # another model: the server's settings
        assert other.idle_timeout_s == 600
        first.close()
        third = client.create_session(TUNED)  # room again
        for session in (second, third, other):
            session.close()


def test_sampling_defaults_and_allowed_ranges_are_the_models(
    repository: Path, model_name: str
) -> None:
    path = configure(
        repository,
        "[sampling]\ntemperature = 0.0\nmax_tokens = 7\ntop_k = 3\n"
        "[sampling.allowed]\ntemperature = [0.0, 0.5]\ntop_k = [1, 10]\nmax_tokens = [1, 20]\n",
    )
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        with client.create_session(model_name) as plain:
            greedy = list(plain.generate("The ", max_tokens=7, temperature=0))
        with client.create_session(TUNED) as tuned:
            defaulted = list(tuned.generate("The "))  # temperature 0, 7 tokens: the config's
        assert [c.text for c in defaulted] == [c.text for c in greedy]
        assert defaulted[-1].finish_reason == "length"
        for option, value, allowed in [
            ("temperature", 0.9, "0 .. 0.5"),
            ("top_k", 50, "1 .. 10"),
            ("max_tokens", 30, "1 .. 20"),
        ]:
            with client.create_session(TUNED) as session, pytest.raises(InvalidArgument) as bad:
                session.generate_text("x", **{option: value})  # type: ignore[arg-type]
            assert bad.value.details == (
                f"{option} = {value} is out of range; allowed: {allowed} (model {TUNED}: {path})"
            )
        with client.create_session(TUNED) as session:  # within the ranges: as asked
            assert len(list(session.generate("x", max_tokens=12, temperature=0.4))) <= 12
        with client.create_session(model_name) as session:  # no config.toml: no such ranges
            session.generate_text("x", temperature=0.9, max_tokens=30, top_k=50)


def test_the_servers_limits_bound_a_models_config(tmp_path: Path) -> None:
    limits = ModelLimits(max_sessions=100, max_session_idle_timeout_s=60, max_generate_tokens=50)
    for text, message in [
        ("[sessions]\nidle_timeout_s = 61\n", "sessions.idle_timeout_s = 61 is invalid; "
         "allowed: 1..60 (the server's max_session_idle_timeout_s)"),
        ("[sessions]\nmax_sessions = 101\n", "sessions.max_sessions = 101 is invalid; "
         "allowed: 1..100 (the server's max_sessions)"),
        ("[sampling]\nmax_tokens = 51\n", "sampling.max_tokens = 51 is invalid; "
         "allowed: 1..50 (the server's max_generate_tokens)"),
        ("[sampling.allowed]\nmax_tokens = [1, 51]\n", "sampling.allowed.max_tokens = [1, 51] "
         "is invalid: lowest <= highest, both within 1..50"),
    ]:  # fmt: skip
        (tmp_path / "config.toml").write_text(text)
        with pytest.raises(ModelConfigError, match=re.escape(message)):
            ModelConfig.of(tmp_path, limits)
    (tmp_path / "config.toml").write_text("[sessions]\nmax_sessions = 5\n")
    with pytest.raises(ModelConfigError, match="cannot be counted with a shared session store"):
        ModelConfig.of(tmp_path, ModelLimits(shared_store=True))
