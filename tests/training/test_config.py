"""TrainConfig presets and --key=value overrides, and the CLI's handling of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnserve_train.cli import main
from rnnserve_train.config import ConfigError, TrainConfig, make_config, parse_overrides


def test_overrides_parse_as_the_field_types() -> None:
    overrides = parse_overrides(["--lr=1e-3", "--layers=1", "--progress=false", "--name=x"])
    assert overrides == {"lr": 0.001, "layers": 1, "progress": False, "name": "x"}
    config = make_config("tiny", overrides)
    assert config.layers == 1 and config.hidden_size == 32 and config.name == "x"


def test_unknown_keys_are_rejected_with_the_valid_keys() -> None:
    with pytest.raises(ConfigError) as error:
        parse_overrides(["--hiden_size=3"])
    assert "hiden_size" in str(error.value) and "hidden_size" in str(error.value)
    with pytest.raises(ConfigError, match="expected int"):
        parse_overrides(["--layers=two"])
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("huge")
    with pytest.raises(ConfigError, match="cell"):
        make_config("tiny", {"cell": "lstm-peephole"})


def test_checkpoint_configs_round_trip() -> None:
    config = make_config("tiny")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError):
        TrainConfig.from_dict({**config.to_dict(), "surprise": 1})


def test_cli_exits_2_on_unknown_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset=tiny", "--no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main(["export", "--checkpoint=x.pt", "--bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["--preset=nope"]) == 2


def test_help_lists_every_key_with_its_default_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dataclasses
    import shlex

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for item in dataclasses.fields(TrainConfig):
        default = item.default
        shown = str(default).lower() if isinstance(default, bool) else shlex.quote(str(default))
        setting = f"--{item.name}={shown}"
        at = next(n for n, line in enumerate(lines) if line.strip().startswith(setting))
        described = " ".join(lines[at : at + 2])  # the meaning follows, or on the next line
        assert item.metadata["help"] in described, item.name
        assert parse_overrides([f"--{item.name}={shlex.split(shown)[0]}"]) == {
            item.name: default
        }  # the shown default is what --key=value takes
    for preset in ("char-gru", "dates", "tiny"):
        assert f"  {preset} " in out


def test_missing_data_is_one_line_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data=/nonexistent/corpus", "--max_steps=1"]) == 2
    assert capsys.readouterr().err == (
        "rnnserve-train: data='/nonexistent/corpus' is neither one of the data sets "
        "(fortunes, kjv) nor an existing file or folder\n"
    )


def test_own_text_gets_a_description_of_its_own(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    config = make_config("word-gru", {"data": str(corpus)})
    assert config.description == f"Word-level GRU language model of user-supplied text ({corpus})"
    assert "Bible" not in config.description
    chosen = make_config("word-gru", {"data": str(corpus), "description": "Mine"})
    assert chosen.description == "Mine"  # a description given is kept
    assert "Bible" in make_config("word-gru").description  # the preset's own data: its own
