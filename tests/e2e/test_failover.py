"""Scale-out, for real: three rnnserve-server processes sharing sessions in Redis, behind
nginx (round robin, not sticky). Sessions stream through the balancer while one replica
is killed with SIGKILL and another is stopped with SIGTERM; the client's retry policy
carries on, and every session's outputs equal a control run on a single server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    SHARED_STATE_KEYS,
    Nginx,
    RedisServer,
    ServerProcess,
    ServerThread,
    server_config,
    started,
)

from rnnserve import Client

SESSIONS = 6
ROUNDS = 14
TOKENS = [4, 9, 5, 12, 7, 20, 6, 11, 15, 8, 13, 10]


def workload(client: Client, model: str, index: int, progress: list[int]) -> list[Any]:
    """One session's calls, each answer recorded: steps, then a seeded generation, in
    rounds. ``progress[index]`` counts the rounds done."""
    seen: list[Any] = []
    session = client.create_session(model, seed=100 + index)
    for round_ in range(ROUNDS):
        for t in TOKENS[round_ % 3 :: 3]:
            result = client.step(session.id, [(t + index) % 20 + 4])
            seen.append((result.steps, [(p.id, round(p.probability, 6)) for p in result.top]))
        chunks = list(client.generate(session.id, max_tokens=6, temperature=0.8))
        seen.append([t.id for chunk in chunks for t in chunk.tokens])
        seen.append(chunks[-1].steps)
        progress[index] = round_ + 1
    client.close_session(session.id)
    return seen


def run_all(address: str, model: str, during: Any = None) -> list[list[Any]]:
    """Every session's workload in a thread of its own; ``during(progress)`` runs beside."""
    results: list[list[Any]] = [[] for _ in range(SESSIONS)]
    errors: list[BaseException] = []
    progress = [0] * SESSIONS

    def one(index: int) -> None:
        try:
            with Client(address, timeout=30, retries=8) as client:
                results[index] = workload(client, model, index, progress)
        except BaseException as error:  # reported below, with the others
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    if during is not None:
        during(progress)
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


@pytest.fixture(scope="module")
def cluster(models_dir: Path, redis_server: RedisServer) -> Iterator[tuple[Nginx, list[Any]]]:
    env = {
        "RNNSERVE_SESSION_STORE": redis_server.url,
        "RNNSERVE_STATE_KEYS": SHARED_STATE_KEYS,
        "RNNSERVE_SHUTDOWN_GRACE_S": "10",
    }
    replicas = [ServerProcess("--models", str(models_dir), env=env) for _ in range(3)]
    directory = Path(redis_server.directory) / "nginx"
    directory.mkdir(exist_ok=True)
    try:
        with started(Nginx(directory, [r.address for r in replicas])) as balancer:
            yield balancer, replicas
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.kill()


def test_sessions_survive_a_killed_and_a_stopped_replica(
    cluster: tuple[Nginx, list[ServerProcess]], models_dir: Path, model_name: str
) -> None:
    balancer, replicas = cluster
    with ServerThread(server_config(models_dir)) as alone:
        control = run_all(alone.address, model_name)

    def faults(progress: list[int]) -> None:
        wait_for(lambda: min(progress) >= 3)
        replicas[0].kill()  # mid-call for some sessions: nothing acknowledged may be lost
        wait_for(lambda: min(progress) >= 8)
        replicas[1].stop()  # SIGTERM: in-flight calls finish, then it exits

    assert run_all(balancer.address, model_name, faults) == control
    assert replicas[0].process.returncode == -9
    assert replicas[1].process.returncode == 0
    assert replicas[2].process.poll() is None  # the last one carried everything at the end


def wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the workload made no progress"
        time.sleep(0.01)
