"""The shared session store (a real redis-server) under many steps at once: the
connection pool waits instead of failing, and a stalled Redis is UNAVAILABLE in bounded
time, not a hang."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SHARED_STATE_KEYS, RedisServer, ServerThread, server_config, started

from rnnserve import Client, StepInput, Unavailable

STEPS = 300


@pytest.fixture(scope="module")
def narrow(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A replica with two connections to a Redis of its own."""
    with (
        started(RedisServer(tmp_path_factory.mktemp("narrow-redis"))) as redis,
        ServerThread(
            server_config(
                models_dir,
                session_store=redis.url,
                state_keys=SHARED_STATE_KEYS,
                session_store_connections=2,
                session_store_timeout_s=1.0,
            )
        ) as server,
    ):
        server.redis = redis  # type: ignore[attr-defined]
        yield server


def test_many_steps_at_once_wait_for_a_connection(narrow: ServerThread, model_name: str) -> None:
    with Client(narrow.address, timeout=60) as client, Client(narrow.address) as other:
        sessions = [client.create_session(model_name) for _ in range(STEPS)]
        bystander = other.create_session(model_name)
        results: list[int] = []
        beside = threading.Thread(
            target=lambda: results.extend(bystander.step(tokens=[4]).steps for _ in range(20))
        )
        beside.start()
        (answers,) = list(client.step_many([[StepInput(s.id, [5]) for s in sessions]]))
        beside.join(60)
        assert [a.steps for a in answers if not isinstance(a, Exception)] == [1] * STEPS
        assert results == list(range(1, 21))  # another caller's calls meanwhile: all served
        for session in sessions:
            session.close()
        bystander.close()


def test_a_stalled_store_is_unavailable_in_bounded_time(
    narrow: ServerThread, model_name: str
) -> None:
    redis = narrow.redis  # type: ignore[attr-defined]
    with Client(narrow.address, timeout=60) as client:
        session = client.create_session(model_name)
        os.kill(redis.process.pid, signal.SIGSTOP)  # Redis stops answering, its socket open
        try:
            started_at = time.monotonic()
            with pytest.raises(Unavailable, match="cannot be reached"):
                session.step(tokens=[4])
            assert time.monotonic() - started_at < 30  # the store's timeout, not the call's
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        assert session.step(tokens=[4]).steps == 1  # Redis back: the session goes on
        session.close()
