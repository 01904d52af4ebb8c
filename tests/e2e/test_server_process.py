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
    with ServerProcess(
        "--models",
        str(models_dir),
        "--shutdown-grace-s",
        "10",
        env={
            "RNNSERVE_LOG_JSON": "true",
            "RNNSERVE_MAX_SESSIONS": "77",
            "RNNSERVE_STATE_KEYS": SHARED_STATE_KEYS,
        },
    ) as server:
        yield server


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


def test_json_logs_carry_the_request_id(running: ServerProcess, model_name: str) -> None:
    import grpc

    from rnnserve.v1 import rnnserve_pb2 as pb
    from rnnserve.v1 import rnnserve_pb2_grpc

    with grpc.insecure_channel(running.address) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.CreateSession(
                pb.CreateSessionRequest(model="nope"), metadata=[("x-request-id", "trace-me-123")]
            )
        session = stub.CreateSession(pb.CreateSessionRequest(model=model_name)).session_id
        with pytest.raises(grpc.RpcError):
            stub.Step(pb.StepRequest(session_id=session, text="", request_id="step-42"))
    time.sleep(0.3)
    records = [json.loads(line) for line in running.lines if line.startswith("{")]
    (created,) = [r for r in records if r.get("request_id") == "trace-me-123"]
    assert created["method"] == "CreateSession" and "NOT_FOUND" in created["message"]
    (stepped,) = [r for r in records if r.get("request_id") == "step-42"]
    assert (stepped["method"], stepped["session"]) == ("Step", session)
    assert stepped["model"] == f"{model_name}/1" and "INVALID_ARGUMENT" in stepped["message"]


def test_a_config_file_sets_what_variables_and_flags_do_not(
    models_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        f'models = "{models_dir}"\nmax_sessions = 55\nmax_batch = 9\nlog_json = true\n'
    )
    with ServerProcess(
        "--config", str(config), "--max-batch", "7", env={"RNNSERVE_MAX_SESSIONS": "66"}
    ) as server:
        records = [json.loads(line) for line in server.lines if line.startswith("{")]
        (logged,) = [r for r in records if r["message"].startswith("configuration: ")]
        shown = json.loads(logged["message"].removeprefix("configuration: "))
        assert (shown["models"], shown["max_sessions"], shown["max_batch"]) == (
            str(models_dir),
            66,  # the variable over the file
            7,  # the flag over both
        )
        with Client(server.address) as client:
            assert client.health() == "SERVING"  # its models came from the file


def test_json_logs_of_the_kserve_and_http_fronts_carry_the_request_id(
    models_dir: Path, model_name: str
) -> None:
    import urllib.error
    import urllib.request

    import grpc

    from rnnserve_server.kserve.pb import grpc_service_pb2 as kpb
    from rnnserve_server.kserve.pb import grpc_service_pb2_grpc as kpb_grpc

    def infer(request_id: str, sequence_start: bool, text: bytes) -> kpb.ModelInferRequest:
        request = kpb.ModelInferRequest(model_name=model_name, id=request_id)
        request.parameters["sequence_id"].int64_param = 3
        request.parameters["sequence_start"].bool_param = sequence_start
        tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(text)
        return request

    with ServerProcess(
        "--models", str(models_dir), "--log-json", "--openai-port", "0"
    ) as server, grpc.insecure_channel(server.address) as channel:  # fmt: skip
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(infer("infer-0", True, b"ab"))
        stub.ModelInfer(infer("infer-1", True, b"ab"))  # a start on a live sequence: warned
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(infer("infer-2", False, b""))  # an empty text: nothing to feed
        completion = urllib.request.Request(
            f"http://127.0.0.1:{server.openai_port}/v1/completions",
            data=json.dumps({"model": model_name, "temperature": -1}).encode(),
            headers={"content-type": "application/json", "x-request-id": "http-1"},
        )
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(completion, timeout=30)
        failed.value.close()  # its socket, which the error holds
        server.stop()
    records = [json.loads(line) for line in server.lines if line.startswith("{")]
    (restarted,) = [r for r in records if r.get("request_id") == "infer-1"]
    assert (restarted["method"], restarted["model"]) == ("ModelInfer", f"{model_name}/1")
    assert restarted["session"] and "has a conflict" in restarted["message"]
    (refused,) = [r for r in records if r.get("request_id") == "infer-2"]
    assert (refused["method"], refused["model"]) == ("ModelInfer", f"{model_name}/1")
    assert "INVALID_ARGUMENT" in refused["message"]
    (completed,) = [r for r in records if r.get("request_id") == "http-1"]
    assert completed["method"] == "/v1/completions"
    assert completed["message"].startswith("/v1/completions -> INVALID_ARGUMENT: temperature")
