"""Training on your own text: a UTF-8 file or folder, documents separated by blank lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnnserve_train.data import load_corpus

TRAIN = str(Path(sys.executable).with_name("rnnserve-train"))


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text("first document\nstill first\n\n\nsecond one\n", encoding="utf-8")
    (folder / "b.txt").write_text("third\r\n\r\nfourth: naïve ☃\n", encoding="utf-8")
    (folder / "ignored.md").write_text("not a text file of the corpus")
    return folder


def test_documents_are_split_at_blank_lines(tmp_path: Path) -> None:
    corpus = load_corpus(str(write_corpus(tmp_path / "texts")))
    assert corpus.documents == (
        "first document\nstill first",
        "second one",
        "third",
        "fourth: naïve ☃",
    )
    assert corpus.files == ("a.txt", "b.txt")
    single = load_corpus(str(tmp_path / "texts" / "b.txt"))
    assert single.documents == ("third", "fourth: naïve ☃")
    with pytest.raises(ValueError, match="neither 'fortunes' nor an existing"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_the_cli_trains_and_exports_a_model_on_your_text(tmp_path: Path) -> None:
    texts = write_corpus(tmp_path / "texts")
    lines = [f"line {i} of my own corpus, with words that repeat" for i in range(300)]
    (texts / "c.txt").write_text("\n\n".join(lines), encoding="utf-8")
    done = subprocess.run(
        [TRAIN, "--preset=tiny", f"--data={texts}", "--name=mine", "--max_steps=10",
         "--eval_every=10", f"--out={tmp_path / 'models'}", f"--runs={tmp_path / 'runs'}"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "models" / "mine" / "1" / "manifest.json").read_text())
    assert manifest["training"]["data"] == str(texts)
    assert "user-supplied" in manifest["training"]["data_origin"]
    # Not the tiny preset's description (FreeBSD fortunes): the model's own.
    assert manifest["description"] == (
        f"Character-level GRU language model of user-supplied text ({texts})"
    )
