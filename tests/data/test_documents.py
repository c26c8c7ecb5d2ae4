"""The on-disk document format and the seeded split by document."""

from __future__ import annotations

import pytest

from moescale.data.documents import join_documents, parse_documents, split_indices
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
