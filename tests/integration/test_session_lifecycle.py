"""A session's life beyond Step and Generate, through the real client and real servers.

Export and import (across server processes), fork, seeds, StepMany, Classify, reloading
the model repository, metrics, per-model health, the per-caller limit and idle expiry.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from statebytes import Export
from support import (
    SHARED_STATE_KEYS,
    ServerThread,
    assert_top_close,
    copy_package,
    edit_manifest,
    scrape,
    server_config,
)

from rnnserve import (
    AsyncClient,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Session,
    StepInput,
    StepResult,
)

T = TypeVar("T")

PROMPT = "The "
TEXT_A = "the quick brown fox"
TEXT_B = "a stitch in time saves nine"
SERVING_LINE = re.compile(r"serving rnnserve\.v1\.RnnServe on 127\.0\.0\.1:(\d+)")


def wait_for(condition: Callable[[], T], timeout: float = 15.0) -> T:
    """Poll until `condition()` is truthy and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"still {value!r} after {timeout} s"
            return value
        time.sleep(0.05)


def distributions(session: Session, text: str) -> list[list[float]]:
    """The full next-token distribution after each character of `text`, one call each."""
    rows = []
    for char in text:
        result = session.step(text=char, return_distribution=True)
        assert result.distribution is not None
        rows.append(result.distribution)
    return rows


def solo(client: Client, model: str, *pieces: str) -> list[float] | None:
    """The distribution after `pieces`, fed to a fresh session one step each (a package
    with a sequence graph runs multi-token steps through it: same pieces, same bits)."""
    with client.create_session(model) as session:
        results = [session.step(text=piece, return_distribution=True) for piece in pieces]
        return results[-1].distribution


def stage(tiny_package: Path, repository: Path, name: str, version: int) -> Path:
    """Copy the tiny package into a repository as name/version in one rename, so a server
    polling the repository never sees half a package."""
    staged = copy_package(tiny_package, repository.parent / "staging", name, version)
    target = repository / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(target)
    return target


# ---------------------------------------------------------------- a second server process


@pytest.fixture(scope="module")
def second_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A client of `rnnserve-server` run as a process of its own on the same repository."""
    log_path = tmp_path_factory.mktemp("second-server") / "stderr.log"
    command = [
        str(Path(sys.executable).with_name("rnnserve-server")),
        *("--models", str(models_dir), "--port", "0", "--host", "127.0.0.1"),
    ]
    env = {**os.environ, "RNNSERVE_STATE_KEYS": SHARED_STATE_KEYS}  # imports the other's exports
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:

        def bound_port() -> str | None:
            match = SERVING_LINE.search(log_path.read_text())
            if match is None and process.poll() is not None:
                pytest.fail(f"rnnserve-server exited {process.returncode}: {log_path.read_text()}")
            return match[1] if match else None

        port = wait_for(bound_port, timeout=60)
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        process.kill()
        process.wait(10)


# ---------------------------------------------------------------- export and import


def test_an_import_in_another_process_continues_exactly(
    client: Client, second_server: Client, model_name: str
) -> None:
    with client.create_session(model_name) as original:
        original.step(text=TEXT_A)
        exported = original.export()
        with second_server.create_session(model_name, state=exported) as imported:
            assert (imported.model.name, imported.model.version) == (model_name, 1)
            assert original.step(text="!").steps == imported.step(text="!").steps
            assert imported.step(text="?").steps == len(TEXT_A) + 2  # the step count travelled
            original.step(text="?")
            # Bit-identical, not approximately equal.
            assert distributions(imported, TEXT_B) == distributions(original, TEXT_B)
            # The sampling generator travelled too: unseeded sampling draws the same tokens.
            here = original.generate_text(max_tokens=60, temperature=1.0)
            assert imported.generate_text(max_tokens=60, temperature=1.0) == here
            assert len(set(here)) > 1
        # The exported bytes are a snapshot: importing them again starts from that point.
        with second_server.create_session(model_name, state=exported) as again:
            assert again.step(text="!").steps == len(TEXT_A) + 1


def test_an_import_with_a_seed_of_its_own_samples_differently(
    client: Client, model_name: str
) -> None:
    with client.create_session(model_name, seed=1) as original:
        original.step(text=PROMPT)
        exported = original.export()
        texts = {original.generate_text(max_tokens=60, temperature=1.0)}
    for seed in (2, 3):
        with client.create_session(model_name, state=exported, seed=seed) as reseeded:
            texts.add(reseeded.generate_text(max_tokens=60, temperature=1.0))
    assert len(texts) > 1


def exported_state(client: Client, model: str) -> bytes:
    with client.create_session(model) as session:
        session.step(text=TEXT_A)
        return session.export()


def test_import_refuses_corrupted_or_truncated_bytes(client: Client, model_name: str) -> None:
    exported = exported_state(client, model_name)
    for position in range(len(exported)):
        for flip in (0x02, 0xFF):
            corrupted = bytearray(exported)
            corrupted[position] ^= flip
            with pytest.raises(
                InvalidArgument, match=r"signature does not verify|bad magic|state\.format"
            ):
                client.create_session(model_name, state=bytes(corrupted))
    for length in (len(exported) - 1, len(exported) // 2, 20):
        with pytest.raises(InvalidArgument, match=r"signature does not verify|too short"):
            client.create_session(model_name, state=exported[:length])
    assert client.create_session(model_name, state=exported).close() == len(TEXT_A)


def reshaped(exported: bytes, hidden: int) -> bytes:
    """Validly signed bytes that claim a hidden size of `hidden`: the export with its
    tensor's shape edited and its values cut to fit."""
    export = Export.parse(exported)
    (h,) = export.tensors
    return export.replace(tensors=[h.with_values(h.values[:, :hidden])]).signed(SHARED_STATE_KEYS)


