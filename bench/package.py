"""The benchmark's model package: a course-form GRU, 1 layer of 256 units, a character
vocabulary of 100 tokens, randomly initialised (only speed is measured).

Built once with training's own exporter (so it passes the same parity gate and the
server's ``load_package``) and cached under ``bench/.cache/models/``. torch is imported
only when the package has to be built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
SEED = 1234


@dataclass(frozen=True)
class ModelSpec:
    name: str = "bench-gru"
    cell: str = "gru"
    layers: int = 1
    hidden_size: int = 256
    words: int = 0  # a word vocabulary of this many tokens (synthetic words); 0: 100 chars

    @property
    def state_bytes(self) -> int:
        return self.layers * self.hidden_size * 4


# Printable ASCII and the newline: 96 characters, plus pad/unk/bos/eos = 100 tokens.
VOCABULARY_TEXT = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n"


# The modules whose code decides what a package holds (e.g. whether it has a sequence
# graph): the cached package is rebuilt when any of them changes.
EXPORTER_MODULES = (
    "rnnserve_train.export",
    "rnnserve_train.graphs",
    "rnnserve_train.model",
    "rnnserve_train.sharing",
    "rnnserve_server.modelpackage",
)


def package_path(cache: Path, spec: ModelSpec) -> Path:
    """``<cache>/models/<name>/1``: the repository to serve is ``<cache>/models``."""
    return cache / "models" / spec.name / "1"


def exporter_fingerprint(spec: ModelSpec) -> str:
    digest = hashlib.sha256(repr(spec).encode())
    for module in EXPORTER_MODULES:
        found = importlib.util.find_spec(module)
        if found is not None and found.origin:
            digest.update(Path(found.origin).read_bytes())
    return digest.hexdigest()


def ensure_package(cache: Path = DEFAULT_CACHE, spec: ModelSpec = ModelSpec()) -> Path:
    """The cached package, built first if it is missing or the exporter has changed."""
    path = package_path(cache, spec)
    stamp = cache / f"{spec.name}.fingerprint"
    fingerprint = exporter_fingerprint(spec)
    fresh = stamp.is_file() and stamp.read_text(encoding="utf-8") == fingerprint
    if fresh and (path / "manifest.json").is_file():
        return path
    shutil.rmtree(path.parent, ignore_errors=True)
    log.info("building the benchmark model package %s", path)
    import torch

    from rnnserve_server.tokenizer import Tokenizer
    from rnnserve_train.api import export_model, make_config
    from rnnserve_train.model import RNNLanguageModel

    torch.manual_seed(SEED)
    tokenizer = (
        Tokenizer.build("word", [" ".join(f"w{i}" for i in range(spec.words))], max_size=spec.words)
        if spec.words
        else Tokenizer.build("char", [VOCABULARY_TEXT])
    )
    config = make_config(
        "word-gru" if spec.words else "char-gru",
        {
            "name": spec.name,
            "description": "Randomly initialised GRU for speed benchmarks (not trained)",
            "cell": spec.cell,
            "layers": spec.layers,
            "hidden_size": spec.hidden_size,
            "sample_chars": 20,
            "progress": False,
            # A short parity gate for word models: the reference keeps every step's output
            # (1M words x 200 steps went past 15 GB of memory); 16 greedy steps still
            # check the graphs against the model.
            **({"vocab_size": spec.words, "parity_steps": 16} if spec.words else {}),
        },
    )
    model = RNNLanguageModel(spec.cell, tokenizer.size, spec.hidden_size, spec.layers)
    built = export_model(
        model,
        tokenizer,
        config,
        training={"data": f"none (random initialisation, seed {SEED})", "steps": 0},
        metrics={},
        out=cache / "models",
        version=1,
    )
    stamp.write_text(fingerprint, encoding="utf-8")
    return built
