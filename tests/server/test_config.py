"""Configuration: defaults, then RNNSERVE_* variables, then flags; validated."""

from pathlib import Path

import pytest

from rnnserve_server.config import ServerConfig, load_config


def test_defaults() -> None:
    config = load_config([], environ={})
    assert config == ServerConfig()
    assert config.port == 50051 and config.provider == "cpu"


def test_environment_then_flags() -> None:
    env = {"RNNSERVE_PORT": "6000", "RNNSERVE_MODELS": "/srv/m", "RNNSERVE_LOG_JSON": "true"}
    config = load_config([], environ=env)
    assert (config.port, config.models, config.log_json) == (6000, Path("/srv/m"), True)
    config = load_config(["--port", "7000", "--no-log-json"], environ=env)
    assert (config.port, config.log_json) == (7000, False)


def test_invalid_values_name_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--port", "70000"], environ={})
    assert exit_info.value.code == 2
    assert "port = 70000 is invalid; allowed: 0..65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_config([], environ={"RNNSERVE_MAX_SESSIONS": "many"})
    assert "RNNSERVE_MAX_SESSIONS = 'many': expected int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_config(["--provider", "tpu"], environ={})
    assert "provider = 'tpu' is invalid; allowed: cpu or cuda" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("--inline-run-us", "-1", "0..1000000"),
        ("--inline-run-us", "2000000", "0..1000000"),
        ("--sequence-intra-op-threads", "-2", ">= 0"),
        ("--intra-op-threads", "-1", ">= 0"),
    ],
)
def test_thread_and_inline_settings_are_checked(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, allowed: str
) -> None:
    with pytest.raises(SystemExit):
        load_config([flag, value], environ={})
    setting = flag.removeprefix("--").replace("-", "_")
    assert f"{setting} = {value} is invalid; allowed: {allowed}" in capsys.readouterr().err


KEY = "a-state-key-of-forty-characters-0123456"


def test_secret_settings_are_shown_as_stars_wherever_the_configuration_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = load_config([], environ={"RNNSERVE_STATE_KEYS": f"{KEY},{KEY[::-1]}"})
    assert config.inline_state_keys == [KEY, KEY[::-1]]
    assert config.describe()["state_keys"] == "***"
    assert ServerConfig().describe()["state_keys"] == ""  # nothing to hide: shown as empty
    with pytest.raises(SystemExit):
        load_config(["--state-keys", "too-short-a-key"], environ={})
    err = capsys.readouterr().err
    assert "state_keys = '***' is invalid; allowed: up to 16 comma-separated keys" in err
    assert "too-short-a-key" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--session-store", "redis://r:6379/0"], "state_keys = '' is invalid; allowed: set"),
        (["--max-unbounded-state", "0.5"], "max_unbounded_state = 0.5 is invalid; allowed: 1 .."),
        (["--max-unbounded-state", "nan"], "max_unbounded_state = nan is invalid"),
        (["--max-unbounded-state", "1e31"], "max_unbounded_state = 1e+31 is invalid"),
        (["--state-keys", ",".join([KEY + str(i) for i in range(17)])], "up to 16"),
    ],
)
def test_state_settings_are_checked(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        load_config(argv, environ={})
    assert message in capsys.readouterr().err


def test_a_shared_store_takes_keys_from_the_setting_or_a_file() -> None:
    store = ["--session-store", "redis://r:6379/0"]
    assert load_config([*store, "--state-keys", KEY], environ={}).state_keys == KEY
    assert load_config([*store, "--state-keys-file", "/run/keys"], environ={}).state_keys == ""


def test_the_http_front_is_off_unless_a_port_is_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config([], environ={}).openai_port == -1
    assert load_config([], environ={"RNNSERVE_OPENAI_PORT": "8000"}).openai_port == 8000
    config = load_config(["--openai-port", "0", "--openai-host", "::1"], environ={})
    assert (config.openai_port, config.openai_host) == (0, "::1")
    with pytest.raises(SystemExit):
        load_config(["--openai-port", "-2"], environ={})
    assert "openai_port = -2 is invalid; allowed: -1 (off) .. 65535" in capsys.readouterr().err
