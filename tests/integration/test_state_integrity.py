"""Imported state as an attacker would build it, through real gRPC calls (raw stubs).

The test server signs with the tests' shared key, and the tests hold that key too: they
play the caller who has a leaked key and can sign anything (statebytes.py rebuilds the
bytes from docs/api.md's layout). Every forged field must be refused with
INVALID_ARGUMENT naming it; what is accepted must leave a session on which every call
works and every probability lies in [0, 1]; a forgery without the key never gets past
the signature.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from statebytes import Export, format_1, sign
from support import SHARED_STATE_KEYS, ServerThread, server_config

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_STEPS = 2**63 - 1  # docs/api.md: the most steps a session may take
OTHER_KEY = "another-deployment-key-0123456789abcdef"


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[rnnserve_pb2_grpc.RnnServeStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield rnnserve_pb2_grpc.RnnServeStub(channel)


def export_of(stub: Any, model: str) -> bytes:
    """A real export: a session of the model after some text, with a seed."""
    session = stub.CreateSession(pb.CreateSessionRequest(model=model, seed=7)).session_id
    stub.Step(pb.StepRequest(session_id=session, text="the quick brown fox"))
    state = stub.ExportSession(pb.ExportSessionRequest(session_id=session)).state
    stub.CloseSession(pb.CloseSessionRequest(session_id=session))
    return bytes(state)


@pytest.fixture(scope="module")
def exported(stub: rnnserve_pb2_grpc.RnnServeStub, model_name: str) -> bytes:
    return export_of(stub, model_name)


RELU = "tiny-relu"
RELU_BOUND = 50.0  # the relu server's max_unbounded_state


@pytest.fixture(scope="module")
def relu_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server of a tiny vanilla ReLU RNN (trained here, ~10 s), whose state has no
    bound of its own: max_unbounded_state bounds its imports."""
    from rnnserve_train.api import train_and_export
    from rnnserve_train.config import make_config

    root = tmp_path_factory.mktemp("relu")
    overrides = {"out": str(root / "models"), "runs": str(root / "runs"), "progress": False}
    train_and_export(make_config("tiny", {**overrides, "cell": "rnn-relu", "name": RELU}))
    config = server_config(
        root / "models", state_keys=SHARED_STATE_KEYS, max_unbounded_state=RELU_BOUND
    )
    with ServerThread(config) as server, grpc.insecure_channel(server.address) as channel:
        yield rnnserve_pb2_grpc.RnnServeStub(channel)


def create(stub: Any, model: str, state: bytes, version: int = 0) -> str:
    """An imported session; with version 0 the import names its model version itself."""
    request = pb.CreateSessionRequest(model=model, version=version, state=state)
    return str(stub.CreateSession(request).session_id)


def refusal(stub: Any, model: str, state: bytes) -> str:
    """The details of the INVALID_ARGUMENT an import of ``state`` must end in."""
    with pytest.raises(grpc.RpcError) as refused:
        create(stub, model, state)
    assert refused.value.code() == INVALID, refused.value.details()
    return str(refused.value.details())


def key(e: Export) -> bytes:
    return e.signed(SHARED_STATE_KEYS)


