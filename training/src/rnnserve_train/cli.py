"""``rnnserve-train``: train a preset (with ``--key=value`` overrides) and export it, or
export an existing checkpoint.

    rnnserve-train [--preset=char-gru|tiny] [--key=value ...]
    rnnserve-train export --checkpoint=runs/char-gru/checkpoint.pt [--out=models] [--version=N]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rnnserve_train.config import PRESETS, ConfigError, field_types, make_config, parse_overrides

USAGE = __doc__ or ""
EXPORT_KEYS = ("checkpoint", "out", "version")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        print(f"presets: {', '.join(PRESETS)}")
        print(f"keys: {', '.join(f'{k} ({t.__name__})' for k, t in field_types().items())}")
        return 0
    try:
        if args and args[0] == "export":
            return _export(args[1:])
        return _train(args)
    except ConfigError as exc:
        print(f"rnnserve-train: {exc}", file=sys.stderr)
        return 2


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
    from rnnserve_server.modelpackage import load_package

    metrics = load_package(package).manifest.metrics
    print(f"package: {package}")
    print(f"test bits/char: {metrics['test_bits_per_char']:.4f}")
    return 0


def _export(args: list[str]) -> int:
    options: dict[str, str] = {}
    for arg in args:
        key, _, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key not in EXPORT_KEYS or not value:
            raise ConfigError(
                f"export: {arg!r} is not one of --checkpoint=PATH, --out=DIR, --version=N"
            )
        options[key] = value
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


if __name__ == "__main__":
    sys.exit(main())
