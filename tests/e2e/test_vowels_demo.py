"""The zoo's float-vector model (``vowels``: speakers of JapaneseVowels, frame by frame),
trained briefly from its preset, served, and streamed one frame at a time: through the
client library and through the ``rnnserve stream`` command. Each frame's answer is the
one its prefix gets in a call of its own (Classify), and the test utterances' last answers
are what the package's recorded test accuracy says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import ServerThread, server_config

from rnnserve import Client, StepInput
from rnnserve_server.modelpackage import load_package
from rnnserve_train.api import train_and_export
from rnnserve_train.config import make_config
from rnnserve_train.vowels import FEATURES, SPEAKERS, load_split

pytestmark = pytest.mark.slow
RNNSERVE = str(Path(sys.executable).with_name("rnnserve"))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vowels")
    config = make_config(
        "vowels", {"out": str(root / "models"), "runs": str(root / "runs"), "max_steps": 60}
    )
    path = train_and_export(config)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def server(package: Path) -> Iterator[ServerThread]:
    with ServerThread(server_config(package.parents[1])) as running:
        yield running


def test_the_package_states_its_data_split_and_accuracy(package: Path) -> None:
    manifest = load_package(package).manifest
    assert (manifest.input.kind, manifest.input.size, manifest.cell) == ("vectors", 12, "lstm")
    assert manifest.output.labels == tuple(f"speaker {s}" for s in SPEAKERS)
    assert manifest.training["split_sizes"] == {"train": 270, "test": 370}
    assert "CC BY 4.0" in manifest.training["licence"]
    assert 1 / 9 < manifest.metrics["test_accuracy"] <= 1


def test_streamed_frame_by_frame_as_in_one_call(server: ServerThread, package: Path) -> None:
    utterances, speakers = load_split("test")
    manifest = load_package(package).manifest
    right = 0
    with Client(server.address, timeout=60) as client:
        for frames, speaker in zip(utterances[:40], speakers[:40], strict=True):
            session = client.create_session("vowels")
            steps = [StepInput(session.id, vectors=[row.tolist()], top_k=9) for row in frames]
            streamed = list(client.step_stream(steps))
            session.close()
            assert [r.steps for r in streamed] == list(range(1, len(frames) + 1))
            for t in (0, len(frames) // 2, len(frames) - 1):
                whole = client.classify("vowels", vectors=frames[: t + 1].tolist(), top_k=9)
                by_id = sorted((p.id, p.probability) for p in streamed[t].top)
                np.testing.assert_allclose(
                    [p for _, p in by_id], whole.final, atol=1e-5, err_msg=f"frame {t}"
                )
            right += streamed[-1].top[0].text == f"speaker {speaker}"
    # 40 of 370: within a few points of the recorded accuracy
    assert abs(right / 40 - manifest.metrics["test_accuracy"]) < 0.2


def test_the_cli_streams_a_file_of_frames(server: ServerThread, tmp_path: Path) -> None:
    utterances, _ = load_split("test")
    frames = utterances[0]
    file = tmp_path / "frames.csv"
    file.write_text(
        "# one frame of 12 coefficients a line\n"
        + "\n".join(",".join(f"{v:.9g}" for v in row) for row in frames)
        + "\n"
    )
    env = {**os.environ, "RNNSERVE_ADDRESS": server.address}
    run = subprocess.run(
        [RNNSERVE, "stream", str(file), "--model", "vowels"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(n) for n in range(1, len(frames) + 1)]
    with Client(server.address) as client:
        final = client.classify("vowels", vectors=frames.tolist(), top_k=1).top[0]
    _, label, probability = lines[-1].split("\t")
    assert label == final.text and abs(float(probability) - final.probability) < 1e-4
    piped = subprocess.run(
        [RNNSERVE, "stream", "-", "--model", "vowels", "--json"],
        input=file.read_text(), capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout.splitlines()[-1])["top"][0]["text"] == label
    short = tmp_path / "short.txt"
    short.write_text("1 2 3\n")
    bad = subprocess.run(
        [RNNSERVE, "stream", str(short), "--model", "vowels"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert bad.returncode == 2
    assert f"short.txt:1: 3 values; the model reads {FEATURES}" in bad.stderr
