"""A model's config.toml: parsed and checked with one-line errors naming the file and the
key; its version policy decides which versions load and which one is the default."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support import ServerThread, copy_package, server_config

from rnnserve import Client
from rnnserve_server.errors import NotFound
from rnnserve_server.modelconfig import ModelConfig, ModelConfigError, Range, VersionPolicy
from rnnserve_server.repository import Repository
from rnnserve_server.runtime import ProviderChoice

CPU = ProviderChoice.resolve("cpu", allow_cpu_fallback=False)

FULL = """
[versions]
policy = "latest"
latest = 2
default = 3

[batching]
max_batch = 64
batch_window_us = 200

[sessions]
max_sessions = 1000
idle_timeout_s = 300

[sampling]
temperature = 0.8
top_k = 40
max_tokens = 200

[sampling.allowed]
temperature = [0, 1.5]
top_k = [1, 100]
top_p = [0.5, 1.0]
max_tokens = [1, 1000]
"""


def configured(model_dir: Path, text: str) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.toml"
    path.write_text(text)
    return path


def test_every_key_of_a_full_config(tmp_path: Path) -> None:
    path = configured(tmp_path / "lm", FULL)
    config = ModelConfig.of(tmp_path / "lm")
    assert config.path == path
    assert config.versions == VersionPolicy(policy="latest", latest=2, default=3)
    assert (config.max_batch, config.batch_window_us) == (64, 200)
    assert (config.max_sessions, config.idle_timeout_s) == (1000, 300)
    assert config.sampling == {"temperature": 0.8, "top_k": 40, "max_tokens": 200}
    assert config.default_sampling("top_p") == 1.0  # not set: the built-in default
    assert config.allowed == {
        "temperature": Range(0.0, 1.5),
        "top_k": Range(1, 100),
        "top_p": Range(0.5, 1.0),
        "max_tokens": Range(1, 1000),
    }


def test_no_file_means_every_server_wide_setting(tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()
    config = ModelConfig.of(tmp_path / "lm")
    assert config == ModelConfig() and config.versions.policy == "all"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[batching]\nmax_bach = 3\n", "unknown key 'batching.max_bach'; did you mean "
         "batching.max_batch?"),
        ("[sampling]\ntemprature = 1\n", "unknown key 'sampling.temprature'; did you mean "
         "sampling.temperature?"),
        ("[limits]\n", "unknown key 'limits'; known: versions, batching, sessions, sampling"),
        ("batching = 3\n", "batching must be a table ([batching])"),
        ("[batching]\nmax_batch = 0\n", "batching.max_batch = 0 is invalid; allowed: 1..65536"),
        ("[batching]\nmax_batch = '8'\n", "batching.max_batch = '8': expected an integer"),
        ("[sessions]\nidle_timeout_s = 0\n", "sessions.idle_timeout_s = 0 is invalid; "
         "allowed: >= 1"),
        ("[sampling]\ntemperature = -1\n", "sampling.temperature = -1 is invalid; "
         "allowed: 0 .. 100"),
        ("[sampling]\ntop_p = 0\n", "sampling.top_p = 0 is invalid; allowed: (0, 1]"),
        ("[sampling]\ntemperature = nan\n", "sampling.temperature = nan is invalid"),
        ("[sampling.allowed]\ntop_k = 5\n", "sampling.allowed.top_k must be [lowest, highest]"),
        ("[sampling.allowed]\ntop_p = [0.9, 0.5]\n", "sampling.allowed.top_p = [0.9, 0.5] is "
         "invalid: lowest <= highest, both within (0, 1]"),
        ("[sampling.allowed]\ntop_k = [1, 50]\n", "sampling.allowed.top_k = [1, 50] excludes "
         "the default top_k 0; set sampling.top_k within it"),
        ("[sampling]\ntemperature = 2.0\n[sampling.allowed]\ntemperature = [0, 1]\n",
         "sampling.allowed.temperature = [0, 1] excludes sampling.temperature = 2"),
        ("[versions]\npolicy = 'newest'\n", "versions.policy = 'newest' is invalid; allowed: "
         "all, latest, specific"),
        ("[versions]\nlatest = 2\n", "versions.latest is only for policy = \"latest\" "
         "(the policy is 'all')"),
        ("[versions]\npolicy = 'latest'\nlatest = 0\n", "versions.latest = 0 is invalid"),
        ("[versions]\npolicy = 'specific'\n", "versions.specific must list the versions"),
        ("[versions]\npolicy = 'specific'\nspecific = [1, 'x']\n", "versions.specific[1] = 'x': "
         "expected an integer"),
        ("[versions]\npolicy = 'specific'\nspecific = [1, 2]\ndefault = 3\n",
         "versions.default = 3 is not one of the versions served, [1, 2]"),
        ("[versions\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_a_bad_config_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = configured(tmp_path / "lm", text)
    with pytest.raises(ModelConfigError) as refused:
        ModelConfig.of(tmp_path / "lm")
    assert str(refused.value).startswith(f"{path}: ")
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


# ---------------------------------------------------------------- the version policy


def versions_of(repo: Repository, name: str = "lm") -> list[int]:
    return sorted(v for n, v in repo.models if n == name)


@pytest.fixture
def three_versions(tiny_package: Path, tmp_path: Path) -> Path:
    for version in (1, 2, 3):
        copy_package(tiny_package, tmp_path, "lm", version)
    copy_package(tiny_package, tmp_path, "other")
    return tmp_path


@pytest.mark.parametrize(
    ("versions", "loaded", "default"),
    [
        ("", [1, 2, 3], 3),
        ("policy = 'all'\ndefault = 1", [1, 2, 3], 1),
        ("policy = 'latest'", [3], 3),
        ("policy = 'latest'\nlatest = 2", [2, 3], 3),
        ("policy = 'latest'\nlatest = 9", [1, 2, 3], 3),
        ("policy = 'specific'\nspecific = [1, 3, 7]", [1, 3], 3),
        ("policy = 'specific'\nspecific = [1, 3]\ndefault = 1", [1, 3], 1),
    ],
)
def test_the_policy_decides_the_versions_and_the_default(
    three_versions: Path, versions: str, loaded: list[int], default: int
) -> None:
    configured(three_versions / "lm", f"[versions]\n{versions}\n")
    repo = Repository.load(three_versions, CPU)
    assert versions_of(repo) == loaded
    assert repo.get("lm").version == default
    assert versions_of(repo, "other") == [1]  # another model's policy is its own
    assert all(m.config == repo.configs[m.name] for m in repo.list())


def test_a_pinned_default_that_is_not_loaded_answers_not_found(
    three_versions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = configured(three_versions / "lm", "[versions]\npolicy = 'latest'\ndefault = 1\n")
    repo = Repository.load(three_versions, CPU)
    assert versions_of(repo) == [3]
    with pytest.raises(NotFound) as refused:
        repo.get("lm")
    assert refused.value.message == (
        f"model 'lm': its default version 1 ({path} pins it) is not loaded; loaded: [3]; "
        "name one of them"
    )
    assert repo.get("lm", 3).version == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("the default version 1 that" in e for e in errors)


def test_reloads_follow_the_policy(three_versions: Path) -> None:
    repo = Repository.load(three_versions, CPU)
    assert versions_of(repo) == [1, 2, 3]
    kept = repo.get("lm", 3)
    configured(three_versions / "lm", "[versions]\npolicy = 'latest'\n")
    result = repo.reload()
    assert (result.added, result.removed) == ([], ["lm/1", "lm/2"])
    assert repo.get("lm", 3) is kept  # unchanged packages keep their runtime
    assert kept.config.versions.policy == "latest"  # and take the new configuration
    (three_versions / "lm" / "config.toml").unlink()
    result = repo.reload()
    assert (sorted(result.added), result.removed) == (["lm/1", "lm/2"], [])


def test_a_refused_config_stops_its_model_at_start_and_changes_nothing_on_reload(
    three_versions: Path,
) -> None:
    path = configured(three_versions / "lm", "[batching]\nmax_batch = 0\n")
    repo = Repository.load(three_versions, CPU)
    assert versions_of(repo) == [] and versions_of(repo, "other") == [1]
    assert "batching.max_batch = 0 is invalid" in repo.broken[path]
    configured(three_versions / "lm", "[versions]\npolicy = 'latest'\n")
    result = repo.reload()
    assert versions_of(repo) == [3] and result.refused == {}
    configured(three_versions / "lm", "[versions]\npolicy = 'lastest'\n")
    result = repo.reload()
    assert versions_of(repo) == [3]  # the configuration accepted before still holds
    assert repo.configs["lm"].versions.policy == "latest"
    assert "versions.policy = 'lastest' is invalid" in result.refused[path]


def test_the_server_answers_by_the_policy(three_versions: Path) -> None:
    path = configured(three_versions / "lm", "[versions]\npolicy = 'all'\ndefault = 2\n")
    with (
        ServerThread(server_config(three_versions)) as server,
        Client(server.address) as client,
    ):
        assert client.get_model("lm").version == 2
        with client.create_session("lm") as session:
            assert session.model.version == 2
        path.write_text("[versions]\npolicy = 'specific'\nspecific = [1]\n")
        result = client.reload_models()
        assert result.removed == ["lm/2", "lm/3"] and result.refused == []
        assert [m.version for m in client.list_models() if m.name == "lm"] == [1]
        path.write_text("[versions]\npolicy = 'specific'\n")
        result = client.reload_models()
        (refused,) = result.refused
        assert refused.path == str(path)
        assert "versions.specific must list the versions" in refused.reason
        assert client.get_model("lm").version == 1
