"""Baselines no one here wrote, on exactly the splits (and vocabularies) the zoo trains on:

* language models (``many-to-many``, ``one-to-one``): ``nltk.lm.KneserNeyInterpolated``
  over the same token ids (unknown tokens mapped the same way), perplexity and bits per
  token/character over the same held-out predictions (every token and the end);
* the classifier: scikit-learn's multinomial naive Bayes over character n-grams
  (``CountVectorizer(analyzer="char_wb")``), its smoothing and n-gram order chosen on the
  validation split; accuracy and a per-class table on the test split;
* the float-vector classifier (``vowels``): sktime's 1-nearest-neighbour classifier
  (Euclidean distance, every utterance zero-padded to the longest), the usual first
  baseline of the UEA archive; accuracy on the test split.

nltk computes a Kneser–Ney lower-order probability by scanning every higher-order n-gram
on each call, which takes hours on these corpora; ``fast_continuation_counts`` computes
the same counts once into a table (``tests/training`` checks the scores are identical).

``rnnserve-train baselines`` computes them and writes ``baselines.json`` (shipped with
this package); model cards and docs/models.md quote it when the run's data and split
match the ones recorded there.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RESULTS_FILE = Path(__file__).with_name("baselines.json")
KN_DISCOUNT = 0.75  # the usual absolute discount (nltk's default of 0.1 is far worse here)
# The n-gram order of each zoo language model's baseline.
KN_ORDERS = {"char-gru": 5, "word-gru": 3, "one-step": 2}


def fast_continuation_counts(model: Any) -> None:
    """Replace nltk's per-call scan in ``KneserNey._continuation_counts`` by a table of
    the same numbers: for each context (and the empty one), how many distinct n-gram
    types end with context + word, and in total."""
    estimator = model.estimator
    with_word: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    totals: Counter[tuple[str, ...]] = Counter()
    for length in range(2, model.order + 1):
        for prefix, following in model.counts[length].items():
            suffix = tuple(prefix[1:])
            for word, count in following.items():
                if count > 0:
                    with_word[suffix][word] += 1
                    totals[suffix] += 1

    def continuation_counts(word: str, context: tuple[str, ...] = ()) -> tuple[int, int]:
        return with_word[tuple(context)][word], totals[tuple(context)]

    estimator._continuation_counts = continuation_counts


def kneser_ney_bits(
    train: Iterable[Sequence[str]], test: Iterable[Sequence[str]], order: int
) -> tuple[float, int]:
    """(total bits, predictions) of an interpolated Kneser–Ney model of ``order`` fitted
    on ``train`` over ``test``; each sequence predicts its tokens and its end."""
    from nltk.lm import KneserNeyInterpolated  # type: ignore[import-untyped]
    from nltk.lm.preprocessing import (  # type: ignore[import-untyped]
        pad_both_ends,
        padded_everygram_pipeline,
    )
    from nltk.util import ngrams  # type: ignore[import-untyped]

    model = KneserNeyInterpolated(order, discount=KN_DISCOUNT)
    everygrams, vocabulary = padded_everygram_pipeline(order, [list(s) for s in train])
    model.fit(everygrams, vocabulary)
    fast_continuation_counts(model)
    total, count = 0.0, 0
    for sequence in test:
        padded = list(pad_both_ends(list(sequence), n=order))
        for gram in ngrams(padded, order):
            if "</s>" in gram[:-1]:
                break  # nltk pads n-1 ends; a sequence predicts its end once
            probability = model.score(gram[-1], gram[:-1])
            total += -math.log2(probability) if probability > 0 else math.inf
            count += 1
    return total, count


def language_model_baseline(
    name: str, config_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Kneser–Ney on the split and vocabulary of the zoo model ``name``."""
    from rnnserve_train.config import make_config
    from rnnserve_train.tasks import LanguageModel, make_task

    config = make_config(name, config_overrides)
    task = make_task(config)
    assert isinstance(task, LanguageModel)
    order = KN_ORDERS[name]

    def as_strings(split: str) -> list[list[str]]:  # token ids, without bos and eos
        return [[str(t) for t in doc[1:-1]] for doc in task.encoded[split]]

    started = time.perf_counter()
    total, count = kneser_ney_bits(as_strings("train"), as_strings("test"), order)
    unit = task.unit
    result: dict[str, Any] = {
        "baseline": f"nltk.lm.KneserNeyInterpolated(order={order}, discount={KN_DISCOUNT})",
        f"test_bits_per_{unit}": total / count,
        "test_predictions": count,
    }
    if unit == "word":
        result["test_perplexity"] = 2 ** (total / count)
        result["test_bits_per_char"] = total / task.characters("test")
    result["seconds"] = round(time.perf_counter() - started, 1)
    return {**_fingerprint(task.facts), **result}


