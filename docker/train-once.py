#!/usr/bin/env python
"""Entry point of the trainer image: `rnnserve-train`, unless the model is already there.

The preset comes from RNNSERVE_TRAIN_PRESET (default char-gru) or a `--preset=` argument; the
model repository from RNNSERVE_TRAIN_OUT (default /models), runs (checkpoints, metrics, loss
plot) from RNNSERVE_TRAIN_RUNS (default /runs); other `--key=value` arguments are passed on.
If the repository already holds a version of the model the run would write (the preset's
`name`, or `--name=`), nothing is trained, so `docker-compose up` trains once and later runs
reuse the volume, as `make models` does. RNNSERVE_TRAIN_FORCE=1 trains a new version anyway.
"""

import os
import sys
from pathlib import Path

from rnnserve_server.modelpackage import MANIFEST_FILE
from rnnserve_train.config import ConfigError, make_config, parse_overrides


def train_argv(args: list[str]) -> list[str]:
    """The `rnnserve-train` arguments: the environment's defaults, then `args`."""
    preset = os.environ.get("RNNSERVE_TRAIN_PRESET", "char-gru")
    defaults = [
        f"--out={os.environ.get('RNNSERVE_TRAIN_OUT', '/models')}",
        f"--runs={os.environ.get('RNNSERVE_TRAIN_RUNS', '/runs')}",
    ]
    if not sys.stderr.isatty():
        defaults.append("--progress=false")  # progress bars make unreadable container logs
    overrides = [a for a in args if not a.startswith("--preset=")]
    preset = next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("--preset=")), preset)
    return [f"--preset={preset}", *defaults, *overrides]


def existing_version(argv: list[str]) -> Path | None:
    """A package of the model this run would train, if the repository has one."""
    preset = argv[0].split("=", 1)[1]
    try:
        config = make_config(preset, parse_overrides(argv[1:]))
    except ConfigError:
        return None  # rnnserve-train reports it
    return next(iter(sorted((Path(config.out) / config.name).glob(f"*/{MANIFEST_FILE}"))), None)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["export"] or "-h" in args or "--help" in args:
        os.execvp("rnnserve-train", ["rnnserve-train", *args])
    argv = train_argv(args)
    found = existing_version(argv)
    if found is not None and os.environ.get("RNNSERVE_TRAIN_FORCE", "0") != "1":
        print(
            f"rnnserve-trainer: {found.parent} exists, not training (RNNSERVE_TRAIN_FORCE=1 "
            "trains a new version)",
            flush=True,
        )
        return
    print(f"rnnserve-trainer: rnnserve-train {' '.join(argv)}", flush=True)
    os.execvp("rnnserve-train", ["rnnserve-train", *argv])


if __name__ == "__main__":
    main()
