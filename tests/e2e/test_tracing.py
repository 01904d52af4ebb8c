"""OpenTelemetry tracing: off by default; with --tracing the real server exports, over
OTLP/gRPC to a receiver the test runs on loopback, one span per call that continues the
caller's trace, engine spans inside it and batch runs linked to the calls they served."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import SERVER, ServerProcess

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the otel extra (make dev has it)")

from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.service_names: set[str] = set()
        self.lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self.lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.service_names.add(attribute.value.string_value)
                for scope in resource_spans.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Any]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    received = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield received, port
    finally:
        server.stop(0)


def otlp_env(port: int) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "rnnserve-under-test",
    }


def attributes(span: Any) -> dict[str, Any]:
    out = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = getattr(value, value.WhichOneof("value"))
    return out


def wait_for(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_call_is_traced_through_engine_and_batcher(
    models_dir: Path, model_name: str, receiver: tuple[Receiver, int]
) -> None:
    received, port = receiver
    traceparent = [("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")]
    with (
        ServerProcess("--models", str(models_dir), "--tracing", env=otlp_env(port)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        session = stub.CreateSession(pb.CreateSessionRequest(model=model_name)).session_id
        generated = list(
            stub.Generate(
                pb.GenerateRequest(
                    session_id=session, prompt_text="The ", max_tokens=5, request_id="gen-1"
                ),
                metadata=traceparent,
            )
        )
        assert sum(len(r.tokens) for r in generated) == 5
        stub.Step(pb.StepRequest(session_id=session, text="a"))
        wait_for(lambda: received.named("rnnserve.v1.RnnServe/Step"))
        server.stop()  # flushes what is buffered
    assert received.service_names == {"rnnserve-under-test"}
    (call,) = received.named("rnnserve.v1.RnnServe/Generate")
    assert call.trace_id.hex() == TRACE_ID and call.parent_span_id.hex() == CALLER_SPAN
    assert call.kind == call.SPAN_KIND_SERVER
    assert attributes(call) | {"rpc.method": "Generate"} == attributes(call)
    assert attributes(call)["rnnserve.request_id"] == "gen-1"
    assert attributes(call)["rnnserve.session_id"] == session
    assert attributes(call)["rnnserve.model"] == f"{model_name}/1"
    assert attributes(call)["rpc.grpc.status_code"] == "OK"
    inside = [s for s in received.spans if s.parent_span_id == call.span_id]
    assert {s.name for s in inside} == {"rnnserve.feed", "rnnserve.decode"}
    assert all(s.trace_id == call.trace_id for s in inside)
    (decode,) = [s for s in inside if s.name == "rnnserve.decode"]
    assert attributes(decode)["rnnserve.tokens"] == 5
    runs = received.named("rnnserve.batch.run")
    linked = [r for r in runs if any(link.span_id == decode.span_id for link in r.links)]
    assert linked  # the runs that fed the decode loop's tokens (K per run of the chunks)
    assert all(attributes(r)["rnnserve.model"] == f"{model_name}/1" for r in linked)
    (step,) = received.named("rnnserve.v1.RnnServe/Step")
    assert step.trace_id != call.trace_id  # no traceparent: a trace of its own
    (step_feed,) = [s for s in received.spans if s.parent_span_id == step.span_id]
    assert any(link.span_id == step_feed.span_id for r in runs for link in r.links)


def test_tracing_is_off_by_default(
    models_dir: Path, model_name: str, receiver: tuple[Receiver, int]
) -> None:
    received, port = receiver
    with (
        ServerProcess("--models", str(models_dir), env=otlp_env(port)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        session = stub.CreateSession(pb.CreateSessionRequest(model=model_name)).session_id
        stub.Step(pb.StepRequest(session_id=session, text="a"))
        time.sleep(0.5)  # five export intervals, were it on
        server.stop()
    assert received.spans == []


def test_an_unknown_exporter_is_a_start_up_error(models_dir: Path) -> None:
    shown = subprocess.run(
        [*SERVER, "--models", str(models_dir), "--port", "0", "--tracing"],
        capture_output=True, text=True, check=False, timeout=60,
        env={**__import__("os").environ, "OTEL_TRACES_EXPORTER": "zipkin"},
    )  # fmt: skip
    assert shown.returncode == 2
    assert "OTEL_TRACES_EXPORTER names 'zipkin', which no installed package provides" in (
        shown.stderr
    )
    assert "Traceback" not in shown.stderr


def test_the_kserve_and_http_fronts_calls_are_traced_as_theirs(
    models_dir: Path, model_name: str, receiver: tuple[Receiver, int]
) -> None:
    import json
    import urllib.request

    from rnnserve_server.kserve.pb import grpc_service_pb2 as kpb
    from rnnserve_server.kserve.pb import grpc_service_pb2_grpc as kpb_grpc

    received, port = receiver
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    with (
        ServerProcess(
            "--models", str(models_dir), "--tracing", "--openai-port", "0", env=otlp_env(port)
        ) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        infer = kpb.ModelInferRequest(model_name=model_name, id="infer-7")
        infer.parameters["sequence_id"].int64_param = 5
        infer.parameters["sequence_start"].bool_param = True
        infer.inputs.add(name="TEXT", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            b"ab"
        )
        kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer, metadata=[("traceparent", traceparent)]
        )
        completion = urllib.request.Request(
            f"http://127.0.0.1:{server.openai_port}/v1/completions",
            data=json.dumps({"model": model_name, "prompt": "The ", "max_tokens": 4}).encode(),
            headers={
                "content-type": "application/json",
                "traceparent": traceparent,
                "x-request-id": "cmpl-9",
            },
        )
        with urllib.request.urlopen(completion, timeout=30) as reply:
            assert json.load(reply)["usage"]["completion_tokens"] == 4
        refused = urllib.request.Request(
            f"http://127.0.0.1:{server.openai_port}/v1/completions",
            data=json.dumps({"model": "nope"}).encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(refused, timeout=30)
        failed.value.close()  # its socket, which the error holds
        assert failed.value.code == 404
        wait_for(lambda: len(received.named("POST /v1/completions")) == 2)
        server.stop()
    (kserve,) = received.named("inference.GRPCInferenceService/ModelInfer")
    assert kserve.trace_id.hex() == TRACE_ID and kserve.parent_span_id.hex() == CALLER_SPAN
    assert kserve.kind == kserve.SPAN_KIND_SERVER
    assert attributes(kserve)["rpc.service"] == "inference.GRPCInferenceService"
    assert attributes(kserve)["rnnserve.request_id"] == "infer-7"  # the request's own id
    assert attributes(kserve)["rnnserve.model"] == f"{model_name}/1"
    assert attributes(kserve)["rnnserve.session_id"]  # the sequence's session
    assert attributes(kserve)["rpc.grpc.status_code"] == "OK"
    assert {s.name for s in received.spans if s.parent_span_id == kserve.span_id} == {
        "rnnserve.feed"
    }
    answered, unknown = sorted(
        received.named("POST /v1/completions"), key=lambda s: s.start_time_unix_nano
    )
    assert answered.trace_id.hex() == TRACE_ID and answered.parent_span_id.hex() == CALLER_SPAN
    assert answered.kind == answered.SPAN_KIND_SERVER
    assert attributes(answered) | {
        "http.request.method": "POST",
        "http.route": "/v1/completions",
        "http.response.status_code": 200,
        "rnnserve.request_id": "cmpl-9",
        "rnnserve.model": f"{model_name}/1",
    } == attributes(answered)
    inside = {s.name for s in received.spans if s.parent_span_id == answered.span_id}
    assert inside == {"rnnserve.feed", "rnnserve.decode"}
    assert attributes(unknown)["http.response.status_code"] == 404
    assert unknown.status.code == unknown.status.STATUS_CODE_ERROR
    assert unknown.trace_id.hex() != TRACE_ID  # no traceparent: a trace of its own
