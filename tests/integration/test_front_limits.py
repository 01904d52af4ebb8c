"""The KServe v2 and OpenAI HTTP fronts under rnnserve.v1's bounds and budgets, on a real
server: sizes refused before the work they would cost, each naming its setting; one
caller's calls in flight and token bucket shared by every front it calls through, with
when to retry (gRPC's retry pushback; HTTP's Retry-After and OpenAI's retry-after-ms);
refused tokens counted and logged on the HTTP front as on gRPC."""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import openai
import pytest
from support import ServerThread, hold_streams, scrape, server_config

from rnnserve import Client
from rnnserve_server.kserve.pb import grpc_service_pb2 as kpb
from rnnserve_server.kserve.pb import grpc_service_pb2_grpc as kpb_grpc

CALLERS = {name: f"{name}-front-token" for name in ("alice", "bob", "carol", "dave", "erin")}
RATE = 5  # tokens per second: slow, so that the tests' own pauses refill little
PUSHBACK = "grpc-retry-pushback-ms"


@pytest.fixture(scope="module")
def fronts(models_dir: Path) -> Iterator[ServerThread]:
    """Every front, small size limits, callers told apart by their tokens (each test has
    its own: a full bucket of 40, RATE tokens per second, 2 calls in flight)."""
    config = server_config(
        models_dir,
        openai_port=0,
        metrics_port=0,
        auth_tokens=",".join(f"{name}:{token}" for name, token in CALLERS.items()),
        max_tokens_per_request=16,
        max_text_chars=32,
        max_request_bytes=4096,
        max_generate_tokens=8,
        max_tokens_per_message=40,
        max_calls_per_caller=2,
        caller_tokens_per_s=RATE,
        caller_token_burst=40,
    )
    with ServerThread(config) as server:
        yield server


