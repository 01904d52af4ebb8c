"""One class per shape of docs/MODELS.md: its data, its loss, its evaluation, and what its
package declares (output head, initial state, conditions).

* ``LanguageModel`` (many-to-many, T_x = T_y): documents packed into rows, truncated BPTT
  (state carried across chunks of ``seq_len``, detached between them, reset at ``bos``);
* ``OneStep`` (one-to-one): one token from the zero state -> the next token;
* ``Classifier`` (many-to-one): ``bos`` + a name -> its locale, from the state after the
  last character; the label distribution exists after every step;
* ``ConditionalGenerator`` (one-to-many): a locale's initial state, then ``bos`` + name + ``eos``;
* ``Translator`` (seq2seq, T_x ≠ T_y): an encoder's final state starts a decoder that
  writes ``bos`` + ISO date + ``eos``.

The last three train with full BPTT over padded batches of whole examples; a ``valid``
mask keeps every padded step from changing the state or the loss (tests/training show
padding changes neither the loss nor the gradients).

Losses are sums of nats with their count, so data-parallel ranks can each add their
share of one global batch (``train.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from rnnserve_server.manifest import InitialStateSpec, OutputSpec
from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.augment import PartAugmenter
from rnnserve_train.config import TrainConfig, model_options
from rnnserve_train.corpora import (
    Example,
    ExampleSet,
    load_dates,
    load_full_names,
    load_names,
)
from rnnserve_train.data import (
    build_tokenizer,
    chunks,
    count_targets,
    encode_documents,
    load_corpus,
    pack_rows,
    pad_sequences,
    split_documents,
    split_of,
    training_batches,
)
from rnnserve_train.metrics import bits, plot_confusion
from rnnserve_train.model import RNNLanguageModel, valid_mask

Batch = dict[str, Tensor]  # every tensor batch-first, so a rank's share is batch[rows]
CONFUSION_FILE = "confusion.png"
DEFAULT_DATE_EXAMPLES = 40_000


@dataclass(frozen=True)
class Loss:
    nats: Tensor  # sum over the predictions of this (share of the) batch
    count: Tensor  # how many predictions the whole batch holds
    state: Tensor | None = None  # carried to the next chunk (language models only)


def mean_bits(losses: Sequence[Loss]) -> float:
    """Bits per prediction over ``losses`` (of the batches of one split)."""
    return bits(sum(float(x.nats) for x in losses) / sum(float(x.count) for x in losses))


def select_rows(batch: Batch, rows: slice) -> Batch:
    return {key: value[rows] for key, value in batch.items()}


def decoder_loss(model: RNNLanguageModel, batch: Batch, start: Tensor) -> Loss:
    """Teacher-forced decoding from ``start`` [L, B, H]: the cross-entropy of every valid
    step (``inputs``/``targets`` [B, T], ``lengths`` [B]); padded steps change nothing."""
    valid = valid_mask(batch["lengths"], batch["inputs"].shape[1])
    logits, _ = model(batch["inputs"], start, valid=valid)
    per_token = functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), reduction="none"
    )
    mask = valid.reshape(-1).float()
    return Loss((per_token * mask).sum(), mask.sum())


def classifier_loss(
    model: RNNLanguageModel, batch: Batch, head: str = "softmax", prefix_weight: float = 0.0
) -> Loss:
    """Many-to-one: the loss of the output after each row's last valid token. ``softmax``:
    cross-entropy over the classes; ``sigmoid``: binary cross-entropy of every output
    against the one-hot label (one-vs-rest), summed over the outputs. ``prefix_weight``
    adds that much of each row's mean loss over all its valid steps (the last included),
    which trains the distribution a session sees after each character and regularises
    the last one."""
    inputs, lengths = batch["inputs"], batch["lengths"]
    valid = valid_mask(lengths, inputs.shape[1])
    logits, _ = model(inputs, model.zero_state(inputs.shape[0]), valid=valid)
    labels = batch["labels"].unsqueeze(1).expand(-1, inputs.shape[1])
    if head == "sigmoid":
        targets = functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        per_step = functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none"
        ).sum(-1)
    else:
        per_step = functional.cross_entropy(
            logits.transpose(1, 2), labels, reduction="none"
        )  # [B, T]
    last = per_step.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    nats = last.sum()
    if prefix_weight:
        mask = valid.to(per_step.dtype)
        nats = nats + prefix_weight * ((per_step * mask).sum(1) / mask.sum(1)).sum()
    return Loss(nats, torch.tensor(float(inputs.shape[0])))


def decode_rows(
    model: RNNLanguageModel,
    logits: Tensor,
    state: Tensor,
    *,
    eos: int,
    max_tokens: int,
    choose: Callable[[Tensor], Tensor],
) -> list[list[int]]:
    """Decode every row from ``logits`` [B, K] and ``state``: ``choose`` picks the next
    tokens [B] (argmax, a sample), which are fed back, until each row has produced
    ``eos`` or ``max_tokens`` tokens. Each row's tokens, without ``eos``."""
    rows: list[list[int]] = [[] for _ in range(logits.shape[0])]
    done = [False] * len(rows)
    for _ in range(max_tokens):
        tokens = choose(logits)
        for row, token in enumerate(tokens.tolist()):
            done[row] = done[row] or token == eos
            if not done[row]:
                rows[row].append(token)
        if all(done):
            break
        logits, state = model.step(tokens, state)
    return rows


