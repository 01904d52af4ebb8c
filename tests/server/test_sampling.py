"""Probabilities, top-k by partial selection, and seeded sampling."""

import math

import numpy as np
import pytest

from rnnserve_server import sampling
from rnnserve_server.errors import FailedPrecondition, InvalidArgument
from rnnserve_server.sampling import (
    ARGMAX_PASSES,
    ROW_BY_ROW_WIDTH,
    SamplingParams,
    sample_rows,
    sigmoid,
    softmax,
    top_k,
    top_k_rows,
    top_outputs,
)


def test_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=1000))
    for k in (1, 5, 999, 1000, 2000):
        expected = sorted(range(1000), key=lambda i: -p[i])[: min(k, 1000)]
        assert [i for i, _ in top_k(p, k)] == expected
    assert top_k(p, 0) == []


@pytest.mark.parametrize("width", [3, 12, 100])
@pytest.mark.parametrize("chunk", [sampling.ARGMAX_CHUNK, 50])
def test_top_k_rows_equal_a_sort_by_value_then_id(
    width: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both selections (argmax passes up to ARGMAX_PASSES, over chunks of rows; partial
    selection above) against a sort by (-value, id): rows of many equal values (ties at
    the k-th place), rows with -inf among and past the top k, and rows of only -inf."""
    monkeypatch.setattr(sampling, "ARGMAX_CHUNK", chunk)
    rng = np.random.default_rng(width)
    values = rng.integers(-3, 3, size=(40, width)).astype(np.float32)  # many ties
    values[1:5] = rng.normal(size=(4, width))
    values[5, ::2] = -np.inf
    values[6] = -np.inf
    values[7, 1:] = -np.inf
    for k in range(1, ARGMAX_PASSES + 3):
        ids, chosen = top_k_rows(values, k)
        assert ids.shape == chosen.shape == (40, min(k, width))
        for r, row in enumerate(values.tolist()):
            expected = sorted(range(width), key=lambda i, row=row: (-row[i], i))[:k]
            assert ids[r].tolist() == expected, (k, r)
            assert chosen[r].tolist() == [row[i] for i in expected]
            alone_ids, alone = top_k_rows(values[r : r + 1], k)  # a lone row: sorted whole
            assert alone_ids[0].tolist() == expected and alone[0].tolist() == chosen[r].tolist()


@pytest.mark.parametrize("width", [7, 1000, ROW_BY_ROW_WIDTH + 1])
def test_top_outputs_equal_a_full_float64_softmax_and_sort(width: int) -> None:
    """The top k selected on float32 logits, with probabilities from each row's
    normalizer, against the whole float64 distribution sorted by (-p, id); ties included,
    k from 0 to past the width, both heads, and the row-by-row path of wide outputs."""
    rng = np.random.default_rng(width)
    logits = (rng.normal(size=(3, width)) * 4).astype(np.float32)
    logits[0, 1] = logits[0, 5] = logits[0].max() + 1  # a tie at the top: lower id first
    for head in ("softmax", "sigmoid"):
        reference = (sigmoid if head == "sigmoid" else softmax)(logits.astype(np.float64))
        for k in (0, 1, 5, width, width + 3):
            ids, values = top_outputs(logits, k, sigmoid_head=head == "sigmoid")
            assert ids.shape == values.shape == (3, min(k, width))
            for r in range(3):
                expected = sorted(range(width), key=lambda i, r=r: (-reference[r, i], i))
                assert ids[r].tolist() == expected[: min(k, width)]
                np.testing.assert_allclose(values[r], reference[r, ids[r]], rtol=1e-6, atol=1e-12)
                # a row alone (the lone session's path) gives the batch's bits exactly
                alone_ids, alone = top_outputs(logits[r : r + 1], k, sigmoid_head=head == "sigmoid")
                assert alone_ids[0].tolist() == ids[r].tolist()
                assert alone[0].tolist() == values[r].tolist()


def test_greedy_is_the_argmax() -> None:
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    params = SamplingParams.checked(temperature=0.0, top_k=0, top_p=None, vocabulary=4)
    token, prob = params.sample(logits, np.random.default_rng(0))
    assert token == 1
    assert prob == pytest.approx(softmax(logits.astype(np.float64))[1])


def test_same_seed_same_tokens_and_top_k_top_p_restrict() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams.checked(temperature=1.0, top_k=0, top_p=None, vocabulary=4)

    def draw(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [params.sample(logits, rng)[0] for _ in range(50)]

    assert draw(7) == draw(7)
    top2 = SamplingParams.checked(temperature=1.0, top_k=2, top_p=None, vocabulary=4)
    rng = np.random.default_rng(1)
    assert {top2.sample(logits, rng)[0] for _ in range(200)} == {0, 1}
    nucleus = SamplingParams.checked(temperature=1.0, top_k=0, top_p=0.75, vocabulary=4)
    samples = [nucleus.sample(logits, rng) for _ in range(200)]
    assert {t for t, _ in samples} == {0, 1}
    assert {round(p, 4) for _, p in samples} == {0.625, 0.375}  # renormalised over {0, 1}


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("temperature", {"temperature": -0.1}),
        ("temperature", {"temperature": math.nan}),
        ("temperature", {"temperature": math.inf}),
        ("top_k", {"top_k": 5}),
        ("top_p", {"top_p": 0.0}),
        ("top_p", {"top_p": 1.5}),
        ("top_p", {"top_p": math.nan}),
    ],
)
def test_invalid_parameters_name_field_and_range(field: str, kwargs: dict[str, float]) -> None:
    args = {"temperature": None, "top_k": 0, "top_p": None, **kwargs}
    with pytest.raises(InvalidArgument, match=rf"^{field} = .* allowed: "):
        SamplingParams.checked(vocabulary=4, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("temperature", "k", "p"),
    [(1.0, 0, None), (0.7, 0, None), (2.5, 0, None), (0.0, 0, None), (1.0, 3, None), (1.0, 0, 0.9)],
)
def test_sampling_rows_together_equals_sampling_each_alone(
    temperature: float, k: int, p: float | None
) -> None:
    """Batched sampling gives the tokens, probabilities and generator states of sampling
    row by row, bit for bit (seeded generations must not depend on who else generates)."""
    source = np.random.default_rng(3)
    params = SamplingParams.checked(temperature=temperature, top_k=k, top_p=p, vocabulary=200)
    for batch in (1, 2, 7, 64):
        logits = (source.normal(size=(batch, 200)) * source.uniform(0.5, 8)).astype(np.float32)
        seeds = source.integers(1 << 40, size=batch).tolist()
        together = [np.random.default_rng(s) for s in seeds]
        alone = [np.random.default_rng(s) for s in seeds]
        for _ in range(3):
            expected = [params.sample(row, rng) for row, rng in zip(logits, alone, strict=True)]
            assert sample_rows(params, logits, together) == expected
        for a, b in zip(together, alone, strict=True):
            assert a.bit_generator.state == b.bit_generator.state


def test_sampling_rows_raises_like_sample_for_a_nan_row() -> None:
    logits = np.zeros((2, 4), dtype=np.float32)
    logits[1, 2] = np.nan
    params = SamplingParams.checked(temperature=1.0, top_k=0, top_p=None, vocabulary=4)
    with pytest.raises(FailedPrecondition, match="not finite"):
        params.sample(logits[1], np.random.default_rng(0))
    with pytest.raises(FailedPrecondition, match="not finite"):
        sample_rows(params, logits, [np.random.default_rng(0), np.random.default_rng(1)])


def test_top_outputs_of_a_model_without_logits_is_empty() -> None:
    """A regression model's rows have no logits: its top k is empty, for one row (the
    lone session's path) as for many."""
    from rnnserve_server.sampling import top_outputs

    for rows in (1, 3):
        ids, probabilities = top_outputs(np.zeros((rows, 0), np.float32), 5, sigmoid_head=False)
        assert ids.shape == (rows, 0) and probabilities.shape == (rows, 0)
