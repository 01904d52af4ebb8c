"""The newer calls through both clients and the CLI, against the real server.

Besides the tiny language model, the server here holds one model of each other kind, made
from the tiny package: a classifier (its head declared as labels), an encoder-decoder and a
conditional generator (each given a small ONNX graph that makes the initial state).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from support import (
    CLASSIFIER,
    CONDITIONAL,
    CONDITIONS,
    ENCODER_DECODER,
    ServerThread,
    copy_package,
    server_config,
)

from rnnserve import (
    AsyncClient,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StepInput,
    StepResult,
)
from rnnserve.cli import main

T = TypeVar("T")


@pytest.fixture
def client(zoo: ServerThread) -> Iterator[Client]:
    with Client(zoo.address, timeout=60) as connected:
        yield connected


def run_async(server: ServerThread, body: Callable[[AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncClient(server.address, timeout=60) as client:
            return await body(client)

    return asyncio.run(main())


def run_cli(
    server: ServerThread, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    status = main(["--address", server.address, *argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- model kinds


def test_models_say_how_their_sessions_start(client: Client, model_name: str) -> None:
    kinds = {m.name: (m.initial_state, m.conditions, m.shape) for m in client.list_models()}
    assert kinds == {
        CLASSIFIER: ("after_token", [], "many-to-many"),
        ENCODER_DECODER: ("encoder", [], "seq2seq"),
        model_name: ("after_token", [], "many-to-many"),
        CONDITIONAL: ("condition", CONDITIONS, "one-to-many"),
    }


def test_translate_decodes_like_a_session_on_the_source(client: Client, model_name: str) -> None:
    result = client.translate(ENCODER_DECODER, "hello there", max_tokens=20)
    assert len(result.tokens) == 20 and result.finish_reason == "length"
    assert result.text == "".join(t.text for t in result.tokens)
    with client.create_session(ENCODER_DECODER, source="hello there") as session:
        greedy = list(session.generate(max_tokens=20, temperature=0))
    assert [t for c in greedy for t in c.tokens] == result.tokens
    other = client.translate(ENCODER_DECODER, "general kenobi", max_tokens=20)
    assert other.text != result.text
    ids = [5, 6, 7, 8]
    with client.create_session(ENCODER_DECODER, source=ids) as session:
        assert session.generate_text(max_tokens=5, temperature=0) == (
            client.translate(ENCODER_DECODER, ids, max_tokens=5).text
        )
    seeded = [client.translate(ENCODER_DECODER, "hi", temperature=1.0, seed=9) for _ in range(2)]
    assert seeded[0] == seeded[1]
    with pytest.raises(FailedPrecondition, match="Translate needs a seq2seq model"):
        client.translate(model_name, "hello")
    with pytest.raises(InvalidArgument, match="source"):
        client.create_session(ENCODER_DECODER)
    with pytest.raises(InvalidArgument, match="takes no source or condition"):
        client.create_session(model_name, source="hello")


def test_conditional_sessions_start_from_their_condition(client: Client) -> None:
    after = {}
    for condition in CONDITIONS:
        with client.create_session(CONDITIONAL, condition=condition) as session:
            after[condition] = session.step(text="a", return_distribution=True).distribution
    assert after["calm"] != after["wild"]
    with pytest.raises(InvalidArgument, match=r"condition = 'sad' .*\['calm', 'wild'\]"):
        client.create_session(CONDITIONAL, condition="sad")
    with pytest.raises(InvalidArgument, match="condition"):
        client.create_session(CONDITIONAL)
    with pytest.raises(InvalidArgument, match="takes a condition, not a source"):
        client.create_session(CONDITIONAL, condition="calm", source="x")


def test_classify_and_its_errors(client: Client, model_name: str) -> None:
    result = client.classify(CLASSIFIER, "the end", top_k=2, every_step=True)
    assert len(result.top) == 2 and len(result.steps) == len("the end")
    assert result.steps[-1] == result.final and sum(result.final) == pytest.approx(1, abs=1e-5)
    assert result.top[0].text == f"class-{result.top[0].id}"
    with pytest.raises(FailedPrecondition, match="Classify needs a label or sigmoid head"):
        client.classify(model_name, "the end")
    with pytest.raises(NotFound):
        client.classify(CLASSIFIER, "x", version=7)
    with pytest.raises(ValueError, match=r"tokens\[0\] must be an int"):
        client.classify(CLASSIFIER, tokens=["x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="exactly one of tokens= and text="):
        client.classify(CLASSIFIER, "x", tokens=[1])


def test_stop_token_ids_end_generation_after_the_token(client: Client, model_name: str) -> None:
    with client.create_session(model_name) as session:
        free = [t for c in session.generate("The ", max_tokens=30, temperature=0) for t in c.tokens]
    stop = free[6].id
    first = next(i for i, t in enumerate(free) if t.id == stop)
    with client.create_session(model_name) as session:
        chunks = list(session.generate("The ", max_tokens=30, temperature=0, stop_token_ids=[stop]))
    assert [t for c in chunks for t in c.tokens] == free[: first + 1]
    assert chunks[-1].finish_reason == "stop-token" and chunks[-1].matched_stop is None
    with (
        client.create_session(model_name) as session,
        pytest.raises(InvalidArgument, match=r"stop_token_ids\[1\] = 100000"),
    ):
        list(session.generate(max_tokens=3, stop_token_ids=[stop, 100_000]))


# ---------------------------------------------------------------- the asyncio client


def test_async_client_gives_what_the_sync_client_gives(
    zoo: ServerThread, client: Client, model_name: str
) -> None:
    with client.create_session(model_name, seed=4) as session:
        session.step(text="The ")
        exported = session.export()
        with session.fork() as fork:
            forked = fork.step(text="x", return_distribution=True)
        sampled = session.generate_text(max_tokens=30, temperature=1.0)
    classified = client.classify(CLASSIFIER, "abc", every_step=True)
    translated = client.translate(ENCODER_DECODER, "abc", max_tokens=10)
    models = client.list_models()

    async def body(aclient: AsyncClient) -> None:
        async with await aclient.create_session(model_name, state=exported) as imported:
            assert imported.model.version == 1
            async with await imported.fork() as fork:
                mine = await fork.step(text="x", return_distribution=True)
                assert (mine.steps, mine.distribution) == (forked.steps, forked.distribution)
            assert await imported.export() == exported
            assert await imported.generate_text(max_tokens=30, temperature=1.0) == sampled
            async with await aclient.create_session(model_name, seed=4) as seeded:
                await seeded.step(text="The ")
                assert await seeded.generate_text(max_tokens=30, temperature=1.0) == sampled

            async def batches():  # type: ignore[no-untyped-def]
                yield [StepInput(imported.id, text="a"), StepInput(imported.id, tokens=[10**6])]
                yield (StepInput(imported.id, text="b"),)

            answers = [answer async for answer in aclient.step_many(batches())]
            (ok, bad), (later,) = answers
            assert isinstance(ok, StepResult) and isinstance(later, StepResult)
            assert isinstance(bad, InvalidArgument) and later.steps == ok.steps + 1
        assert await aclient.classify(CLASSIFIER, "abc", every_step=True) == classified
        assert await aclient.translate(ENCODER_DECODER, "abc", max_tokens=10) == translated
        reloaded = await aclient.reload_models()
        assert (reloaded.models, reloaded.added, reloaded.removed) == (models, [], [])

    run_async(zoo, body)


def test_async_step_many_stream_failure_keeps_the_servers_status(
    models_dir: Path, model_name: str
) -> None:
    with ServerThread(server_config(models_dir, max_steps_per_message=2)) as server:

        async def body(aclient: AsyncClient) -> None:
            async with await aclient.create_session(model_name) as session:
                steps = [StepInput(session.id, text="a")] * 3
                with pytest.raises(InvalidArgument, match="max_steps_per_message"):
                    async for _ in aclient.step_many([steps[:1], steps, *[steps[:1]] * 20]):
                        pass

        run_async(server, body)


# ---------------------------------------------------------------- the command line


def test_cli_classify(zoo: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(zoo, capsys, "classify", "hey", "--top-k", "2")
    lines = [line.split() for line in out.splitlines()]
    assert status == 0 and lines[0] == ["PROB", "LABEL"] and len(lines) == 3
    assert all(label.startswith("class-") for _, label in lines[1:])
    status, out, _ = run_cli(zoo, capsys, "classify", "hey", "--every-step")
    assert status == 0
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["STEP", "TOKEN", "TOP", "LABEL", "PROB"]
    assert [row.split()[:2] for row in table[1:]] == [["1", "'h'"], ["2", "'e'"], ["3", "'y'"]]
    status, out, _ = run_cli(zoo, capsys, "classify", "--model", CLASSIFIER, "hey", "--json")
    reply = json.loads(out)
    assert (reply["model"], reply["steps"], len(reply["final"])) == (CLASSIFIER, [], 100)
    assert reply["labels"][reply["top"][0]["id"]] == reply["top"][0]["text"]


def test_cli_translate(
    zoo: ServerThread, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = client.translate(ENCODER_DECODER, "hello", max_tokens=12)
    assert run_cli(zoo, capsys, "translate", "hello", "--max-tokens", "12") == (
        0,
        expected.text + "\n",
        "",
    )
    status, out, _ = run_cli(zoo, capsys, "translate", "hello", "--max-tokens", "12", "--json")
    reply = json.loads(out)
    assert (reply["model"], reply["text"], reply["tokens"]) == (ENCODER_DECODER, expected.text, 12)
    assert status == 0 and reply["finish_reason"] == "length"


def test_cli_generate_with_a_condition(
    zoo: ServerThread, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    with client.create_session(CONDITIONAL, condition="wild") as session:
        expected = session.generate_text(max_tokens=15, temperature=0)
    argv = ["generate", "--condition", "wild", "--max-tokens", "15", "--temperature", "0"]
    assert run_cli(zoo, capsys, *argv) == (0, expected + "\n", "")
    status, out, _ = run_cli(zoo, capsys, *argv, "--json", "--model", CONDITIONAL)
    reply = json.loads(out)
    assert status == 0
    assert (reply["condition"], reply["text"], reply["prompt"]) == ("wild", expected, "")
    with client.create_session(CONDITIONAL, condition="calm") as session:
        expected = session.generate_text("Hi", max_tokens=15, temperature=0)
    status, out, _ = run_cli(zoo, capsys, *argv[:1], "--condition", "calm", "Hi", *argv[3:])
    assert (status, out) == (0, "Hi" + expected + "\n")
    status, _, err = run_cli(zoo, capsys, *argv[:1], "--condition", "sad")
    assert status == 1 and err.startswith("error: INVALID_ARGUMENT: condition = 'sad'")


def test_cli_commands_need_a_model_of_their_kind(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared server holds only a language model."""
    for command, kind in [
        ("classify", "classifiers"),
        ("translate", "encoder-decoder models"),
    ]:
        status, _, err = run_cli(server, capsys, command, "text")
        assert status == 2 and f"has no {kind}" in err
    status, _, err = run_cli(server, capsys, "generate", "--condition", "calm")
    assert status == 2 and "has no conditional generators" in err


