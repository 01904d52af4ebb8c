"""``rnnserve-train``: train a preset (with ``--key=value`` overrides) and export it,
export an existing checkpoint, train the demo zoo, or compute the baselines.

    rnnserve-train [--preset=NAME] [--key=value ...]
    rnnserve-train export --checkpoint=runs/char-gru/checkpoint.pt [--out=models] [--version=N]
    rnnserve-train zoo [--budget=quick|full] [--out=models] [--runs=runs] [--only=a,b] [--jobs=2]
    rnnserve-train baselines [--only=a,b]
    rnnserve-train seed-weights --package=models/char-gru/1 [--out=weights.npz]
    rnnserve-train package --module=file.py:factory --checkpoint=model.pt --name=NAME
        [--out=models] [--version=1] (--vocabulary=vocab.json | --input-size=N)
        [--labels=a,b,c] [--output=vocabulary|labels|sigmoid|regression]
        [--tokenizer=word|char] [--start-token=bos] [--description=...]
    torchrun --standalone --nproc_per_node=2 -m rnnserve_train.cli --preset=NAME ...  (DDP)
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rnnserve_train.config import (
    BUDGETS,
    PRESETS,
    ConfigError,
    TrainConfig,
    make_config,
    parse_overrides,
)

USAGE = __doc__ or ""
EXPORT_KEYS = ("checkpoint", "out", "version")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        print(_help())
        return 0
    try:
        if args and args[0] == "export":
            return _export(args[1:])
        if args and args[0] == "zoo":
            return _zoo(args[1:])
        if args and args[0] == "baselines":
            return _baselines(args[1:])
        if args and args[0] == "seed-weights":
            return _seed_weights(args[1:])
        if args and args[0] == "package":
            return _package(args[1:])
        return _train(args)
    except ConfigError as exc:
        print(f"rnnserve-train: {exc}", file=sys.stderr)
        return 2


def _help() -> str:
    """The presets, then every key with its default and what it means."""
    lines = ["presets (--preset=NAME; each sets some of the keys below):"]
    for name, values in PRESETS.items():
        lines.append(f"  {name:16} {values.get('description', TrainConfig.description)}")
    lines.append("")
    lines.append("keys (--key=value; the default without a preset, and what it is):")
    width = 30
    for item in dataclasses.fields(TrainConfig):
        default = item.default
        shown = str(default).lower() if isinstance(default, bool) else shlex.quote(str(default))
        setting = f"--{item.name}={shown}"
        if len(setting) > width:  # the meaning on a line of its own
            lines += [f"  {setting}", f"  {'':{width}} {item.metadata['help']}"]
        else:
            lines.append(f"  {setting:{width}} {item.metadata['help']}")
    return "\n".join(lines)


def _train(args: list[str]) -> int:
    preset = "char-gru"
    rest = []
    for arg in args:
        if arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    config = make_config(preset, parse_overrides(rest))

    from rnnserve_train.api import train_and_export  # late: torch loads only when needed

    package = train_and_export(config)
    if package is None:  # a torchrun rank other than 0, or --export=false
        return 0
    from rnnserve_server.modelpackage import load_package

    metrics = load_package(package).manifest.metrics
    print(f"package: {package}")
    for key, value in metrics.items():
        if key.startswith("test_"):
            print(f"{key}: {value:.4f}")
    return 0


def _options(command: str, args: list[str], keys: Sequence[str]) -> dict[str, str]:
    """``--key=value`` options of a subcommand; unknown keys are a ConfigError."""
    options: dict[str, str] = {}
    for arg in args:
        key, _, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key not in keys or not value:
            raise ConfigError(
                f"{command}: {arg!r} is not one of {', '.join(f'--{k}=...' for k in keys)}"
            )
        options[key] = value
    return options


def _zoo(args: list[str]) -> int:
    from rnnserve_train.zoo import ZOO, train_zoo

    options = _options("zoo", args, ("out", "runs", "only", "jobs", "budget"))
    budget = options.get("budget", "quick")
    if budget not in BUDGETS:
        raise ConfigError(f"zoo: --budget={budget}: expected one of {', '.join(BUDGETS)}")
    only = [n for n in options.get("only", "").split(",") if n]
    unknown = [n for n in only if n not in ZOO]
    if unknown:
        raise ConfigError(f"zoo: --only names {unknown} are not in the zoo ({', '.join(ZOO)})")
    try:
        jobs = int(options.get("jobs", "2"))
    except ValueError:
        raise ConfigError(f"zoo: --jobs={options['jobs']}: expected int") from None
    out, runs = Path(options.get("out", "models")), Path(options.get("runs", "runs"))
    results = train_zoo(out, runs, only, jobs, budget=budget)
    for run in results:
        print(f"{run.name:16} {run.status} ({run.seconds:.0f} s)")
    return 0 if all(not r.status.startswith("failed") for r in results) else 1


def _baselines(args: list[str]) -> int:
    from rnnserve_train.baselines import BASELINES, compute

    options = _options("baselines", args, ("only",))
    only = [n for n in options.get("only", "").split(",") if n] or list(BASELINES)
    unknown = [n for n in only if n not in BASELINES]
    if unknown:
        raise ConfigError(f"baselines: {unknown} have none; known: {', '.join(BASELINES)}")
    results = compute(only)
    for name in only:
        shown = {
            k: v for k, v in results[name].items() if k.startswith("test_") and isinstance(v, float)
        }
        print(f"{name}: {results[name]['baseline']}: {shown}")
    return 0


def _seed_weights(args: list[str]) -> int:
    """Write a package's weights in the notation of docs/MODELS.md as an .npz."""
    options = _options("seed-weights", args, ("package", "out"))
    if "package" not in options:
        raise ConfigError("seed-weights: --package=PATH is required")
    import numpy as np

    from rnnserve_train.export import package_seed_weights

    try:
        weights = package_seed_weights(Path(options["package"]))
    except ValueError as exc:  # PackageError too: a package that does not load
        print(f"rnnserve-train: {exc}", file=sys.stderr)
        return 1
    out = Path(options.get("out", "weights.npz"))
    np.savez(out, **weights)  # type: ignore[arg-type]
    print(f"{out}: {', '.join(f'{k} {list(v.shape)}' for k, v in weights.items())}")
    return 0