def metadata(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {CALLERS[name]}")]


def infer_request(
    model: str, sequence: int, *, start: bool = False, ids: list[int] | None = None,
    text: str | None = None, shape: list[int] | None = None,
) -> kpb.ModelInferRequest:  # fmt: skip
    message = kpb.ModelInferRequest(model_name=model)
    message.parameters["sequence_id"].uint64_param = sequence
    message.parameters["sequence_start"].bool_param = start
    if ids is not None:
        message.inputs.add(name="INPUT_IDS", datatype="INT64", shape=shape or [len(ids)])
        message.raw_input_contents.append(np.asarray(ids, dtype="<i8").tobytes())
    if text is not None:
        message.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
        message.raw_input_contents.append(struct.pack("<I", len(text.encode())) + text.encode())
    message.outputs.add(name="STEPS")
    return message


def steps_of(response: kpb.ModelInferResponse) -> int:
    return int(np.frombuffer(response.raw_output_contents[0], dtype="<i8")[0])


@pytest.fixture(scope="module")
def kserve(fronts: ServerThread) -> Iterator[kpb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(fronts.address) as channel:
        yield kpb_grpc.GRPCInferenceServiceStub(channel)


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def http(
    server: ServerThread, path: str, body: dict[str, Any] | bytes | None, name: str = ""
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of a plain HTTP request to the front."""
    port = server.running.http.port  # type: ignore[union-attr]
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {CALLERS[name]}"} if name else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


# ---------------------------------------------------------------- KServe v2


def test_kserve_inputs_are_bounded_before_they_are_read(
    kserve: kpb_grpc.GRPCInferenceServiceStub, model_name: str
) -> None:
    def infer(**inputs: Any) -> Any:
        message = infer_request(model_name, 1, start=True, **inputs)
        return kserve.ModelInfer(message, metadata=metadata("alice"), timeout=30)

    error = refused(lambda: infer(ids=[5] * 17))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        "inference input 'INPUT_IDS' tokens = 17 exceeds the server's limit of 16 "
        "(max_tokens_per_request)"
    )
    assert dict(error.trailing_metadata())[PUSHBACK] == "-1"  # type: ignore[attr-defined]
    # a shape of 2^40 elements with 8 bytes of data: counted from the shape, not read
    error = refused(lambda: infer(ids=[5], shape=[1 << 40]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"tokens = {1 << 40} exceeds" in (error.details() or "")
    error = refused(lambda: infer(text="x" * 33))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "code points = 33 exceeds the server's limit of 32 (max_text_chars)" in (
        error.details() or ""
    )
    error = refused(lambda: infer(ids=[5] * 600))  # 4,800 bytes of raw ids
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the transport's max_request_bytes
    error = refused(  # nothing of the refusals started the sequence
        lambda: kserve.ModelInfer(infer_request(model_name, 1, ids=[5]), metadata=metadata("alice"))
    )
    assert "START flag" in (error.details() or "")
    assert steps_of(infer(ids=[5] * 16)) == 16


def test_kserve_calls_take_from_the_callers_budget(
    kserve: kpb_grpc.GRPCInferenceServiceStub, model_name: str
) -> None:
    def infer(name: str, start: bool = False) -> kpb.ModelInferResponse:
        message = infer_request(model_name, 2, start=start, ids=[5] * 16)
        return kserve.ModelInfer(message, metadata=metadata(name), timeout=30)

    assert steps_of(infer("bob", start=True)) == 16
    assert steps_of(infer("bob")) == 32  # 32 of the bucket's 40
    error = refused(lambda: infer("bob"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "caller_tokens_per_s = 5" in (error.details() or "")
    wait_ms = int(dict(error.trailing_metadata())[PUSHBACK])  # type: ignore[attr-defined]
    assert 0 < wait_ms <= math.ceil(8 / RATE * 1000)  # at most the 8 tokens' refill time
    assert steps_of(infer("carol", start=True)) == 16  # another caller: a bucket of its own
    # In a stream a refused request is answered with its error, and the stream goes on.
    requests = [infer_request(model_name, 2, ids=[5] * 16), infer_request(model_name, 2, ids=[5])]
    answers = list(kserve.ModelStreamInfer(iter(requests), metadata=metadata("bob"), timeout=30))
    assert "caller_tokens_per_s" in answers[0].error_message
    assert steps_of(answers[1].infer_response) == 33


def held_streams(fronts: ServerThread, name: str, session_id: str, count: int) -> Any:
    """``count`` rnnserve.v1 StepStreams of ``name``, answered once each and held open
    until the returned function is called (then the threads end)."""
    release = threading.Event()
    client = Client(fronts.address, token=CALLERS[name])
    threads = hold_streams(client, session_id, count, release)

    def done() -> None:
        release.set()
        for thread in threads:
            thread.join(30)
        client.close()

    return done


def test_every_front_counts_a_callers_calls_in_flight_together(
    fronts: ServerThread, kserve: kpb_grpc.GRPCInferenceServiceStub, model_name: str
) -> None:
    """dave's 2 calls in flight (rnnserve.v1 streams) leave none for him on KServe or
    HTTP, and none of them is erin's."""
    with Client(fronts.address, token=CALLERS["dave"]) as dave:
        session = dave.create_session(model_name)
        done = held_streams(fronts, "dave", session.id, 2)
        try:
            error = refused(
                lambda: kserve.ServerReady(kpb.ServerReadyRequest(), metadata=metadata("dave"))
            )
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_calls_per_caller" in (error.details() or "")
            status, headers, body = http(fronts, "/v1/models", None, "dave")
            assert status == 429 and body["error"]["type"] == "rate_limit_error"
            assert "max_calls_per_caller" in body["error"]["message"]
            assert "Retry-After" not in headers  # when one ends is not known
            assert kserve.ServerReady(kpb.ServerReadyRequest(), metadata=metadata("erin")).ready
            assert http(fronts, "/v1/models", None, "erin")[0] == 200
        finally:
            done()
        assert http(fronts, "/v1/models", None, "dave")[0] == 200  # their places are free
        session.close()


# ---------------------------------------------------------------- OpenAI HTTP


def test_http_requests_are_bounded_before_they_are_read(
    fronts: ServerThread, model_name: str
) -> None:
    status, _, body = http(fronts, "/v1/completions", b"{" + b" " * 4096 + b"}", "alice")
    assert status == 413 and "max_request_bytes" in body["error"]["message"]
    status, _, body = http(
        fronts,
        "/v1/completions",
        {"model": model_name, "prompt": "\u2603" * 33, "max_tokens": 1},
        "alice",
    )
    assert status == 400 and body["error"]["param"] == "prompt"  # a size limit: never retried
    assert body["error"]["message"] == (
        "prompt.text code points = 33 exceeds the server's limit of 32 (max_text_chars)"
    )
    status, _, body = http(
        fronts,
        "/v1/completions",
        {"model": model_name, "prompt": [5] * 17, "max_tokens": 1},
        "alice",
    )
    assert status == 400 and "prompt tokens = 17" in body["error"]["message"]
    assert "max_tokens_per_request" in body["error"]["message"]


def test_http_completions_take_from_the_callers_budget(
    fronts: ServerThread, model_name: str
) -> None:
    """A completion takes its prompt and its max_tokens from the bucket, which rnnserve.v1
    calls of the same caller drain too; the refusal says when to retry as the SDKs read
    it."""
    port = fronts.running.http.port  # type: ignore[union-attr]
    sdk = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=CALLERS["erin"], max_retries=0
    )
    with (
        Client(fronts.address, token=CALLERS["erin"]) as erin,
        erin.create_session(model_name) as session,
    ):
        session.step(tokens=[5] * 16)  # 16 of 40 through rnnserve.v1
        sdk.completions.create(model=model_name, prompt=[5] * 8, max_tokens=8, seed=1)  # 32
        with pytest.raises(openai.RateLimitError) as raised:
            sdk.completions.create(model=model_name, prompt=[5] * 16, max_tokens=8, seed=1)
    error = raised.value
    assert "caller_tokens_per_s = 5" in error.message
    wait_ms = int(error.response.headers["retry-after-ms"])
    assert 0 < wait_ms <= math.ceil(16 / RATE * 1000)
    assert error.response.headers["Retry-After"] == str(math.ceil(wait_ms / 1000))


def test_http_refused_tokens_are_counted_and_logged(
    fronts: ServerThread, model_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    presented = "presented-http-secret"
    port = fronts.running.metrics_port  # type: ignore[union-attr]
    assert port

    def count(reason: str) -> float:
        return scrape(port)[("rnnserve_auth_failures_total", (("reason", reason),))]

    before = count("unknown token"), count("no token")
    with caplog.at_level(logging.WARNING, logger="rnnserve_server.auth"):
        wrong = openai.OpenAI(
            base_url=f"http://127.0.0.1:{fronts.running.http.port}/v1",  # type: ignore[union-attr]
            api_key=presented,
            max_retries=0,
        )
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        status, _, body = http(fronts, "/v1/completions", {"model": model_name})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert (count("unknown token"), count("no token")) == (before[0] + 1, before[1] + 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "rnnserve_server.auth"]
    assert any(
        line.startswith("refused a call to GET /v1/models from 127.0.0.1:")
        and line.endswith("unknown token")
        for line in lines
    ), lines
    assert not any(presented in line for line in lines)
