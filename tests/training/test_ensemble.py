"""ensemble=M: members trained with their own seeds, merged into one package whose
served outputs are the mean of the members' logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnserve_server.modelpackage import load_package
from rnnserve_server.runtime import ModelRuntime, ProviderChoice
from rnnserve_train.api import train_and_export
from rnnserve_train.checkpoint import load_checkpoint
from rnnserve_train.config import ConfigError, make_config, validate
from rnnserve_train.tasks import make_task


def test_an_ensemble_of_two_is_served_as_the_mean_of_its_members(tmp_path: Path) -> None:
    config = make_config(
        "name-language",
        {
            "hidden_size": 16,
            "embedding_size": 8,
            "max_steps": 6,
            "eval_every": 6,
            "batch_size": 16,
            "max_documents": 600,
            "parity_steps": 10,
            "progress": False,
            "ensemble": 2,
            "out": str(tmp_path / "models"),
            "runs": str(tmp_path / "runs"),
        },
    )
    path = train_and_export(config)
    assert path is not None
    package = load_package(path)
    manifest = package.manifest
    assert manifest.hidden_size == 32 and manifest.cell == "gru"
    assert manifest.training["ensemble"]["seeds"] == [config.seed, config.seed + 1]
    card = (path / "MODEL_CARD.md").read_text()
    assert (
        "- an ensemble of 2 networks of 16 units (embedding 8), trained apart with seeds " in card
    )
    assert "- the members alone, test_accuracy: " in card
    members_dir = tmp_path / "runs" / "name-language" / "members"
    members = [load_checkpoint(members_dir / f"member-{k}" / "checkpoint.pt") for k in (1, 2)]
    assert [m.config.seed for m in members] == [config.seed, config.seed + 1]
    assert not torch.equal(
        members[0].model.output_weight, members[1].model.output_weight
    )  # two different networks

    # The package's test accuracy is that of the mean of the members' logits.
    task = make_task(members[0].config, members[0].tokenizer)
    logits, truth = [], None
    with torch.no_grad():
        for member in members:
            rows = []
            labels = []
            for _, batch in task.eval_batches("test"):
                inputs = batch["inputs"]
                out, _ = member.model.eval().sequence(
                    inputs, batch["lengths"], member.model.zero_state(inputs.shape[0])
                )
                rows.append(out.numpy())
                labels.append(batch["labels"].numpy())
            logits.append(np.concatenate(rows))
            truth = np.concatenate(labels)
    mean = (logits[0] + logits[1]) / 2
    assert manifest.metrics["test_accuracy"] == float((mean.argmax(1) == truth).mean())
    for k, member in enumerate(members, 1):
        assert manifest.metrics[f"member_{k}_test_accuracy"] == member.metrics["test_accuracy"]

    # Served step by step, as a session is: the mean of the members' logits.
    runtime = ModelRuntime(package, ProviderChoice.resolve("cpu", allow_cpu_fallback=False))
    tokens = package.tokenizer.encode("Anna Kowalska")
    served, _ = runtime.run_inputs(np.array(tokens), runtime.initial_state[:, None, :])
    bos = members[0].tokenizer.special_tokens["bos"]
    with torch.no_grad():
        expected = np.mean(
            [
                m.model.sequence(
                    torch.tensor([[bos, *tokens]]),
                    torch.tensor([len(tokens) + 1]),
                    m.model.zero_state(1),
                )[0].numpy()
                for m in members
            ],
            axis=0,
        )
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_an_ensemble_is_refused_where_members_cannot_be_merged() -> None:
    with pytest.raises(ConfigError, match="ensemble=0 must be at least 1"):
        validate(make_config("name-language", {"ensemble": 0}))
    with pytest.raises(ConfigError, match="ensemble=2: members are merged for token models"):
        validate(make_config("dates", {"ensemble": 2}))
    validate(make_config("char-gru", {"ensemble": 2}))  # a language model merges
