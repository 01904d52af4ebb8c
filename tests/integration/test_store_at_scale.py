"""The shared session store (a real redis-server) under many steps at once: the
connection pool waits instead of failing, a stalled Redis is UNAVAILABLE in bounded
time, not a hang, and the steps of one StepMany message share their round trips."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    SHARED_STATE_KEYS,
    RedisServer,
    ServerThread,
    assert_top_close,
    scrape,
    server_config,
    started,
)

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


def test_a_step_many_message_costs_a_few_round_trips_not_three_per_step(
    models_dir: Path, redis_server: RedisServer, model_name: str
) -> None:
    """Sessions opened on one replica, stepped in one message through another (which
    has never seen them): every step as on a server with sessions in memory, and the
    lookups, loads and saves of all of them in a few pipelines."""
    shared = server_config(models_dir, session_store=redis_server.url, state_keys=SHARED_STATE_KEYS)
    with (
        ServerThread(shared) as opener,
        ServerThread(dataclasses.replace(shared, metrics_port=0)) as stepper,
        ServerThread(server_config(models_dir)) as alone,
        Client(opener.address) as one,
        Client(stepper.address) as two,
        Client(alone.address) as control,
    ):
        port = stepper.running.metrics_port  # type: ignore[union-attr]
        assert port
        sessions = [one.create_session(model_name) for _ in range(STEPS)]
        controls = [control.create_session(model_name) for _ in range(STEPS)]
        tokens = [4 + i % 90 for i in range(STEPS)]

        def traffic() -> tuple[float, float]:
            samples = scrape(port)
            return (
                samples[("rnnserve_store_round_trips_total", ())],
                samples[("rnnserve_store_commands_total", ())],
            )

        def message(client: Client, opened: list[Any]) -> list[Any]:
            (answers,) = list(
                client.step_many(
                    [[StepInput(s.id, [t]) for s, t in zip(opened, tokens, strict=True)]]
                )
            )
            return answers

        before = traffic()
        for count in (1, 2):  # first seen by this replica, then its own copies
            got, expected = message(two, sessions), message(control, controls)
            for step, reference in zip(got, expected, strict=True):
                assert not isinstance(step, Exception), step
                assert step.steps == reference.steps == count
                assert_top_close(step, reference)
            after = traffic()
            # lookups (the first time only), loads and saves: one command each per step
            assert after[1] - before[1] == STEPS * (3 if count == 1 else 2)
            assert after[0] - before[0] <= 8  # in a few pipelines, not one per step
            before = after
        for session in sessions:
            one.close_session(session.id)


def test_a_store_that_lost_its_scripts_gets_them_again(
    narrow: ServerThread, model_name: str
) -> None:
    redis = narrow.redis  # type: ignore[attr-defined]
    with Client(narrow.address) as client:
        session = client.create_session(model_name)
        subprocess.run(
            ["redis-cli", "-s", str(redis.socket), "SCRIPT", "FLUSH"],
            check=True,
            capture_output=True,
        )
        assert session.step(tokens=[4, 5]).steps == 2  # NOSCRIPT: loaded again, sent again
        session.close()
