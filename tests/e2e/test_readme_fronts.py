"""The README's tritonclient and curl examples, run as written against the rnnserve-server
command (the tiny model served as char-gru), only their addresses changed to the test's
free ports; what they print is checked against rnnserve's own API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ServerProcess, copy_package

from rnnserve import Client

README = Path(__file__).parent.parent.parent / "README.md"
RNNSERVE = str(Path(sys.executable).with_name("rnnserve"))


def readme_block(marker: str) -> str:
    """The fenced block after the README's comment that names this test and ``marker``."""
    text = README.read_text(encoding="utf-8")
    pattern = rf"<!-- tests/e2e/test_readme_fronts\.py runs this {marker} -->\n```\w+\n(.*?)```"
    found = re.search(pattern, text, re.S)
    assert found, f"README has no block marked {marker!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def running(
    tiny_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("readme")
    copy_package(tiny_package, root, "char-gru")
    server = ServerProcess("--models", str(root), "--openai-port", "0")
    try:
        yield server
    finally:
        assert server.stop() == 0


def test_the_tritonclient_example(running: ServerProcess, tritonclient_python: Path) -> None:
    code = readme_block("block with tritonclient").replace("127.0.0.1:50051", running.address)
    done = subprocess.run(
        [str(tritonclient_python), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    with Client(running.address) as client, client.create_session("char-gru") as session:
        for line, piece in zip(lines, ["Once upon", " a ti", "m"], strict=True):
            top = client.step(session.id, text=piece).top
            assert line.startswith(repr(piece) + " -> ")
            assert [repr(t.text.encode()) for t in top] == re.findall(r"b'[^']*'|b\"[^\"]*\"", line)


def test_the_curl_example(running: ServerProcess) -> None:
    command = readme_block("command").replace("127.0.0.1:8000", f"127.0.0.1:{running.openai_port}")
    assert command.startswith("curl -N ")
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    events = [line.removeprefix("data: ") for line in done.stdout.splitlines() if line]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    body = json.loads(re.search(r"-d '(.*)'", command).group(1))  # type: ignore[union-attr]
    expected = subprocess.run(
        [RNNSERVE, "--address", running.address, "generate", body["prompt"], "--model",
         "char-gru", "--max-tokens", str(body["max_tokens"]), "--seed", str(body["seed"]),
         "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert text == json.loads(expected.stdout)["text"]
