"""TrainConfig presets and --key=value overrides, and the CLI's handling of them."""

from __future__ import annotations

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
