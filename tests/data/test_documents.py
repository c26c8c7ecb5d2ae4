"""The on-disk document format, the seeded split by document and the cut of a tail."""

from __future__ import annotations

import pytest

from moescale.data.documents import (
    cut_tail,
    join_documents,
    parse_documents,
    split_indices,
    split_tails,
)
from moescale.errors import UserError


def test_join_and_parse_round_trip() -> None:
    docs = ["first doc\n\nwith a blank line", "second", "third\nline"]
    assert parse_documents(join_documents(docs)) == docs
    assert parse_documents("no separator at all\n\nhere") == ["no separator at all\n\nhere"]


def test_split_is_seeded_deterministic_and_by_document() -> None:
    tr1, va1 = split_indices(100, 0.05)
    tr2, va2 = split_indices(100, 0.05)
    assert (tr1, va1) == (tr2, va2)
    assert len(va1) == 5 and not set(tr1) & set(va1) and sorted(tr1 + va1) == list(range(100))
    assert split_indices(100, 0.05, seed=1) != (tr1, va1)
    # at least one validation document, at least one training document
    assert len(split_indices(3, 0.01)[1]) == 1
    assert len(split_indices(2, 0.99)[0]) == 1
    with pytest.raises(UserError, match="1 document"):
        split_indices(1, 0.05)


def test_cut_tail_prefers_paragraphs_then_lines_then_words() -> None:
    paragraphs = "\n\n".join(f"Paragraph {i} " + " ".join(["word"] * 15) for i in range(10))
    head, tail = cut_tail(paragraphs, 0.2)
    assert tail.startswith("Paragraph 8") and head.endswith("word")
    assert head + "\n\n" + tail == paragraphs
    lines = "\n".join(f"line {i:03d} with some words" for i in range(100))
    head, tail = cut_tail(lines, 0.1)
    assert tail.startswith("line 09") and head + "\n" + tail == lines
    one_line = " ".join(["word"] * 200)
    head, tail = cut_tail(one_line, 0.1)
    assert head + " " + tail == one_line and 0.05 < len(tail) / len(one_line) < 0.2
    head, tail = cut_tail("x" * 100, 0.1)  # no break anywhere: cut at the character
    assert (len(head), len(tail)) == (90, 10)
    # a break far from the target (a 50 % tail) is not taken when asking for 10 %
    head, tail = cut_tail("a" * 50 + "\n\n" + "b" * 50, 0.1)
    assert len(tail) == 10


def test_split_tails_keeps_uncuttable_texts_in_train() -> None:
    train, val = split_tails(["x", "first half.\n\nsecond"], 0.3)
    assert train == ["x", "first half."] and val == ["second"]
    with pytest.raises(UserError, match="too short to hold out validation text"):
        split_tails(["x", "y"], 0.1)
