"""The rnnserve-server command as a real process: start-up, config logging, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SERVER, SHARED_STATE_KEYS, ServerProcess

from rnnserve import Client, Unavailable


@pytest.fixture
def running(models_dir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        "--models",
        str(models_dir),
        "--shutdown-grace-s",
        "10",
        env={
            "RNNSERVE_LOG_JSON": "true",
            "RNNSERVE_MAX_SESSIONS": "77",
            "RNNSERVE_STATE_KEYS": SHARED_STATE_KEYS,
        },
    )
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait()
        server._reader.join(5)
        assert server.process.stderr is not None
        server.process.stderr.close()


def test_configuration_is_logged_once_as_json(running: ServerProcess, model_name: str) -> None:
    records = [json.loads(line) for line in running.lines if line.startswith("{")]
    configs = [r for r in records if r["message"].startswith("configuration: ")]
    assert len(configs) == 1
    config = json.loads(configs[0]["message"].removeprefix("configuration: "))
    assert config["max_sessions"] == 77 and config["shutdown_grace_s"] == 10.0
    assert config["state_keys"] == "***"  # a secret: never in the log
    assert not any(SHARED_STATE_KEYS in line for line in running.lines)
    assert any(r.get("model") == f"{model_name}/1" for r in records)  # structured fields
    with Client(running.address) as client:
        assert client.health() == "SERVING"


def test_sigterm_drains_in_flight_calls_then_exits(running: ServerProcess, model_name: str) -> None:
    with Client(running.address, timeout=30) as client:
        session = client.create_session(model_name)
        stream = session.generate("The ", max_tokens=3000, temperature=1.0, seed=3)
        first = next(stream)
        running.process.send_signal(signal.SIGTERM)
        rest = list(stream)  # the in-flight generation runs to its end
        assert rest[-1].finish_reason in ("length", "end-token")
        assert rest[-1].steps > first.steps
    assert running.process.wait(30) == 0
    assert any("shutting down" in line for line in running.lines)
    with Client(running.address, timeout=2) as late, pytest.raises(Unavailable):
        late.list_models()


def test_a_bad_setting_exits_2_with_its_name(tmp_path: Path) -> None:
    shown = subprocess.run(
        [*SERVER, "--max-batch", "0"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 2
    assert "max_batch = 0 is invalid; allowed: 1..65536" in shown.stderr


def test_cuda_without_cuda_fails_clearly(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    shown = subprocess.run(
        [*SERVER, "--models", str(tmp_path), "--port", "0", "--provider", "cuda"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 1
    assert "provider=cuda was requested but onnxruntime offers only" in shown.stderr


def test_json_logs_carry_session_and_model_ids(running: ServerProcess, model_name: str) -> None:
    from rnnserve import InvalidArgument

    with Client(running.address) as client, client.create_session(model_name) as session:
        with pytest.raises(InvalidArgument):
            session.step(text="")
        session_id = session.id
    time.sleep(0.3)
    records = [json.loads(line) for line in running.lines if line.startswith("{")]
    refused = [r for r in records if "INVALID_ARGUMENT" in r["message"]]
    assert refused and refused[-1]["session"] == session_id
