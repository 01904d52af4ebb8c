"""Check onnxruntime's CUDA execution provider on a GPU machine, in one short run.

    python -m bench.cuda_check [--models DIR | --package DIR] [--steps 200] [--serve]
                               [--speed MODEL] [--json OUT]
    python -m bench.cuda_check --build DIR      # (torch) a model of every cell, to carry

For every package (the highest version of each model in ``--models``, or the one
``--package``; without either, the benchmark model of bench/.cache):

* **graphs**: every graph of the manifest (step, head, sequence, encoder, condition) is
  loaded on the CPU provider and on the CUDA provider, fed the same random inputs at
  batch 1, 64 and 256, and the outputs compared; a second CUDA session with the CPU
  fallback disabled says whether every node of the graph runs on the GPU;
* **steps**: the step graph fed ``--steps`` tokens with the state fed back, on both
  providers: the largest difference of logits and states, whether greedy tokens agree, and
  the time per step of each;
* **serve** (``--serve``): two real servers over the repository, ``--provider cpu`` and
  ``--provider cuda``; through the Python client, every model's one-call answer (greedy
  generation of up to 100 tokens, classification, translation) must be the same on both,
  and for language models three StepMany messages over 64 sessions (batched runs: the
  same top-5 ids, probabilities within 1e-4).

* **speed** (``--speed MODEL``): the benchmark's load client (its own process) against a
  ``--provider cpu`` and a ``--provider cuda`` server over the repository, on that
  machine: lockstep steps at 1, 64 and 256 sessions and 256 sessions over one StepMany
  stream (figures, not checks).

It exits 1 if CUDA is unavailable or anything disagrees beyond 1e-4 (GPU kernels round
differently from the CPU's; greedy tokens must agree wherever the two best logits are
more than 1e-4 apart: closer ones are counted as ties). Needs onnxruntime-gpu with a CUDA
runtime that matches it; its CUDA and cuDNN may come from pip's nvidia-* packages.
``--build`` (on a machine with training installed) exports a small random model of
every cell in both sequence-graph forms, to carry to the GPU machine beside the zoo's
(``make models``), which add the other shapes.
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

from rnnserve_server.runtime import CUDA_OPTIONS, preload_cuda_libraries

BATCHES = (1, 64, 256)
TOLERANCE = 1e-4
SEQUENCE_LENGTH = 24
SERVERS = ("cpu", "cuda")  # the --serve comparison: the reference, then the one checked
Array = np.ndarray[Any, Any]


def _session(path: Path, provider: str, *, strict: bool = False) -> ort.InferenceSession:
    """A session on the CPU, or on CUDA (``strict``: no node may fall back to the CPU)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # as the server: onnxruntime's warnings are noise here
    providers: list[Any] = [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    if provider == "cpu":
        providers = providers[1:]
    elif strict:  # CUDA alone, no fallback: creating the session fails if a node needs the CPU
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = providers[:1]
    return ort.InferenceSession(str(path), options, providers=providers)


def _inputs(
    kind: str, manifest: dict[str, Any], batch: int, rng: np.random.Generator
) -> dict[str, Array]:
    """Random inputs of one graph, by the names the manifest gives it."""
    layers, hidden = manifest["layers"], manifest["hidden_size"]
    vocabulary = manifest["tokenizer"]["size"]
    values: dict[str, Array] = {
        "state": (rng.standard_normal((layers, batch, hidden)) * 0.5).astype(np.float32),
        "lengths": rng.integers(1, SEQUENCE_LENGTH + 1, size=batch, dtype=np.int64),
        "condition": rng.integers(0, max(1, len(manifest.get("conditions", []))), size=batch),
        "tokens": rng.integers(
            4,
            vocabulary,
            size=(batch, SEQUENCE_LENGTH) if kind in ("sequence", "encoder") else batch,
            dtype=np.int64,
        ),
    }
    return {name: values[name] for name in manifest["graphs"][kind]["inputs"]}


def check_graphs(package: Path, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    rng = np.random.default_rng(0)
    records, ok = [], True
    for kind, spec in manifest["graphs"].items():
        path = package / spec["file"]
        cpu, cuda = _session(path, "cpu"), _session(path, "cuda")
        try:
            _session(path, "cuda", strict=True)
            on_gpu, placement = True, "every node on CUDA"
        except Exception as exc:  # onnxruntime's own exception types
            on_gpu, placement = False, str(exc).splitlines()[0][:300]
        for batch in BATCHES:
            feeds = _inputs(kind, manifest, batch, rng)
            expected = cpu.run(None, feeds)
            got = cuda.run(None, feeds)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
            good = diff <= TOLERANCE
            ok = ok and good
            records.append(
                {
                    "graph": kind,
                    "batch": batch,
                    "max_abs_diff": diff,
                    "all_nodes_on_cuda": on_gpu,
                    "placement": placement,
                    "ok": good,
                }
            )
    return records, ok


def _run_steps(
    session: ort.InferenceSession, tokens: Array, state: Array
) -> tuple[list[Array], list[Array], float]:
    """Feed tokens[t] for every t, state fed back; logits and states per step, s/step."""
    logits_seen, states_seen = [], []
    started = time.perf_counter()
    for step_tokens in tokens:
        logits, state = session.run(None, {"tokens": step_tokens, "state": state})
        logits_seen.append(logits)
        states_seen.append(state)
    return logits_seen, states_seen, (time.perf_counter() - started) / len(tokens)


def _greedy_differences(cpu: list[Array], gpu: list[Array]) -> tuple[int, int]:
    """Rows whose greedy token differs: (ties, disagreements). A tie is a row where the
    two choices' CPU logits are within TOLERANCE, so rounding alone may pick either."""
    ties = disagreements = 0
    for a, b in zip(cpu, gpu, strict=True):
        for row in np.nonzero(a.argmax(axis=1) != b.argmax(axis=1))[0]:
            margin = float(a[row].max() - a[row, b[row].argmax()])
            if margin <= TOLERANCE:
                ties += 1
            else:
                disagreements += 1
    return ties, disagreements


def check_steps(
    package: Path, manifest: dict[str, Any], steps: int
) -> tuple[list[dict[str, Any]], bool]:
    layers, hidden = manifest["layers"], manifest["hidden_size"]
    vocabulary = manifest["tokenizer"]["size"]
    step_graph = package / manifest["graphs"]["step"]["file"]
    cpu, cuda = _session(step_graph, "cpu"), _session(step_graph, "cuda")
    rng = np.random.default_rng(0)
    records, ok = [], True
    for batch in BATCHES:
        tokens = rng.integers(4, vocabulary, size=(steps, batch), dtype=np.int64)
        state = np.zeros((layers, batch, hidden), dtype=np.float32)
        _run_steps(cuda, tokens[:5], state)  # warm-up: kernel selection, allocations
        cpu_logits, cpu_states, cpu_time = _run_steps(cpu, tokens, state)
        gpu_logits, gpu_states, gpu_time = _run_steps(cuda, tokens, state)
        logit_diff = max(
            float(np.abs(a - b).max()) for a, b in zip(cpu_logits, gpu_logits, strict=True)
        )
        state_diff = max(
            float(np.abs(a - b).max()) for a, b in zip(cpu_states, gpu_states, strict=True)
        )
        ties, disagreements = _greedy_differences(cpu_logits, gpu_logits)
        good = logit_diff <= TOLERANCE and state_diff <= TOLERANCE and not disagreements
        ok = ok and good
        records.append(
            {
                "batch": batch,
                "max_abs_diff_logits": logit_diff,
                "max_abs_diff_state": state_diff,
                "greedy_disagreements": disagreements,
                "greedy_ties": ties,
                "cpu_ms_per_step": cpu_time * 1e3,
                "cuda_ms_per_step": gpu_time * 1e3,
                "cuda_steps_per_s": batch / gpu_time,
                "ok": good,
            }
        )
    return records, ok


def _one_call(client: Any, info: Any) -> dict[str, Any]:
    """The model's one-call answer: what the server computes, comparable across servers."""
    if info.initial_state == "encoder":
        result = client.translate(info.name, [4, 5, 6, 7, 8], max_tokens=100)
        return {"tokens": [t.id for t in result.tokens]}
    if info.output != "vocabulary":
        result = client.classify(info.name, tokens=[4, 5, 6, 7, 8, 9], top_k=0)
        return {"probabilities": list(result.final)}
    options: dict[str, Any] = {"condition": info.conditions[0]} if info.conditions else {}
    with client.create_session(info.name, **options) as session:
        prompt = [4, 5, 6, 7, 8, 9, 10, 11]  # several tokens: the sequence graph, if any
        chunks = list(client.generate(session.id, prompt, max_tokens=100, temperature=0.0))
    return {"tokens": [t.id for chunk in chunks for t in chunk.tokens], **_step_many(client, info)}


def _step_many(client: Any, info: Any) -> dict[str, Any]:
    """Three StepMany messages over 64 new sessions (one batched run each): top-5 ids and
    probabilities of every step."""
    from rnnserve import StepInput, StepResult

    options: dict[str, Any] = {"condition": info.conditions[0]} if info.conditions else {}
    sessions = [client.create_session(info.name, **options) for _ in range(64)]
    size = info.vocabulary.size
    batches = [
        [StepInput(s.id, tokens=[4 + (i * 7 + j) % (size - 4)]) for i, s in enumerate(sessions)]
        for j in range(3)
    ]
    ids, probabilities = [], []
    try:
        for answer in client.step_many(batches):
            for outcome in answer:
                if not isinstance(outcome, StepResult):
                    raise RuntimeError(f"{info.name}: a StepMany step failed: {outcome}")
                ids.append([t.id for t in outcome.top])
                probabilities.append([t.probability for t in outcome.top])
    finally:
        for session in sessions:
            session.close()
    return {"step_many_ids": ids, "step_many_probabilities": probabilities}


def check_serve(models: Path) -> tuple[list[dict[str, Any]], bool]:
    """The same calls to a CPU server and a CUDA server over one repository."""
    from bench.procs import python_module, serving
    from rnnserve import Client

    answers: dict[str, dict[str, Any]] = {}
    for provider in SERVERS:
        command = python_module(
            "rnnserve_server", "--models", str(models), "--port", "0", "--provider", provider
        )
        with serving(f"server-{provider}", command) as server, Client(server.address) as client:
            answers[provider] = {i.name: _one_call(client, i) for i in client.list_models()}
    records, ok = [], True
    reference, checked = (answers[p] for p in SERVERS)
    for name, cpu in sorted(reference.items()):
        cuda = checked.get(name, {})
        if "probabilities" in cpu:
            diff = float(np.abs(np.subtract(cpu["probabilities"], cuda["probabilities"])).max())
            good, detail = diff <= TOLERANCE, {"max_abs_diff": diff}
        else:
            equal = cpu["tokens"] == cuda.get("tokens")
            detail = {"tokens": len(cpu["tokens"]), "equal": equal}
            good = equal
            if "step_many_ids" in cpu:
                same_ids = cpu["step_many_ids"] == cuda.get("step_many_ids")
                diff = float(
                    np.abs(
                        np.subtract(cpu["step_many_probabilities"], cuda["step_many_probabilities"])
                    ).max()
                )
                detail |= {
                    "step_many_steps": len(cpu["step_many_ids"]),
                    "step_many_same_ids": same_ids,
                    "step_many_max_abs_diff": diff,
                }
                good = good and same_ids and diff <= TOLERANCE
        ok = ok and good
        records.append({"model": name, **detail, "ok": good})
    return records, ok


SPEED_RUNS = (("lockstep", 1), ("lockstep", 64), ("lockstep", 256), ("multiplexed", 256))
SPEED_WARMUP_S, SPEED_DURATION_S = 1.0, 3.0


def measure_speed(models: Path, model: str) -> list[dict[str, Any]]:
    """Steps/s and round trips of the load client against a CPU and a CUDA server."""
    from bench.procs import python_module, run_worker, serving

    records = []
    for provider in SERVERS:
        command = python_module(
            "rnnserve_server", "--models", str(models), "--port", "0", "--provider", provider
        )
        with serving(f"server-{provider}", command) as server:
            for mode, sessions in SPEED_RUNS:
                result = run_worker(
                    "bench.load_client",
                    [
                        f"--address={server.address}",
                        f"--model={model}",
                        f"--mode={mode}",
                        f"--concurrency={sessions}",
                        f"--warmup={SPEED_WARMUP_S}",
                        f"--duration={SPEED_DURATION_S}",
                    ],
                    timeout_s=SPEED_WARMUP_S + SPEED_DURATION_S + 60,
                )
                records.append({"provider": provider, "mode": mode, "sessions": sessions, **result})
    return records


def _packages(models: Path) -> list[Path]:
    """The highest version of every model in a repository."""
    found = []
    for model in sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [
            v for v in model.iterdir() if v.name.isdigit() and (v / "manifest.json").exists()
        ]
        if versions:
            found.append(max(versions, key=lambda v: int(v.name)))
    return found


def check(
    packages: list[Path],
    steps: int,
    serve_models: Path | None,
    speed: tuple[Path, str] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "device": ort.get_device(),
        "packages": [],
    }
    preload_cuda_libraries()  # as the server does: CUDA and cuDNN from pip's nvidia-* packages
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        report["ok"] = False
        report["error"] = "CUDAExecutionProvider is not available (install onnxruntime-gpu)"
        return report
    ok = True
    for package in packages:
        manifest = json.loads((package / "manifest.json").read_text())
        graphs, graphs_ok = check_graphs(package, manifest)
        stepped, steps_ok = check_steps(package, manifest, steps)
        ok = ok and graphs_ok and steps_ok
        report["packages"].append(
            {
                "package": str(package),
                "cell": manifest.get("cell"),
                "sequence_form": manifest.get("graphs", {}).get("sequence", {}).get("form"),
                "graphs": graphs,
                "steps": stepped,
                "ok": graphs_ok and steps_ok,
            }
        )
    if serve_models is not None:
        report["serve"], serve_ok = check_serve(serve_models)
        ok = ok and serve_ok
    if speed is not None:
        report["speed"] = measure_speed(*speed)
    report["ok"] = ok
    return report


def build(directory: Path) -> list[Path]:
    """A small random model of every cell in both sequence-graph forms, exported through
    the parity gate (needs torch and the training package)."""
    import torch

    from rnnserve_server.tokenizer import Tokenizer
    from rnnserve_train.config import make_config
    from rnnserve_train.export import export_model
    from rnnserve_train.model import CELLS, RNNLanguageModel

    vocabulary = Tokenizer.build("char", ["abcdefghijklmnopqrstuvwxyz .,"])
    made: list[Path] = []
    for seed, (cell, form) in enumerate((c, f) for c in sorted(CELLS) for f in ("native", "scan")):
        torch.manual_seed(seed)
        name = f"{cell}-{form}"
        config = make_config("tiny", {"name": name, "cell": cell, "sequence_graph": form})
        model = RNNLanguageModel(cell, vocabulary.size, 64, 2)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.05 if cell == "rnn-relu" else 0.1)  # not chaotic
        made.append(export_model(model, vocabulary, config, training={}, metrics={}, out=directory))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda_check", description=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--package", type=Path, help="one model package directory")
    source.add_argument("--models", type=Path, help="a model repository (every model)")
    source.add_argument("--build", type=Path, help="export the check's models here and stop")
    parser.add_argument("--steps", type=int, default=200, help="steps per batch size")
    parser.add_argument("--serve", action="store_true", help="also compare CPU and CUDA servers")
    parser.add_argument(
        "--speed", metavar="MODEL", help="also time this model's serving on CPU and CUDA servers"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.build:
        for path in build(args.build):
            print(path)
        return 0
    if args.models:
        packages = _packages(args.models)
    elif args.package:
        packages = [args.package]
    else:
        from bench.package import ensure_package

        packages = [ensure_package()]
    serve = args.models if args.serve and args.models else None
    speed = (args.models, args.speed) if args.speed and args.models else None
    report = check(packages, args.steps, serve, speed)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
