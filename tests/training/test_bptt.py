"""Backpropagation through time: padded batches of whole examples (full BPTT) give the
loss and the gradients of each example run alone; truncated BPTT stops at chunk edges."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rnnserve_train.data import pad_sequences
from rnnserve_train.model import RNNLanguageModel
from rnnserve_train.tasks import Batch, Loss, classifier_loss, decoder_loss

VOCAB, PAD = 11, 0
SEQUENCES = [[3, 4, 5, 6, 7, 8, 9], [5], [9, 8, 7], [2, 2, 3, 4]]


def model_for(cell: str, **kwargs: int) -> RNNLanguageModel:
    torch.manual_seed(0)
    return RNNLanguageModel(cell, VOCAB, 8, 2, **kwargs)


def gradients(model: RNNLanguageModel, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def classifier_batch(rows: list[list[int]], labels: list[int]) -> Batch:
    inputs, lengths = pad_sequences(rows, PAD)
    return {"inputs": inputs, "lengths": lengths, "labels": torch.tensor(labels)}


def decoder_batch(rows: list[list[int]]) -> Batch:
    inputs, lengths = pad_sequences([[1, *r] for r in rows], PAD)
    targets, _ = pad_sequences([[*r, 2] for r in rows], PAD)
    return {"inputs": inputs, "targets": targets, "lengths": lengths}


def assert_padding_changes_nothing(
    model: RNNLanguageModel, loss_of: Callable[[list[int]], Loss]
) -> None:
    """The padded batch's summed loss and gradients == the sums over examples alone."""
    together = loss_of(list(range(len(SEQUENCES))))
    batch_gradients = gradients(model, together.nats)
    alone_nats = torch.tensor(0.0)
    alone_gradients: dict[str, torch.Tensor] = {}
    alone_count = 0.0
    for row in range(len(SEQUENCES)):
        alone = loss_of([row])
        alone_nats = alone_nats + alone.nats.detach()
        alone_count += float(alone.count)
        for name, grad in gradients(model, alone.nats).items():
            alone_gradients[name] = alone_gradients.get(name, 0) + grad
    assert float(together.count) == alone_count
    torch.testing.assert_close(together.nats.detach(), alone_nats, atol=1e-5, rtol=1e-6)
    assert batch_gradients.keys() == alone_gradients.keys()
    for name, grad in batch_gradients.items():
        torch.testing.assert_close(grad, alone_gradients[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("cell", ["rnn-tanh", "gru"])
@pytest.mark.parametrize(("head", "prefix"), [("softmax", 0.0), ("sigmoid", 0.0), ("softmax", 0.5)])
def test_padding_changes_nothing_for_a_classifier(cell: str, head: str, prefix: float) -> None:
    model = model_for(cell, output_size=3)
    labels = [0, 2, 1, 2]
    assert_padding_changes_nothing(
        model,
        lambda rows: classifier_loss(
            model,
            classifier_batch([SEQUENCES[r] for r in rows], [labels[r] for r in rows]),
            head,
            prefix,
        ),
    )


@pytest.mark.parametrize("cell", ["gru-simple", "gru-torch"])
def test_padding_changes_nothing_for_a_conditional_generator(cell: str) -> None:
    model = model_for(cell, conditions=3)
    conditions = torch.tensor([2, 0, 1, 0])
    assert_padding_changes_nothing(
        model,
        lambda rows: decoder_loss(
            model,
            decoder_batch([SEQUENCES[r] for r in rows]),
            model.condition_state(conditions[rows]),
        ),
    )


@pytest.mark.parametrize("cell", ["gru", "rnn-relu"])
def test_padding_changes_nothing_for_an_encoder_decoder(cell: str) -> None:
    """Both sides padded: sources and targets of different lengths."""
    model = model_for(cell, encoder=True)
    targets = [[4, 4], [6, 7, 8, 9, 3], [5], [3, 3, 3]]

    def loss_of(rows: list[int]) -> Loss:
        source, source_lengths = pad_sequences([SEQUENCES[r] for r in rows], PAD)
        start = model.encode(source, source_lengths)
        return decoder_loss(model, decoder_batch([targets[r] for r in rows]), start)

    assert_padding_changes_nothing(model, loss_of)


def test_truncated_bptt_detaches_the_carried_state() -> None:
    """The language model's loss on a chunk sends no gradient into the previous chunk."""
    from rnnserve_train.config import make_config
    from rnnserve_train.tasks import LanguageModel

    model = model_for("gru")
    state = torch.zeros(2, 3, 8, requires_grad=True)
    carried = state * 2.0  # stands for the previous chunk's graph
    batch = {
        "inputs": torch.randint(3, VOCAB, (3, 5)),
        "targets": torch.randint(3, VOCAB, (3, 5)),
        "loss_mask": torch.ones(3, 5),
        "keep": torch.ones(3, 5),
    }
    task = LanguageModel.__new__(LanguageModel)  # loss() needs no data
    task.config = make_config("tiny")
    result = task.loss(model, batch, carried)
    result.nats.backward()  # type: ignore[no-untyped-call]
    assert state.grad is None  # cut at the chunk edge
    assert result.state is not None and result.state.shape == (2, 3, 8)