def test_cli_reload(tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "models"
    copy_package(tiny_package, repository, "lm")
    with ServerThread(server_config(repository)) as server:
        assert run_cli(server, capsys, "reload") == (0, "1 model versions loaded\n", "")
        copy_package(tiny_package, repository, "lm", version=2)
        broken = copy_package(tiny_package, repository, "broken")
        (broken / "head.onnx").unlink()
        status, out, _ = run_cli(server, capsys, "reload")
        added, refused, summary = out.splitlines()
        assert status == 1 and added == "added    lm/2" and summary == "2 model versions loaded"
        assert refused.startswith(f"refused  {broken}: ") and "head.onnx" in refused
        status, out, _ = run_cli(server, capsys, "reload", "--json")
        reply = json.loads(out)
        assert status == 1 and (reply["added"], reply["removed"]) == ([], [])
        assert [m["version"] for m in reply["models"]] == [1, 2]
        assert reply["refused"][0]["path"] == str(broken)


def test_cli_generate_says_what_a_model_needs_to_start(
    zoo: ServerThread, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expectations = [
        (["--model", CONDITIONAL], f"{CONDITIONAL} is a conditional generator: give "
         "--condition, one of calm, wild"),
        (["--model", ENCODER_DECODER], f"{ENCODER_DECODER} is an encoder-decoder model: it "
         f"decodes a source; use `rnnserve translate --model {ENCODER_DECODER} SOURCE`"),
        (["--model", model_name, "--condition", "calm"], "--condition is for conditional "
         f"generators; {model_name} is not one"),
    ]  # fmt: skip
    for options, message in expectations:
        assert run_cli(zoo, capsys, "generate", "Hi", *options) == (2, "", f"error: {message}\n")


def test_cli_generate_echoes_the_prompt_only_once_the_server_accepted_it(
    zoo: ServerThread, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(zoo, capsys, "generate", "Once", "--top-k", "100000")
    assert (status, out) == (1, "")  # the prompt is not shown as if generation had begun
    assert err.startswith("error: INVALID_ARGUMENT: top_k = 100000 is out of range")
    status, out, _ = run_cli(zoo, capsys, "generate", "Once", "--max-tokens", "3")
    assert status == 0 and out.startswith("Once")


@pytest.mark.parametrize(
    ("model", "needs"),
    [
        (ENCODER_DECODER, "a source to encode (initial state 'encoder')"),
        (CONDITIONAL, "a condition (initial state 'condition')"),
    ],
)
def test_cli_interactive_refuses_models_that_need_a_start(
    zoo: ServerThread, capsys: pytest.CaptureFixture[str], model: str, needs: str
) -> None:
    assert run_cli(zoo, capsys, "interactive", "--model", model) == (
        2,
        "",
        "error: interactive needs a language model whose sessions start from nothing; "
        f"{model} needs {needs}\n",
    )


def test_cli_default_model_is_the_servers_default_version(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for version in (1, 2):
        copy_package(tiny_package, tmp_path, "lm", version)
    with ServerThread(server_config(tmp_path)) as server:
        for command in (["generate", "--max-tokens", "2"], ["step", "a"]):
            status, out, _ = run_cli(server, capsys, *command, "--json")
            assert (status, json.loads(out)["version"]) == (0, 2)  # the highest, not the first
        (tmp_path / "lm" / "config.toml").write_text("[versions]\ndefault = 1\n")
        run_cli(server, capsys, "reload")
        status, out, _ = run_cli(server, capsys, "generate", "--max-tokens", "2", "--json")
        assert (status, json.loads(out)["version"]) == (0, 1)  # the version the server pins