class Task:
    """What every shape provides to training, evaluation and export."""

    shape: ClassVar[str]
    carries_state: ClassVar[bool] = False  # truncated BPTT: the state goes chunk to chunk
    tokenizer: Tokenizer
    facts: dict[str, Any]  # data, origin, licence, split: recorded in the manifest

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    # --- the model and its package
    def build_model(self) -> RNNLanguageModel:
        c = self.config
        return RNNLanguageModel(
            c.cell, self.tokenizer.size, c.hidden_size, c.layers, **model_options(c)
        )

    def output_spec(self) -> OutputSpec:
        return OutputSpec(kind="vocabulary")

    def initial_state(self) -> InitialStateSpec:
        return InitialStateSpec(kind="after_token", token="bos")

    def conditions(self) -> tuple[str, ...]:
        return ()

    # --- training
    def batches(self, seed: int) -> Iterator[Batch]:
        """Endless global training batches."""
        raise NotImplementedError

    def loss(self, model: RNNLanguageModel, batch: Batch, state: Tensor | None) -> Loss:
        raise NotImplementedError

    # --- evaluation
    main_metric: ClassVar[str]  # shown in the progress bar, e.g. "bits_per_char"
    # The validation metric that is the training loss (bits per prediction), plotted with it
    loss_metric: ClassVar[str] = "bits_per_char"

    def evaluate(self, model: RNNLanguageModel, split: str) -> dict[str, float]:
        """Metrics on ``split`` ("val" or "test"), named ``<split>_<metric>``."""
        raise NotImplementedError

    def final_metrics(self, model: RNNLanguageModel) -> dict[str, float]:
        """Extra numbers added after the test evaluation (e.g. the uniform baseline)."""
        return {}

    def card_sections(self, model: RNNLanguageModel) -> list[str]:
        """Markdown lines showing the model at work, for the model card."""
        return []

    def figures(self, model: RNNLanguageModel, directory: Path) -> list[tuple[str, str]]:
        """Pictures of the model at work written into ``directory``: (file, caption)."""
        return []


def _split_facts(config: TrainConfig, sizes: dict[str, int], key: str) -> dict[str, Any]:
    return {
        "split": f"sha256 of {key}: test < {config.test_fraction}, "
        f"val < {config.test_fraction + config.val_fraction}",
        "split_sizes": sizes,
    }


# ---------------------------------------------------------------------- many-to-many


