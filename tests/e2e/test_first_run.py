"""The first run: a server on an empty repository while the zoo trains into it.

A real rnnserve-server process (rescanning every 0.2 s) and the real ``train_zoo`` with
its real trainer subprocesses, on a tiny zoo (two small models, one job, few steps):
the first model is served while the second still trains, and the second is unavailable
(still training), not unknown, until it is written; then both serve.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from support import ServerProcess

from rnnserve import Client, Unavailable
from rnnserve.cli import main as cli
from rnnserve_train.zoo import train_zoo

TINY = (
    "--hidden_size=16",
    "--max_documents=600",
    "--max_steps=300",
    "--eval_every=300",
    "--parity_steps=10",
    "--sample_chars=8",
)
FIRST, SECOND = "name-generator", "name-language"  # the quick order: shortest first


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_each_model_is_served_while_the_others_train(tmp_path: Path) -> None:
    models, runs = tmp_path / "models", tmp_path / "runs"
    models.mkdir()
    server = ServerProcess("--models", str(models), "--repository-poll-s", "0.2")
    progress = io.StringIO()
    results: list[object] = []
    zoo = threading.Thread(
        target=lambda: results.extend(
            train_zoo(models, runs, [SECOND, FIRST], jobs=1, extra=TINY, stream=progress)
        )
    )
    try:
        with Client(server.address, timeout=30) as client:
            zoo.start()

            def first_served_second_training() -> bool:
                served = {m.name for m in client.list_models()}
                training = {m.name for m in client.training_models()}
                return FIRST in served and SECOND in training

            wait_for(first_served_second_training, f"{FIRST} served while {SECOND} trains")
            assert client.health() == "SERVING"
            assert client.health(f"rnnserve.v1.RnnServe/{FIRST}") == "SERVING"
            with client.create_session(FIRST, condition="it_IT") as session:
                assert session.step(text="M").top
            with pytest.raises(Unavailable, match=f"'{SECOND}' is still training"):
                client.create_session(SECOND)
            (training,) = client.training_models()
            assert training.name == SECOND and 0 <= training.step <= training.steps == 300
            shown = io.StringIO()
            with redirect_stdout(shown):
                assert cli(["--address", server.address, "models"]) == 0
            assert f"still training: {SECOND}" in shown.getvalue()
            assert FIRST in shown.getvalue().splitlines()[1]

            zoo.join(300)
            assert not zoo.is_alive()
            wait_for(
                lambda: {m.name for m in client.list_models()} == {FIRST, SECOND},
                "both models served",
            )
            assert client.training_models() == []
            client.classify(SECOND, text="Novák")
    finally:
        zoo.join(300)
        server.stop()
    assert [(run.name, run.status) for run in results] == [  # type: ignore[attr-defined]
        (FIRST, "trained"),
        (SECOND, "trained"),
    ]
    lines = progress.getvalue()
    assert f"{FIRST}: written to" in lines and "\r" not in lines
    log = (runs / f"{SECOND}.log").read_text()
    assert "step 300/300 (100%)" in log and "\r" not in log
    assert not list(models.glob("*/training.json"))
