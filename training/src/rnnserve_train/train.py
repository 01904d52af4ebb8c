"""The training loop, the same for every shape (``tasks.py`` supplies data, loss and
evaluation): AdamW with gradient clipping and a cosine learning rate, periodic
validation, a final test; data-parallel over ``torchrun`` ranks when started that way.

Writes ``<runs>/<name>/checkpoint.pt``, ``metrics.jsonl`` and ``loss.png``.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rnnserve_train import distributed
from rnnserve_train.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from rnnserve_train.config import ConfigError, TrainConfig, validate
from rnnserve_train.metrics import MetricsLog, bits
from rnnserve_train.model import RNNLanguageModel
from rnnserve_train.tasks import Batch, Loss, Task, make_task, select_rows

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


class Objective(nn.Module):
    """The task's loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, task: Task, model: RNNLanguageModel) -> None:
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch: Batch, state: Tensor | None) -> Loss:
        return self.task.loss(self.model, batch, state)


# Fields that must match for --resume=true to continue a run: they define the model and
# its data. Everything else (max_steps, lr, ...) may change between the two runs.
RESUME_KEYS = (
    "shape",
    "data",
    "cell",
    "layers",
    "hidden_size",
    "embedding_size",
    "tie_embeddings",
    "tokenizer",
    "vocab_size",
    "min_count",
    "lowercase",
    "max_documents",
    "val_fraction",
    "test_fraction",
)


# (step, phase) after each optimiser step ("training") and before the test ("evaluating")
ProgressReport = Callable[[int, str], None]
# Without a progress bar, a plain line this often (log files get no carriage returns).
PLAIN_PROGRESS_S = 30.0


def train(config: TrainConfig, report: ProgressReport | None = None) -> TrainResult:
    """Train (or, with ``resume``, continue the checkpoint in the run directory);
    ``report`` hears of the progress (on the main rank)."""
    validate(config)
    if config.ensemble > 1:
        from rnnserve_train.ensemble import train_ensemble  # it calls train() per member

        return train_ensemble(config, report or (lambda step, phase: None))
    ranks = distributed.start(config.device)
    try:
        return _train(config, ranks, report or (lambda step, phase: None))
    finally:
        distributed.stop(ranks)


def _train(config: TrainConfig, ranks: distributed.Ranks, report: ProgressReport) -> TrainResult:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.runs) / config.name
    checkpoint_path = run_dir / CHECKPOINT_FILE
    resumed = _resumable(checkpoint_path, config) if config.resume else None

    task = make_task(config, resumed.tokenizer if resumed else None)
    tokenizer = task.tokenizer
    log.info("%s: %s, vocabulary of %d", config.name, task.facts["split_sizes"], tokenizer.size)

    model = resumed.model if resumed else task.build_model()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay
    )
    first_step, earlier_seconds = 1, 0.0
    if resumed is not None:
        if resumed.optimizer is not None:
            optimizer.load_state_dict(resumed.optimizer)
        first_step = resumed.step + 1
        earlier_seconds = float(resumed.training.get("seconds", 0.0))
        log.info("resuming %s at step %d", checkpoint_path, first_step)
    model.to(config.device).train()
    objective: nn.Module = Objective(task, model)
    if ranks.world > 1:
        objective = DistributedDataParallel(objective)

    def run_facts(step: int) -> dict[str, object]:
        return {
            **task.facts,
            "seed": config.seed,
            "steps": step,
            "seconds": round(earlier_seconds + time.perf_counter() - started, 1),
            "processes": ranks.world,
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

    # Each run (and each resumption) draws its batches in its own seeded order.
    batches = task.batches(config.seed + first_step - 1)
    metrics_log: MetricsLog | None = None
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_log = MetricsLog(
            run_dir,
            append=resumed is not None,
            loss_key=f"val_{task.loss_metric}",
            metric_key=f"val_{task.main_metric}",
        )
    state: Tensor | None = None
    window_nats, window_count = 0.0, 0.0
    metrics: dict[str, float] = dict(resumed.metrics) if resumed else {}
    progress = tqdm(
        range(first_step, config.max_steps + 1),
        desc=config.name,
        disable=not (config.progress and ranks.main),
        unit="step",
    )
    plain = PlainProgress(config, first_step) if ranks.main and not config.progress else None
    for step in progress:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(config.device) for k, v in next(batches).items()}
        result: Loss = objective(select_rows(batch, ranks.rows), state)
        state = result.state
        count = ranks.all_sum(result.count).clamp(min=1.0)
        loss = result.nats * ranks.world / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        nats = float(ranks.all_sum(result.nats))
        step_bits = bits(nats / float(count))
        window_nats += nats
        window_count += float(count)
        if metrics_log is None:
            continue
        metrics_log.train_step(step, step_bits, lr)
        progress.set_postfix(bits=f"{step_bits:.3f}", lr=f"{lr:.1e}")
        report(step, "training")
        if plain is not None:
            plain.step(step, step_bits, lr)
        if step % config.eval_every == 0 or step == config.max_steps:
            model.eval()
            metrics = {
                "train_bits": bits(window_nats / max(window_count, 1.0)),
                **task.evaluate(model, "val"),
            }
            model.train()
            window_nats, window_count = 0.0, 0.0
            elapsed = earlier_seconds + time.perf_counter() - started
            metrics_log.record({"step": step, "lr": lr, "seconds": elapsed, **metrics})
            progress.write(
                f"step {step}: train {metrics['train_bits']:.3f} bits, "
                + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val_"))
                + f" ({elapsed:.0f} s)"
            )
            save(step, metrics)

    last_step = max(first_step - 1, config.max_steps)
    if not ranks.main:
        return TrainResult(checkpoint=checkpoint_path, metrics={})
    assert metrics_log is not None
    report(last_step, "evaluating")
    model.eval()
    if not any(k.startswith("val_") for k in metrics):  # resumed a run that had finished
        metrics.update(task.evaluate(model, "val"))
    train_seconds = earlier_seconds + time.perf_counter() - started
    metrics.update(task.evaluate(model, "test"))
    metrics.update(task.final_metrics(model))
    metrics_log.record({"step": last_step, "final": True, **metrics})
    metrics_log.plot(
        f"{config.name}: {config.shape}, {config.cell}, {config.layers}x{config.hidden_size}"
    )
    save(last_step, metrics)
    log.info(
        "%s after %.0f s; checkpoint %s",
        ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("test_")),
        train_seconds,
        checkpoint_path,
    )
    return TrainResult(checkpoint=checkpoint_path, metrics=metrics)


class PlainProgress:
    """A plain line every PLAIN_PROGRESS_S seconds: step, rate, loss, time left."""

    def __init__(self, config: TrainConfig, first_step: int) -> None:
        self.config, self.first_step = config, first_step
        self.started = self.last = time.perf_counter()

    def step(self, step: int, step_bits: float, lr: float) -> None:
        now = time.perf_counter()
        if now - self.last < PLAIN_PROGRESS_S and step != self.config.max_steps:
            return
        self.last = now
        rate = (step - self.first_step + 1) / max(now - self.started, 1e-9)
        left = (self.config.max_steps - step) / rate
        log.info(
            "%s: step %d/%d (%.0f%%), %.2f steps/s, train %.3f bits, lr %.1e, %.0f s left",
            self.config.name,
            step,
            self.config.max_steps,
            100 * step / self.config.max_steps,
            rate,
            step_bits,
            lr,
            left,
        )


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