class LanguageModel(Task):
    """Next-token prediction over packed documents (fortunes or Bible chapters)."""

    shape = "many-to-many"
    carries_state = True

    def __init__(self, config: TrainConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(config)
        corpus = load_corpus(config.data, config.max_documents)
        self.splits = split_documents(corpus.documents, config.val_fraction, config.test_fraction)
        self.tokenizer = tokenizer or build_tokenizer(
            self.splits.train,
            config.min_count,
            kind=config.tokenizer,
            max_size=config.vocab_size,
            lowercase=config.lowercase,
        )
        self.encoded = {
            name: encode_documents(self.tokenizer, getattr(self.splits, name))
            for name in ("train", "val", "test")
        }
        unit = "characters" if config.tokenizer == "char" else "words"
        self.facts = {
            "data": corpus.name,
            "data_origin": corpus.origin,
            "data_licence": corpus.licence,
            "data_files": list(corpus.files),
            **_split_facts(config, self.splits.sizes(), "each document's text"),
            "split_documents": self.splits.sizes(),
            f"split_{unit}": {k: count_targets(v) for k, v in self.encoded.items()},
        }

    @property
    def unit(self) -> str:
        return "char" if self.config.tokenizer == "char" else "word"

    @property
    def main_metric(self) -> str:  # type: ignore[override]
        return f"bits_per_{self.unit}"

    @property
    def loss_metric(self) -> str:  # type: ignore[override]
        return self.main_metric

    def batches(self, seed: int) -> Iterator[Batch]:
        c = self.config
        for chunk in training_batches(
            self.encoded["train"], self.tokenizer, c.batch_size, c.seq_len, seed
        ):
            yield {
                "inputs": chunk.inputs,
                "targets": chunk.targets,
                "loss_mask": chunk.loss_mask,
                "keep": chunk.keep,
            }

    def loss(self, model: RNNLanguageModel, batch: Batch, state: Tensor | None) -> Loss:
        inputs = batch["inputs"]
        if state is None or state.shape[1] != inputs.shape[0]:
            state = model.zero_state(inputs.shape[0])
        logits, state = model(inputs, state.detach(), batch["keep"])
        per_token = functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), reduction="none"
        )
        mask = batch["loss_mask"].reshape(-1)
        return Loss((per_token * mask).sum(), mask.sum(), state)

    @torch.no_grad()
    def nats(self, model: RNNLanguageModel, split: str) -> tuple[float, int]:
        """(total nats, predictions) over every token and eos of ``split``'s documents."""
        c = self.config
        encoded = self.encoded[split]
        packed = pack_rows(
            encoded, c.eval_batch_size, c.seq_len, self.tokenizer.special_tokens["pad"]
        )
        state: Tensor | None = model.zero_state(packed.shape[0])
        total, count = 0.0, 0.0
        for chunk in chunks(packed, c.seq_len, self.tokenizer):
            batch = {
                "inputs": chunk.inputs.to(c.device),
                "targets": chunk.targets.to(c.device),
                "loss_mask": chunk.loss_mask.to(c.device),
                "keep": chunk.keep.to(c.device),
            }
            result = self.loss(model, batch, state)
            state = result.state
            total += float(result.nats)
            count += float(result.count)
        if int(count) != count_targets(encoded):  # the masks must count each target once
            raise AssertionError(f"evaluated {count} targets, expected {count_targets(encoded)}")
        return total, int(count)

    def characters(self, split: str) -> int:
        """Characters of ``split``'s documents, one more per document for its end."""
        return sum(len(d) + 1 for d in getattr(self.splits, split))

    def evaluate(self, model: RNNLanguageModel, split: str) -> dict[str, float]:
        total, count = self.nats(model, split)
        metrics = {f"{split}_bits_per_{self.unit}": bits(total / count)}
        if self.unit == "word":
            metrics[f"{split}_perplexity"] = math.exp(total / count)
            metrics[f"{split}_bits_per_char"] = bits(total) / self.characters(split)
        return metrics

    def final_metrics(self, model: RNNLanguageModel) -> dict[str, float]:
        return {f"uniform_bits_per_{self.unit}": math.log2(self.tokenizer.size)}

    def card_sections(self, model: RNNLanguageModel) -> list[str]:
        return language_model_samples(model, self.tokenizer, self.config.sample_chars)


def language_model_samples(model: RNNLanguageModel, tokenizer: Tokenizer, n: int) -> list[str]:
    """Card lines: greedy and sampled text from the state after ``bos``."""
    from rnnserve_train.generate import greedy_tokens, sample_tokens

    greedy = tokenizer.decode(greedy_tokens(model, tokenizer, [], n))
    samples = [
        tokenizer.decode(sample_tokens(model, tokenizer, [], n, seed=seed)) for seed in (1, 2)
    ]
    return [
        "## Samples",
        "Greedy:",
        "```",
        greedy,
        "```",
        "Sampled (temperature 0.8, seeds 1 and 2):",
        *(line for sample in samples for line in ("```", sample, "```")),
    ]


# ---------------------------------------------------------------------- one-to-one