def test_import_refuses_state_of_another_model_version_or_shape(
    client: Client, model_name: str, tiny_package: Path, tmp_path: Path
) -> None:
    exported = exported_state(client, model_name)
    copy_package(tiny_package, tmp_path, model_name, version=2)  # same name, other version
    copy_package(tiny_package, tmp_path, "other-model")
    config = server_config(tmp_path, state_keys=SHARED_STATE_KEYS)
    with ServerThread(config) as server, Client(server.address) as there:
        with pytest.raises(
            InvalidArgument,
            match=rf"exported from model {model_name}/1, cannot import into other-model/1",
        ):
            there.create_session("other-model", state=exported)
        with pytest.raises(InvalidArgument, match=rf"cannot import into {model_name}/2"):
            there.create_session(model_name, 2, state=exported)
        # Without a version the import names its own, which this server lacks.
        with pytest.raises(NotFound, match=rf"{model_name}' has no version 1"):
            there.create_session(model_name, state=exported)
    with pytest.raises(InvalidArgument, match=r"state\.h: shape \[1, 16\] does not match"):
        client.create_session(model_name, state=reshaped(exported, 16))
    with pytest.raises(InvalidArgument, match="excludes source and condition"):
        client.create_session(model_name, state=exported, condition="x")


# ---------------------------------------------------------------- fork and seeds


def test_a_fork_is_an_independent_copy(client: Client, model_name: str) -> None:
    with client.create_session(model_name, seed=5) as parent:
        parent.step(text=PROMPT)
        with parent.fork(idle_timeout_s=30) as child:
            assert child.id != parent.id and child.idle_timeout_s == 30
            assert child.model == parent.model
            first = [s.step(text="x", return_distribution=True) for s in (parent, child)]
            assert first[0].distribution == first[1].distribution
            assert first[0].steps == first[1].steps == len(PROMPT) + 1
            a = parent.step(text=TEXT_A, return_distribution=True)
            b = child.step(text=TEXT_B, return_distribution=True)
            assert a.distribution != b.distribution
            assert a.distribution == solo(client, model_name, PROMPT, "x", TEXT_A)
            assert b.distribution == solo(client, model_name, PROMPT, "x", TEXT_B)
            parent.close()
            assert child.step(text=".").steps == len(PROMPT) + 1 + len(TEXT_B) + 1
        with pytest.raises(NotFound):
            client.fork_session(child.id)


