"""The classifier's data: full names from faker's lists, split by their parts."""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np
import pytest

from rnnserve_train.corpora import (
    FULL_NAMES_PER_LOCALE,
    NAME_LOCALES,
    draw_pairs,
    load_full_names,
    name_pairs,
)
from rnnserve_train.data import split_of

VAL, TEST = 0.05, 0.05


@cache
def full_names() -> dict[str, list[tuple[str, str]]]:
    """split -> [(full name, locale)]."""
    out: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for e in load_full_names(VAL, TEST).examples:
        out[e.split].append((e.source, e.target))
    return out


@cache
def part_lists() -> tuple[tuple[str, frozenset[str], frozenset[str]], ...]:
    """(locale, first names, last names) of every list pair faker's formats combine."""
    return tuple(
        (locale, frozenset(firsts), frozenset(lasts))
        for locale in NAME_LOCALES
        for firsts, lasts in name_pairs(locale)
    )


def makers(name: str) -> set[tuple[str, str, str]]:
    """Every (locale, first, last) that writes ``name`` as "first last", from the lists."""
    cuts = [(name[:i], name[i + 1 :]) for i, c in enumerate(name) if c == " "]
    return {
        (locale, first, last)
        for locale, firsts, lasts in part_lists()
        for first, last in cuts
        if first in firsts and last in lasts
    }


def test_every_full_name_is_one_locales_pair_of_parts_from_its_own_split() -> None:
    names = full_names()
    rng = np.random.default_rng(0)
    for split, items in names.items():
        for index in rng.choice(len(items), size=300, replace=False):
            name, locale = items[index]
            ways = makers(name)
            assert {w[0] for w in ways} == {locale}, (name, ways)
            assert any(
                split_of(first, VAL, TEST) == split == split_of(last, VAL, TEST)
                for _, first, last in ways
            ), (name, split, ways)


def test_no_part_of_a_test_name_is_a_part_of_a_training_name() -> None:
    def parts(split: str) -> set[str]:
        return {
            part
            for name, _ in full_names()[split]
            for _, first, last in makers(name)
            for part in (first, last)
        }

    test_parts = parts("test")
    assert test_parts, "no test names"
    assert not test_parts & parts("train")


def test_names_are_distinct_and_capped_per_locale_and_split() -> None:
    names = full_names()
    every = [name for items in names.values() for name, _ in items]
    assert len(every) == len(set(every))
    for split, items in names.items():
        counts = Counter(locale for _, locale in items)
        assert set(counts) == set(NAME_LOCALES)
        assert max(counts.values()) == FULL_NAMES_PER_LOCALE[split]


def test_the_set_is_the_same_on_every_load() -> None:
    first, again = load_full_names(VAL, TEST), load_full_names(VAL, TEST)
    assert first.examples == again.examples
    assert first.notes == again.notes


@pytest.mark.parametrize("wanted", [3, 40])
def test_draw_pairs_is_uniform_distinct_and_keeps_only_what_is_kept(wanted: int) -> None:
    groups = [(["A", "B"], ["x", "y", "z"]), (["C"], ["x"])]  # 7 pairs
    keep = lambda first, last: (first, last) != ("B", "z")  # noqa: E731
    every = {"A x", "A y", "A z", "B x", "B y", "C x"}
    seen: Counter[str] = Counter()
    for seed in range(300):
        drawn = draw_pairs(groups, wanted, np.random.default_rng(seed), keep)
        assert len(drawn) == len(set(drawn)) == min(wanted, len(every))
        assert set(drawn) <= every
        seen.update(drawn)
    if wanted < len(every):
        # Each kept pair is drawn with probability wanted/6: 150 of 300 times.
        assert all(100 < seen[name] < 200 for name in every), seen


def test_draw_pairs_draws_from_many_pairs_without_listing_them() -> None:
    firsts = [f"f{i}" for i in range(1000)]
    lasts = [f"l{i}" for i in range(1000)]
    drawn = draw_pairs([(firsts, lasts)], 500, np.random.default_rng(1), lambda f, n: True)
    assert len(set(drawn)) == 500
    assert len({name.split()[0] for name in drawn}) > 300  # spread over the first names
