"""Export a trained model as a model package ``<out>/<name>/<version>/``.

Everything is written to a temporary directory beside the target and renamed into place
only after the parity gate passes (numpy reference == torch == onnxruntime) and the
package loads with the server's own ``load_package``; a failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from rnnserve_server.modelpackage import (
    InitialStateSpec,
    Manifest,
    ModelPackage,
    OutputSpec,
    TokenizerSpec,
    load_package,
    standard_graph,
)
from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.checkpoint import load_checkpoint
from rnnserve_train.config import TrainConfig
from rnnserve_train.generate import greedy_tokens, sample_tokens
from rnnserve_train.model import RNNLanguageModel
from rnnserve_train.parity import ParityReport, check_parity

log = logging.getLogger(__name__)

OPSET = 17
BATCH_AXIS = "batch"
VOCAB_FILE, WEIGHTS_FILE, CARD_FILE = "vocab.json", "weights.npz", "MODEL_CARD.md"
STEP_FILE, HEAD_FILE = "step.onnx", "head.onnx"
INITIAL_TOKEN = "bos"  # training documents start with it


class ExportError(RuntimeError):
    """The graphs do not have the shapes the package format needs."""


class _StepGraph(nn.Module):
    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.step(tokens, state)


class _HeadGraph(nn.Module):
    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: Tensor) -> Tensor:
        return self.model.head(state)


def next_free_version(root: Path) -> int:
    versions = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def export_graphs(model: RNNLanguageModel, directory: Path) -> None:
    """step.onnx and head.onnx with a dynamic batch axis and every other dim fixed."""
    model = model.cpu().eval()
    batch = 2  # not 1, so the tracer cannot fold the batch dimension into a constant
    tokens = torch.zeros(batch, dtype=torch.int64)
    state = model.zero_state(batch)
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (see docs/FACTS.md); its deprecation notice is not news.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        torch.onnx.export(
            _StepGraph(model),
            (tokens, state),
            str(directory / STEP_FILE),
            input_names=["tokens", "state"],
            output_names=["logits", "state_out"],
            dynamic_axes={
                "tokens": {0: BATCH_AXIS},
                "state": {1: BATCH_AXIS},
                "logits": {0: BATCH_AXIS},
                "state_out": {1: BATCH_AXIS},
            },
            opset_version=OPSET,
            dynamo=False,
        )
        torch.onnx.export(
            _HeadGraph(model),
            (state,),
            str(directory / HEAD_FILE),
            input_names=["state"],
            output_names=["logits"],
            dynamic_axes={"state": {1: BATCH_AXIS}, "logits": {0: BATCH_AXIS}},
            opset_version=OPSET,
            dynamo=False,
        )
    L, H, K = model.layers, model.hidden_size, model.vocab_size
    expected: dict[str, tuple[int | str, ...]] = {
        "tokens": (BATCH_AXIS,),
        "state": (L, BATCH_AXIS, H),
        "state_out": (L, BATCH_AXIS, H),
        "logits": (BATCH_AXIS, K),
    }
    for file in (STEP_FILE, HEAD_FILE):
        check_graph_shapes(directory / file, expected)


def check_graph_shapes(path: Path, expected: Mapping[str, tuple[int | str, ...]]) -> None:
    """Each input/output has a symbolic batch dim and static ints elsewhere, as expected."""
    graph = onnx.load(str(path)).graph
    for value in [*graph.input, *graph.output]:
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim
        )
        if dims != expected[value.name]:
            raise ExportError(
                f"{path.name}: {value.name} has shape {list(dims)}, "
                f"expected {list(expected[value.name])}"
            )


def write_model_card(
    path: Path,
    *,
    manifest: Manifest,
    tokenizer: Tokenizer,
    model: RNNLanguageModel,
    config: TrainConfig,
    parity: ParityReport,
) -> None:
    training, metrics = manifest.training, manifest.metrics
    greedy = tokenizer.decode(greedy_tokens(model, tokenizer, [], config.sample_chars))
    samples = [
        tokenizer.decode(sample_tokens(model, tokenizer, [], config.sample_chars, seed=seed))
        for seed in (1, 2)
    ]
    split_docs = training.get("split_documents", {})
    split_chars = training.get("split_characters", {})
    lines = [
        f"# {manifest.name} v{manifest.version}",
        "",
        manifest.description + ".",
        "",
        "## Model",
        f"- cell `{manifest.cell}` (docs/MODELS.md), {manifest.layers} layer(s) of "
        f"{manifest.hidden_size} units, {sum(p.numel() for p in model.parameters()):,} parameters",
        f"- character vocabulary of {tokenizer.size} tokens (special: "
        f"{', '.join(f'{r}={i}' for r, i in tokenizer.special_tokens.items())})",
        f"- a session starts from the state after `{INITIAL_TOKEN}`; each step returns the "
        "next-character distribution",
        "",
        "## Data",
        f"- {training.get('data')}: {training.get('data_origin')}",
        f"- files: {', '.join(training.get('data_files', []))}",
        f"- licence: {training.get('data_licence')}",
        f"- split by {training.get('split')}: documents {split_docs}, "
        f"predicted characters (incl. eos) {split_chars}",
        "",
        "## Training",
        f"- {training.get('steps')} steps of truncated BPTT (chunks of {config.seq_len}, "
        f"batch {config.batch_size}), AdamW lr {config.lr:g} → {config.min_lr:g}, "
        f"clip {config.grad_clip:g}, seed {config.seed}",
        f"- {training.get('seconds')} s on {training.get('machine')} "
        f"(torch {training.get('torch')})",
        "",
        "## Metrics (bits per character, held-out characters including eos)",
        *(f"- {k}: {v:.4f}" for k, v in metrics.items()),
        "",
        "## Parity (checked at export)",
        f"- numpy reference vs torch vs onnxruntime, {parity.steps} greedy steps, batch "
        f"{parity.batch}: max abs diff "
        + ", ".join(f"{k} {v:.2g}" for k, v in parity.max_abs_diff.items()),
        "",
        "## Samples",
        "Greedy:",
        "```",
        greedy,
        "```",
        "Sampled (temperature 0.8, seeds 1 and 2):",
        *(line for sample in samples for line in ("```", sample, "```")),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def export_model(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: TrainConfig,
    *,
    training: Mapping[str, Any],
    metrics: Mapping[str, float],
    out: Path | None = None,
    version: int = 0,
) -> Path:
    """Write and check the package; return its path ``<out>/<name>/<version>``."""
    model = model.cpu().eval()
    root = Path(out if out is not None else config.out) / config.name
    version = version or config.version or next_free_version(root)
    final = root / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; pick another --version")
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    # Staged as <root>/.partial-*/<name>/<version>, so load_package can check it before
    # the rename that publishes it.
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    staging = scratch / config.name / str(version)
    try:
        staging.mkdir(parents=True)
        tokenizer.save(staging / VOCAB_FILE)
        np.savez(staging / WEIGHTS_FILE, **model.to_seed_weights())  # type: ignore[arg-type]
        export_graphs(model, staging)
        with np.load(staging / WEIGHTS_FILE) as archive:
            weights = {k: archive[k] for k in archive.files}
        parity = check_parity(
            model,
            weights,
            staging / STEP_FILE,
            staging / HEAD_FILE,
            tokenizer.special_tokens[INITIAL_TOKEN],
        )
        manifest = Manifest(
            name=config.name,
            version=version,
            description=config.description,
            shape="many-to-many",
            cell=config.cell,
            layers=model.layers,
            hidden_size=model.hidden_size,
            tokenizer=TokenizerSpec(
                kind=tokenizer.kind,
                vocabulary_file=VOCAB_FILE,
                size=tokenizer.size,
                special_tokens=dict(tokenizer.special_tokens),
                normalize=tokenizer.normalize,
                lowercase=tokenizer.lowercase,
            ),
            output=OutputSpec(kind="vocabulary"),
            graphs={
                "step": standard_graph("step", STEP_FILE),
                "head": standard_graph("head", HEAD_FILE),
            },
            initial_state=InitialStateSpec(kind="after_token", token=INITIAL_TOKEN),
            weights_file=WEIGHTS_FILE,
            card_file=CARD_FILE,
            training={**training, "parity": parity.summary()},
            metrics=dict(metrics),
        )
        manifest.write(staging)
        write_model_card(
            staging / CARD_FILE,
            manifest=manifest,
            tokenizer=tokenizer,
            model=model,
            config=config,
            parity=parity,
        )
        load_package(staging)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    shutil.rmtree(scratch, ignore_errors=True)  # the now empty <name> directory
    package: ModelPackage = load_package(final)
    log.info("exported %s (parity max abs diff %s)", final, parity.max_abs_diff)
    return package.path


def export_checkpoint(checkpoint: Path, out: Path | None = None, version: int = 0) -> Path:
    """Rebuild the model from ``checkpoint`` alone and export it."""
    loaded = load_checkpoint(checkpoint)
    return export_model(
        loaded.model,
        loaded.tokenizer,
        loaded.config,
        training=loaded.training,
        metrics=loaded.metrics,
        out=out,
        version=version,
    )
