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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnserve_server.manifest import (
    InitialStateSpec,
    Manifest,
    OutputSpec,
    TokenizerSpec,
    standard_graph,
)
from rnnserve_server.modelpackage import load_package
from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train import graphs, sharing
from rnnserve_train.baselines import baseline_lines
from rnnserve_train.checkpoint import load_checkpoint
from rnnserve_train.config import TrainConfig
from rnnserve_train.metrics import PLOT_FILE
from rnnserve_train.model import RNNLanguageModel
from rnnserve_train.parity import ParityReport, Start, check_parity
from rnnserve_train.tasks import Task, language_model_samples, make_task

log = logging.getLogger(__name__)

VOCAB_FILE, WEIGHTS_FILE, CARD_FILE = "vocab.json", "weights.bin", "MODEL_CARD.md"
GRAPH_FILES = {
    "step": "step.onnx",
    "head": "head.onnx",
    "sequence": "sequence.onnx",
    "encoder": "encoder.onnx",
    "condition": "condition.onnx",
}
STEP_FILE, HEAD_FILE = GRAPH_FILES["step"], GRAPH_FILES["head"]
INITIAL_TOKEN = "bos"  # training documents and examples start with it


class ExportError(RuntimeError):
    """The graphs do not have the shapes the package format needs."""


@dataclass(frozen=True)
class Layout:
    """What a package declares besides its graphs: the shape, the output head, how a
    session starts, the conditions, and the lines of the card that show the model."""

    shape: str
    output: OutputSpec
    initial_state: InitialStateSpec
    conditions: tuple[str, ...] = ()
    card_sections: tuple[str, ...] = ()
    # Pictures the task draws into the package: (file, caption)
    figures: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        task: Task | None,
        model: RNNLanguageModel,
        tokenizer: Tokenizer,
        config: TrainConfig,
        directory: Path,
    ) -> Layout:
        """The task's layout, its figures drawn into ``directory``; without a task, a
        language model's (vocabulary, bos)."""
        if task is None:
            return cls(
                shape="many-to-many",
                output=OutputSpec(kind="vocabulary"),
                initial_state=InitialStateSpec(kind="after_token", token=INITIAL_TOKEN),
                card_sections=tuple(language_model_samples(model, tokenizer, config.sample_chars)),
            )
        return cls(
            shape=task.shape,
            output=task.output_spec(),
            initial_state=task.initial_state(),
            conditions=task.conditions(),
            card_sections=tuple(task.card_sections(model)),
            figures=tuple(task.figures(model, directory)),
        )


def next_free_version(root: Path) -> int:
    versions = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def export_graphs(model: RNNLanguageModel, directory: Path, sequence_form: str) -> dict[str, Path]:
    """Every graph the model needs, each checked for its input/output shapes."""
    model = model.cpu().eval()
    paths = {kind: directory / GRAPH_FILES[kind] for kind in ("step", "head", "sequence")}
    graphs.export_step(model, paths["step"])
    graphs.export_head(model, paths["head"])
    graphs.export_sequence(model, paths["sequence"], encoder=False, form=sequence_form)
    if model.encoder is not None:
        paths["encoder"] = directory / GRAPH_FILES["encoder"]
        graphs.export_sequence(model, paths["encoder"], encoder=True, form=sequence_form)
    if model.condition_table is not None:
        paths["condition"] = directory / GRAPH_FILES["condition"]
        graphs.export_condition(model, paths["condition"])
    for kind, path in paths.items():
        try:
            graphs.check_graph_shapes(path, graphs.expected_for(kind, model))
        except graphs.GraphShapeError as exc:
            raise ExportError(str(exc)) from None
    return paths


