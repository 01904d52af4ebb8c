"""The zoo command: one preset per shape, missing models only, unknown names refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnserve_train.cli import main
from rnnserve_train.config import PRESETS, make_config
from rnnserve_train.zoo import ZOO, present, train_zoo


def test_the_zoo_has_every_shape_and_each_model_a_preset() -> None:
    shapes = {make_config(name).shape for name in ZOO}
    assert shapes == {"many-to-many", "one-to-one", "one-to-many", "many-to-one", "seq2seq"}
    assert set(ZOO) <= set(PRESETS)
    assert make_config("word-gru").vocab_size == 10_000
    for name in ZOO:  # a preset trains the package of its own name
        assert make_config(name).name == name


def test_present_models_are_skipped(tmp_path: Path) -> None:
    package = tmp_path / "models" / "dates" / "3"
    package.mkdir(parents=True)
    (package / "manifest.json").write_text("{}")
    assert present(tmp_path / "models", "dates")
    assert not present(tmp_path / "models", "word-gru")
    (run,) = train_zoo(tmp_path / "models", tmp_path / "runs", only=["dates"])
    assert (run.name, run.status) == ("dates", "present")


def test_unknown_zoo_names_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--only=dates,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["zoo", "--bogus=1"]) == 2
    assert main(["baselines", "--only=dates"]) == 2
