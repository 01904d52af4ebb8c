"""A client that has only proto/ and the server's address: stubs generated from proto/
alone (rnnserve.v1 and grpc.health.v1), in a process of its own that imports neither the
rnnserve client library nor the server. It checks health, pages through each model's
vocabulary, encodes text by the rules GetVocabulary states and decodes generated ids,
and the server agrees: the same answer to its ids as to the text, pieces that add up to
its decoding, and one text per token in every message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from own_models import VOCABULARY, trained_modules
from support import ServerThread, server_config

from rnnserve_train import package_torch

PROTO = Path(__file__).resolve().parents[2] / "proto"
pytestmark = pytest.mark.slow
WORDS = "and god said , let there be light ."

CLIENT = textwrap.dedent(
    """
    import json, re, sys, unicodedata
    import grpc
    import rnnserve
    from grpc.health.v1 import health_pb2, health_pb2_grpc
    from rnnserve.v1 import rnnserve_pb2 as pb, rnnserve_pb2_grpc

    assert rnnserve.__file__.startswith(sys.argv[2]), rnnserve.__file__  # our stubs only
    channel = grpc.insecure_channel(sys.argv[1])
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    stub = rnnserve_pb2_grpc.RnnServeStub(channel)
    report = {"health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}

    def vocabulary(model):
        tokens, start, pages = [], 0, 0
        while True:
            page = stub.GetVocabulary(pb.GetVocabularyRequest(model=model, start=start, limit=7))
            tokens += page.tokens
            pages += 1
            if page.next_start == page.size:
                return tokens, page, pages
            start = page.next_start

    def encode(text, tokens, page):
        rules = page.tokenizer
        if rules.normalization != "none":
            text = unicodedata.normalize(rules.normalization, text)
        if rules.lowercase:
            text = text.lower()
        pieces = list(text) if rules.kind == "char" else re.findall(rules.word_pattern, text)
        specials = set(page.special_tokens.values())
        index = {t: i for i, t in enumerate(tokens) if i not in specials}
        return [index.get(p, page.special_tokens["unk"]) for p in pieces]

    def decode(ids, tokens, page):
        rules, out = page.tokenizer, []
        unk = page.special_tokens.get("unk")
        for i in ids:
            if i in page.special_tokens.values():
                piece = rules.unknown_text if i == unk else ""
            else:
                token = tokens[i]
                attached = token in rules.attached or (
                    len(token) == 1 and unicodedata.category(token) in rules.attached_categories
                )
                piece = token if not out or attached else rules.separator + token
            if piece:
                out.append(piece)
        return "".join(out)

    for model in stub.ListModels(pb.ListModelsRequest()).models:
        tokens, page, pages = vocabulary(model.name)
        text = sys.argv[3] if page.tokenizer.kind == "word" else sys.argv[4]
        ids = encode(text, tokens, page)
        sessions = [stub.CreateSession(pb.CreateSessionRequest(model=model.name, seed=1))
                    for _ in range(2)]
        by_text = stub.Step(pb.StepRequest(session_id=sessions[0].session_id, text=text, top_k=5))
        by_ids = stub.Step(pb.StepRequest(session_id=sessions[1].session_id,
                                          tokens=pb.TokenIds(ids=ids), top_k=5))
        generated = [
            token
            for message in stub.Generate(pb.GenerateRequest(
                session_id=sessions[1].session_id, max_tokens=40, temperature=0))
            for token in message.tokens
        ]
        report[model.name] = {
            "kind": page.tokenizer.kind,
            "size": page.size,
            "listed": len(tokens),
            "pages": pages,
            "ids": ids,
            "same answer": [(t.id, t.probability) for t in by_text.top]
                           == [(t.id, t.probability) for t in by_ids.top]
                           and by_text.consumed == by_ids.consumed == len(ids),
            "top texts are tokens": all(t.text == tokens[t.id] for t in by_ids.top),
            "generated texts are tokens": all(t.text == tokens[t.id] for t in generated),
            # the pieces continue the text of the session so far (the prompt)
            "decoded": decode(ids + [t.id for t in generated], tokens, page),
            "pieces": decode(ids, tokens, page) + "".join(t.piece for t in generated),
            "prompt decoded": decode(ids, tokens, page),
            "generated": len(generated),
        }
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The tiny character model and a word LSTM (a word vocabulary) side by side."""
    import shutil

    root = tmp_path_factory.mktemp("proto-only")
    for package in models_dir.glob("*/*"):
        shutil.copytree(package, root / package.parent.name / package.name)
    modules = trained_modules("word-lstm")
    package_torch(modules["word-lstm"], root, name="word-lstm", vocabulary=VOCABULARY)
    with ServerThread(server_config(root)) as running:
        yield running


def test_a_client_from_proto_alone_lists_encodes_and_decodes(
    server: ServerThread, tmp_path: Path
) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={stubs}",
         f"--grpc_python_out={stubs}", "rnnserve/v1/rnnserve.proto",
         "grpc/health/v1/health.proto"],
        check=True,
    )  # fmt: skip
    for package in ("rnnserve", "rnnserve/v1", "grpc/health", "grpc/health/v1"):
        (stubs / package / "__init__.py").touch()
    (stubs / "client.py").write_text(CLIENT)
    run = subprocess.run(
        [sys.executable, "client.py", server.address, str(stubs),
         WORDS, "In the beginning"],
        cwd=stubs,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(stubs), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["health"] == "SERVING"
    word = report.pop("word-lstm")
    assert word["kind"] == "word" and word["listed"] == word["size"] == len(VOCABULARY)
    assert word["ids"] == [VOCABULARY.index(w) for w in WORDS.split(" ")]
    # the rules say where no space goes: before the comma and the full stop
    assert word["prompt decoded"] == "and god said, let there be light."
    (char,) = [report[name] for name in report if name != "health"]
    assert char["kind"] == "char" and char["listed"] == char["size"]
    for model in (word, char):
        assert model["pages"] == -(-model["size"] // 7)  # every page of 7 tokens
        assert model["same answer"] and model["top texts are tokens"]
        assert model["generated texts are tokens"] and model["generated"] > 0
        assert model["decoded"] == model["pieces"]
