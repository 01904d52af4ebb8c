"""The torch module against the numpy transcription of docs/MODELS.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnserve_train.model import GRUCell, RNNLanguageModel
from rnnserve_train.reference import ReferenceModel, one_hot

VOCAB = 23


def random_model(layers: int, hidden: int = 12, seed: int = 0) -> RNNLanguageModel:
    """Every parameter drawn at a scale where all gates work and float32 errors do not
    grow chaotically over many steps."""
    torch.manual_seed(seed)
    model = RNNLanguageModel("gru", VOCAB, hidden, layers)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.4)
    return model.eval()


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_step_matches_reference(layers: int, batch: int) -> None:
    model = random_model(layers, seed=layers * 10 + batch)
    reference = ReferenceModel("gru", model.to_seed_weights())
    rng = np.random.default_rng(batch)
    state = np.zeros((layers, batch, model.hidden_size), dtype=np.float32)
    ref_state = reference.zero_state(batch)
    for _ in range(60):
        tokens = rng.integers(0, VOCAB, batch)
        with torch.no_grad():
            logits, new = model.step(torch.from_numpy(tokens), torch.from_numpy(state))
        ref_logits, ref_state = reference.step(tokens, ref_state)
        state = new.numpy()
        np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(state, ref_state, atol=1e-5, rtol=0)
    with torch.no_grad():
        head = model.head(torch.from_numpy(state)).numpy()
    np.testing.assert_allclose(head, reference.head(ref_state), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers", [1, 2])
def test_chunked_forward_equals_steps_with_resets(layers: int) -> None:
    """forward() over a chunk (input products hoisted) == step() one token at a time;
    ``keep`` zeroes the state exactly where it is 0."""
    model = random_model(layers)
    batch, steps = 4, 17
    tokens = torch.randint(0, VOCAB, (batch, steps), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(batch, steps)
    keep[1, 5] = keep[2, 0] = keep[3, 16] = 0.0
    state0 = torch.randn(layers, batch, model.hidden_size)
    with torch.no_grad():
        logits, state = model(tokens, state0, keep)
        stepped = state0
        for t in range(steps):
            stepped = stepped * keep[:, t].view(1, -1, 1)
            step_logits, stepped = model.step(tokens[:, t], stepped)
            torch.testing.assert_close(logits[:, t], step_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(state, stepped, atol=1e-6, rtol=0)


def test_embedding_lookup_equals_one_hot_product() -> None:
    """W_ax x<t> for a one-hot x<t> is the gathered row used in the hot path."""
    model = random_model(layers=1)
    cell = model.cells[0]
    assert isinstance(cell, GRUCell)
    weights = model.to_seed_weights()
    H = model.hidden_size
    tokens = torch.arange(VOCAB)
    with torch.no_grad():
        gathered = cell.project(tokens).numpy()  # [VOCAB, 3H]: input half of every gate
    for g, gate in enumerate(cell.gates):
        W_ax = weights[f"layer1.W_{gate}"][:, H:]
        b = weights[f"layer1.b_{gate}"]
        for i in range(VOCAB):
            expected = W_ax @ one_hot(i, VOCAB) + b
            np.testing.assert_allclose(gathered[i, g * H : (g + 1) * H], expected, atol=1e-6)


def test_seed_weights_round_trip() -> None:
    model = random_model(layers=2)
    weights = model.to_seed_weights()
    H = model.hidden_size
    assert weights["layer1.W_r"].shape == (H, H + VOCAB)
    assert weights["layer2.W_c"].shape == (H, H + H)
    assert weights["W_ya"].shape == (VOCAB, H) and weights["b_y"].shape == (VOCAB,)
    rebuilt = RNNLanguageModel.from_seed_weights("gru", weights)
    for (name, ours), theirs in zip(
        model.state_dict().items(), rebuilt.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name


@pytest.mark.parametrize("update_bias", [-1e4, 1e4])
def test_update_gate_weights_the_candidate(update_bias: float) -> None:
    """Γ_u = 0 keeps c<t-1>; Γ_u = 1 takes the candidate (PyTorch's z is the opposite)."""
    model = random_model(layers=1)
    weights = model.to_seed_weights()
    weights["layer1.W_u"][:] = 0.0
    weights["layer1.b_u"][:] = update_bias
    rebuilt = RNNLanguageModel.from_seed_weights("gru", weights).eval()
    state = torch.randn(1, 2, model.hidden_size)
    with torch.no_grad():
        _, new = rebuilt.step(torch.tensor([3, 4]), state)
        _, from_zero = rebuilt.step(torch.tensor([3, 4]), torch.zeros_like(state))
    if update_bias < 0:
        torch.testing.assert_close(new, state)
    else:
        assert not torch.allclose(new, state)
        assert torch.all(new.abs() < 1)  # a tanh candidate
    _, ref_new = ReferenceModel("gru", weights).step(np.array([3, 4]), state.numpy())
    np.testing.assert_allclose(new.numpy(), ref_new, atol=1e-5)
    assert from_zero.shape == new.shape
