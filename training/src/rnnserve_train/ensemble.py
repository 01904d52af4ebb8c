"""``ensemble=M``: train M members with seeds seed, seed+1, ... and keep them merged.

Each member is an ordinary run of the same config (``<runs>/<name>/members/member-k``,
resumable as any run); then ``merge.merge`` makes them one network whose logits are the
mean of theirs, which is evaluated on the validation and test splits like a single model
and written as ``<runs>/<name>/checkpoint.pt``, the checkpoint the package is exported
from. The members' own test figures stay in its metrics (``member_k_test_<metric>``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rnnserve_train.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from rnnserve_train.config import TrainConfig
from rnnserve_train.merge import merge
from rnnserve_train.metrics import PLOT_FILE
from rnnserve_train.tasks import make_task

if TYPE_CHECKING:
    from rnnserve_train.train import TrainResult

log = logging.getLogger(__name__)


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    runs = Path(config.runs) / config.name / "members"
    return [
        replace(
            config,
            name=f"member-{k + 1}",
            seed=config.seed + k,
            ensemble=1,
            export=False,
            runs=str(runs),
        )
        for k in range(config.ensemble)
    ]


def train_ensemble(config: TrainConfig, report: Callable[[int, str], None]) -> TrainResult:
    """Train the members one after the other (``report`` hears the steps of all of them
    as one count, up to ``ensemble * max_steps``), then merge, evaluate and save."""
    from rnnserve_train.train import TrainResult, train  # late: train imports this module

    def counted(offset: int) -> Callable[[int, str], None]:
        return lambda step, phase: report(offset + step, phase)

    results = []
    for k, member_config in enumerate(member_configs(config)):
        log.info(
            "%s: member %d of %d, seed %d", config.name, k + 1, config.ensemble, member_config.seed
        )
        results.append(train(member_config, counted(k * config.max_steps)))
    checkpoint_path = Path(config.runs) / config.name / CHECKPOINT_FILE
    if not results[0].metrics:  # a torchrun rank other than 0: rank 0 merges
        return TrainResult(checkpoint=checkpoint_path, metrics={})
    members = [load_checkpoint(result.checkpoint) for result in results]
    merged = merge([m.model for m in members]).eval()
    merged_config = replace(
        config, hidden_size=merged.hidden_size, embedding_size=merged.embedding_size
    )
    task = make_task(merged_config, members[0].tokenizer)
    report(config.ensemble * config.max_steps, "evaluating")
    metrics = {
        **task.evaluate(merged, "val"),
        **task.evaluate(merged, "test"),
        **task.final_metrics(merged),
    }
    key = f"test_{task.main_metric}"
    for k, member in enumerate(members):
        metrics[f"member_{k + 1}_{key}"] = member.metrics[key]
    training = {
        **members[0].training,
        **task.facts,  # the merged network's (its per-class test results)
        "seed": config.seed,
        "seconds": round(sum(float(m.training.get("seconds", 0.0)) for m in members), 1),
        "config": merged_config.to_dict(),
        "ensemble": {
            "members": config.ensemble,
            "seeds": [m.config.seed for m in members],
            "member_hidden_size": config.hidden_size,
            "member_embedding_size": config.embedding_size,
            f"member_{key}": [m.metrics[key] for m in members],
            "merged": "one network: the members' units side by side, block-diagonal "
            "weights, the mean of their logits (rnnserve_train.merge)",
        },
    }
    save_checkpoint(
        checkpoint_path,
        Checkpoint(
            model=merged,
            tokenizer=members[0].tokenizer,
            config=merged_config,
            step=config.max_steps,
            training=training,
            metrics=metrics,
        ),
    )
    plot = results[0].checkpoint.parent / PLOT_FILE  # the first member's curves
    if plot.is_file():
        shutil.copyfile(plot, checkpoint_path.parent / PLOT_FILE)
    log.info(
        "%s: %d members merged, %s %.4g (members: %s); checkpoint %s",
        config.name,
        config.ensemble,
        key,
        metrics[key],
        ", ".join(f"{m.metrics[key]:.4g}" for m in members),
        checkpoint_path,
    )
    return TrainResult(checkpoint=checkpoint_path, metrics=metrics)
