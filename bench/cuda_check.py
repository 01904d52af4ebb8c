"""Check onnxruntime's CUDA execution provider on a GPU machine, in one short run.

    python -m bench.cuda_check [--package DIR] [--steps 200] [--json OUT]

Loads a model package's step graph twice, on the CPU provider and on the CUDA provider
(as rnnserve-server --provider cuda does), feeds both the same tokens with the state fed
back for ``--steps`` steps at batch 1, 64 and 256, and reports the largest difference of
logits and states, whether greedy tokens agree, and the time per step on each provider.
It exits 1 if CUDA is unavailable or the outputs disagree beyond 1e-4 (GPU kernels round
differently from the CPU's; greedy tokens must still agree).

Without --package it builds the benchmark model (bench/.cache), which needs the training
package; on a GPU machine with only the server installed, pass a package directory.
Needs onnxruntime-gpu with a CUDA runtime that matches it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BATCHES = (1, 64, 256)
TOLERANCE = 1e-4


def _session(path: Path, provider: str) -> ort.InferenceSession:
    providers: list[Any] = (
        [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        if provider == "cuda"
        else ["CPUExecutionProvider"]
    )
    return ort.InferenceSession(str(path), providers=providers)


def _run(
    session: ort.InferenceSession, tokens: np.ndarray[Any, Any], state: np.ndarray[Any, Any]
) -> tuple[list[np.ndarray[Any, Any]], list[np.ndarray[Any, Any]], float]:
    """Feed tokens[t] for every t, state fed back; logits and states per step, s/step."""
    logits_seen, states_seen = [], []
    started = time.perf_counter()
    for step_tokens in tokens:
        logits, state = session.run(None, {"tokens": step_tokens, "state": state})
        logits_seen.append(logits)
        states_seen.append(state)
    return logits_seen, states_seen, (time.perf_counter() - started) / len(tokens)


def check(package: Path, steps: int) -> dict[str, Any]:
    manifest = json.loads((package / "manifest.json").read_text())
    layers, hidden = manifest["layers"], manifest["hidden_size"]
    vocabulary = manifest["tokenizer"]["size"]
    step_graph = package / manifest["graphs"]["step"]["file"]
    report: dict[str, Any] = {
        "package": str(package),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "device": ort.get_device(),
        "batches": [],
    }
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        report["ok"] = False
        report["error"] = "CUDAExecutionProvider is not available (install onnxruntime-gpu)"
        return report
    cpu, cuda = _session(step_graph, "cpu"), _session(step_graph, "cuda")
    report["cuda_session_providers"] = cuda.get_providers()
    rng = np.random.default_rng(0)
    ok = True
    for batch in BATCHES:
        tokens = rng.integers(4, vocabulary, size=(steps, batch), dtype=np.int64)
        state = np.zeros((layers, batch, hidden), dtype=np.float32)
        _run(cuda, tokens[:5], state)  # warm-up: kernel selection, allocations
        cpu_logits, cpu_states, cpu_time = _run(cpu, tokens, state)
        gpu_logits, gpu_states, gpu_time = _run(cuda, tokens, state)
        logit_diff = max(
            float(np.abs(a - b).max()) for a, b in zip(cpu_logits, gpu_logits, strict=True)
        )
        state_diff = max(
            float(np.abs(a - b).max()) for a, b in zip(cpu_states, gpu_states, strict=True)
        )
        greedy_equal = all(
            (a.argmax(axis=1) == b.argmax(axis=1)).all()
            for a, b in zip(cpu_logits, gpu_logits, strict=True)
        )
        good = logit_diff <= TOLERANCE and state_diff <= TOLERANCE and greedy_equal
        ok = ok and good
        report["batches"].append(
            {
                "batch": batch,
                "max_abs_diff_logits": logit_diff,
                "max_abs_diff_state": state_diff,
                "greedy_equal": bool(greedy_equal),
                "cpu_ms_per_step": cpu_time * 1e3,
                "cuda_ms_per_step": gpu_time * 1e3,
                "cuda_steps_per_s": batch / gpu_time,
                "ok": good,
            }
        )
    report["ok"] = ok
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda_check", description=__doc__)
    parser.add_argument("--package", type=Path, help="a model package directory")
    parser.add_argument("--steps", type=int, default=200, help="steps per batch size")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    package = args.package
    if package is None:
        from bench.package import ensure_package

        package = ensure_package()
    report = check(package, args.steps)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