def naive_bayes_baseline(name: str = "name-language") -> dict[str, Any]:
    """Character n-gram multinomial naive Bayes on the classifier's split."""
    from sklearn.feature_extraction.text import (  # type: ignore[import-untyped]
        CountVectorizer,
    )
    from sklearn.naive_bayes import MultinomialNB  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]

    from rnnserve_train.config import make_config
    from rnnserve_train.tasks import Classifier, make_task, per_class_table

    task = make_task(make_config(name))
    assert isinstance(task, Classifier)
    parts = task.parts
    classes = list(task.classes)

    def xy(split: str) -> tuple[list[str], np.ndarray]:
        return [e.source for e in parts[split]], np.array(
            [classes.index(e.target) for e in parts[split]]
        )

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = xy("train"), xy("val"), xy("test")
    best: tuple[float, int, float] = (-1.0, 0, 0.0)
    for top in (3, 4, 5):
        for alpha in (0.01, 0.03, 0.1, 0.3, 1.0):
            pipeline = make_pipeline(
                CountVectorizer(analyzer="char_wb", ngram_range=(1, top), lowercase=False),
                MultinomialNB(alpha=alpha),
            )
            pipeline.fit(x_train, y_train)
            accuracy = float((pipeline.predict(x_val) == y_val).mean())
            if accuracy > best[0]:
                best = (accuracy, top, alpha)
    _, top, alpha = best
    pipeline = make_pipeline(
        CountVectorizer(analyzer="char_wb", ngram_range=(1, top), lowercase=False),
        MultinomialNB(alpha=alpha),
    )
    pipeline.fit(x_train, y_train)
    predicted = pipeline.predict(x_test)
    return {
        **_fingerprint(task.facts),
        "baseline": (
            f"sklearn MultinomialNB(alpha={alpha}) on CountVectorizer(analyzer='char_wb', "
            f"ngram_range=(1, {top})), chosen on the validation split"
        ),
        "val_accuracy": best[0],
        "test_accuracy": float((predicted == y_test).mean()),
        "test_per_class": per_class_table(y_test, predicted, classes),
    }


def nearest_neighbour_baseline() -> dict[str, Any]:
    """sktime's 1-NN (Euclidean, zero-padded) on JapaneseVowels' own split."""
    from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier
    from sktime.datasets import load_japanese_vowels
    from sktime.transformations.panel.padder import PaddingTransformer

    from rnnserve_train.vowels import SOURCE, load_split

    lengths = [len(s) for split in ("train", "test") for s in load_split(split)[0]]
    train_x, train_y = load_japanese_vowels(split="train", return_type="nested_univ")
    test_x, test_y = load_japanese_vowels(split="test", return_type="nested_univ")
    classifier = PaddingTransformer(pad_length=max(lengths)) * KNeighborsTimeSeriesClassifier(
        n_neighbors=1, distance="euclidean"
    )
    classifier.fit(train_x, train_y)
    return {
        "data": SOURCE["data"],
        "split_sizes": {"train": len(train_x), "test": len(test_x)},
        "baseline": (
            f"sktime PaddingTransformer(pad_length={max(lengths)}) * "
            "KNeighborsTimeSeriesClassifier(n_neighbors=1, distance='euclidean')"
        ),
        "test_accuracy": float((classifier.predict(test_x) == test_y).mean()),
    }


def _fingerprint(facts: dict[str, Any]) -> dict[str, Any]:
    return {"data": facts["data"], "split_sizes": facts["split_sizes"]}


BASELINES: dict[str, Callable[[], dict[str, Any]]] = {
    "char-gru": lambda: language_model_baseline("char-gru"),
    "word-gru": lambda: language_model_baseline("word-gru"),
    "one-step": lambda: language_model_baseline("one-step"),
    "name-language": naive_bayes_baseline,
    "vowels": nearest_neighbour_baseline,
}


def compute(names: Sequence[str], path: Path = RESULTS_FILE) -> dict[str, Any]:
    """Compute the baselines of ``names`` and merge them into ``path``."""
    for name in names:
        log.info("baseline of %s ...", name)
        result = BASELINES[name]()
        log.info("baseline of %s: %s", name, result)
        results = {**load_results(path), name: result}  # merged as late as possible
        path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return load_results(path)


def load_results(path: Path = RESULTS_FILE) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def baseline_lines(name: str, training: dict[str, Any]) -> list[str]:
    """Model-card lines quoting the recorded baseline of ``name`` if it was computed on
    the same data and split as this run; nothing otherwise."""
    recorded = load_results().get(name)
    if not recorded or recorded["data"] != training.get("data"):
        return []
    if recorded["split_sizes"] != training.get("split_sizes"):
        return []
    shown = {k: v for k, v in recorded.items() if isinstance(v, float) and k.startswith("test_")}
    return [
        "## Baseline on the same split (`rnnserve-train baselines`)",
        f"- {recorded['baseline']}",
        *(f"- {k}: {v:.4f}" for k, v in shown.items()),
        "",
    ]
