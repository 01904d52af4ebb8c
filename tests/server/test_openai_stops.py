"""How the HTTP front leaves stop strings out of streamed text (OpenAI's behaviour)."""

from __future__ import annotations

import pytest

from rnnserve_server.openai_http.completions import StopWithholder


def streamed(stops: list[str], pieces: list[str], matched: str) -> tuple[list[str], str]:
    """What each piece lets out, and the rest at the end (the last piece ends it)."""
    withholder = StopWithholder(stops)
    sent = [withholder.feed(piece) for piece in pieces[:-1]]
    return sent, withholder.finish(pieces[-1], matched)


def test_text_that_may_begin_a_stop_string_waits() -> None:
    sent, rest = streamed(["\n\n", "END"], ["ab", "c\n", "\n"], "\n\n")
    assert sent == ["ab", "c"] and rest == ""
    sent, rest = streamed(["END"], ["xE", "N", "Dy", "z"], "")
    assert sent == ["x", "", "ENDy"] and rest == "z"  # "EN" was let out once "Dy" came


@pytest.mark.parametrize(
    ("pieces", "matched", "text"),
    [
        (["Hello", " wor", "ld"], "", "Hello world"),
        (["Hello", " ", "w"], " w", "Hello"),
        (["a", "b", "c"], "abc", ""),
        (["x", ". "], ". ", "x"),
        (["one", "\n"], "\n", "one"),
    ],
)
def test_the_whole_text_is_what_came_before_the_stop(
    pieces: list[str], matched: str, text: str
) -> None:
    sent, rest = streamed([". ", " w", "abc", "\n"], pieces, matched)
    assert "".join(sent) + rest == text