def test_a_fork_samples_like_its_parent(client: Client, model_name: str) -> None:
    with client.create_session(model_name) as parent:  # an unseeded, random generator
        parent.step(text=PROMPT)
        with parent.fork() as child:
            texts = [s.generate_text(max_tokens=50, temperature=1.0) for s in (parent, child)]
    assert texts[0] == texts[1]


def test_seeded_sessions_sample_alike_across_sessions_and_processes(
    client: Client, second_server: Client, model_name: str
) -> None:
    def sample(where: Client, seed: int) -> str:
        with where.create_session(model_name, seed=seed) as session:
            return session.generate_text(PROMPT, max_tokens=80, temperature=1.0)

    here = sample(client, 2024)
    assert sample(client, 2024) == here == sample(second_server, 2024)
    assert len({here, sample(client, 2025), sample(client, 2026)}) > 1


# ---------------------------------------------------------------- StepMany


def test_step_many_equals_per_session_steps(client: Client, model_name: str) -> None:
    """Texts of one and of several tokens; top_k = the whole vocabulary, so that every
    output's probability is compared with a session stepped alone."""
    size = client.get_model(model_name).vocabulary.size
    chunks = [["a", "bc", "d"], ["ef", "g", "h"], ["i", "j", "klm"]]
    plans = [[f"{i}{c}" if j == 0 else c for j, c in enumerate(chunks[i % 3])] for i in range(8)]
    sessions = [client.create_session(model_name) for _ in plans]
    references = [client.create_session(model_name) for _ in plans]
    try:
        messages = [
            [
                StepInput(s.id, text=plan[m], top_k=size)
                for s, plan in zip(sessions, plans, strict=True)
            ]
            for m in range(3)
        ]
        answers = list(client.step_many(messages))
        assert len(answers) == 3 and all(len(answer) == 8 for answer in answers)
        for m, answer in enumerate(answers):
            for i, (outcome, reference) in enumerate(zip(answer, references, strict=True)):
                expected = reference.step(text=plans[i][m], top_k=size)
                assert isinstance(outcome, StepResult)
                assert outcome.session_id == sessions[i].id
                assert (outcome.steps, outcome.consumed) == (expected.steps, expected.consumed)
                assert outcome.distribution is None
                assert len(outcome.top) == size
                assert {t.id: t.text for t in outcome.top} == {t.id: t.text for t in expected.top}
                assert_top_close(outcome, expected)  # float32 rounding: shared runs
    finally:
        for session in sessions + references:
            session.close()


def test_a_failing_step_fails_alone(client: Client, model_name: str) -> None:
    size = client.get_model(model_name).vocabulary.size
    with client.create_session(model_name) as a, client.create_session(model_name) as b:
        (answer,) = client.step_many(
            [
                [
                    StepInput(a.id, text="x"),
                    StepInput(b.id, tokens=[5, size]),
                    StepInput("0" * 32, text="y"),
                    StepInput(a.id, text="yz"),
                    StepInput(b.id, text="w"),
                ]
            ]
        )
        first, bad, unknown, second, after = answer
        assert isinstance(bad, InvalidArgument)
        assert re.search(rf"input\.ids\[1\] = {size} .*0 \.\. {size - 1}", bad.details)
        assert isinstance(unknown, NotFound) and "does not exist" in unknown.details
        # Steps of one session within a message are applied in order; the bad one not at all.
        assert isinstance(first, StepResult) and isinstance(second, StepResult)
        assert (first.steps, second.steps) == (1, 3)
        assert isinstance(after, StepResult) and after.steps == 1


