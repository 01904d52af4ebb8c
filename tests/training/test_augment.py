"""Part dropout and part splice (augment.py): what each variant of a training name may be."""

from __future__ import annotations

import re

import pytest

from rnnserve_train.augment import PartAugmenter, parts_of
from rnnserve_train.config import ConfigError, make_config, validate
from rnnserve_train.corpora import Example

TRAIN = [
    Example("Anna Kowalska", "pl_PL", "a"),
    Example("Zofia Nowak", "pl_PL", "b"),
    Example("Jan de la Cruz", "es_ES", "c"),
    Example("Lucía García", "es_ES", "d"),
    Example("Yui Sato", "ja_JP", "e"),
]


def variants(augmenter: PartAugmenter, example: Example, count: int = 2000) -> list[Example]:
    return [augmenter(example) for _ in range(count)]


def spliced(variant: str, part: str, pool: set[str]) -> bool:
    """Whether ``variant`` is a prefix of ``part`` (not all of it) and a suffix of one of
    ``pool`` (not all of it)."""
    return any(
        variant == part[:i] + other[j:]
        for other in pool
        for i in range(1, len(part))
        for j in range(1, len(other))
    )


def test_without_either_variant_a_name_is_left_as_it_is() -> None:
    augmenter = PartAugmenter(TRAIN, 0.0, 0.0, seed=1)
    assert all(v == TRAIN[0] for v in variants(augmenter, TRAIN[0], 50))


def test_part_dropout_keeps_one_whole_part_in_its_share_of_names() -> None:
    augmenter = PartAugmenter(TRAIN, 0.3, 0.0, seed=2)
    seen = variants(augmenter, TRAIN[2])
    assert {v.source for v in seen} == {"Jan de la Cruz", "Jan", "de la Cruz"}
    assert all(v.target == "es_ES" and v.key == "c" for v in seen)
    cut = sum(v.source != "Jan de la Cruz" for v in seen) / len(seen)
    assert 0.26 < cut < 0.34  # 0.3 of 2,000 draws: SE ~0.01


def test_part_splice_joins_a_prefix_to_a_suffix_of_the_same_locale_and_position() -> None:
    augmenter = PartAugmenter(TRAIN, 0.0, 1.0, seed=3)
    firsts = {"Anna", "Zofia"}  # pl_PL's first names; its surnames:
    lasts = {"Kowalska", "Nowak"}
    for variant in variants(augmenter, TRAIN[0]):
        first, last = parts_of(variant.source)
        assert variant.target == "pl_PL"
        assert spliced(first, "Anna", firsts), first
        assert spliced(last, "Kowalska", lasts), last
    spellings = {v.source for v in variants(augmenter, TRAIN[0])}
    assert len(spellings) > 50  # new spellings, not a handful


def test_the_same_seed_gives_the_same_variants() -> None:
    one = variants(PartAugmenter(TRAIN, 0.3, 0.3, seed=4), TRAIN[3], 200)
    two = variants(PartAugmenter(TRAIN, 0.3, 0.3, seed=4), TRAIN[3], 200)
    other = variants(PartAugmenter(TRAIN, 0.3, 0.3, seed=5), TRAIN[3], 200)
    assert one == two and one != other


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"part_dropout": 1.5}, "part_dropout=1.5 must be in [0, 1]"),
        ({"part_splice": -0.1}, "part_splice=-0.1 must be in [0, 1]"),
    ],
)
def test_rates_outside_zero_to_one_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(make_config("name-language", overrides))


def test_the_variants_are_refused_for_a_model_that_does_not_read_names() -> None:
    with pytest.raises(ConfigError, match=re.escape("part_splice=0.3 is for shape=many-to-one")):
        validate(make_config("char-gru", {"part_splice": 0.3}))


def test_the_classifier_trains_on_the_variants_and_evaluates_on_the_plain_names() -> None:
    from rnnserve_train.tasks import make_task

    config = make_config("name-language", {"part_dropout": 1.0, "max_documents": 400})
    task = make_task(config)
    bos = task.tokenizer.special_tokens["bos"]
    pad = task.tokenizer.special_tokens["pad"]
    batch = next(task.batches(config.seed))
    rows = [tuple(t for t in row.tolist() if t not in (bos, pad)) for row in batch["inputs"]]
    parts = {tuple(task.encode(p)) for e in task.parts["train"] for p in parts_of(e.source)}
    names = {tuple(task.encode(e.source)) for e in task.parts["train"]}
    assert rows and all(row in parts and row not in names for row in rows)  # one part each
    _, evaluated = next(task.eval_batches("test"))
    assert any(" " in e.source for e in task.parts["test"])
    assert evaluated["inputs"].shape[0] == len(task.parts["test"][: config.eval_batch_size])