# Each forgery, signed with the deployment's own key, and what the refusal must name.
FORGED: dict[str, tuple[Callable[[Export], bytes], str]] = {
    "steps = MAX_STEPS + 1": (lambda e: key(e.replace(steps=MAX_STEPS + 1)), "state.steps"),
    "steps = 2^64 - 1": (lambda e: key(e.replace(steps=2**64 - 1)), "state.steps"),
    "bit generator 2 (not PCG64)": (
        lambda e: key(e.replace(rng_kind=2)),
        "state.rng.bit_generator",
    ),
    "bit generator 0": (lambda e: key(e.replace(rng_kind=0)), "state.rng.bit_generator"),
    "bit generator 255": (lambda e: key(e.replace(rng_kind=255)), "state.rng.bit_generator"),
    "even PCG64 increment": (
        lambda e: key(e.replace(rng_increment=e.rng_increment ^ 1)),
        "state.rng.increment",
    ),
    "PCG64 increment 0": (lambda e: key(e.replace(rng_increment=0)), "state.rng.increment"),
    "has_uint32 = 2": (lambda e: key(e.replace(has_uint32=2)), "state.rng.has_uint32"),
    "dtype 0": (lambda e: key(e.retyped(dtype=0)), "state.h.dtype"),
    "dtype 2": (lambda e: key(e.retyped(dtype=2)), "state.h.dtype"),
    "float64 values under dtype 3": (
        lambda e: key(e.retyped(dtype=3, data=e.tensors[0].values.astype("<f8").tobytes())),
        "state.h.dtype",
    ),
    "tensor named c": (lambda e: key(e.retyped(name=b"c")), "state.tensors[0].name"),
    "tensor named H": (lambda e: key(e.retyped(name=b"H")), "state.tensors[0].name"),
    "tensor with an empty name": (lambda e: key(e.retyped(name=b"")), "state.tensors[0].name"),
    "no tensor": (lambda e: key(e.replace(tensors=[])), "state.tensors"),
    "two tensors": (lambda e: key(e.replace(tensors=e.tensors * 2)), "state.tensors"),
    "a count of 2 tensors over one": (lambda e: key(e.replace(tensor_count=2)), "state.tensors"),
    "zero dimensions": (lambda e: key(e.retyped(shape=[])), "state.h.dimensions"),
    "five dimensions": (lambda e: key(e.retyped(shape=[1, 1, 1, 1, 32])), "state.h.dimensions"),
    "three dimensions": (lambda e: key(e.retyped(shape=[1, 32, 1])), "state.h: shape"),
    "the shape transposed": (lambda e: key(e.retyped(shape=[32, 1])), "state.h: shape"),
    "a shape of 2^32 - 1 rows": (
        lambda e: key(e.retyped(shape=[2**32 - 1, 32])),
        "state.h: shape",
    ),
    "h = 3e38": (
        lambda e: key(e.with_values({(0, 5): 3e38})),
        "state.h[0, 5]",
    ),
    "h = 1.001": (lambda e: key(e.with_values({(0, 0): 1.001})), "|h| <= 1"),
    "h = -1.5": (
        lambda e: key(e.with_values({(0, 31): -1.5})),
        "state.h[0, 31]",
    ),
    "h = +inf": (
        lambda e: key(e.with_values({(0, 2): np.inf})),
        "not finite",
    ),
    "h = -inf": (
        lambda e: key(e.with_values({(0, 2): -np.inf})),
        "not finite",
    ),
    "model name with a newline": (lambda e: key(e.replace(model=e.model + b"\n")), "state.model"),
    "model name not UTF-8": (lambda e: key(e.replace(model=b"\xff\xfe")), "state.model"),
    "empty model name": (lambda e: key(e.replace(model=b"")), "state.model"),
    "another model": (lambda e: key(e.replace(model=b"other")), "exported from model other/1"),
    "version 0": (lambda e: key(e.replace(version=0)), "state.version"),
    "version 2^32 - 1": (lambda e: key(e.replace(version=2**32 - 1)), "state.version"),
    "a byte after the last field": (lambda e: key(e.replace(trailing=b"\x00")), "after the last"),
    "format 3": (lambda e: key(e.replace(format=3)), "state.format"),
    "kind 2 (a session record)": (lambda e: key(e.replace(kind=2)), "state.kind"),
    "kind 0": (lambda e: key(e.replace(kind=0)), "state.kind"),
    # --- without the key
    "a MAC byte flipped": (
        lambda e: key(e)[:-1] + bytes([key(e)[-1] ^ 1]),
        "signature does not verify",
    ),
    "signed with another deployment's key": (
        lambda e: e.signed(OTHER_KEY),
        "signature does not verify",
    ),
    "steps changed, MAC kept": (
        lambda e: e.replace(steps=1).body() + key(e)[-32:],
        "signature does not verify",
    ),
    "a SHA-256 checksum instead of the MAC": (
        lambda e: e.body() + hashlib.sha256(e.body()).digest(),
        "signature does not verify",
    ),
    "format 1 with a valid checksum": (
        lambda e: format_1(e.model.decode(), e.version, 5, e.tensors[0].values),
        "format 1",
    ),
    "format 1 with steps = 2^64": (
        lambda e: format_1(e.model.decode(), e.version, 2**64, e.tensors[0].values),
        "format 1",
    ),
    "format 1 with a header nested 20,000 deep": (
        lambda e: format_1("m", 1, 0, e.tensors[0].values, b'{"format":' + b"[" * 20_000),
        "format 1",
    ),
    "the magic alone": (lambda e: b"RNNSTATE", "bad magic or too short"),
}


