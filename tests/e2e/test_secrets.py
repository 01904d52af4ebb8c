"""Secrets never leave the server: not in its output (stdout and stderr, every line of
it), not in error messages (of all three fronts), not in metrics; bad credentials
settings are one-line usage errors; the README's authentication example works as
written."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from support import SERVER, RedisServer, ServerProcess, make_test_certificates, started

from rnnserve import Client, TLSConfig, Unauthenticated
from rnnserve_server.kserve.pb import grpc_service_pb2 as kpb
from rnnserve_server.kserve.pb import grpc_service_pb2_grpc as kpb_grpc

README = Path(__file__).resolve().parents[2] / "README.md"
CLIENT = str(Path(SERVER[0]).with_name("rnnserve"))


def a_secret(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(12)}"


def key_material(pem: Path) -> list[str]:
    """The base64 lines of a PEM file: the secret part of a private key."""
    return [line for line in pem.read_text().splitlines() if line and "-----" not in line]


def assert_hidden(text: str, hidden: list[str]) -> None:
    for value in hidden:
        assert value not in text, f"a secret ({value[:6]}...) appears in the output"


def test_no_secret_reaches_the_log_the_errors_or_the_metrics(
    models_dir: Path, model_name: str, tmp_path: Path
) -> None:
    alice, bob = a_secret("alice"), a_secret("bob")
    tokens_file = tmp_path / "tokens.txt"
    tokens_file.write_text(f"# the callers\nbob:{bob}\n")
    redis_password = a_secret("redis")
    state_keys = [a_secret("state-key-one"), a_secret("state-key-two")]
    keys_file = tmp_path / "state-keys.txt"
    keys_file.write_text(f"# rotated out\n{state_keys[1]}\n")
    certificates = make_test_certificates(tmp_path)
    hidden = [alice, bob, redis_password, *state_keys, *key_material(certificates / "server.key")]
    with (
        started(RedisServer(tmp_path / "redis", password=redis_password)) as redis,
        ServerProcess(
            "--models", str(models_dir),
            "--auth-tokens", f"alice:{alice}",
            "--auth-tokens-file", str(tokens_file),
            "--session-store", redis.url,
            "--state-keys", state_keys[0],
            "--state-keys-file", str(keys_file),
            "--tls-cert", str(certificates / "server.pem"),
            "--tls-key", str(certificates / "server.key"),
            "--metrics-port", "0",
            "--openai-port", "0",
            "--log-level", "DEBUG",
        ) as server,
    ):  # fmt: skip
        assert redis_password in redis.url  # the password really is in the setting
        tls = TLSConfig.from_files(str(certificates / "ca.pem"))
        with (
            Client(server.address, tls=tls, token=bob, timeout=30) as client,
            client.create_session(model_name) as session,
        ):
            session.generate_text("The ", max_tokens=5)
        with (
            Client(server.address, tls=tls, token=alice[::-1], retries=0) as stranger,
            pytest.raises(Unauthenticated) as refused,
        ):
            stranger.list_models()
        assert_hidden(refused.value.details, hidden)
        # the other fronts, with the same tokens and certificate
        context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        completions = f"https://127.0.0.1:{server.openai_port}/v1/completions"
        for token, status in [(bob, 200), (alice[::-1], 401)]:
            request = urllib.request.Request(
                completions,
                data=json.dumps({"model": model_name, "prompt": "The ", "max_tokens": 3}).encode(),
                headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
            )
            try:
                with urllib.request.urlopen(request, context=context, timeout=30) as reply:
                    answered, body = reply.status, reply.read().decode()
            except urllib.error.HTTPError as error:
                answered, body = error.code, error.read().decode()
            assert answered == status, body
            assert_hidden(body, hidden)
        with grpc.secure_channel(
            server.address, grpc.ssl_channel_credentials((certificates / "ca.pem").read_bytes())
        ) as channel:
            kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as unknown:
                kserve.ModelReady(
                    kpb.ModelReadyRequest(name=model_name),
                    metadata=[("authorization", f"Bearer {alice[::-1]}")],
                )
            assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert_hidden(unknown.value.details() or "", hidden)
        port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", server.output)
        assert port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics") as page:
            assert_hidden(page.read().decode(), hidden)
        server.stop()
    output = server.output
    configuration = next(line for line in server.lines if "configuration: " in line)
    assert '"auth_tokens": "***"' in configuration
    assert f'"auth_tokens_file": "{tokens_file}"' in configuration  # the path is no secret
    assert '"tls_key": "***"' in configuration
    assert '"state_keys": "***"' in configuration
    assert f"{redis.socket}?password=***" in configuration
    assert_hidden(output, hidden)


def test_a_redis_password_stays_out_of_the_start_up_error(models_dir: Path, tmp_path: Path) -> None:
    password, key = a_secret("redis"), a_secret("a-state-key-of-32-characters")
    shown = subprocess.run(
        [*SERVER, "--models", str(models_dir), "--port", "0", "--state-keys", key,
         "--session-store", f"redis://:{password}@127.0.0.1:1/0"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 1
    assert "the session store at redis://:***@127.0.0.1:1/0 cannot be reached" in shown.stderr
    assert_hidden(shown.stdout + shown.stderr, [password, key])


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("--auth-tokens", "alice:{short}", "auth_tokens entry 1 (caller 'alice'): the token is "
         "shorter than 8 characters"),
        ("--auth-tokens", "alice:long-enough-1,{secret}", "auth_tokens entry 2: expected "
         "name:token"),
        ("--auth-tokens", "alice:{secret},bob:{secret}", "auth_tokens entry 2 (caller 'bob'): "
         "the same token is already given to 'alice'"),
        ("--auth-tokens-file", "{file}", "auth_tokens_file {file}:3 (caller 'carol'): the token "
         "is shorter than 8 characters"),
        ("--auth-tokens-file", "{missing}", "auth_tokens_file = '{missing}': cannot read it: "
         "No such file or directory"),
        ("--session-store", "http://user:{secret}@host/0", "session_store = "
         "'http://user:***@host/0' is invalid"),
        ("--tls-key", "{missing}", "tls_key = '***': cannot read it"),
    ],
)  # fmt: skip
def test_bad_credentials_settings_are_one_line_usage_errors(
    tmp_path: Path, setting: str, value: str, expected: str
) -> None:
    secret, short = a_secret("token"), f"Zq{secrets.token_hex(2)}"
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"alice:{secret}1\n\ncarol:{short}\n")
    names = {
        "secret": secret,
        "short": short,
        "file": str(tokens),
        "missing": str(tmp_path / "nope"),
    }
    argv = [setting, value.format(**names)]
    if setting == "--tls-key":
        argv += ["--tls-cert", str(tokens)]
    shown = subprocess.run([*SERVER, *argv], capture_output=True, text=True, check=False)
    assert shown.returncode == 2
    assert shown.stdout == ""
    assert shown.stderr.startswith(f"rnnserve-server: error: {expected.format(**names)}")
    assert len(shown.stderr.splitlines()) == 1  # no usage block, no traceback
    assert_hidden(shown.stderr, [secret, short])


def readme_block(heading: str) -> list[str]:
    """The lines of the first bash block after ``heading`` in the README."""
    text = README.read_text()
    section = text[text.index(heading) :]
    block = section[section.index("```bash\n") + len("```bash\n") :]
    return block[: block.index("```")].splitlines()


def test_the_readme_authentication_example_works_as_written(
    models_dir: Path, tmp_path: Path
) -> None:
    serve, ask = (shlex.split(line.split("#")[0]) for line in readme_block("### Authentication"))
    assert serve[0] == "rnnserve-server" and ask[0] == "rnnserve"
    # As written, with the test's repository and a free port on loopback.
    with ServerProcess(*serve[1:], "--models", str(models_dir)) as server:
        address = ["--address", server.address]
        listed = subprocess.run(
            [CLIENT, *address, *ask[1:]], capture_output=True, text=True, check=False
        )
        assert listed.returncode == 0, listed.stderr
        assert models_dir.glob("*").__next__().name in listed.stdout
        refused = subprocess.run(
            [CLIENT, *address, "models"], capture_output=True, text=True, check=False
        )
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: UNAUTHENTICATED:")
