"""Pure logic: argument checks before sending, request building, response conversion."""

from __future__ import annotations

import math

import grpc
import pytest

import rnnserve
from rnnserve import StepInput, TLSConfig
from rnnserve._channel import call_metadata, parse_target
from rnnserve._messages import (
    classify_request,
    classify_result,
    create_session_request,
    generate_request,
    generated_chunk,
    model_info,
    reload_result,
    step_many_request,
    step_outcomes,
    step_request,
    translate_request,
    translate_result,
)
from rnnserve.v1 import rnnserve_pb2 as pb


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("localhost", "localhost:50051"),
        (" rnnserve:9000 ", "rnnserve:9000"),
        ("[::1]:7000", "[::1]:7000"),
        ("[::1]", "[::1]:50051"),
        ("unix:/run/rnnserve.sock", "unix:/run/rnnserve.sock"),
        ("dns:///rnnserve.example:443", "dns:///rnnserve.example:443"),
    ],
)
def test_addresses_become_grpc_targets(address: str, target: str) -> None:
    assert parse_target(address) == target


@pytest.mark.parametrize(
    "address", ["", "http://localhost:50051", "::1", "host:port", "host:70000", "a b:1"]
)
def test_bad_addresses_fail_before_connecting(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_target(address)


def test_client_arguments_are_checked_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="address"):
        rnnserve.Client("http://localhost")
    with pytest.raises(ValueError, match="timeout"):
        rnnserve.Client(timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        rnnserve.Client(timeout=math.inf)
    with pytest.raises(ValueError, match="token"):
        rnnserve.Client(token="two words")
    with pytest.raises(ValueError, match="certificate and a key"):
        TLSConfig(certificate_chain=b"pem")


def test_the_token_travels_as_bearer_metadata() -> None:
    assert call_metadata(None) is None
    assert call_metadata("s3cr3t") == (("authorization", "Bearer s3cr3t"),)


def test_tls_config_reads_pem_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "ca.pem").write_bytes(b"CA")
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    tls = TLSConfig.from_files(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem", "srv")
    assert tls == TLSConfig(b"CA", b"CERT", b"KEY", "srv")
    assert TLSConfig.from_files() == TLSConfig()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"exactly one of tokens= and text= \(neither given\)"),
        ({"tokens": [1], "text": "a"}, r"exactly one of tokens= and text= \(both given\)"),
        ({"tokens": "abc"}, "pass text= for text"),
        ({"tokens": [1, -2]}, r"tokens\[1\] must be in 0 \.\. 4294967295"),
        ({"tokens": [1, 2**32]}, r"tokens\[1\] must be in"),
        ({"tokens": [True]}, r"tokens\[0\] must be an int"),
        ({"tokens": [1.0]}, r"tokens\[0\] must be an int"),
        ({"tokens": 7}, "sequence of token ids"),
        ({"text": b"abc"}, "text must be a str"),
        ({"text": "a", "top_k": -1}, "top_k must be in"),
    ],
)
def test_step_inputs_are_checked_locally(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StepInput("0" * 32, **kwargs)  # type: ignore[arg-type]


def test_the_server_judges_values_the_wire_can_carry() -> None:
    # Empty input and large top_k are range checks: the server names the limit it applies.
    assert step_request(StepInput("s", text="")).WhichOneof("input") == "text"
    assert list(step_request(StepInput("s", tokens=[])).tokens.ids) == []
    assert step_request(StepInput("s", text="a", top_k=5000)).top_k == 5000


def test_step_requests_leave_unset_fields_unset() -> None:
    request = step_request(StepInput("s", tokens=(3, 1, 4)))
    assert list(request.tokens.ids) == [3, 1, 4]
    assert not request.HasField("top_k")
    assert not request.return_distribution
    zero = step_request(StepInput("s", text="hi", top_k=0, return_distribution=True))
    assert zero.HasField("top_k") and zero.top_k == 0 and zero.return_distribution


def test_step_inputs_are_immutable_snapshots() -> None:
    ids = [1, 2]
    step = StepInput("s", tokens=ids)
    ids.append(3)
    assert step.tokens == (1, 2)


def test_step_stream_items_must_be_step_inputs() -> None:
    with pytest.raises(TypeError, match="StepInput"):
        step_request({"session_id": "s", "text": "a"})  # type: ignore[arg-type]


def sampling(**overrides: object) -> pb.GenerateRequest:
    options: dict[str, object] = {
        "max_tokens": 0,
        "temperature": None,
        "top_k": 0,
        "top_p": None,
        "seed": None,
        "stop": (),
        "stop_token_ids": (),
    }
    prompt = overrides.pop("prompt", None)
    return generate_request("s", prompt, **{**options, **overrides})  # type: ignore[arg-type]


def test_generate_requests_keep_server_defaults_for_unset_options() -> None:
    request = sampling()
    assert request.WhichOneof("prompt") is None
    for name in ("temperature", "top_p", "seed"):
        assert not request.HasField(name)
    greedy = sampling(prompt="once", temperature=0, top_p=0.9, seed=2**64 - 1, stop=["\n", "."])
    assert greedy.prompt_text == "once" and greedy.HasField("temperature")
    assert greedy.temperature == 0.0 and greedy.seed == 2**64 - 1
    assert list(greedy.stop) == ["\n", "."]
    assert list(sampling(prompt=[5, 6]).prompt_tokens.ids) == [5, 6]


def test_a_single_stop_string_is_one_stop() -> None:
    assert list(sampling(stop="END").stop) == ["END"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"top_k": 1.5}, "top_k must be an int"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"stop": ["ok", 3]}, "stop strings must be str"),
        ({"prompt": [1, "2"]}, r"prompt\[1\] must be an int"),
    ],
)
def test_generate_arguments_are_checked_locally(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sampling(**overrides)


def test_model_info_enums_become_short_labels() -> None:
    message = pb.ModelInfo(
        name="m",
        version=3,
        shape=pb.TASK_SHAPE_SEQ2SEQ,
        output=pb.OUTPUT_KIND_SIGMOID,
        vocabulary=pb.Vocabulary(kind="word", size=10, special_tokens={"pad": 0}),
        labels=["x", "y"],
        metrics={"acc": 0.5},
    )
    info = model_info(message)
    assert (info.shape, info.output) == ("seq2seq", "sigmoid")
    assert info.vocabulary == rnnserve.Vocabulary("word", 10, {"pad": 0})
    assert (info.labels, info.metrics) == (["x", "y"], {"acc": 0.5})
    message.shape = 99  # a shape added to the proto after this client was built
    assert model_info(message).shape == "unknown-99"


def test_generated_chunks_name_why_they_ended() -> None:
    running = generated_chunk(
        pb.GenerateResponse(
            tokens=[
                pb.GeneratedToken(id=1, text="a", piece="a"),
                pb.GeneratedToken(id=2, text="b", piece=" b"),
            ],
            steps=4,
        )
    )
    # the text is the pieces (what each token adds), not the tokens as written
    assert (running.text, running.steps, running.finish_reason) == ("a b", 4, None)
    assert [t.text for t in running.tokens] == ["a", "b"]
    assert running.matched_stop is None
    stopped = generated_chunk(
        pb.GenerateResponse(finish_reason=pb.FINISH_REASON_STOP_STRING, matched_stop="\n")
    )
    assert (stopped.finish_reason, stopped.matched_stop) == ("stop-string", "\n")
    ended = generated_chunk(pb.GenerateResponse(finish_reason=pb.FINISH_REASON_END_TOKEN))
    assert ended.finish_reason == "end-token"


def test_stop_token_ids_travel_as_ids() -> None:
    assert list(sampling(stop_token_ids=[3, 0]).stop_token_ids) == [3, 0]
    assert list(sampling().stop_token_ids) == []
    with pytest.raises(ValueError, match=r"stop_token_ids must be a sequence of token ids"):
        sampling(stop_token_ids="ab")
    with pytest.raises(ValueError, match=r"stop_token_ids\[0\] must be in"):
        sampling(stop_token_ids=[-1])


def test_create_session_requests_carry_only_what_is_given() -> None:
    plain = create_session_request("m", 0, 0, seed=None, state=None, source=None, condition=None)
    assert not plain.HasField("seed") and plain.WhichOneof("source") is None
    assert (plain.state, plain.condition) == (b"", "")
    full = create_session_request(
        "m", 2, 30, seed=0, state=bytearray(b"RNN"), source="hola", condition="calm"
    )
    assert full.HasField("seed") and full.seed == 0 and full.state == b"RNN"
    assert (full.source_text, full.condition, full.version) == ("hola", "calm", 2)
    ids = create_session_request("m", 0, 0, seed=None, state=None, source=(4, 2), condition=None)
    assert list(ids.source_tokens.ids) == [4, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"state": b""}, "state must be the bytes of an export, not empty"),
        ({"state": "RNNSTATE"}, "state must be bytes, got str"),
        ({"source": b"abc"}, "source must be a str or a sequence of token ids"),
        ({"source": [1, -1]}, r"source\[1\] must be in"),
        ({"condition": 3}, "condition must be a str"),
        ({"seed": 2**64}, "seed must be in"),
    ],
)
def test_create_session_arguments_are_checked_locally(
    overrides: dict[str, object], message: str
) -> None:
    options: dict[str, object] = {"seed": None, "state": None, "source": None, "condition": None}
    with pytest.raises(ValueError, match=message):
        create_session_request("m", 0, 0, **{**options, **overrides})  # type: ignore[arg-type]