class OneStep(LanguageModel):
    """One step from the zero state: a token in, the next token's distribution out.

    The pairs are every (token, next token) of the documents, ``bos`` -> first token
    through last token -> ``eos``; a session is one Step from the zero state.
    """

    shape = "one-to-one"
    carries_state = False

    def initial_state(self) -> InitialStateSpec:
        return InitialStateSpec(kind="zeros")

    def pairs(self, split: str) -> tuple[Tensor, Tensor]:
        docs = self.encoded[split]
        inputs = np.concatenate([d[:-1] for d in docs])
        targets = np.concatenate([d[1:] for d in docs])
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def batches(self, seed: int) -> Iterator[Batch]:
        inputs, targets = self.pairs("train")
        generator = torch.Generator().manual_seed(seed)
        size = self.config.batch_size
        while True:
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(order) - size + 1, size):
                rows = order[start : start + size]
                yield {"inputs": inputs[rows], "targets": targets[rows]}

    def loss(self, model: RNNLanguageModel, batch: Batch, state: Tensor | None) -> Loss:
        inputs = batch["inputs"]
        logits, _ = model.step(inputs, model.zero_state(inputs.shape[0]))
        nats = functional.cross_entropy(logits, batch["targets"], reduction="sum")
        return Loss(nats, torch.tensor(float(inputs.shape[0])))

    @torch.no_grad()
    def nats(self, model: RNNLanguageModel, split: str) -> tuple[float, int]:
        inputs, targets = self.pairs(split)
        total = 0.0
        size = self.config.eval_batch_size
        for start in range(0, len(inputs), size):
            batch = {
                "inputs": inputs[start : start + size],
                "targets": targets[start : start + size],
            }
            total += float(self.loss(model, batch, None).nats)
        return total, len(inputs)

    @torch.no_grad()
    def card_sections(self, model: RNNLanguageModel) -> list[str]:
        lines = ["## Examples: the 5 most likely next words", ""]
        zero = model.zero_state(1)
        for word in ("the", "And", "LORD", "shall", "my"):
            (token,) = self.tokenizer.encode(word)
            logits, _ = model.step(torch.tensor([token]), zero)
            top = torch.softmax(logits[0], -1).topk(5)
            shown = ", ".join(
                f"{self.tokenizer.token_text(int(i))} {float(p):.2f}"
                for p, i in zip(top.values, top.indices, strict=True)
            )
            lines.append(f"- `{word}` -> {shown}")
        return lines


# ---------------------------------------------------------------------- example sets


