"""merge.py: M networks as one whose logits are the mean of theirs, after every step."""

from __future__ import annotations

import pytest
import torch

from rnnserve_train.merge import merge
from rnnserve_train.model import CELLS, RNNLanguageModel


def build(cell: str, seed: int, *, tokens: bool, embedding: int) -> RNNLanguageModel:
    torch.manual_seed(seed)
    return RNNLanguageModel(
        cell,
        11 if tokens else 0,
        8,
        2,
        output_size=5,
        input_size=0 if tokens else 3,
        embedding_size=embedding,
    ).eval()


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize(("tokens", "embedding"), [(True, 4), (True, 0), (False, 0)])
def test_the_merged_network_gives_the_mean_of_the_members_logits(
    cell: str, tokens: bool, embedding: int
) -> None:
    parts = [build(cell, seed, tokens=tokens, embedding=embedding) for seed in range(3)]
    merged = merge(parts).eval()
    assert merged.hidden_size == 24 and merged.cell_name == cell
    torch.manual_seed(9)
    inputs = torch.randint(0, 11, (4, 7)) if tokens else torch.randn(4, 7, 3)
    lengths = torch.tensor([7, 5, 1, 3])
    with torch.no_grad():
        expected = torch.stack(
            [m.sequence(inputs, lengths, m.zero_state(4))[0] for m in parts]
        ).mean(0)
        got, _ = merged.sequence(inputs, lengths, merged.zero_state(4))
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
        # step by step, as a session is served
        state = merged.zero_state(4)
        states = [m.zero_state(4) for m in parts]
        for t in range(7):
            logits, state = merged.step(inputs[:, t], state)
            outs = []
            for i, m in enumerate(parts):
                out, states[i] = m.step(inputs[:, t], states[i])
                outs.append(out)
            assert torch.allclose(logits, torch.stack(outs).mean(0), atol=1e-5)


def test_members_of_different_shapes_are_refused() -> None:
    one = build("gru", 0, tokens=True, embedding=4)
    other = RNNLanguageModel("gru", 11, 6, 2, output_size=5, embedding_size=4)
    with pytest.raises(ValueError, match="members differ"):
        merge([one, other])