def write_model_card(
    path: Path,
    *,
    manifest: Manifest,
    tokenizer: Tokenizer,
    model: RNNLanguageModel,
    config: TrainConfig,
    parity: ParityReport,
    layout: Layout,
    figures: Sequence[tuple[str, str]] = (),
) -> None:
    training, metrics = manifest.training, manifest.metrics
    start = manifest.initial_state
    starts = {
        "zeros": "a session starts from the zero state",
        "after_token": f"a session starts from the state after `{start.token}`",
        "encoder": "a session starts from the encoder's state for its source, "
        f"then `{start.token}`",
        "condition": f"a session starts from its condition's state, then `{start.token}`",
    }
    outputs = {
        "vocabulary": "each step returns the next-token distribution",
        "labels": f"each step returns the distribution over {len(manifest.output.labels)} labels",
        "sigmoid": f"each step returns {len(manifest.output.labels)} independent probabilities",
    }
    units = "characters" if tokenizer.kind == "char" else "words"
    split = {k: v for k, v in training.items() if k.startswith("split_") and k != "split_sizes"}
    lines = [
        f"# {manifest.name} v{manifest.version}",
        "",
        manifest.description + ".",
        "",
        "## Model",
        f"- shape `{manifest.shape}`, cell `{manifest.cell}` (docs/MODELS.md), "
        f"{manifest.layers} layer(s) of {manifest.hidden_size} units, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
        + (", with an encoder of the same form" if model.encoder is not None else "")
        + (
            f"; tokens read through an embedding of {config.embedding_size}"
            + (", which is also the output layer (W_ya = E)" if config.tie_embeddings else "")
            if config.embedding_size
            else ""
        ),
        f"- {tokenizer.kind} vocabulary of {tokenizer.size} {units} (special: "
        f"{', '.join(f'{r}={i}' for r, i in tokenizer.special_tokens.items())})",
        f"- {starts[start.kind]}; {outputs[manifest.output.kind]}",
        *([f"- conditions: {', '.join(manifest.conditions)}"] if manifest.conditions else []),
        f"- graphs: {', '.join(f'`{g.file}`' for g in manifest.graphs.values())} "
        f"(sequence graphs: {config.sequence_graph} form)",
        "",
        "## Data",
        f"- {training.get('data')}: {training.get('data_origin')}",
        f"- licence: {training.get('data_licence')}",
        f"- split by {training.get('split')}: "
        + "; ".join(f"{k.removeprefix('split_')} {v}" for k, v in split.items()),
        *([f"- {training['data_notes']}"] if training.get("data_notes") else []),
        "",
        "## Training",
        f"- {config.budget} budget: {training.get('steps')} steps, batch {config.batch_size}"
        + (
            f", truncated BPTT over chunks of {config.seq_len}"
            if manifest.shape == "many-to-many"
            else ""
        )
        + f", AdamW lr {config.lr:g} → {config.min_lr:g} (cosine), clip {config.grad_clip:g}, "
        + (f"dropout {config.dropout:g}, " if config.dropout else "")
        + (f"part dropout {config.part_dropout:g}, " if config.part_dropout else "")
        + (f"part splice {config.part_splice:g}, " if config.part_splice else "")
        + f"seed {config.seed}",
        *ensemble_lines(training.get("ensemble")),
        f"- {training.get('seconds')} s on {training.get('machine')} "
        f"(torch {training.get('torch')}, {training.get('processes', 1)} process(es))",
        "",
        "## Metrics (held-out data)",
        *(f"- {k}: {v:.4f}" for k, v in metrics.items()),
        "",
        *baseline_lines(manifest.name, training),
        "## Parity (checked at export)",
        f"- numpy reference vs torch vs onnxruntime on the graphs "
        f"{', '.join(parity.graphs)}: {parity.steps} greedy steps and a batch of "
        f"{parity.batch} prompts of different lengths; max abs diff "
        + ", ".join(f"{k} {v:.2g}" for k, v in parity.max_abs_diff.items()),
        "",
        *layout.card_sections,
        "",
        *(
            line
            for file, caption in figures
            for line in (f"## {caption}", "", f"![{caption}]({file})", "")
        ),
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def store_parameters(model: RNNLanguageModel, graphs: Iterable[Path], weights: Path) -> None:
    """Every parameter once in ``weights``, which the graphs reference (``sharing.py``);
    the stored tensors must be exactly the model's."""
    parameters = {name: p.detach().cpu().numpy() for name, p in model.named_parameters()}
    graphs = list(graphs)
    try:
        sharing.share_weights(graphs, parameters, weights)
    except sharing.SharingError as exc:
        raise ExportError(str(exc)) from None
    stored = sharing.read_parameters(graphs)
    missing = sorted(set(parameters) - set(stored))
    changed = sorted(k for k in stored if not np.array_equal(stored[k], parameters[k]))
    if missing or changed:
        raise ExportError(
            f"{weights.name}: no graph holds the parameters {missing}; stored values "
            f"differ for {changed}"
        )


def export_model(
    model: RNNLanguageModel,
    tokenizer: Tokenizer,
    config: TrainConfig,
    *,
    training: Mapping[str, Any],
    metrics: Mapping[str, float],
    out: Path | None = None,
    version: int = 0,
    task: Task | None = None,
    layout: Layout | None = None,
    loss_plot: Path | None = None,
) -> Path:
    """Write and check the package; return its path ``<out>/<name>/<version>``.

    ``task`` (``tasks.py``) or an explicit ``layout`` gives the shape, head and initial
    state; without either the model is packaged as a language model that starts after
    ``bos``. ``loss_plot`` (the run's) is copied in and shown by the model card.
    """
    model = model.cpu().eval()
    root = Path(out if out is not None else config.out)
    with staged_package(root, config.name, version or config.version) as staged:
        staging = staged.path
        layout = layout or Layout.of(task, model, tokenizer, config, staging)
        figures = list(layout.figures)
        if loss_plot is not None and loss_plot.is_file():
            shutil.copyfile(loss_plot, staging / PLOT_FILE)
            figures.insert(0, (PLOT_FILE, "Training and validation loss"))
        tokenizer.save(staging / VOCAB_FILE)
        paths = export_graphs(model, staging, config.sequence_graph)
        store_parameters(model, paths.values(), staging / WEIGHTS_FILE)
        weights = model.to_seed_weights()
        start_token = layout.initial_state.token
        parity = check_parity(
            model,
            weights,
            paths,
            Start(
                kind=layout.initial_state.kind,
                token=None if start_token is None else tokenizer.special_tokens[start_token],
                conditions=len(layout.conditions),
            ),
            steps=config.parity_steps,
        )
        manifest = Manifest(
            name=config.name,
            version=int(staging.name),
            description=config.description,
            shape=layout.shape,
            cell=config.cell,
            layers=model.layers,
            hidden_size=model.hidden_size,
            tokenizer=tokenizer_spec(tokenizer),
            output=layout.output,
            graphs={kind: standard_graph(kind, path.name) for kind, path in paths.items()},
            initial_state=layout.initial_state,
            conditions=layout.conditions,
            weights_file=WEIGHTS_FILE,
            card_file=CARD_FILE,
            training={
                **training,
                "sequence_graph": config.sequence_graph,
                "parity": parity.summary(),
            },
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
            layout=layout,
            figures=figures,
        )
    log.info("exported %s (parity max abs diff %s)", staged.final, parity.max_abs_diff)
    return staged.final


def ensemble_lines(ensemble: Mapping[str, Any] | None) -> list[str]:
    """The card's lines on a merged ensemble (ensemble.py), none for a single network."""
    if not ensemble:
        return []
    figures = {k: v for k, v in ensemble.items() if k.startswith("member_test_")}
    return [
        f"- an ensemble of {ensemble['members']} networks of "
        f"{ensemble['member_hidden_size']} units (embedding {ensemble['member_embedding_size']}"
        f"), trained apart with seeds {', '.join(map(str, ensemble['seeds']))}, each with the "
        f"steps above, merged into this one: {ensemble['merged']}",
        *(
            f"- the members alone, {k.removeprefix('member_')}: "
            + ", ".join(f"{v:.4f}" for v in values)
            for k, values in figures.items()
        ),
    ]


def tokenizer_spec(tokenizer: Tokenizer) -> TokenizerSpec:
    """The manifest's description of ``tokenizer``, saved as VOCAB_FILE."""
    return TokenizerSpec(
        kind=tokenizer.kind,
        vocabulary_file=VOCAB_FILE,
        size=tokenizer.size,
        special_tokens=dict(tokenizer.special_tokens),
        normalize=tokenizer.normalize,
        lowercase=tokenizer.lowercase,
    )


@dataclass(frozen=True)
class Staging:
    """The directory a package is written to (``path``), and where it is published."""

    path: Path
    final: Path


@contextlib.contextmanager
def staged_package(root: Path, name: str, version: int = 0) -> Iterator[Staging]:
    """A directory to write ``<root>/<name>/<version>`` into (version 0: the next free
    one), published by one rename when the block ends, and only if ``load_package``
    accepts it; a failure (an exception in the block) leaves nothing behind."""
    model_root = root / name
    version = version or next_free_version(model_root)
    final = model_root / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; pick another --version")
    created_root = not model_root.exists()
    model_root.mkdir(parents=True, exist_ok=True)
    # Staged as <root>/<name>/.partial-*/<name>/<version>, so load_package can check it
    # before the rename that publishes it (the server skips dot-names meanwhile).
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=model_root))
    staging = Staging(scratch / name / str(version), final)
    try:
        staging.path.mkdir(parents=True)
        yield staging
        load_package(staging.path)
        os.rename(staging.path, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                model_root.rmdir()
        raise
    shutil.rmtree(scratch, ignore_errors=True)  # the now empty <name> directory
    load_package(final)


def package_seed_weights(package: Path) -> dict[str, np.ndarray]:
    """A package's weights in the notation of docs/MODELS.md (what ``reference.py``
    reads): rebuilt from the weights file (format 3), or its weights.npz (formats 1
    and 2). ValueError for a ``custom`` cell, whose weights have no such notation."""
    loaded = load_package(package)
    manifest = loaded.manifest
    if not manifest.shares_weights:
        with np.load(package / manifest.weights_file) as archive:
            return {key: archive[key] for key in archive.files}
    if manifest.cell == "custom":
        raise ValueError(
            f"{package}: a custom cell's weights (its module's state_dict, in "
            f"{manifest.weights_file}) have no notation of docs/MODELS.md"
        )
    parameters = sharing.read_parameters(loaded.graph_path(kind) for kind in manifest.graphs)
    vectors = manifest.input.kind == "vectors"
    model = RNNLanguageModel.from_parameters(manifest.cell, parameters, vectors=vectors)
    return model.to_seed_weights()


def export_checkpoint(checkpoint: Path, out: Path | None = None, version: int = 0) -> Path:
    """Rebuild the model and its task from ``checkpoint`` alone and export it."""
    loaded = load_checkpoint(checkpoint)
    return export_model(
        loaded.model,
        loaded.tokenizer,
        loaded.config,
        training=loaded.training,
        metrics=loaded.metrics,
        out=out,
        version=version,
        task=make_task(loaded.config, loaded.tokenizer),
        loss_plot=checkpoint.parent / PLOT_FILE,
    )