class ExampleTask(Task):
    """Shapes trained on (source, target) examples with full BPTT over padded batches."""

    def __init__(self, config: TrainConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(config)
        data = self.load(config)
        examples = data.examples[: config.max_documents] if config.max_documents else data.examples
        parts: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        for example in examples:
            split = example.split or split_of(
                example.key, config.val_fraction, config.test_fraction
            )
            parts[split].append(example)
        self.data, self.parts = data, parts
        self.classes = data.classes
        self.tokenizer = tokenizer or build_tokenizer(
            self.texts(parts["train"]), config.min_count, max_size=config.vocab_size
        )
        sizes = {k: len(v) for k, v in parts.items()}
        self.facts = {
            "data": data.name,
            "data_origin": data.origin,
            "data_licence": data.licence,
            **_split_facts(config, sizes, self.split_key),
            "split_examples": sizes,
            "data_notes": data.notes,
        }

    split_key: ClassVar[str]

    @staticmethod
    def load(config: TrainConfig) -> ExampleSet:
        raise NotImplementedError

    @staticmethod
    def texts(examples: Sequence[Example]) -> list[str]:
        """The texts the vocabulary is built from."""
        return [e.source for e in examples]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def collate(self, examples: Sequence[Example]) -> Batch:
        raise NotImplementedError

    def batches(self, seed: int) -> Iterator[Batch]:
        for examples in self.example_batches(seed):
            yield self.collate(examples)

    def example_batches(self, seed: int) -> Iterator[list[Example]]:
        """Endless batches of training examples, each epoch in a fresh seeded order."""
        train = self.parts["train"]
        generator = torch.Generator().manual_seed(seed)
        size = min(self.config.batch_size, len(train))
        while True:
            order = torch.randperm(len(train), generator=generator).tolist()
            for start in range(0, len(order) - size + 1, size):
                yield [train[i] for i in order[start : start + size]]

    def eval_batches(self, split: str) -> Iterator[tuple[list[Example], Batch]]:
        examples = self.parts[split]
        size = self.config.eval_batch_size
        for start in range(0, len(examples), size):
            part = examples[start : start + size]
            yield part, self.collate(part)

    def decoder_batch(self, texts: Sequence[str]) -> Batch:
        """``bos`` + text as inputs, text + ``eos`` as targets, padded, with lengths."""
        specials = self.tokenizer.special_tokens
        encoded = [self.encode(t) for t in texts]
        inputs, lengths = pad_sequences([[specials["bos"], *e] for e in encoded], specials["pad"])
        targets, _ = pad_sequences([[*e, specials["eos"]] for e in encoded], specials["pad"])
        return {"inputs": inputs, "targets": targets, "lengths": lengths}


class Classifier(ExampleTask):
    """A name's locale (many-to-one): softmax (or, with ``head=sigmoid``, one sigmoid per
    locale) over the locales after every character; the loss is that of the output after
    the last one, plus ``prefix_loss`` times the mean over every step (``classifier_loss``)."""

    shape = "many-to-one"
    main_metric = "accuracy"
    loss_metric = "bits"  # the training objective per name (prefix_loss included)
    split_key = "the first and the last name (a full name's parts share one split)"

    @staticmethod
    def load(config: TrainConfig) -> ExampleSet:
        return load_full_names(config.val_fraction, config.test_fraction)

    def build_model(self) -> RNNLanguageModel:
        c = self.config
        return RNNLanguageModel(
            c.cell,
            self.tokenizer.size,
            c.hidden_size,
            c.layers,
            output_size=len(self.classes),
            **model_options(c),
        )

    def output_spec(self) -> OutputSpec:
        kind = "sigmoid" if self.config.head == "sigmoid" else "labels"
        return OutputSpec(kind=kind, labels=self.classes)

    def collate(self, examples: Sequence[Example]) -> Batch:
        bos, pad = self.tokenizer.special_tokens["bos"], self.tokenizer.special_tokens["pad"]
        inputs, lengths = pad_sequences([[bos, *self.encode(e.source)] for e in examples], pad)
        labels = torch.tensor([self.classes.index(e.target) for e in examples])
        return {"inputs": inputs, "lengths": lengths, "labels": labels}

    def batches(self, seed: int) -> Iterator[Batch]:
        """Training names, varied by part dropout and part splice where the config asks
        (augment.py); the plain names otherwise."""
        c = self.config
        if not (c.part_dropout or c.part_splice):
            yield from super().batches(seed)
            return
        augment = PartAugmenter(self.parts["train"], c.part_dropout, c.part_splice, seed)
        for examples in self.example_batches(seed):
            yield self.collate([augment(e) for e in examples])

    def loss(self, model: RNNLanguageModel, batch: Batch, state: Tensor | None) -> Loss:
        return classifier_loss(model, batch, self.config.head, self.config.prefix_loss)

    @torch.no_grad()
    def predictions(self, model: RNNLanguageModel, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(true class indices, predicted class indices) of ``split``."""
        truth, predicted = [], []
        for _, batch in self.eval_batches(split):
            inputs = batch["inputs"]
            logits, _ = model.sequence(inputs, batch["lengths"], model.zero_state(inputs.shape[0]))
            truth.append(batch["labels"].numpy())
            predicted.append(logits.argmax(-1).numpy())
        return np.concatenate(truth), np.concatenate(predicted)

    @torch.no_grad()
    def evaluate(self, model: RNNLanguageModel, split: str) -> dict[str, float]:
        truth, predicted = self.predictions(model, split)
        losses = [self.loss(model, batch, None) for _, batch in self.eval_batches(split)]
        return {
            f"{split}_accuracy": float((truth == predicted).mean()),
            f"{split}_bits": mean_bits(losses),
        }

    @torch.no_grad()
    def figures(self, model: RNNLanguageModel, directory: Path) -> list[tuple[str, str]]:
        truth, predicted = self.predictions(model, "test")
        accuracy = float((truth == predicted).mean())
        plot_confusion(
            truth,
            predicted,
            self.classes,
            directory / CONFUSION_FILE,
            f"{self.config.name}: test split, accuracy {accuracy:.1%} ({len(truth)} names)",
        )
        return [(CONFUSION_FILE, "Confusion matrix on the test split")]

    def final_metrics(self, model: RNNLanguageModel) -> dict[str, float]:
        truth, predicted = self.predictions(model, "test")
        self.facts["test_per_class"] = per_class_table(truth, predicted, self.classes)
        return {"majority_class_accuracy": float(np.bincount(truth).max() / len(truth))}

    @torch.no_grad()
    def card_sections(self, model: RNNLanguageModel) -> list[str]:
        truth, predicted = self.predictions(model, "test")
        lines = [
            "## Per-class results on the test split",
            "",
            *per_class_markdown(per_class_table(truth, predicted, self.classes)),
            "",
            "## The distribution after every step (what Step returns)",
            "",
        ]
        bos = self.tokenizer.special_tokens["bos"]
        for example in self.parts["test"][:3]:
            state = model.initial_state(bos)
            steps = []
            for char, token in zip(example.source, self.encode(example.source), strict=False):
                logits, state = model.step(torch.tensor([token]), state)
                p = torch.softmax(logits[0], -1)
                best = int(p.argmax())
                steps.append(f"{char}→{self.classes[best]} {float(p[best]):.2f}")
            lines.append(f"- `{example.source}` ({example.target}): " + ", ".join(steps))
        return lines


def per_class_table(
    truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per class: support, precision, recall (= accuracy on that class), F1."""
    table: dict[str, dict[str, float]] = {}
    for index, name in enumerate(classes):
        support = int((truth == index).sum())
        chosen = int((predicted == index).sum())
        correct = int(((truth == index) & (predicted == index)).sum())
        precision = correct / chosen if chosen else 0.0
        recall = correct / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[name] = {"support": support, "precision": precision, "recall": recall, "f1": f1}
    return table


def per_class_markdown(table: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| class | support | precision | recall | F1 |", "| --- | --- | --- | --- | --- |"]
    for name, row in table.items():
        lines.append(
            f"| {name} | {int(row['support'])} | {row['precision']:.3f} | "
            f"{row['recall']:.3f} | {row['f1']:.3f} |"
        )
    return lines


class ConditionalGenerator(ExampleTask):
    """Names of a locale (one-to-many): the locale's learned initial state, then ``bos``,
    then the name character by character until ``eos``."""

    shape = "one-to-many"
    main_metric = "bits_per_char"
    split_key = "the name"

    @staticmethod
    def load(config: TrainConfig) -> ExampleSet:
        return load_names()

    def build_model(self) -> RNNLanguageModel:
        c = self.config
        return RNNLanguageModel(
            c.cell,
            self.tokenizer.size,
            c.hidden_size,
            c.layers,
            conditions=len(self.classes),
            **model_options(c),
        )

    def initial_state(self) -> InitialStateSpec:
        return InitialStateSpec(kind="condition", token="bos")

    def conditions(self) -> tuple[str, ...]:
        return self.classes

    def collate(self, examples: Sequence[Example]) -> Batch:
        batch = self.decoder_batch([e.source for e in examples])
        batch["condition"] = torch.tensor([self.classes.index(e.target) for e in examples])
        return batch

    def loss(self, model: RNNLanguageModel, batch: Batch, state: Tensor | None) -> Loss:
        return decoder_loss(model, batch, model.condition_state(batch["condition"]))

    @torch.no_grad()
    def evaluate(self, model: RNNLanguageModel, split: str) -> dict[str, float]:
        losses = [self.loss(model, batch, None) for _, batch in self.eval_batches(split)]
        return {f"{split}_bits_per_char": mean_bits(losses)}

    def final_metrics(self, model: RNNLanguageModel) -> dict[str, float]:
        return {"uniform_bits_per_char": math.log2(self.tokenizer.size)}

    @torch.no_grad()
    def card_sections(self, model: RNNLanguageModel) -> list[str]:
        lines = ["## Samples (temperature 0.8, 4 per locale)", ""]
        bos, eos = self.tokenizer.special_tokens["bos"], self.tokenizer.special_tokens["eos"]
        generator = torch.Generator().manual_seed(1)

        def sample(logits: Tensor) -> Tensor:
            probabilities = torch.softmax(logits / 0.8, -1)
            return torch.multinomial(probabilities, 1, generator=generator)[:, 0]

        for index, locale in enumerate(self.classes):
            state = model.condition_state(torch.full((4,), index))
            logits, state = model.step(torch.full((4,), bos), state)
            rows = decode_rows(
                model, logits, state, eos=eos, max_tokens=self.config.sample_chars, choose=sample
            )
            lines.append(f"- {locale}: " + ", ".join(self.tokenizer.decode(r) for r in rows))
        return lines


class Translator(ExampleTask):
    """Written dates -> ISO 8601 (seq2seq): the encoder reads the written date; its final
    state starts the decoder, which writes ``bos`` + the ISO date + ``eos``."""

    shape = "seq2seq"
    main_metric = "exact_match"
    split_key = "the date's ISO form (a held-out date is never seen in any style)"
    max_output = 16  # an ISO date is 10 characters

    @staticmethod
    def load(config: TrainConfig) -> ExampleSet:
        return load_dates(config.max_documents or DEFAULT_DATE_EXAMPLES)

    @staticmethod
    def texts(examples: Sequence[Example]) -> list[str]:
        return [text for e in examples for text in (e.source, e.target)]

    def build_model(self) -> RNNLanguageModel:
        c = self.config
        return RNNLanguageModel(
            c.cell, self.tokenizer.size, c.hidden_size, c.layers, encoder=True, **model_options(c)
        )

    def initial_state(self) -> InitialStateSpec:
        return InitialStateSpec(kind="encoder", token="bos")

    def collate(self, examples: Sequence[Example]) -> Batch:
        batch = self.decoder_batch([e.target for e in examples])
        pad = self.tokenizer.special_tokens["pad"]
        source, source_lengths = pad_sequences([self.encode(e.source) for e in examples], pad)
        batch["source"], batch["source_lengths"] = source, source_lengths
        return batch

    def loss(self, model: RNNLanguageModel, batch: Batch, state: Tensor | None) -> Loss:
        return decoder_loss(model, batch, model.encode(batch["source"], batch["source_lengths"]))

    @torch.no_grad()
    def translate(self, model: RNNLanguageModel, batch: Batch) -> list[list[int]]:
        """Greedy decoding, as the server's Translate does: up to eos or ``max_output``."""
        bos, eos = self.tokenizer.special_tokens["bos"], self.tokenizer.special_tokens["eos"]
        state = model.encode(batch["source"], batch["source_lengths"])
        logits, state = model.step(torch.full((state.shape[1],), bos), state)
        return decode_rows(
            model, logits, state, eos=eos, max_tokens=self.max_output, choose=lambda x: x.argmax(-1)
        )

    @torch.no_grad()
    def evaluate(self, model: RNNLanguageModel, split: str) -> dict[str, float]:
        correct, total, losses = 0, 0, []
        for examples, batch in self.eval_batches(split):
            for example, tokens in zip(examples, self.translate(model, batch), strict=True):
                correct += self.tokenizer.decode(tokens) == example.target
                total += 1
            losses.append(self.loss(model, batch, None))
        return {
            f"{split}_exact_match": correct / total,
            f"{split}_bits_per_char": mean_bits(losses),
        }

    @torch.no_grad()
    def card_sections(self, model: RNNLanguageModel) -> list[str]:
        examples = self.parts["test"][:12]
        batch = self.collate(examples)
        lines = ["## Test examples (greedy, as Translate decodes)", ""]
        lines += ["| written | expected | model |", "| --- | --- | --- |"]
        for example, tokens in zip(examples, self.translate(model, batch), strict=True):
            got = self.tokenizer.decode(tokens)
            mark = "" if got == example.target else " ✗"
            lines.append(f"| {example.source} | {example.target} | {got}{mark} |")
        return lines


TASKS: dict[str, type[LanguageModel] | type[ExampleTask]] = {
    "many-to-many": LanguageModel,
    "one-to-one": OneStep,
    "many-to-one": Classifier,
    "one-to-many": ConditionalGenerator,
    "seq2seq": Translator,
}


def make_task(config: TrainConfig, tokenizer: Tokenizer | None = None) -> Task:
    """The task of ``config.shape``; ``tokenizer`` (from a checkpoint) replaces building one."""
    return TASKS[config.shape](config, tokenizer)
