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


def test_the_full_budget_overrides_a_zoo_preset_and_overrides_win() -> None:
    from rnnserve_train.config import FULL_BUDGET, ConfigError

    assert set(FULL_BUDGET) == set(ZOO)
    for name in ZOO:
        quick, full = make_config(name), make_config(name, {"budget": "full"})
        assert (quick.budget, full.budget) == ("quick", "full")
        assert full.max_steps > quick.max_steps
        assert all(getattr(full, key) == value for key, value in FULL_BUDGET[name].items())
    assert make_config("dates", {"budget": "full", "max_steps": 7}).max_steps == 7
    with pytest.raises(ConfigError, match="has no full budget"):
        make_config("tiny", {"budget": "full"})
    with pytest.raises(ConfigError, match="budget='huge'"):
        make_config("dates", {"budget": "huge"})


def test_a_model_is_present_per_budget(tmp_path: Path) -> None:
    """A quick version does not stand in for a full one (nor the other way round)."""
    import json

    models = tmp_path / "models"
    for version, budget in ((1, "quick"), (2, None)):
        package = models / "dates" / str(version)
        package.mkdir(parents=True)
        config = {} if budget is None else {"budget": budget}
        (package / "manifest.json").write_text(json.dumps({"training": {"config": config}}))
    assert present(models, "dates", "quick")
    assert not present(models, "dates", "full")
    (models / "dates" / "3").mkdir()
    (models / "dates" / "3" / "manifest.json").write_text(
        json.dumps({"training": {"config": {"budget": "full"}}})
    )
    assert present(models, "dates", "full")
    assert main(["zoo", "--budget=huge"]) == 2
