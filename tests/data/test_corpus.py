"""Corpus cleaning, the seeded document split, user files and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moescale.data import corpus as C
from moescale.errors import UserError

from .conftest import make_docs

GUTENBERG_SAMPLE = """\ufeffThe Project Gutenberg EBook of A Tiny Play, by Somebody

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.

*** START OF THIS PROJECT GUTENBERG EBOOK A TINY PLAY ***




Produced by A. Volunteer and the Online Distributed
Proofreading Team

A TINY PLAY\r
\r
ACT I.   Scene 1.\t  A heath.

  <<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS IS COPYRIGHT 1990-1993 BY
  WORLD LIBRARY, INC.>>

Enter   the king.   \t

KING.  Now is the winter of our discontent        10



[Exeunt.]

End of the Project Gutenberg EBook of A Tiny Play

*** END OF THIS PROJECT GUTENBERG EBOOK A TINY PLAY ***

Section 1. General Terms of Use and Redistributing Project Gutenberg-tm
"""


def test_gutenberg_header_licence_and_footer_are_stripped() -> None:
    text = C.clean_text(GUTENBERG_SAMPLE)
    assert text.startswith("A TINY PLAY\n\nACT I. Scene 1. A heath.")
    assert text.endswith("[Exeunt.]")
    for junk in ("Gutenberg", "Produced by", "ELECTRONIC VERSION", "eBook", "\ufeff", "\r", "\t"):
        assert junk not in text
    assert "KING. Now is the winter of our discontent\n" in text  # verse number dropped


def test_normalize_whitespace() -> None:
    raw = "  a\u00a0 b\t\tc  \r\n\r\n\r\n\r\nd   \n\n\n e\n\n"
    assert C.normalize_whitespace(raw) == "a b c\n\nd\n\ne"
    # the document separator can never survive inside a document
    assert C.EOS not in C.normalize_whitespace(f"x {C.EOS} y")


def test_join_and_parse_round_trip() -> None:
    docs = ["first doc\n\nwith a blank line", "second", "third\nline"]
    assert C.parse_documents(C.join_documents(docs)) == docs
    assert C.parse_documents("no separator at all\n\nhere") == ["no separator at all\n\nhere"]


def test_split_is_seeded_deterministic_and_by_document() -> None:
    tr1, va1 = C.split_indices(100, 0.05)
    tr2, va2 = C.split_indices(100, 0.05)
    assert (tr1, va1) == (tr2, va2)
    assert len(va1) == 5 and not set(tr1) & set(va1) and sorted(tr1 + va1) == list(range(100))
    assert C.split_indices(100, 0.05, seed=1) != (tr1, va1)
    # at least one validation document, at least one training document
    assert len(C.split_indices(3, 0.01)[1]) == 1
    assert len(C.split_indices(2, 0.99)[0]) == 1
    with pytest.raises(UserError, match="1 document"):
        C.split_indices(1, 0.05)


def test_split_documents_never_straddle(txt_dir: Path) -> None:
    split = C.load_user_files([str(txt_dir)], val_fraction=0.25, log=lambda s: None)
    originals = {p.read_text() for p in txt_dir.iterdir()}
    assert set(split.train) | set(split.val) == originals
    assert not set(split.train) & set(split.val)
    assert len(split.val) == 3
    again = C.load_user_files([str(txt_dir)], val_fraction=0.25, log=lambda s: None)
    assert (again.train, again.val, again.sha256) == (split.train, split.val, split.sha256)


def test_txt_glob_and_separator(tmp_path: Path, txt_dir: Path) -> None:
    one = C.load_user_files([str(txt_dir / "doc0*.txt")], log=lambda s: None)
    assert len(one.train) + len(one.val) == 10  # doc00..doc09
    multi = tmp_path / "multi.txt"
    multi.write_text(C.join_documents(make_docs(5, seed=3)))
    split = C.load_user_files([str(multi)], log=lambda s: None)
    assert len(split.train) + len(split.val) == 5


def test_jsonl_with_text_field(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    docs = make_docs(6, seed=4)
    path.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)) + "\n")
    split = C.load_user_files([str(path)], text_field="body", log=lambda s: None)
    assert sorted(split.train + split.val) == sorted(docs)
    with pytest.raises(UserError, match=r"no field 'text'.*id, body"):
        C.load_user_files([str(path)], text_field="text", log=lambda s: None)


def test_parquet_with_text_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    docs = make_docs(6, seed=5)
    pq.write_table(pa.table({"content": docs, "n": list(range(6))}), path)
    split = C.load_user_files([str(path)], text_column="content", log=lambda s: None)
    assert sorted(split.train + split.val) == sorted(docs)
    with pytest.raises(UserError, match=r"no column 'text'.*content, n"):
        C.load_user_files([str(path)], log=lambda s: None)


def test_missing_path_and_empty_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope/\\*.txt' matches no file"):
        C.load_user_files([str(tmp_path / "nope/*.txt")], log=lambda s: None)
    with pytest.raises(UserError, match="missing.jsonl' matches no file"):
        C.load_user_files([str(tmp_path / "missing.jsonl")], log=lambda s: None)
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(UserError, match="hold no text.*empty.txt"):
        C.load_user_files([str(tmp_path / "empty.txt")], log=lambda s: None)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported extension"):
        C.load_user_files([str(tmp_path / "data.csv")], log=lambda s: None)


def _fake_source(docs: list[str]):
    def fetch(tmp: Path) -> dict[str, list[C.Document]]:
        return {"fake": [C.Document("fake", f"d{i}", d) for i, d in enumerate(docs)]}

    return fetch


def _broken_source(tmp: Path) -> dict[str, list[C.Document]]:
    raise RuntimeError("registry unreachable")


def test_bundled_build_is_cached_and_tolerates_missing_sources(tmp_path: Path) -> None:
    sources = {"fake==1": _fake_source(make_docs(30, seed=6)), "broken==1": _broken_source}
    with pytest.warns(UserWarning, match="broken==1"):
        directory, manifest = C.build_bundled_corpus(tmp_path, sources=sources, log=lambda s: None)
    assert manifest["missing_sources"] == ["broken==1"]
    assert manifest["sources"]["fake"]["documents"] == 30
    assert manifest["val"]["documents"] == 2 and manifest["train"]["documents"] == 28
    assert manifest["train"]["sha256"] == C.sha256_file(directory / "train.txt")
    assert not list(directory.glob("*.tmp"))
    # a complete cache is reused without calling any source
    again_dir, again = C.build_bundled_corpus(
        tmp_path, sources={"broken==1": _broken_source}, log=lambda s: None
    )
    assert again == manifest
    # an incomplete one (no manifest: the build was killed) is rebuilt
    (directory / "manifest.json").unlink()
    with (
        pytest.warns(UserWarning),
        pytest.raises(UserError, match="no source could be fetched.*broken==1"),
    ):
        C.build_bundled_corpus(tmp_path, sources={"broken==1": _broken_source}, log=print)


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOESCALE_CACHE", str(tmp_path / "env"))
    assert C.cache_root(None) == tmp_path / "env"
    assert C.cache_root(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.delenv("MOESCALE_CACHE")
    assert C.cache_root(None) == Path.home() / ".cache" / "moescale"