def test_step_many_across_models_equals_sessions_stepped_alone(
    tiny_package: Path, tmp_path: Path
) -> None:
    """One message over sessions of two models (a group per model, all locked before
    either runs) and a session named twice (its steps one after the other): every step
    is answered as a session stepped alone would be."""
    copy_package(tiny_package, tmp_path, "one")
    copy_package(tiny_package, tmp_path, "two")
    with ServerThread(server_config(tmp_path)) as server, Client(server.address) as client:
        size = client.get_model("one").vocabulary.size
        sessions = {
            name: [client.create_session(name) for _ in range(4)] for name in ("one", "two")
        }
        plan = [
            (name, i, [4 + 5 * i + (name == "two")]) for name in ("one", "two") for i in range(4)
        ]
        plan.append(("one", 0, [20]))  # the first session of "one" again
        (answer,) = client.step_many(
            [[StepInput(sessions[name][i].id, tokens=t, top_k=size) for name, i, t in plan]]
        )
        for outcome, (name, i, tokens) in zip(answer, plan, strict=True):
            with client.create_session(name) as alone:
                fed = [[4]] if (name, i, tokens) == ("one", 0, [20]) else []
                for earlier in fed:
                    alone.step(tokens=earlier)
                expected = alone.step(tokens=tokens, top_k=size)
            assert isinstance(outcome, StepResult)
            assert outcome.session_id == sessions[name][i].id
            assert outcome.steps == expected.steps
            assert_top_close(outcome, expected)


def test_too_many_steps_in_a_message_fail_the_stream(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, max_steps_per_message=4)
    with ServerThread(config) as server, Client(server.address) as client:
        session = client.create_session(model_name)
        answers = client.step_many(
            [[StepInput(session.id, text="a")] * 4] * 2 + [[StepInput(session.id, text="b")] * 5]
        )
        assert [r.steps for r in next(answers)] == [1, 2, 3, 4]  # type: ignore[union-attr]
        assert len(next(answers)) == 4
        with pytest.raises(
            InvalidArgument, match=r"session_ids = 5 .*0 \.\. 4 .*max_steps_per_message"
        ):
            next(answers)
        assert session.step(text="c").steps == 9  # the refused message applied nothing


# ---------------------------------------------------------------- Classify


