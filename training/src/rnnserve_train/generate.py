"""Generation with the torch model, from the state a served session starts in (the state
after ``bos``): greedy decoding for golden tests, sampling for model cards."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.model import RNNLanguageModel


@torch.no_grad()
def next_token_logits(
    model: RNNLanguageModel, tokenizer: Tokenizer, prompt_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [1, K], state [L, 1, H]) after the initial state and the prompt."""
    state = model.initial_state(tokenizer.special_tokens["bos"])
    logits = model.head(state)
    device = state.device
    for token in prompt_ids:
        logits, state = model.step(torch.tensor([token], device=device), state)
    return logits, state


@torch.no_grad()
def greedy_tokens(
    model: RNNLanguageModel, tokenizer: Tokenizer, prompt_ids: Sequence[int], n: int
) -> list[int]:
    """The ``n`` tokens that greedy decoding produces after ``prompt_ids``.

    Each token is the argmax of the current logits and is fed back; eos is an ordinary
    token here (no early stop), so callers compare or cut the stream as they need.
    """
    model.eval()
    logits, state = next_token_logits(model, tokenizer, prompt_ids)
    out: list[int] = []
    for _ in range(n):
        token = logits.argmax(dim=-1)
        out.append(int(token.item()))
        logits, state = model.step(token, state)
    return out


@torch.no_grad()
def sample_tokens(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    n: int,
    *,
    temperature: float = 0.8,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> list[int]:
    """Up to ``n`` tokens sampled from softmax(logits / temperature), seeded."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    logits, state = next_token_logits(model, tokenizer, prompt_ids)
    out: list[int] = []
    for _ in range(n):
        probabilities = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        token = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
        out.append(int(token.item()))
        if stop_at_eos and out[-1] == tokenizer.special_tokens["eos"]:
            break
        logits, state = model.step(token.to(state.device), state)
    return out
