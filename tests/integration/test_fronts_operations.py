"""The operations features through the KServe and OpenAI fronts: a model's config.toml as
KServe's ModelConfig describes it and as the OpenAI front applies it; KServe's
RepositoryModelLoad and RepositoryModelUnload (LoadModel and UnloadModel, admins only
with authentication) through raw stubs and through tritonclient; refused calls counted
in the metrics."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from support import ServerThread, TritonClient, copy_package, server_config

from rnnserve import Client
from rnnserve_server.kserve.pb import grpc_service_pb2 as pb
from rnnserve_server.kserve.pb import grpc_service_pb2_grpc as pb_grpc

TUNED, BROKEN = "tuned", "broken"
CONFIG = """
[versions]
policy = "specific"
specific = [1, 2]
default = 1

[batching]
max_batch = 3
batch_window_us = 150

[sessions]
max_sessions = 7
idle_timeout_s = 42

[sampling]
temperature = 0.0
max_tokens = 5

[sampling.allowed]
temperature = [0.0, 0.5]
max_tokens = [1, 9]
"""


@pytest.fixture
def repository(tiny_package: Path, model_name: str, tmp_path: Path) -> Path:
    for version in (1, 2, 3):  # 3 is outside the policy
        copy_package(tiny_package, tmp_path, TUNED, version)
    (tmp_path / TUNED / "config.toml").write_text(CONFIG)
    copy_package(tiny_package, tmp_path, model_name)  # no config.toml: the server's settings
    return tmp_path


@pytest.fixture
def served(repository: Path) -> Iterator[ServerThread]:
    with ServerThread(server_config(repository, openai_port=0, metrics_port=0)) as server:
        yield server


def kserve(server: ServerThread, token: str = "") -> Any:
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    metadata = [("authorization", f"Bearer {token}")] if token else None

    class Calls:
        def __getattr__(self, name: str) -> Any:
            return lambda request: getattr(stub, name)(request, metadata=metadata, timeout=30)

    return Calls()


def refused(call: Any, request: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details()  # type: ignore[no-any-return]


def index(stub: Any) -> list[tuple[str, str, str, str]]:
    reply = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    return [(m.name, m.version, m.state, m.reason) for m in reply.models]


def test_kserve_model_config_is_the_models_own(served: ServerThread, model_name: str) -> None:
    stub = kserve(served)
    tuned = stub.ModelConfig(pb.ModelConfigRequest(name=TUNED)).config
    assert tuned.version_policy.WhichOneof("policy_choice") == "specific"
    assert list(tuned.version_policy.specific.versions) == [1, 2]
    assert tuned.parameters["default_version"].string_value == "1"
    assert tuned.parameters["max_batch"].string_value == "3"
    assert tuned.parameters["config_file"].string_value.endswith("tuned/config.toml")
    oldest = tuned.sequence_batching.oldest
    assert (oldest.max_candidate_sequences, oldest.max_queue_delay_microseconds) == (7, 150)
    assert tuned.sequence_batching.max_sequence_idle_microseconds == 42_000_000
    # a model without config.toml: the server's settings (server_config's defaults)
    plain = stub.ModelConfig(pb.ModelConfigRequest(name=model_name)).config
    assert plain.version_policy.WhichOneof("policy_choice") == "all"
    assert "default_version" not in plain.parameters
    config = served.config
    assert plain.parameters["max_batch"].string_value == str(config.max_batch)
    assert plain.sequence_batching.oldest.max_candidate_sequences == config.max_sessions
    assert plain.sequence_batching.oldest.max_queue_delay_microseconds == config.batch_window_us
    assert plain.sequence_batching.max_sequence_idle_microseconds == (
        config.session_idle_timeout_s * 1_000_000
    )
    # the pinned default answers a request naming no version; 3 is not served
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=TUNED))
    assert list(metadata.versions) == ["1", "2"]
    reply = stub.ModelInfer(infer(TUNED, start=True))
    assert reply.model_version == "1"


def infer(model: str, *, start: bool = False, sequence: int = 1) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    message.parameters["sequence_id"].uint64_param = sequence
    message.parameters["sequence_start"].bool_param = start
    message.inputs.add(name="INPUT_IDS", datatype="INT64", shape=[1])
    message.raw_input_contents.append((4).to_bytes(8, "little"))
    message.outputs.add(name="STEPS")
    return message


def openai_sdk(server: ServerThread) -> openai.OpenAI:
    port = server.running.http.port  # type: ignore[union-attr]
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)


def test_openai_completions_take_the_models_sampling_settings(
    served: ServerThread, model_name: str
) -> None:
    with Client(served.address) as client:
        with client.create_session(TUNED, 1) as session:  # the pinned default version
            greedy_five = list(session.generate("The ", max_tokens=5, temperature=0))
        with client.create_session(model_name) as session:
            greedy_sixteen = list(session.generate("The ", max_tokens=16, temperature=0))
    with openai_sdk(served) as sdk:
        # no max_tokens, no temperature: the model's [sampling] (5 tokens, greedy)
        tuned = sdk.completions.create(model=TUNED, prompt="The ")
        assert tuned.choices[0].text == "".join(c.text for c in greedy_five)
        assert tuned.usage is not None
        assert tuned.usage.completion_tokens == sum(len(c.tokens) for c in greedy_five)
        # without a config.toml: OpenAI's default of 16 tokens
        plain = sdk.completions.create(model=model_name, prompt="The ", temperature=0)
        assert plain.choices[0].text == "".join(c.text for c in greedy_sixteen)
        # what the model allows bounds what a request may ask
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.completions.create(model=TUNED, prompt="The ", temperature=0.9)
        assert raised.value.param == "temperature" and "0 .. 0.5" in str(raised.value)
        assert f"{TUNED}/config.toml" in str(raised.value)
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.completions.create(model=TUNED, prompt="The ", max_tokens=10)
        assert raised.value.param == "max_tokens" and "1 .. 9" in str(raised.value)
        listed = {m.id for m in sdk.models.list()}
        assert listed == {TUNED, model_name}


def test_kserve_loads_and_unloads_models(
    served: ServerThread, repository: Path, tiny_package: Path
) -> None:
    stub = kserve(served)
    stub.ModelInfer(infer(TUNED, start=True, sequence=9))
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=TUNED))
    assert not stub.ModelReady(pb.ModelReadyRequest(name=TUNED)).ready
    # what LoadModel brings back: the versions the policy serves (3 is not one)
    unloaded = [(TUNED, str(v), "UNAVAILABLE", "unloaded") for v in (1, 2)]
    assert [entry for entry in index(stub) if entry[0] == TUNED] == unloaded
    # the sequence's requests name the model, which is not served now
    details = refused(stub.ModelInfer, infer(TUNED, sequence=9), grpc.StatusCode.NOT_FOUND)
    assert details == f"Request for unknown model: '{TUNED}' is not found"
    with Client(served.address) as client:
        assert client.reload_models().added == []  # a rescan leaves it out
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=TUNED))
    assert [e[:3] for e in index(stub) if e[0] == TUNED] == [
        (TUNED, "1", "READY"),
        (TUNED, "2", "READY"),
    ]
    # what one repository read from disk cannot do
    for request, expected in [
        (
            pb.RepositoryModelLoadRequest(model_name=TUNED, repository_name="other"),
            "repository_name = 'other': rnnserve serves one model repository",
        ),
        (
            pb.RepositoryModelLoadRequest(
                model_name=TUNED,
                parameters={"config": pb.ModelRepositoryParameter(string_param="{}")},
            ),
            "parameter 'config' is not supported",
        ),
        (pb.RepositoryModelLoadRequest(model_name="../etc"), "is not a model name"),
    ]:
        assert expected in refused(
            stub.RepositoryModelLoad, request, grpc.StatusCode.INVALID_ARGUMENT
        )
    assert "has no model folder 'nope'" in refused(
        stub.RepositoryModelLoad,
        pb.RepositoryModelLoadRequest(model_name="nope"),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "model 'nope' is not loaded" in refused(
        stub.RepositoryModelUnload,
        pb.RepositoryModelUnloadRequest(model_name="nope"),
        grpc.StatusCode.NOT_FOUND,
    )
    package = copy_package(tiny_package, repository, BROKEN)
    (package / "manifest.json").write_text("{")
    details = refused(
        stub.RepositoryModelLoad,
        pb.RepositoryModelLoadRequest(model_name=BROKEN),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert details.startswith(f"failed to load '{BROKEN}': no version of it is served (")
    assert str(package / "").rstrip("/") in details


def scraped(server: ServerThread) -> dict[tuple[str, str, str], float]:
    """rnnserve_requests_total by (method, code, model)."""
    from prometheus_client.parser import text_string_to_metric_families

    port = server.running.metrics_port  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.labels["method"], s.labels["code"], s.labels["model"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "rnnserve_requests"
        for s in family.samples
        if s.name == "rnnserve_requests_total"
    }


ALICE, BOB = "alice-admin-token", "bob-plain-token"


def test_kserve_repository_calls_need_an_admin_and_refusals_are_counted(
    repository: Path, model_name: str, tritonclient_python: Path
) -> None:
    config = server_config(
        repository, auth_tokens=f"alice:{ALICE},bob:{BOB}", auth_admins="alice", metrics_port=0
    )
    with ServerThread(config) as server:
        bob = kserve(server, BOB)
        for call, request in [
            (bob.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=TUNED)),
            (bob.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=TUNED)),
        ]:
            details = refused(call, request, grpc.StatusCode.PERMISSION_DENIED)
            assert "changes what the server serves: only the callers the setting auth_admins" in (
                details
            )
        assert bob.ModelReady(pb.ModelReadyRequest(name=TUNED)).ready  # nothing changed
        refused(
            kserve(server).ModelReady,
            pb.ModelReadyRequest(name=TUNED),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        counted = scraped(server)
        assert counted[("RepositoryModelUnload", "PERMISSION_DENIED", "")] == 1
        assert counted[("RepositoryModelLoad", "PERMISSION_DENIED", "")] == 1
        assert counted[("ModelReady", "UNAUTHENTICATED", "")] == 1
        # tritonclient as its users call it, with the admin's token
        admin = TritonClient(
            tritonclient_python, server.address, {"authorization": f"Bearer {ALICE}"}
        )
        plain = TritonClient(
            tritonclient_python, server.address, {"authorization": f"Bearer {BOB}"}
        )
        (denied,) = plain.run({"call": "unload_model", "model": TUNED})
        assert denied["error"]["status"] == "StatusCode.PERMISSION_DENIED"
        unloaded, listed, ready, loaded, again = admin.run(
            {"call": "unload_model", "model": TUNED},
            {"call": "repository_index"},
            {"call": "model_ready", "model": TUNED},
            {"call": "load_model", "model": TUNED},
            {"call": "model_ready", "model": TUNED},
        )
        assert (unloaded, ready, loaded, again) == ("done", False, "done", True)
        states = {
            (m["name"], m["version"]): (m["state"], m.get("reason", "")) for m in listed["models"]
        }
        assert states[(TUNED, "1")] == ("UNAVAILABLE", "unloaded")
        assert states[(model_name, "1")] == ("READY", "")
        (with_config,) = admin.run(
            {"call": "load_model", "model": TUNED, "config": json.dumps({"max_batch_size": 4})}
        )
        assert with_config["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
        assert "parameter 'config' is not supported" in with_config["error"]["message"]


def test_the_models_session_limit_holds_on_both_fronts(served: ServerThread) -> None:
    stub = kserve(served)
    for sequence in range(1, 8):  # the model's max_sessions = 7
        stub.ModelInfer(infer(TUNED, start=True, sequence=sequence))
    details = refused(
        stub.ModelInfer, infer(TUNED, start=True, sequence=8), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert f"sessions.max_sessions in {served.config.models / TUNED / 'config.toml'}" in details
    with openai_sdk(served) as sdk:
        with pytest.raises(openai.RateLimitError) as limited:
            sdk.completions.create(model=TUNED, prompt="The ")
        assert "sessions.max_sessions" in str(limited.value)
        ended = infer(TUNED, sequence=1)
        ended.parameters["sequence_end"].bool_param = True
        stub.ModelInfer(ended)  # one sequence ends: a completion fits again
        assert sdk.completions.create(model=TUNED, prompt="The ").choices[0].text