@pytest.fixture(scope="module")
def label_server(
    tiny_package: Path, model_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """A server with the tiny model and a copy whose head is declared to be labels."""
    root = tmp_path_factory.mktemp("labelled")
    copy_package(tiny_package, root, model_name)
    package = copy_package(tiny_package, root, "labelled")
    size = json.loads((package / "manifest.json").read_text())["tokenizer"]["size"]
    labels = [f"class-{i}" for i in range(size)]
    edit_manifest(package, lambda m: m.update(output={"kind": "labels", "labels": labels}))
    with ServerThread(server_config(root)) as server:
        yield server


def test_classify_equals_stepping_a_session(label_server: ServerThread) -> None:
    with Client(label_server.address) as client:
        labels = client.get_model("labelled").labels
        result = client.classify("labelled", TEXT_A, top_k=3)
        with client.create_session("labelled") as session:
            stepped = session.step(text=TEXT_A, top_k=3, return_distribution=True)
        assert result.final == stepped.distribution and result.steps == []
        assert result.top == stepped.top
        assert [t.text for t in result.top] == [labels[t.id] for t in result.top]
        every = client.classify("labelled", TEXT_A, every_step=True)
        with client.create_session("labelled") as session:
            assert every.steps == distributions(session, TEXT_A)
        assert every.final == every.steps[-1]
        # One token at a time against a whole-sequence run: equal to float32 rounding.
        np.testing.assert_allclose(every.final, result.final, rtol=0, atol=2e-6)
        with client.create_session("labelled") as session:
            by_ids = session.step(tokens=[5, 6, 7], return_distribution=True).distribution
        assert client.classify("labelled", tokens=[5, 6, 7]).final == by_ids != result.final


def test_classify_refuses_language_models_and_bad_input(
    label_server: ServerThread, model_name: str
) -> None:
    with Client(label_server.address) as client:
        with pytest.raises(FailedPrecondition, match="Classify needs a label or sigmoid head"):
            client.classify(model_name, TEXT_A)
        with pytest.raises(InvalidArgument, match="input is empty"):
            client.classify("labelled", "")
        with pytest.raises(InvalidArgument, match=r"top_k = 1001"):
            client.classify("labelled", "a", top_k=1001)
        with pytest.raises(NotFound):
            client.classify("no-such-model", "a")


# ---------------------------------------------------------------- reloading the repository


def test_reload_adds_refuses_and_removes_versions(tiny_package: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    stage(tiny_package, repository, "lm", 1)
    stage(tiny_package, repository, "steady", 1)
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        old = client.create_session("lm")
        old.step(text=TEXT_A)
        assert client.get_model("lm").version == 1

        stage(tiny_package, repository, "lm", 2)
        result = client.reload_models()
        assert (result.added, result.removed, result.refused) == (["lm/2"], [], [])
        assert [(m.name, m.version) for m in result.models] == [("lm", 1), ("lm", 2), ("steady", 1)]
        assert client.get_model("lm").version == 2  # the default is the highest version
        with client.create_session("lm") as new:
            assert new.model.version == 2
        assert old.model.version == 1 and old.step(text="x").steps == len(TEXT_A) + 1

        broken = copy_package(tiny_package, tmp_path / "staging", "broken")
        (broken / "step.onnx").write_bytes(b"not an onnx graph")
        broken.parent.rename(repository / "broken")
        result = client.reload_models()
        assert (result.added, result.removed) == ([], [])
        (refused,) = result.refused
        assert refused.path == str(repository / "broken" / "1")
        assert "cannot load the step graph" in refused.reason
        assert [m.name for m in client.list_models()] == ["lm", "lm", "steady"]

        shutil.rmtree(repository / "lm" / "1")
        result = client.reload_models()
        assert result.removed == ["lm/1"] and result.added == []
        with pytest.raises(NotFound, match="has no version 1"):
            client.get_model("lm", 1)
        # The open session of the removed version keeps working until it is closed.
        assert old.step(text="y").steps == len(TEXT_A) + 2
        assert old.close() == len(TEXT_A) + 2


def test_a_polling_server_finds_new_versions_by_itself(tiny_package: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    stage(tiny_package, repository, "lm", 1)
    config = server_config(repository, repository_poll_s=0.5)
    with ServerThread(config) as server, Client(server.address) as client:
        assert client.get_model("lm").version == 1
        stage(tiny_package, repository, "lm", 2)
        wait_for(lambda: client.get_model("lm").version == 2, timeout=10)


def test_health_follows_each_model(tiny_package: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    stage(tiny_package, repository, "lm", 1)
    stage(tiny_package, repository, "steady", 1)
    with ServerThread(server_config(repository)) as server, Client(server.address) as client:
        for name in ("lm", "steady"):
            assert client.health(f"rnnserve.v1.RnnServe/{name}") == "SERVING"
        shutil.rmtree(repository / "lm")
        assert client.reload_models().removed == ["lm/1"]
        assert client.health("rnnserve.v1.RnnServe/lm") == "NOT_SERVING"
        assert client.health("rnnserve.v1.RnnServe/steady") == "SERVING"
        assert client.health() == client.health("rnnserve.v1.RnnServe") == "SERVING"
        stage(tiny_package, repository, "lm", 3)
        assert client.reload_models().added == ["lm/3"]
        assert client.health("rnnserve.v1.RnnServe/lm") == "SERVING"


# ---------------------------------------------------------------- metrics


def test_metrics_count_calls_sessions_batches_tokens_and_cancellations(
    models_dir: Path, model_name: str
) -> None:
    with (
        ServerThread(server_config(models_dir, metrics_port=0)) as server,
        Client(server.address) as client,
    ):
        port = server.running.metrics_port  # type: ignore[union-attr]
        assert port
        with client.create_session(model_name) as session:
            for char in PROMPT:
                session.step(text=char)
            generated = list(session.generate(max_tokens=10, temperature=0))
            samples = scrape(port)
            version = ("model", f"{model_name}/1")
            step_ok = ("rnnserve_requests_total", (("code", "OK"), ("method", "Step"), version))
            assert samples[step_ok] == len(PROMPT)
            assert samples[("rnnserve_sessions_live", ())] == 1
            produced = sum(len(c.tokens) for c in generated)
            assert samples[("rnnserve_generated_tokens_total", (version,))] == produced
            batches = {
                labels: value
                for (name, labels), value in samples.items()
                if name == "rnnserve_batch_size_bucket"
            }
            label = ("model", f"{model_name}/1")
            assert batches[(("le", "1"), label)] == batches[(("le", "+Inf"), label)] > 0

            # Greedy text from this model never ends early: each cancel comes first. A cancel
            # lands while the server computes a token or while it writes one: both count.
            for _ in range(5):
                stream = session.generate(max_tokens=4000, temperature=0)
                next(stream)
                stream.close()  # cancels the call
            cancelled = ("rnnserve_cancellations_total", (("method", "Generate"),))
            wait_for(lambda: scrape(port).get(cancelled) == 5)
        assert scrape(port)[("rnnserve_sessions_live", ())] == 0


# ---------------------------------------------------------------- limits and expiry


def test_a_caller_may_hold_only_so_many_sessions(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, max_sessions_per_caller=2)
    with ServerThread(config) as server, Client(server.address) as client:
        first = client.create_session(model_name)
        second = first.fork()
        with pytest.raises(ResourceExhausted, match="max_sessions_per_caller"):
            client.create_session(model_name)
        with pytest.raises(ResourceExhausted, match="max_sessions_per_caller"):
            second.fork()
        first.close()
        client.create_session(model_name).close()  # closing made room again
        second.close()


def test_expiry_frees_every_slot_and_the_pool_gives_its_memory_back(
    models_dir: Path, model_name: str
) -> None:
    config = server_config(models_dir, session_idle_timeout_s=1)
    with ServerThread(config) as server:
        engine = server.running.engine  # type: ignore[union-attr]
        store = engine.store
        pool = server.run(lambda: store.pool(engine.repository.get(model_name)))
        initial_capacity = server.run(lambda: pool.capacity)
        initial_bytes = server.run(lambda: store.state_bytes)

        async def open_sessions(count: int, **options: int) -> list[str]:
            # In waves: thousands of calls at once on one connection make gRPC drop it.
            opened = []
            async with AsyncClient(server.address, timeout=60) as client:
                for wave in range(0, count, 100):
                    opening = range(wave, min(wave + 100, count))
                    created = await asyncio.gather(
                        *(client.create_session(model_name, **options) for _ in opening)
                    )
                    opened += [session.id for session in created]
            return opened

        def occupancy() -> tuple[int, int]:
            return server.run(lambda: (len(store), pool.in_use))

        asyncio.run(open_sessions(2000))
        capacity = server.run(lambda: pool.capacity)
        assert capacity > initial_capacity  # the sessions held slots: the pool grew
        wait_for(lambda: occupancy() == (0, 0), timeout=20)
        assert server.run(lambda: store.expired_total) == 2000
        # all gone: the pool is back at its least size, its memory given back
        wait_for(lambda: server.run(lambda: pool.capacity) == initial_capacity, timeout=10)
        assert server.run(lambda: store.state_bytes) == initial_bytes

        # Ten sessions outlive 2000 others, each in a state of its own, opened last: in
        # the upper slots, which the shrinking pool moves down once the others are gone.
        with Client(server.address) as client:
            others = asyncio.run(open_sessions(2000, idle_timeout_s=120))
            kept = asyncio.run(open_sessions(10, idle_timeout_s=120))
            for i, session_id in enumerate(kept):
                client.step(session_id, [4 + i, 9, 5 + i])
            slots_before = server.run(lambda: [store._sessions[i].slot for i in kept])
            assert min(slots_before) >= 2000
            for session_id in others:
                client.close_session(session_id)
            wait_for(lambda: server.run(lambda: pool.capacity) == initial_capacity, timeout=10)
            slots_after = server.run(lambda: [store._sessions[i].slot for i in kept])
            assert max(slots_after) < initial_capacity  # they moved
            # Every kept session goes on exactly as one that never moved.
            for i, session_id in enumerate(kept):
                with client.create_session(model_name) as control:
                    client.step(control.id, [4 + i, 9, 5 + i])
                    expected = client.step(control.id, [7])
                assert_top_close(client.step(session_id, [7]), expected)
        # The freed slots are reused: as many sessions again grow the pool to the same size.
        asyncio.run(open_sessions(capacity - 10, idle_timeout_s=120))
        assert server.run(lambda: pool.capacity) == capacity