@pytest.mark.parametrize("case", FORGED)
def test_a_forged_state_is_refused_naming_the_field(
    stub: Any, model_name: str, exported: bytes, case: str
) -> None:
    forge, named = FORGED[case]
    assert named in refusal(stub, model_name, forge(Export.parse(exported)))


def test_the_test_layout_reads_and_rebuilds_a_real_export_exactly(exported: bytes) -> None:
    export = Export.parse(exported)
    assert export.signed(SHARED_STATE_KEYS) == exported
    assert (export.kind, export.format, export.steps) == (1, 2, len("the quick brown fox"))
    assert [(t.name, t.dtype, t.shape) for t in export.tensors] == [(b"h", 1, [1, 32])]


def test_nan_in_every_position_is_refused(stub: Any, model_name: str, exported: bytes) -> None:
    export = Export.parse(exported)
    layers, hidden = export.tensors[0].shape
    for position in np.ndindex(layers, hidden):
        forged = export.with_values({position: np.nan})
        details = refusal(stub, model_name, key(forged))
        assert f"state.h[{position[0]}, {position[1]}] = nan: not finite" in details


def test_bytes_cut_at_every_field_boundary_are_refused(
    stub: Any, model_name: str, exported: bytes
) -> None:
    """Cut after each field (and inside each multi-byte one), then signed again: the
    refusal names the field the bytes end in; cut without signing: the signature."""
    pieces = Export.parse(exported).pieces()
    body = b"".join(piece for _, piece in pieces)
    at = 0
    for name, piece in pieces[:-1]:
        for cut in sorted({at + 1, at + len(piece) // 2, at + len(piece)}):
            details = refusal(stub, model_name, sign(body[:cut], SHARED_STATE_KEYS))
            assert "truncated" in details or "bad magic" in details, (name, cut, details)
            if name != "prefix":  # the MAC is checked before any field is read
                assert "signature" in refusal(stub, model_name, body[:cut] + exported[-32:])
        at += len(piece)


def test_the_bounds_themselves_are_accepted(stub: Any, model_name: str, exported: bytes) -> None:
    """|h| = 1 exactly, every generator field at its widest: valid states."""
    export = Export.parse(exported)
    export = export.with_values({(0, i): (-1.0) ** i for i in range(32)})
    widest = export.replace(rng_state=2**128 - 1, rng_increment=2**128 - 1, uinteger=2**32 - 1)
    session = create(stub, model_name, key(widest.replace(has_uint32=1)))
    check_every_call(stub, model_name, session)


def test_a_session_at_the_most_steps_refuses_steps_and_keeps_the_rest(
    stub: Any, model_name: str, exported: bytes
) -> None:
    export = Export.parse(exported)
    session = create(stub, model_name, key(export.replace(steps=MAX_STEPS - 1)))
    assert stub.Step(pb.StepRequest(session_id=session, text="a")).steps == MAX_STEPS
    before = stub.ExportSession(pb.ExportSessionRequest(session_id=session))
    assert before.steps == MAX_STEPS
    refused = [
        lambda: stub.Step(pb.StepRequest(session_id=session, text="a")),
        lambda: stub.Step(pb.StepRequest(session_id=session, tokens=pb.TokenIds(ids=[4, 5]))),
        lambda: stub.Step(pb.StepRequest(session_id=session, text="a", request_id="r1")),
        lambda: list(stub.Generate(pb.GenerateRequest(session_id=session, max_tokens=1))),
    ]
    for call in refused:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"{MAX_STEPS}, the most steps a session may take" in failed.value.details()
    (answer,) = list(
        stub.StepMany(iter([pb.StepManyRequest(session_ids=[session, session], tokens=[4, 4])]))
    )
    assert [e.code for e in answer.errors] == [grpc.StatusCode.FAILED_PRECONDITION.value[0]] * 2
    after = stub.ExportSession(pb.ExportSessionRequest(session_id=session))
    assert after.state == before.state  # nothing was applied
    fork = stub.ForkSession(pb.ForkSessionRequest(session_id=session)).session_id
    again = create(stub, model_name, after.state)
    for other in (fork, again):
        assert stub.CloseSession(pb.CloseSessionRequest(session_id=other)).steps == MAX_STEPS
    assert stub.CloseSession(pb.CloseSessionRequest(session_id=session)).steps == MAX_STEPS


def check_every_call(stub: Any, model: str, session: str) -> None:
    """Every call on an imported session works and every probability lies in [0, 1]."""
    step = stub.Step(pb.StepRequest(session_id=session, text="a", return_distribution=True))
    distribution = np.array(step.distribution)
    assert np.isfinite(distribution).all() and (distribution >= 0).all()
    assert (distribution <= 1).all() and abs(distribution.sum() - 1) < 1e-4
    assert all(0 <= t.probability <= 1 for t in step.top)
    for response in stub.Generate(
        pb.GenerateRequest(session_id=session, max_tokens=4, temperature=1.0, top_p=0.9)
    ):
        assert all(0 <= t.probability <= 1 for t in response.tokens)
    (many,) = list(stub.StepMany(iter([pb.StepManyRequest(session_ids=[session], tokens=[5])])))
    assert not many.errors and all(0 <= p <= 1 for p in many.top_probabilities)
    fork = stub.ForkSession(pb.ForkSessionRequest(session_id=session)).session_id
    assert all(
        0 <= t.probability <= 1 for t in stub.Step(pb.StepRequest(session_id=fork, text="b")).top
    )
    again = create(
        stub, model, stub.ExportSession(pb.ExportSessionRequest(session_id=session)).state
    )
    for other in (fork, again, session):
        stub.CloseSession(pb.CloseSessionRequest(session_id=other))


# ---------------------------------------------------------------- any mutation


def mutations(export: Export) -> st.SearchStrategy[bytes]:
    """Exported bytes changed as a caller could: a field set to any value its wire type
    holds (then signed with the key), values replaced by any float32 bit pattern
    (signed), or raw bytes flipped, inserted or cut (signed, or not)."""
    u = lambda bits: st.integers(0, 2**bits - 1)  # noqa: E731
    field = st.one_of(
        st.builds(lambda v: export.replace(steps=v), u(64)),
        st.builds(lambda v: export.replace(version=v), u(32)),
        st.builds(lambda v: export.replace(rng_kind=v), u(8)),
        st.builds(lambda v: export.replace(rng_state=v), u(128)),
        st.builds(lambda v: export.replace(rng_increment=v), u(128)),
        st.builds(lambda v: export.replace(has_uint32=v), u(8)),
        st.builds(lambda v: export.replace(model=v), st.binary(max_size=140)),
        st.builds(lambda v: export.retyped(dtype=v), u(8)),
        st.builds(lambda v: export.retyped(shape=v), st.lists(u(32), max_size=5)),
        st.builds(lambda v: export.replace(tensor_count=v), u(8)),
    )
    as_float32 = lambda bits: float(np.array(bits, dtype="<u4").view("<f4"))  # noqa: E731
    values = st.dictionaries(
        st.tuples(st.just(0), st.integers(0, 31)), u(32).map(as_float32), min_size=1, max_size=4
    ).map(export.with_values)
    body = export.body()
    edited = st.tuples(st.integers(0, len(body)), st.integers(0, 8), st.binary(max_size=8)).map(
        lambda edit: body[: edit[0]] + edit[2] + body[edit[0] + edit[1] :]
    )
    return st.one_of(
        field.map(key),
        values.map(key),
        edited.map(lambda b: sign(b, SHARED_STATE_KEYS)),
        edited.map(lambda b: b + exported_mac(export)),
    )


def exported_mac(export: Export) -> bytes:
    return key(export)[-32:]


@pytest.fixture(scope="module", params=["gru", "rnn-relu"])
def target(request: pytest.FixtureRequest, model_name: str) -> tuple[Any, str, Export]:
    """A server, its model and a real export of it: the tiny GRU, or the ReLU RNN."""
    if request.param == "gru":
        stub = request.getfixturevalue("stub")
        return stub, model_name, Export.parse(request.getfixturevalue("exported"))
    stub = request.getfixturevalue("relu_stub")
    return stub, RELU, Export.parse(export_of(stub, RELU))


@settings(max_examples=200)
@given(data=st.data(), version=st.sampled_from([0, 1]))
def test_any_mutation_is_refused_or_gives_a_working_session(
    target: tuple[Any, str, Export], data: st.DataObject, version: int
) -> None:
    """With version 0 the request lets the bytes name the model version."""
    stub, model_name, export = target
    state = data.draw(mutations(export), label="state")
    try:
        session = create(stub, model_name, state, version)
    except grpc.RpcError as refused:
        if version == 0 and refused.code() == grpc.StatusCode.NOT_FOUND:
            # signed bytes that name a version this server has not loaded
            assert "has no version" in refused.details()
            event("refused: version not loaded")
            return
        assert refused.code() == INVALID, refused.details()
        event("refused")
        return
    event("accepted")
    check_every_call(stub, model_name, session)


def test_a_relu_state_is_bounded_by_the_setting(relu_stub: Any) -> None:
    """Up to max_unbounded_state either side is a state like any other; past it the
    refusal names the setting."""
    export = Export.parse(export_of(relu_stub, RELU))
    edge = export.with_values({(0, i): RELU_BOUND * (-1) ** i for i in range(32)})
    check_every_call(relu_stub, RELU, create(relu_stub, RELU, key(edge)))
    details = refusal(relu_stub, RELU, key(export.with_values({(0, 7): 50.5})))
    assert "state.h[0, 7] = 50.5 is out of range; allowed: |h| <= 50" in details
    assert "the setting max_unbounded_state" in details


# ---------------------------------------------------------------- keys


@contextlib.contextmanager
def serving(models: Path, state_keys: str) -> Iterator[rnnserve_pb2_grpc.RnnServeStub]:
    """A stub of a server of its own with these state keys."""
    with (
        ServerThread(server_config(models, state_keys=state_keys)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        yield rnnserve_pb2_grpc.RnnServeStub(channel)


def test_keys_rotate_the_first_signs_any_verifies(
    models_dir: Path, model_name: str, stub: Any, exported: bytes
) -> None:
    """The tests' key is the old one: a server with a new key first still imports what the
    old key signed and signs with the new one, which a server with the old key alone
    refuses; dropping the old key refuses the old exports."""
    with serving(models_dir, f"{OTHER_KEY},{SHARED_STATE_KEYS}") as there:
        session = create(there, model_name, exported)
        renewed = there.ExportSession(pb.ExportSessionRequest(session_id=session)).state
    assert renewed[:-32] == exported[:-32] and renewed[-32:] != exported[-32:]
    assert Export.parse(renewed).signed(OTHER_KEY) == renewed
    assert "signature does not verify" in refusal(stub, model_name, renewed)
    with serving(models_dir, OTHER_KEY) as there:
        assert "signature does not verify" in refusal(there, model_name, exported)
        create(there, model_name, renewed)


def test_without_keys_exports_import_only_into_the_same_server(
    models_dir: Path, model_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(models_dir, "") as here, serving(models_dir, "") as there:
        session = here.CreateSession(pb.CreateSessionRequest(model=model_name)).session_id
        state = here.ExportSession(pb.ExportSessionRequest(session_id=session)).state
        create(here, model_name, state)
        refused = refusal(there, model_name, state)
        assert "signature does not verify" in refused and "state_keys" in refused
    warnings = [r.getMessage() for r in caplog.records if "state_keys is not set" in r.getMessage()]
    assert len(warnings) == 2 and "imports only into this process" in warnings[0]
