"""The training loop: truncated BPTT over packed documents, AdamW with clipping and a
cosine learning rate, periodic validation, a final test in bits per character.

Writes ``<runs>/<name>/checkpoint.pt``, ``metrics.jsonl`` and ``loss.png``.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional
from tqdm import tqdm

from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from rnnserve_train.config import ConfigError, TrainConfig, validate
from rnnserve_train.data import (
    Batch,
    build_tokenizer,
    chunks,
    count_targets,
    encode_documents,
    load_corpus,
    pack_rows,
    split_documents,
    training_batches,
)
from rnnserve_train.metrics import MetricsLog, bits
from rnnserve_train.model import RNNLanguageModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: dict[str, float]


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr`` at ``max_steps``."""
    if step <= config.warmup_steps:
        return config.lr * step / max(1, config.warmup_steps)
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def masked_nats(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy in nats over real targets, how many there are)."""
    per_token = functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), reduction="none"
    )
    mask = batch.loss_mask.reshape(-1)
    return (per_token * mask).sum(), mask.sum()


@torch.no_grad()
def evaluate(
    model: RNNLanguageModel,
    encoded: Sequence[np.ndarray],
    tokenizer: Tokenizer,
    config: TrainConfig,
) -> float:
    """Bits per character over every character and eos of ``encoded`` documents."""
    was_training = model.training
    model.eval()
    packed = pack_rows(
        encoded, config.eval_batch_size, config.seq_len, tokenizer.special_tokens["pad"]
    )
    state = model.zero_state(packed.shape[0])
    total, count = 0.0, 0.0
    for chunk in chunks(packed, config.seq_len, tokenizer):
        batch = _to(chunk, config.device)
        logits, state = model(batch.inputs, state, batch.keep)
        nats, n = masked_nats(logits, batch)
        total += float(nats)
        count += float(n)
    model.train(was_training)
    if int(count) != count_targets(encoded):  # the masks must count each target once
        raise AssertionError(f"evaluated {count} targets, expected {count_targets(encoded)}")
    return bits(total / count)


# Fields that must match for --resume=true to continue a run: they define the model and
# its data. Everything else (max_steps, lr, ...) may change between the two runs.
RESUME_KEYS = (
    "cell",
    "layers",
    "hidden_size",
    "data",
    "max_documents",
    "min_char_count",
    "val_fraction",
    "test_fraction",
)


def train(config: TrainConfig) -> TrainResult:
    """Train (or, with ``resume``, continue the checkpoint in the run directory)."""
    validate(config)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.runs) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    resumed = _resumable(checkpoint_path, config) if config.resume else None

    corpus = load_corpus(config.data, config.max_documents)
    splits = split_documents(corpus.documents, config.val_fraction, config.test_fraction)
    tokenizer = (
        resumed.tokenizer if resumed else build_tokenizer(splits.train, config.min_char_count)
    )
    train_docs = encode_documents(tokenizer, splits.train)
    val_docs = encode_documents(tokenizer, splits.val)
    test_docs = encode_documents(tokenizer, splits.test)
    log.info("%s: %s documents, vocabulary of %d", corpus.name, splits.sizes(), tokenizer.size)

    model = RNNLanguageModel(config.cell, tokenizer.size, config.hidden_size, config.layers)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay
    )
    first_step, earlier_seconds = 1, 0.0
    if resumed is not None:
        model.load_state_dict(resumed.model.state_dict())
        if resumed.optimizer is not None:
            optimizer.load_state_dict(resumed.optimizer)
        first_step = resumed.step + 1
        earlier_seconds = float(resumed.training.get("seconds", 0.0))
        log.info("resuming %s at step %d", checkpoint_path, first_step)
    model.to(config.device).train()

    def run_facts(step: int) -> dict[str, object]:
        return {
            "data": corpus.name,
            "data_origin": corpus.origin,
            "data_licence": corpus.licence,
            "data_files": list(corpus.files),
            "split": "sha256 of each document's text: "
            f"test < {config.test_fraction}, val < {config.test_fraction + config.val_fraction}",
            "split_documents": splits.sizes(),
            "split_characters": {
                "train": count_targets(train_docs),
                "val": count_targets(val_docs),
                "test": count_targets(test_docs),
            },
            "seed": config.seed,
            "steps": step,
            "seconds": round(earlier_seconds + time.perf_counter() - started, 1),
            "config": config.to_dict(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": str(torch.__version__),
        }

    def save(step: int, metrics: dict[str, float]) -> None:
        checkpoint = Checkpoint(
            model=model,
            tokenizer=tokenizer,
            config=config,
            step=step,
            training=run_facts(step),
            metrics=metrics,
            optimizer=optimizer.state_dict(),
        )
        save_checkpoint(checkpoint_path, checkpoint)

    # Each run (and each resumption) packs the documents in its own seeded orders.
    batches = training_batches(
        train_docs, tokenizer, config.batch_size, config.seq_len, config.seed + first_step - 1
    )
    metrics_log = MetricsLog(run_dir, append=resumed is not None)
    state = model.zero_state(config.batch_size)
    window_nats, window_count = 0.0, 0.0
    metrics: dict[str, float] = dict(resumed.metrics) if resumed else {}
    progress = tqdm(
        range(first_step, config.max_steps + 1),
        desc=config.name,
        disable=not config.progress,
        unit="step",
    )
    for step in progress:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _to(next(batches), config.device)
        if state.shape[1] != batch.inputs.shape[0]:  # fewer documents than rows
            state = model.zero_state(batch.inputs.shape[0])
        logits, state = model(batch.inputs, state.detach(), batch.keep)
        nats, count = masked_nats(logits, batch)
        loss = nats / count.clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        step_bits = bits(float(loss.detach()))
        metrics_log.train_step(step, step_bits)
        window_nats += float(nats.detach())
        window_count += float(count)
        progress.set_postfix(bpc=f"{step_bits:.3f}", lr=f"{lr:.1e}")
        if step % config.eval_every == 0 or step == config.max_steps:
            metrics = {
                "train_bits_per_char": bits(window_nats / max(window_count, 1.0)),
                "val_bits_per_char": evaluate(model, val_docs, tokenizer, config),
            }
            window_nats, window_count = 0.0, 0.0
            elapsed = earlier_seconds + time.perf_counter() - started
            metrics_log.record({"step": step, "lr": lr, "seconds": elapsed, **metrics})
            progress.write(
                f"step {step}: train {metrics['train_bits_per_char']:.3f} "
                f"val {metrics['val_bits_per_char']:.3f} bits/char ({elapsed:.0f} s)"
            )
            save(step, metrics)

    last_step = max(first_step - 1, config.max_steps)
    if "val_bits_per_char" not in metrics:  # resumed a run that had already finished
        metrics["val_bits_per_char"] = evaluate(model, val_docs, tokenizer, config)
    train_seconds = earlier_seconds + time.perf_counter() - started
    metrics["test_bits_per_char"] = evaluate(model, test_docs, tokenizer, config)
    metrics["uniform_bits_per_char"] = math.log2(tokenizer.size)
    metrics_log.record({"step": last_step, "final": True, **metrics})
    metrics_log.plot(f"{config.name}: {config.cell}, {config.layers}x{config.hidden_size}")
    save(last_step, metrics)
    log.info(
        "test %.3f bits/char after %.0f s; checkpoint %s",
        metrics["test_bits_per_char"],
        train_seconds,
        checkpoint_path,
    )
    return TrainResult(checkpoint=checkpoint_path, metrics=metrics)


def _resumable(path: Path, config: TrainConfig) -> Checkpoint | None:
    if not path.exists():
        return None
    resumed = load_checkpoint(path, config.device)
    changed = [k for k in RESUME_KEYS if getattr(resumed.config, k) != getattr(config, k)]
    if changed:
        raise ConfigError(
            f"--resume: {path} was trained with other {', '.join(changed)} "
            f"({', '.join(f'{k}={getattr(resumed.config, k)!r}' for k in changed)})"
        )
    return resumed


def _to(batch: Batch, device: str) -> Batch:
    if device == "cpu":
        return batch
    return Batch(
        *(
            t.to(device, non_blocking=True)
            for t in (batch.inputs, batch.targets, batch.loss_mask, batch.keep)
        )
    )