def _export(args: list[str]) -> int:
    options = _options("export", args, EXPORT_KEYS)
    if "checkpoint" not in options:
        raise ConfigError("export: --checkpoint=PATH is required")
    try:
        version = int(options.get("version", "0"))
    except ValueError:
        raise ConfigError(f"export: --version={options['version']}: expected int") from None

    from rnnserve_train.export import export_checkpoint

    out = Path(options["out"]) if "out" in options else None
    package = export_checkpoint(Path(options["checkpoint"]), out, version)
    print(f"package: {package}")
    return 0


PACKAGE_KEYS = (
    "module", "checkpoint", "name", "out", "version", "vocabulary", "input-size", "labels",
    "output", "tokenizer", "start-token", "description",
)  # fmt: skip


def _package(args: list[str]) -> int:
    """A module of yours (``factory()`` in a file, weights in a checkpoint) as a package."""
    options = _options("package", args, PACKAGE_KEYS)
    for required in ("module", "checkpoint", "name"):
        if required not in options:
            raise ConfigError(f"package: --{required}=... is required")
    file, _, factory = options["module"].rpartition(":")
    if not file or not factory:
        raise ConfigError(f"package: --module={options['module']}: expected FILE.py:FACTORY")
    try:
        version = int(options.get("version", "1"))
        input_size = int(options["input-size"]) if "input-size" in options else None
    except ValueError as exc:
        raise ConfigError(f"package: {exc}") from None
    import importlib.util

    import torch

    from rnnserve_train.package import package_torch

    spec = importlib.util.spec_from_file_location("rnnserve_user_module", file)
    if spec is None or spec.loader is None or not Path(file).is_file():
        raise ConfigError(f"package: --module: {file} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = getattr(module, factory, None)
    if not callable(model):
        raise ConfigError(f"package: {file} has no function {factory}()")
    network = model()
    state = torch.load(options["checkpoint"], map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    vocabulary = None
    if "vocabulary" in options:
        vocabulary = _read_vocabulary(Path(options["vocabulary"]))
    path = package_torch(
        network,
        Path(options.get("out", "models")),
        name=options["name"],
        version=version,
        vocabulary=vocabulary,
        input_size=input_size,
        labels=options["labels"].split(",") if "labels" in options else None,
        output=options.get("output"),
        tokenizer=options.get("tokenizer", "word"),
        start_token=options.get("start-token"),
        description=options.get("description", ""),
    )
    print(f"package: {path}")
    return 0


def _read_vocabulary(path: Path) -> list[str]:
    """A vocabulary file: JSON (a list of tokens, or {"tokens": [...]}) or one token a line."""
    import json

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        tokens = data.get("tokens") if isinstance(data, dict) else data
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConfigError(f"package: {path}: expected a list of tokens or {{'tokens': [...]}}")
        return tokens
    return text.splitlines()


if __name__ == "__main__":
    sys.exit(main())
