"""LoadModel and UnloadModel: one model at a time, what stays out of service, the open
sessions of an unloaded version, and the admin permission they (and ReloadModels) need
when authentication is on."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ServerThread, copy_package, server_config

from rnnserve import Client, InvalidArgument, NotFound, PermissionDenied
from rnnserve.cli import main


@pytest.fixture
def repository(tiny_package: Path, tmp_path: Path) -> Path:
    for version in (1, 2):
        copy_package(tiny_package, tmp_path, "lm", version)
    copy_package(tiny_package, tmp_path, "kept")
    return tmp_path


def versions(client: Client, name: str = "lm") -> list[int]:
    return [m.version for m in client.list_models() if m.name == name]


def model_health(server: ServerThread, name: str) -> str:
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=f"rnnserve.v1.RnnServe/{name}")
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_unloading_a_version_keeps_its_open_sessions_and_keeps_it_out(
    repository: Path, tiny_package: Path
) -> None:
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        on_two = client.create_session("lm", 2)
        before = on_two.step(text="ab")
        result = client.unload_model("lm", 2)
        assert (result.removed, result.open_sessions) == (["lm/2"], 1)
        assert versions(client) == [1]
        assert client.create_session("lm").model.version == 1  # the default moved down
        with pytest.raises(NotFound, match=r"model 'lm' has no version 2; loaded: \[1\]"):
            client.create_session("lm", 2)
        assert on_two.step(text="c").steps == before.steps + 1  # it goes on until closed
        assert client.reload_models().added == []  # a rescan leaves it out
        assert versions(client) == [1]
        assert on_two.close() == before.steps + 1
        loaded = client.load_model("lm")
        assert (loaded.added, [m.version for m in loaded.models]) == (["lm/2"], [1, 2])
        assert versions(client) == [1, 2] and versions(client, "kept") == [1]


def test_unloading_a_model_takes_every_version_and_its_health(repository: Path) -> None:
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        assert model_health(server, "lm") == "SERVING"
        assert client.unload_model("lm").removed == ["lm/1", "lm/2"]
        with pytest.raises(NotFound, match="model 'lm' is not loaded"):
            client.create_session("lm")
        deadline = time.monotonic() + 10
        while model_health(server, "lm") != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert model_health(server, "lm") == "NOT_SERVING"
        assert client.health() == "SERVING"  # "kept" still serves
        with pytest.raises(NotFound, match="model 'lm' is not loaded"):
            client.unload_model("lm")
        assert client.load_model("lm").added == ["lm/1", "lm/2"]


def test_loading_one_model_leaves_the_others_as_they_are(
    repository: Path, tiny_package: Path
) -> None:
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        copy_package(tiny_package, repository, "lm", 3)
        copy_package(tiny_package, repository, "newcomer")
        copy_package(tiny_package, repository, "kept", 2)
        result = client.load_model("lm")
        assert (result.added, result.removed, result.refused) == (["lm/3"], [], [])
        assert {m.name for m in client.list_models()} == {"lm", "kept"}
        assert versions(client, "kept") == [1]  # not rescanned
        assert sorted(client.reload_models().added) == ["kept/2", "newcomer/1"]


def test_bad_names_are_refused(repository: Path) -> None:
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        for name in ("../lm", ".hidden", "a/b", ""):
            with pytest.raises((InvalidArgument, ValueError)):
                client.load_model(name)
        with pytest.raises(NotFound, match="has no model folder 'nope'"):
            client.load_model("nope")
        with pytest.raises(NotFound, match="model 'nope' is not loaded"):
            client.unload_model("nope")


def test_the_cli_loads_and_unloads(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ServerThread(server_config(repository)) as server:
        address = ["--address", server.address]
        assert main([*address, "unload", "lm:2"]) == 0
        assert capsys.readouterr().out == "removed  lm/2\n"
        assert main([*address, "load", "lm"]) == 0
        assert capsys.readouterr().out == "added    lm/2\n2 model versions loaded\n"
        assert main([*address, "unload", "lm:x"]) == 2
        assert "unload 'lm:x': expected NAME or NAME:VERSION" in capsys.readouterr().err


ALICE, BOB = "alice-admin-token", "bob-plain-token"


def test_with_authentication_only_admins_change_the_models(repository: Path) -> None:
    config = server_config(repository, auth_tokens=f"alice:{ALICE},bob:{BOB}", auth_admins="alice")
    with (
        ServerThread(config) as server,
        Client(server.address, token=ALICE) as alice,
        Client(server.address, token=BOB) as bob,
    ):
        for call, name in [
            (bob.reload_models, "ReloadModels"),
            (lambda: bob.load_model("lm"), "LoadModel"),
            (lambda: bob.unload_model("lm"), "UnloadModel"),
        ]:
            with pytest.raises(PermissionDenied) as refused:
                call()
            assert refused.value.details == (
                f"{name} changes what the server serves: only the callers the setting "
                "auth_admins names may call it, and 'bob' is not one"
            )
        assert versions(bob) == [1, 2]  # nothing changed; bob may still use the models
        assert alice.unload_model("lm", 1).removed == ["lm/1"]
        assert alice.load_model("lm").added == ["lm/1"]
        assert alice.reload_models().refused == []
