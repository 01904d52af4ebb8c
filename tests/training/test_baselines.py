"""The baselines are nltk's and scikit-learn's models; the one change, a table of nltk's
own Kneser–Ney continuation counts computed once, gives nltk's scores exactly."""

from __future__ import annotations

import math

import pytest

nltk_lm = pytest.importorskip("nltk.lm")

TRAIN = [
    ["in", "the", "beginning", "god", "created", "the", "heaven", "and", "the", "earth"],
    ["and", "the", "earth", "was", "without", "form", "and", "void"],
    ["and", "god", "said", "let", "there", "be", "light", "and", "there", "was", "light"],
]
TEST = [
    ["and", "god", "created", "the", "light"],
    ["the", "earth", "was", "light"],
]  # no unseen words


@pytest.mark.parametrize("order", [2, 3])
def test_fast_continuation_counts_give_nltks_scores(order: int) -> None:
    from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline
    from nltk.util import ngrams

    from rnnserve_train.baselines import KN_DISCOUNT, fast_continuation_counts, kneser_ney_bits

    def fitted() -> nltk_lm.KneserNeyInterpolated:
        model = nltk_lm.KneserNeyInterpolated(order, discount=KN_DISCOUNT)
        model.fit(*padded_everygram_pipeline(order, TRAIN))
        return model

    plain, fast = fitted(), fitted()
    fast_continuation_counts(fast)
    grams = [
        g
        for s in TEST
        for g in ngrams(list(pad_both_ends(s, n=order)), order)
        if "</s>" not in g[:-1]  # each sequence predicts its tokens and one end
    ]
    for gram in grams:
        assert fast.score(gram[-1], gram[:-1]) == pytest.approx(
            plain.score(gram[-1], gram[:-1]), rel=1e-12
        )
    total, count = kneser_ney_bits(TRAIN, TEST, order)
    expected = -sum(math.log2(plain.score(g[-1], g[:-1])) for g in grams)
    assert count == len(grams) == sum(len(s) + 1 for s in TEST)
    assert total == pytest.approx(expected, rel=1e-12)
