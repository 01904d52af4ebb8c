"""Shared fixtures: a tiny model trained in this test session, real servers on port 0."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from support import SHARED_STATE_KEYS, ServerThread, build_zoo, server_config


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding the tiny character GRU, trained once per test session."""
    from rnnserve_train.api import build_tiny_package

    root = tmp_path_factory.mktemp("models")
    build_tiny_package(root)
    return root


@pytest.fixture(scope="session")
def tiny_package(models_dir: Path) -> Path:
    (package,) = sorted(models_dir.glob("*/*"))
    return package


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(server_config(models_dir, state_keys=SHARED_STATE_KEYS)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Any]:
    from rnnserve import Client

    with Client(server.address, timeout=60) as connected:
        yield connected


@pytest.fixture(scope="session")
def model_name(tiny_package: Path) -> str:
    return tiny_package.parent.name


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real redis-server for the shared session store, one per test session."""
    from support import RedisServer, started

    with started(RedisServer(tmp_path_factory.mktemp("redis"))) as running:
        yield running


# Property-based tests run the same examples everywhere (CI included) and keep no
# example database in the worktree; none of them has a time limit per example (each
# makes real gRPC calls, whose latency varies with the machine's load).
settings.register_profile("rnnserve", derandomize=True, database=None, deadline=None)
settings.load_profile("rnnserve")


@pytest.fixture(scope="session")
def tritonclient_python() -> Path:
    """The Python of tritonclient's own virtual environment (make tritonclient, which
    make test runs first); where it is missing the test is skipped, except in CI."""
    default = Path(__file__).parent.parent / ".venv-tritonclient" / "bin" / "python"
    python = Path(os.environ.get("RNNSERVE_TRITONCLIENT_PYTHON", default))
    if not python.exists():
        message = f"{python} is missing: make tritonclient"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def zoo(
    tiny_package: Path, model_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """A real server holding one model of each kind (support.build_zoo)."""
    root = build_zoo(tiny_package, tmp_path_factory.mktemp("zoo"), model_name)
    with ServerThread(server_config(root)) as running:
        assert not running.running.engine.repository.broken  # type: ignore[union-attr]
        yield running
