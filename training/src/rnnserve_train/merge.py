"""An ensemble of trained networks as one network of the same cell (``merge``).

M networks of one cell, depth and sizes, trained apart (their own seeds), become one
network whose hidden state is theirs side by side: every weight matrix block-diagonal in
the members (each member's units read only its own units and its own part of the
embedding), the layer-0 input shared where the members read the same tokens or vectors,
and the output layer ``W_ya = [W_1 ... W_M] / M``, ``b_y = mean(b_k)``, so that the merged
logits are exactly the mean of the members' logits after every step. The merged network
is an ordinary network of docs/MODELS.md (a GRU of M*H units is still a GRU): it is
exported, checked by the parity gate and served as any other. What it costs: M times the
state, and M times the weights and the work per step (block-diagonal matrices stored
dense).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rnnserve_train.model import RNNLanguageModel


def merge(members: Sequence[RNNLanguageModel]) -> RNNLanguageModel:
    """One network computing the mean of ``members``' logits (see the module's text)."""
    first = members[0]
    shape = _shape(first)
    for member in members[1:]:
        if _shape(member) != shape:
            raise ValueError(f"members differ: {_shape(member)} against {shape}")
    if first.encoder is not None or first.conditions or first.output is None:
        raise ValueError(
            "merge: networks with an encoder, initial-state conditions or tied embeddings "
            "are not supported"
        )
    m = len(members)
    merged = RNNLanguageModel(
        first.cell_name,
        first.vocab_size,
        m * first.hidden_size,
        first.layers,
        output_size=first.output_size,
        input_size=first.input_size,
        embedding_size=m * first.embedding_size,
    )
    with torch.no_grad():
        if first.embedding is not None:
            assert merged.embedding is not None
            merged.embedding.weight.copy_(
                torch.cat([_embedding(member) for member in members], dim=1)
            )
        for layer, cell in enumerate(merged.stack):
            # Layer 0 without an embedding reads the same tokens or vectors in every member.
            shared = layer == 0 and first.embedding is None
            weights = [member.stack[layer].seed_weights() for member in members]
            cell.load_seed_weights(_merged_weights(weights, first.hidden_size, shared))
        assert merged.output is not None
        merged.output.weight.copy_(torch.cat([m_.output_weight for m_ in members], dim=1) / m)
        merged.output.bias.copy_(torch.stack([m_.output_bias_vector for m_ in members]).mean(0))
    return merged


def _merged_weights(
    weights: Sequence[dict[str, np.ndarray]], hidden: int, shared_input: bool
) -> dict[str, np.ndarray]:
    """Seed weights (``W_g = [W_ga | W_gx]``, ``b_g``, extras of shape [H]) of the merged
    layer: ``W_ga`` block-diagonal, ``W_gx`` block-diagonal or stacked (shared input)."""
    merged: dict[str, np.ndarray] = {}
    for key in weights[0]:
        blocks = [w[key] for w in weights]
        if key.startswith("W_"):
            recurrent = _block_diagonal([b[:, :hidden] for b in blocks])
            inputs = [b[:, hidden:] for b in blocks]
            input_block = np.vstack(inputs) if shared_input else _block_diagonal(inputs)
            merged[key] = np.hstack([recurrent, input_block]).astype(np.float32)
        elif blocks[0].shape == (hidden,):
            merged[key] = np.concatenate(blocks).astype(np.float32)
        else:
            raise ValueError(f"merge: no rule for the cell's weight {key} {blocks[0].shape}")
    return merged


def _block_diagonal(blocks: Sequence[np.ndarray]) -> np.ndarray:
    rows, cols = sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)
    out = np.zeros((rows, cols), np.float32)
    r = c = 0
    for block in blocks:
        out[r : r + block.shape[0], c : c + block.shape[1]] = block
        r, c = r + block.shape[0], c + block.shape[1]
    return out


def _embedding(member: RNNLanguageModel) -> torch.Tensor:
    assert member.embedding is not None
    return member.embedding.weight


def _shape(model: RNNLanguageModel) -> tuple[object, ...]:
    return (
        model.cell_name,
        model.vocab_size,
        model.input_size,
        model.embedding_size,
        model.hidden_size,
        model.layers,
        model.output_size,
    )
