"""The OpenAI-compatible HTTP front through the openai SDK itself (base_url pointed at the
real server) and plain HTTP: completions streamed and whole equal `rnnserve generate` with
the same settings, usage, stop strings, the stateful extension, errors in OpenAI's shape."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from support import CLASSIFIER, ServerThread, build_zoo, make_test_certificates, server_config

from rnnserve import Client

RNNSERVE = str(Path(sys.executable).with_name("rnnserve"))


@pytest.fixture(scope="module")
def http_server(models_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(server_config(models_dir, openai_port=0, max_generate_tokens=200)) as s:
        yield s


@pytest.fixture(scope="module")
def sdk(http_server: ServerThread) -> openai.OpenAI:
    port = http_server.running.http.port  # type: ignore[union-attr]
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)


def cli_generate(server: ServerThread, model: str, *args: str) -> dict[str, Any]:
    """`rnnserve generate --json` (the CLI, as its users run it) against the server."""
    done = subprocess.run(
        [RNNSERVE, "--address", server.address, "generate", "--model", model, "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def post(server: ServerThread, path: str, body: bytes, token: str = "") -> tuple[int, Any]:
    port = server.running.http.port  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_a_streamed_completion_equals_rnnserve_generate(
    http_server: ServerThread, sdk: openai.OpenAI, model_name: str
) -> None:
    expected = cli_generate(
        http_server, model_name, "The ", "--max-tokens", "60", "--temperature", "0.8",
        "--top-p", "0.9", "--seed", "3",
    )  # fmt: skip
    stream = sdk.completions.create(
        model=model_name, prompt="The ", max_tokens=60, temperature=0.8, top_p=0.9, seed=3,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected["text"] and len(text) > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []  # include_usage: one last chunk, the usage alone
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 60)
    whole = sdk.completions.create(
        model=model_name, prompt="The ", max_tokens=60, temperature=0.8, top_p=0.9, seed=3
    )
    assert whole.choices[0].text == expected["text"]
    assert whole.usage is not None and whole.usage.total_tokens == 64


def test_the_stop_string_is_left_out_as_openai_does(
    http_server: ServerThread, sdk: openai.OpenAI, model_name: str
) -> None:
    settings = ("--max-tokens", "200", "--temperature", "1.0", "--seed", "11")
    for stop in (" ", "e t", "th"):
        expected = cli_generate(http_server, model_name, "The", *settings, "--stop", stop)
        if expected["finish_reason"] != "stop-string":
            continue  # this seed never produced it
        assert expected["text"].endswith(stop)
        for streamed in (True, False):
            reply: Any = sdk.completions.create(
                model=model_name, prompt="The", max_tokens=200, temperature=1.0, seed=11,
                stop=stop, stream=streamed,
            )  # fmt: skip
            choices = [c.choices[0] for c in reply] if streamed else reply.choices
            assert "".join(c.text for c in choices) == expected["text"][: -len(stop)]
            assert choices[-1].finish_reason == "stop"
        return
    pytest.fail("no stop string was ever produced")


def test_a_session_continues_without_resending_its_history(
    http_server: ServerThread, sdk: openai.OpenAI, model_name: str
) -> None:
    with Client(http_server.address) as client, client.create_session(model_name) as control:
        first = client.generate_text(control.id, "Once ", max_tokens=12, seed=1)
        second = client.generate_text(control.id, max_tokens=12, seed=2)
        third = client.generate_text(control.id, " and", max_tokens=12, seed=3)
        opened = sdk.completions.create(
            model=model_name, prompt="Once ", max_tokens=12, seed=1,
            extra_body={"keep_session": True},
        )  # fmt: skip
        session_id = opened.model_extra["session_id"]  # type: ignore[index]
        assert opened.choices[0].text == first
        again = sdk.completions.create(
            model=model_name, prompt="", max_tokens=12, seed=2,
            extra_body={"session_id": session_id},
        )  # fmt: skip
        assert again.choices[0].text == second
        assert again.usage is not None and again.usage.prompt_tokens == 0
        # the session is an ordinary one: rnnserve.v1 sees it (same caller, same state)
        streamed = sdk.completions.create(
            model=model_name, prompt=" and", max_tokens=12, seed=3, stream=True,
            extra_body={"session_id": session_id},
        )  # fmt: skip
        assert "".join(c.choices[0].text for c in streamed) == third
        assert client.close_session(session_id) == 5 + 12 + 12 + 4 + 12


def test_listing_models(
    tiny_package: Path, model_name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = build_zoo(tiny_package, tmp_path_factory.mktemp("zoo"), model_name)
    with ServerThread(server_config(root, openai_port=0)) as server:
        port = server.running.http.port  # type: ignore[union-attr]
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        # only the models that continue text (not the classifier, the encoder-decoder, or
        # the conditional generator)
        assert [m.id for m in sdk.models.list()] == [model_name]
        assert sdk.models.retrieve(model_name).owned_by == "rnnserve"
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve(CLASSIFIER + "x")
        with pytest.raises(openai.BadRequestError, match="is not a language model"):
            sdk.completions.create(model=CLASSIFIER, prompt="x")


def test_errors_have_openai_shape_and_status(
    http_server: ServerThread, sdk: openai.OpenAI, model_name: str
) -> None:
    def refused(status: int, **body: Any) -> dict[str, Any]:
        got, reply = post(http_server, "/v1/completions", json.dumps(body).encode())
        assert got == status, reply
        assert set(reply["error"]) == {"message", "type", "param", "code"}
        return reply["error"]  # type: ignore[no-any-return]

    assert refused(404, model="nope", prompt="x")["code"] == "model_not_found"
    error = refused(400, model=model_name, prompt="x", temperature=-1)
    assert error["param"] == "temperature" and "out of range" in error["message"]
    assert refused(400, model=model_name, prompt="x", top_p=0)["param"] == "top_p"
    error = refused(400, model=model_name, prompt="x", color="blue")
    assert error["message"] == "Unrecognized request argument supplied: color"
    assert refused(400, model=model_name, prompt="x", n=2)["param"] == "n"
    assert refused(400, model=model_name, prompt="x", max_tokens=201)["param"] == "max_tokens"
    assert refused(400, model=model_name, prompt=[1, 100000])["param"] == "prompt"
    assert refused(400, model=model_name, prompt=["a", "b"])["param"] == "prompt"
    assert refused(400, prompt="x")["message"] == "you must provide a model parameter"
    error = refused(404, model=model_name, prompt="x", session_id="f" * 32)
    assert error["code"] == "session_not_found"
    assert refused(400, model=model_name, prompt="x", seed=-1)["param"] == "seed"

    def sessions() -> int:
        return http_server.run(lambda: len(http_server.running.engine.store))  # type: ignore[union-attr]

    before = sessions()  # a kept session whose request failed is not left behind
    refused(400, model=model_name, prompt="x", temperature=-1, keep_session=True)
    assert sessions() == before
    got, reply = post(http_server, "/v1/completions", b"{not json")
    assert got == 400 and reply["error"]["type"] == "invalid_request_error"
    got, reply = post(http_server, "/v1/chat/completions", b"{}")
    assert got == 404 and reply["error"]["message"] == "Invalid URL (POST /v1/chat/completions)"
    with pytest.raises(openai.BadRequestError, match="out of range"):  # before any event
        list(sdk.completions.create(model=model_name, prompt="x", temperature=-1, stream=True))


def test_authentication_takes_the_grpc_tokens(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, openai_port=0, auth_tokens="alice:alice-http-token")
    with ServerThread(config) as server:
        port = server.running.http.port  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/v1"
        for key in ("wrong-token", ""):
            anonymous = openai.OpenAI(base_url=url, api_key=key or "-", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                anonymous.models.list()
        alice = openai.OpenAI(base_url=url, api_key="alice-http-token", max_retries=0)
        kept = alice.completions.create(
            model=model_name, prompt="a", max_tokens=2, seed=5, extra_body={"keep_session": True}
        )
        session_id = kept.model_extra["session_id"]  # type: ignore[index]
        with Client(server.address, token="alice-http-token") as client:
            assert client.close_session(session_id) == 3  # alice's, through either front


def test_the_front_is_off_unless_asked(server: ServerThread) -> None:
    assert server.running.http is None  # type: ignore[union-attr]


def test_tls_and_the_body_limit(models_dir: Path, model_name: str, tmp_path: Path) -> None:
    certificates = make_test_certificates(tmp_path)
    config = server_config(
        models_dir,
        openai_port=0,
        max_request_bytes=2048,
        tls_cert=str(certificates / "server.pem"),
        tls_key=str(certificates / "server.key"),
    )
    with ServerThread(config) as server:
        port = server.running.http.port  # type: ignore[union-attr]
        context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        url = f"https://127.0.0.1:{port}/v1/completions"
        # Seeded: an unseeded draw may sample the end token first (0 tokens, "stop").
        body = json.dumps({"model": model_name, "prompt": "a", "max_tokens": 3, "seed": 7})
        request = urllib.request.Request(url, body.encode())
        with urllib.request.urlopen(request, context=context) as reply:
            answer = json.loads(reply.read())
        assert answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 3
        large = json.dumps({"model": model_name, "prompt": "a" * 3000}).encode()
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(urllib.request.Request(url, large), context=context)
        with raised.value as error:
            assert error.code == 413
            assert "max_request_bytes" in json.loads(error.read())["error"]["message"]


def test_a_stream_the_client_leaves_ends_its_generation(models_dir: Path, model_name: str) -> None:
    """A client that leaves mid-stream cancels the generation and frees its session.

    The stream must outlast the socket buffers (otherwise the server may have sent every
    token before the client leaves and the call ends normally): a long greedy generation
    (greedy, so no end token is drawn by chance; checked first without streaming)."""
    tokens = 20_000  # ~3 MB of events: far more than loopback's socket buffers hold
    config = server_config(models_dir, openai_port=0, max_generate_tokens=tokens)
    with ServerThread(config) as server:
        port = server.running.http.port  # type: ignore[union-attr]
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        request = {"model": model_name, "prompt": "a", "max_tokens": tokens, "temperature": 0}
        whole = sdk.completions.create(**request)
        assert whole.choices[0].finish_reason == "length"

        def sessions() -> int:
            return server.run(lambda: len(server.running.engine.store))  # type: ignore[union-attr]

        before = sessions()
        stream = sdk.completions.create(**request, stream=True)
        chunks = iter(stream)
        next(chunks), next(chunks)
        assert sessions() == before + 1
        stream.close()
        deadline = time.monotonic() + 10
        while sessions() != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sessions() == before  # its session closed, its generation stopped
        cancelled = server.running.engine.stats.cancelled  # type: ignore[union-attr]
        assert cancelled.get("/v1/completions", 0) >= 1
