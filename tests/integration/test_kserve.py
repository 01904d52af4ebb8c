"""The KServe v2 / Triton front through raw stubs generated from proto/inference: the same
port and server as rnnserve.v1, every kind of bad request (never INTERNAL), sequence
starts, ends, restarts and expiry, callers kept apart, the other model kinds."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import CONDITIONAL, ENCODER_DECODER, ServerThread, server_config

from rnnserve import Client
from rnnserve_server.kserve.pb import grpc_service_pb2 as pb
from rnnserve_server.kserve.pb import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(
    model: str,
    sequence: int | str | None = 1,
    *,
    start: bool = False,
    end: bool = False,
    ids: list[int] | None = None,
    text: str | None = None,
    outputs: tuple[str, ...] = ("TOP_K_IDS", "STEPS"),
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    if isinstance(sequence, str):
        message.parameters["sequence_id"].string_param = sequence
    elif sequence is not None:
        message.parameters["sequence_id"].uint64_param = sequence
    message.parameters["sequence_start"].bool_param = start
    message.parameters["sequence_end"].bool_param = end
    if ids is not None:
        message.inputs.add(name="INPUT_IDS", datatype="INT64", shape=[len(ids)])
        message.raw_input_contents.append(np.asarray(ids, dtype="<i8").tobytes())
    if text is not None:
        message.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
        message.raw_input_contents.append(struct.pack("<I", len(text.encode())) + text.encode())
    for name in outputs:
        message.outputs.add(name=name)
    return message


def output(response: pb.ModelInferResponse, name: str) -> list[Any]:
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    dtype = {"INT64": "<i8", "FP32": "<f4"}[tensor.datatype]
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).tolist()  # type: ignore[no-any-return]


def refused(
    call: Any, message: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(message)
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details()  # type: ignore[no-any-return]


def test_both_apis_share_the_port_and_reflection_lists_both(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
        ask = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService"
        )
        (described,) = list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"rnnserve.v1.RnnServe", "inference.GRPCInferenceService"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_bad_requests_are_invalid_argument_naming_what(stub: Any, model_name: str) -> None:
    infer = stub.ModelInfer
    wrong_type = request(model_name, start=True, ids=[1])
    wrong_type.inputs[0].datatype = "INT32"
    assert "data-type is 'INT32', but model" in refused(infer, wrong_type)
    wrong_shape = request(model_name, start=True, ids=[1, 2])
    wrong_shape.inputs[0].shape[:] = [1, 2]
    assert "unexpected shape for input 'INPUT_IDS'" in refused(infer, wrong_shape)
    short = request(model_name, start=True, ids=[1, 2])
    short.raw_input_contents[0] = short.raw_input_contents[0][:12]
    assert "expected 16 bytes for 2 INT64 elements, got 12" in refused(infer, short)
    cut = request(model_name, start=True, text="hello")
    cut.raw_input_contents[0] = cut.raw_input_contents[0][:6]
    assert "runs past the end of the data" in refused(infer, cut)
    latin = request(model_name, start=True, text="x")
    latin.raw_input_contents[0] = struct.pack("<I", 1) + b"\xe9"
    assert "is not UTF-8 text" in refused(infer, latin)
    both = request(model_name, start=True, ids=[1], text="a")
    assert "exactly one of the inputs 'INPUT_IDS'" in refused(infer, both)
    assert "got none" in refused(infer, request(model_name, start=True))
    unknown_input = request(model_name, start=True, ids=[1])
    unknown_input.inputs[0].name = "TOKENS"
    assert "unexpected inference input 'TOKENS'" in refused(infer, unknown_input)
    unknown_output = request(model_name, start=True, ids=[1], outputs=("NOPE",))
    assert "unexpected inference output 'NOPE'" in refused(infer, unknown_output)
    classified = request(model_name, start=True, ids=[1], outputs=("TOP_K_IDS",))
    classified.outputs[0].parameters["classification"].int64_param = 2
    assert "classification is offered on the outputs" in refused(infer, classified)
    too_many = request(model_name, start=True, ids=[1])
    too_many.parameters["top_k"].int64_param = 5000
    assert "parameter top_k = 5000 is out of range" in refused(infer, too_many)
    negative = request(model_name, start=True, ids=[1])
    negative.parameters["sequence_id"].int64_param = -3
    assert "parameter sequence_id = -3 is out of range" in refused(infer, negative)
    flag = request(model_name, ids=[1])
    flag.parameters["sequence_start"].string_param = "yes"
    assert "parameter sequence_start must be a bool" in refused(infer, flag)
    raw_and_typed = request(model_name, start=True, ids=[1])
    raw_and_typed.inputs[0].contents.int64_contents.append(1)
    assert "contents must not be given" in refused(infer, raw_and_typed)
    version = request(model_name, start=True, ids=[1])
    version.model_version = "latest"
    assert "version should be an integral value > 0" in refused(infer, version)
    unknown = pb.ModelInferRequest(model_name="x")
    assert "is not found" in refused(infer, unknown, grpc.StatusCode.NOT_FOUND)


def test_typed_contents_are_read_as_raw_ones(stub: Any, model_name: str) -> None:
    typed = request(model_name, "typed", start=True, end=True)
    tensor = typed.inputs.add(name="INPUT_IDS", datatype="INT64", shape=[3])
    tensor.contents.int64_contents.extend([5, 6, 7])
    raw = request(model_name, "raw", start=True, end=True, ids=[5, 6, 7])
    assert output(stub.ModelInfer(typed), "TOP_K_IDS") == output(stub.ModelInfer(raw), "TOP_K_IDS")


def test_malformed_bytes_are_invalid_argument(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in (raised.value.details() or "")


def test_calls_not_offered_are_unimplemented(stub: Any) -> None:
    details = refused(
        stub.ModelStatistics, pb.ModelStatisticsRequest(), grpc.StatusCode.UNIMPLEMENTED
    )
    assert "ModelStatistics is not supported by rnnserve" in details
    refused(
        stub.SystemSharedMemoryRegister,
        pb.SystemSharedMemoryRegisterRequest(),
        grpc.StatusCode.UNIMPLEMENTED,
    )


def test_repository_index_and_readiness(stub: Any, model_name: str) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert [(m.name, m.version, m.state) for m in index.models] == [(model_name, "1", "READY")]
    assert stub.ModelReady(pb.ModelReadyRequest(name=model_name, version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name=model_name, version="2")).ready
    assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_a_start_on_a_live_sequence_starts_it_afresh(stub: Any, model_name: str) -> None:
    first = stub.ModelInfer(request(model_name, "again", start=True, text="abc"))
    stub.ModelInfer(request(model_name, "again", text="def"))
    restarted = stub.ModelInfer(request(model_name, "again", start=True, text="abc"))
    assert output(restarted, "STEPS") == output(first, "STEPS") == [3]
    assert output(restarted, "TOP_K_IDS") == output(first, "TOP_K_IDS")


def test_a_sequence_is_one_session_until_its_end(
    server: ServerThread, stub: Any, model_name: str
) -> None:
    def count() -> int:
        return server.run(lambda: len(server.running.engine.store))  # type: ignore[union-attr]

    before = count()
    stub.ModelInfer(request(model_name, 3001, start=True, ids=[1]))
    stub.ModelInfer(request(model_name, 3001, ids=[2]))
    assert count() == before + 1
    stub.ModelInfer(request(model_name, 3001, end=True, ids=[3]))
    assert count() == before
    # a start whose request is refused starts nothing
    too_long = request(model_name, 3002, start=True, text="a" * 5000)
    assert "max_tokens_per_request" in refused(
        stub.ModelInfer, too_long, grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert count() == before
    assert "START flag" in refused(stub.ModelInfer, request(model_name, 3002, ids=[1]))


def test_a_sequence_idle_past_its_timeout_is_gone(models_dir: Path, model_name: str) -> None:
    with (
        ServerThread(server_config(models_dir, session_idle_timeout_s=1)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(pb.ModelConfigRequest(name=model_name)).config
        assert config.sequence_batching.max_sequence_idle_microseconds == 1_000_000
        stub.ModelInfer(request(model_name, 1, start=True, ids=[4]))
        time.sleep(0.6)
        stub.ModelInfer(request(model_name, 1, ids=[4]))  # each request renews it
        time.sleep(0.6)
        stub.ModelInfer(request(model_name, 1, ids=[4]))
        time.sleep(1.3)
        assert "START flag" in refused(stub.ModelInfer, request(model_name, 1, ids=[4]))


def test_each_caller_has_its_own_sequences(models_dir: Path, model_name: str) -> None:
    alice, bob = "alice-kserve-token", "bob-kserve-token-2"
    config = server_config(models_dir, auth_tokens=f"alice:{alice},bob:{bob}")
    with ServerThread(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def infer(token: str, message: pb.ModelInferRequest) -> pb.ModelInferResponse:
            return stub.ModelInfer(message, metadata=[("authorization", f"Bearer {token}")])

        refused(stub.ModelInfer, request(model_name, 5, start=True, ids=[1]),
                grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip
        infer(alice, request(model_name, 5, start=True, text="abcd"))
        with pytest.raises(grpc.RpcError) as raised:  # bob's sequence 5 was never started
            infer(bob, request(model_name, 5, ids=[1]))
        assert "START flag" in (raised.value.details() or "")
        infer(bob, request(model_name, 5, start=True, ids=[1]))
        assert output(infer(alice, request(model_name, 5, ids=[2])), "STEPS") == [5]
        assert output(infer(bob, request(model_name, 5, ids=[2])), "STEPS") == [2]


def test_calls_are_counted_in_the_metrics(server: ServerThread, stub: Any, model_name: str) -> None:
    registry = server.running.metrics.registry  # type: ignore[union-attr]

    def counted(code: str) -> float:
        labels = {"method": "ModelInfer", "code": code, "model": f"{model_name}/1"}
        return registry.get_sample_value("rnnserve_requests_total", labels) or 0.0

    ok, invalid = counted("OK"), counted("INVALID_ARGUMENT")
    stub.ModelInfer(request(model_name, "counted", start=True, end=True, ids=[1]))
    refused(stub.ModelInfer, request(model_name, "counted", ids=[1]))
    assert (counted("OK"), counted("INVALID_ARGUMENT")) == (ok + 1, invalid + 1)


def test_encoder_and_conditional_models_start_from_their_inputs(zoo: ServerThread) -> None:
    with grpc.insecure_channel(zoo.address) as channel, Client(zoo.address) as client:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        names = {m.name for m in stub.ModelMetadata(
            pb.ModelMetadataRequest(name=ENCODER_DECODER)).inputs}  # fmt: skip
        assert names == {"INPUT_IDS", "TEXT", "SOURCE_IDS", "SOURCE_TEXT"}
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=CONDITIONAL))
        assert {m.name for m in meta.inputs} == {"INPUT_IDS", "TEXT", "CONDITION"}

        def with_bytes(message: pb.ModelInferRequest, name: str, value: str) -> Any:
            message.inputs.add(name=name, datatype="BYTES", shape=[1])
            message.raw_input_contents.append(struct.pack("<I", len(value)) + value.encode())
            return message

        missing = request(ENCODER_DECODER, start=True, ids=[4])
        assert "starts each sequence from a source" in refused(stub.ModelInfer, missing)
        late = with_bytes(request(CONDITIONAL, ids=[4]), "CONDITION", "wild")
        assert "read only on the request that starts the sequence" in refused(stub.ModelInfer, late)
        for model, name, value, create in (
            (ENCODER_DECODER, "SOURCE_TEXT", "abc", {"source": "abc"}),
            (CONDITIONAL, "CONDITION", "wild", {"condition": "wild"}),
        ):
            got = stub.ModelInfer(with_bytes(request(model, start=True, ids=[4]), name, value))
            with client.create_session(model, **create) as session:
                expected = client.step(session.id, tokens=[4])
            assert output(got, "TOP_K_IDS") == [t.id for t in expected.top]
        unknown = with_bytes(request(CONDITIONAL, start=True, ids=[4]), "CONDITION", "grim")
        assert "condition = 'grim' is out of range" in refused(stub.ModelInfer, unknown)
