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


# ---------------------------------------------------------------- the config file


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_one_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    file = write(
        tmp_path / "server.toml",
        'models = "/srv/models"\nport = 6000\nmax_sessions = 10\nlog_json = true\n'
        "repository_poll_s = 5\n",
    )
    config = load_config(["--config", str(file)], environ={})
    assert (config.models, config.port, config.max_sessions) == (Path("/srv/models"), 6000, 10)
    assert config.log_json is True and config.repository_poll_s == 5.0
    assert config.host == ServerConfig().host  # not in the file: the default
    env = {"RNNSERVE_CONFIG": str(file), "RNNSERVE_PORT": "7000"}
    config = load_config([], environ=env)  # the file named by the variable
    assert (config.port, config.max_sessions) == (7000, 10)  # the variable beats the file
    config = load_config(["--port", "8000", "--no-log-json"], environ=env)
    assert (config.port, config.log_json, config.max_sessions) == (8000, False, 10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_sesions = 3\n", "unknown key 'max_sesions'; did you mean max_sessions?"),
        ("max-sessions = 3\n", "unknown key 'max-sessions'; did you mean max_sessions?"),
        ("wibble = 3\n", "unknown key 'wibble'; known: models, host, port,"),
        ('port = "50051"\n', "port = '50051': expected an integer"),
        ("max_sessions = 1.5\n", "max_sessions = 1.5: expected an integer"),
        ("log_json = 1\n", "log_json = 1: expected true or false"),
        ("auth_tokens = 12345678\n", "auth_tokens: expected a string"),
        ("port = 70000\n", "port = 70000 is invalid; allowed: 0..65535"),
        ("port = \n", "not valid TOML: Invalid value (at line 1, column 8)"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    file = write(tmp_path / "server.toml", text)
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--config", str(file)], environ={})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnserve-server: error: ") and len(err.splitlines()) == 1
    assert message in err
    if "invalid; allowed" not in message:  # range checks name the setting, not the file
        assert str(file) in err


def test_a_missing_config_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config([], environ={"RNNSERVE_CONFIG": str(tmp_path / "nope.toml")})
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'nope.toml'}: cannot read it: No such file" in capsys.readouterr().err


def test_secrets_are_redacted_in_the_description() -> None:
    config = ServerConfig(
        auth_tokens="alice:0123456789",
        auth_tokens_file="/etc/rnnserve/tokens",
        session_store="redis://user:hunter22@redis:6379/0",
        tls_cert="/etc/tls/cert.pem",
        tls_key="/etc/tls/key.pem",
    )
    shown = config.describe()
    assert shown["auth_tokens"] == "***" and shown["tls_key"] == "***"
    assert shown["session_store"] == "redis://user:***@redis:6379/0"
    assert shown["auth_tokens_file"] == "/etc/rnnserve/tokens"  # a path, not a secret
    assert shown["tls_cert"] == "/etc/tls/cert.pem"
    assert ServerConfig().describe()["auth_tokens"] == ""  # empty: shown as empty
    assert "hunter22" not in repr(shown) and "0123456789" not in repr(shown)


def test_admins_must_be_callers_with_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    tokens = ["--auth-tokens", "alice:0123456789,bob:9876543210"]
    assert load_config([*tokens, "--auth-admins", "alice"], environ={}).auth_admins == "alice"
    with pytest.raises(SystemExit):
        load_config([*tokens, "--auth-admins", "alice,alcie"], environ={})
    err = capsys.readouterr().err
    assert "auth_admins: 'alcie' has no token; the callers are 'alice', 'bob'" in err
    assert "0123456789" not in err
    with pytest.raises(SystemExit):
        load_config(["--auth-admins", "alice"], environ={})
    assert "auth_admins: names admins, but authentication is off" in capsys.readouterr().err


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