def test_step_many_messages_are_columns_of_step_inputs() -> None:
    single = step_many_request([StepInput("a", tokens=[7]), StepInput("b", tokens=[9])])
    assert list(single.session_ids) == ["a", "b"] and list(single.tokens) == [7, 9]
    assert list(single.lengths) == [] and list(single.texts) == []  # one token each: implied
    assert not single.HasField("top_k")
    mixed = step_many_request(
        [StepInput("a", text="xy", top_k=0), StepInput("b", tokens=[1, 2, 3], top_k=0)]
    )
    assert list(mixed.lengths) == [0, 3] and list(mixed.texts) == ["xy", ""]
    assert list(mixed.tokens) == [1, 2, 3] and mixed.HasField("top_k") and mixed.top_k == 0
    assert list(step_many_request(()).session_ids) == []
    with pytest.raises(TypeError, match=r"sequence of rnnserve\.StepInput, got StepInput"):
        step_many_request(StepInput("a", text="x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="StepInput"):
        step_many_request([{"session_id": "a"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="same top_k; got 3, 5"):
        step_many_request([StepInput("a", tokens=[1], top_k=5), StepInput("b", text="x", top_k=3)])
    with pytest.raises(ValueError, match="no full distributions"):
        step_many_request([StepInput("a", tokens=[1], return_distribution=True)])


def test_step_outcomes_are_results_or_typed_errors() -> None:
    outcomes = step_outcomes(
        pb.StepManyResponse(
            steps=[2, 0, 0, 7],
            consumed=[1, 0, 0, 2],
            top_counts=[2, 0, 0, 1],
            top_ids=[4, 5, 6],
            top_texts=["d", "e", "f"],
            top_probabilities=[0.5, 0.25, 1.0],
            errors=[
                pb.StepError(index=1, code=grpc.StatusCode.NOT_FOUND.value[0], message="gone"),
                pb.StepError(index=2, code=99, message="from the future"),
            ],
        ),
        ["a", "b", "c", "d"],
    )
    ok, missing, unknown, last = outcomes
    assert ok == rnnserve.StepResult(
        "a", 2, 1, [rnnserve.TokenProb(4, "d", 0.5), rnnserve.TokenProb(5, "e", 0.25)], None
    )
    assert last == rnnserve.StepResult("d", 7, 2, [rnnserve.TokenProb(6, "f", 1.0)], None)
    assert isinstance(missing, rnnserve.NotFound) and missing.details == "gone"
    assert type(unknown) is rnnserve.RnnServeError and unknown.code is grpc.StatusCode.UNKNOWN
    assert "status code 99: from the future" in unknown.details


def test_classify_and_translate_requests_keep_server_defaults() -> None:
    classify = classify_request("m", "abc", None, version=0, top_k=None, every_step=False)
    assert classify.text == "abc" and not classify.HasField("top_k") and not classify.every_step
    by_ids = classify_request("m", None, [1, 2], version=3, top_k=0, every_step=True)
    assert list(by_ids.tokens.ids) == [1, 2] and by_ids.HasField("top_k") and by_ids.every_step
    options: dict[str, object] = {
        "version": 0,
        "max_tokens": 0,
        "temperature": None,
        "top_k": 0,
        "top_p": None,
        "seed": None,
    }
    translate = translate_request("m", "hola", **options)  # type: ignore[arg-type]
    assert translate.source_text == "hola"
    for name in ("temperature", "top_p", "seed"):
        assert not translate.HasField(name)
    sampled = translate_request("m", [7], **{**options, "temperature": 0.5, "seed": 1})  # type: ignore[arg-type]
    assert list(sampled.source_tokens.ids) == [7] and sampled.temperature == 0.5


def test_newer_responses_become_dataclasses() -> None:
    info = model_info(
        pb.ModelInfo(name="g", initial_state="condition", conditions=["calm", "wild"])
    )
    assert (info.initial_state, info.conditions) == ("condition", ["calm", "wild"])
    stopped = generated_chunk(pb.GenerateResponse(finish_reason=pb.FINISH_REASON_STOP_TOKEN))
    assert stopped.finish_reason == "stop-token"
    classified = classify_result(
        pb.ClassifyResponse(
            top=[pb.TokenProbability(id=1, text="pos", probability=0.75)],
            final=pb.LabelProbabilities(probabilities=[0.25, 0.75]),
            steps=[pb.LabelProbabilities(probabilities=[0.5, 0.5])],
        )
    )
    assert classified == rnnserve.ClassifyResult(
        [rnnserve.TokenProb(1, "pos", 0.75)], [0.25, 0.75], [[0.5, 0.5]]
    )
    translated = translate_result(
        pb.TranslateResponse(
            tokens=[pb.GeneratedToken(id=2, text="ok", probability=1.0)],
            text="ok",
            finish_reason=pb.FINISH_REASON_END_TOKEN,
        )
    )
    assert (translated.text, translated.finish_reason) == ("ok", "end-token")
    reloaded = reload_result(
        pb.ReloadModelsResponse(
            models=[pb.ModelInfo(name="g", version=2)],
            added=["g/2"],
            refused=[pb.RefusedPackage(path="/m/x/1", reason="manifest.json: missing")],
        )
    )
    assert (reloaded.added, reloaded.removed) == (["g/2"], [])
    assert reloaded.refused == [rnnserve.RefusedPackage("/m/x/1", "manifest.json: missing")]
    assert [(m.name, m.version) for m in reloaded.models] == [("g", 2)]
