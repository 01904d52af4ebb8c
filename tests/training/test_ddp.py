"""Data-parallel training with PyTorch's own DDP: ``torchrun --nproc_per_node=2`` on the
CPU (gloo) follows the loss trajectory of one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = [
    "--preset=tiny",
    "--max_documents=200",
    "--max_steps=6",
    "--eval_every=6",
    "--batch_size=8",
    "--export=false",
    "--progress=false",
]


def step_losses(runs: Path) -> list[float]:
    lines = (runs / "char-gru-tiny" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step_bits"] for line in lines if "step_bits" in line]


def run(command: list[str], runs: Path) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, *ARGS, f"--runs={runs}"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return step_losses(runs)


@pytest.mark.slow
def test_two_processes_follow_the_single_process_trajectory(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "rnnserve_train.cli"]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "rnnserve_train.cli",
    ]
    single = run(cli, tmp_path / "one")
    parallel = run(torchrun, tmp_path / "two")
    assert len(single) == len(parallel) == 6
    assert single[0] > single[-1]  # it learns
    for one, two in zip(single, parallel, strict=True):
        assert abs(one - two) < 1e-4, (single, parallel)
    checkpoint = tmp_path / "two" / "char-gru-tiny" / "checkpoint.pt"
    assert checkpoint.is_file()  # written by rank 0
