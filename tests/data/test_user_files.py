"""The user's own files: globs, .txt/.jsonl/.parquet readers, the split (whole documents or
each document's tail), and their errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moescale.data.documents import SplitCorpus, join_documents, split_indices
from moescale.data.user_files import load_user_files, read_documents
from moescale.errors import UserError

from .conftest import make_docs


def _write_docs(directory: Path, docs: list[str]) -> Path:
    directory.mkdir()
    for i, doc in enumerate(docs):
        (directory / f"doc{i:02d}.txt").write_text(doc)
    return directory


def _assert_tails(split: SplitCorpus, docs: list[str]) -> None:
    """Every document gave its head to train and its tail to validation, in order."""
    assert len(split.train) == len(split.val) == len(docs)
    for head, tail, doc in zip(split.train, split.val, docs, strict=True):
        assert head and tail and doc.startswith(head) and doc.endswith(tail)
        assert len(head) + len(tail) >= len(doc) - 2  # only the whitespace at the cut is gone


def _val_share(split: SplitCorpus) -> float:
    val = sum(len(t.encode()) for t in split.val)
    return val / (val + sum(len(t.encode()) for t in split.train))


def test_many_documents_split_by_document_as_before(tmp_path: Path) -> None:
    docs = make_docs(40, seed=21)
    directory = _write_docs(tmp_path / "many", docs)
    split = load_user_files([str(directory)], val_fraction=0.1)
    train_idx, val_idx = split_indices(40, 0.1)  # the seeded rule of every earlier version
    assert split.train == [docs[i] for i in train_idx] and split.val == [docs[i] for i in val_idx]
    again = load_user_files([str(directory)], val_fraction=0.1)
    assert (again.train, again.val, again.sha256) == (split.train, split.val, split.sha256)


def test_few_large_files_hold_out_the_tail_of_each(
    tmp_path: Path, data_log: pytest.LogCaptureFixture
) -> None:
    docs = make_docs(3, seed=22, n_words=3000)
    assert all(17_000 < len(d.encode()) < 20_000 for d in docs)
    directory = _write_docs(tmp_path / "three", docs)
    split = load_user_files([str(directory)], val_fraction=0.1)
    assert 0.05 < _val_share(split) < 0.2
    _assert_tails(split, docs)
    (record,) = [r for r in data_log.records if r.name == "moescale.data.user_files"]
    message = record.getMessage()
    assert record.levelno == logging.INFO and "3 files, 3 documents" in message
    assert "the last ~10 % of each of 3 documents" in message
    assert "fewer than 20 documents" in message and "of the bytes" in message


def test_lopsided_document_split_falls_back_to_tails(tmp_path: Path) -> None:
    """Enough documents, but the one drawn for validation holds a sliver of the bytes."""
    (val_doc,) = split_indices(25, 0.05)[1]
    docs = make_docs(25, seed=23, n_words=400)
    docs[val_doc] = "A short note.\n\nSigned."
    split = load_user_files([str(_write_docs(tmp_path / "lopsided", docs))], val_fraction=0.05)
    assert 0.025 < _val_share(split) < 0.1 and len(split.val) >= 24


def test_progress_is_logged(txt_dir: Path, data_log: pytest.LogCaptureFixture) -> None:
    directory = _write_docs(txt_dir.parent / "many", make_docs(24, seed=24))
    load_user_files([str(directory)], val_fraction=0.25)
    (record,) = [r for r in data_log.records if r.name == "moescale.data.user_files"]
    assert record.levelno == logging.INFO
    assert "24 files, 24 documents" in record.getMessage()
    assert "validation: 6 whole documents (" in record.getMessage()
    assert "of the bytes" in record.getMessage()


def test_txt_glob_and_separator(tmp_path: Path, txt_dir: Path) -> None:
    one = load_user_files([str(txt_dir / "doc0*.txt")])
    _assert_tails(one, [(txt_dir / f"doc0{i}.txt").read_text() for i in range(10)])
    multi = tmp_path / "multi.txt"
    docs = make_docs(5, seed=3)
    multi.write_text(join_documents(docs))
    _assert_tails(load_user_files([str(multi)]), docs)


def test_jsonl_with_text_field(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    docs = make_docs(6, seed=4)
    path.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)) + "\n")
    assert read_documents(path, text_field="body") == docs
    _assert_tails(load_user_files([str(path)], text_field="body"), docs)
    with pytest.raises(UserError, match=r"no field 'text'.*id, body"):
        load_user_files([str(path)], text_field="text")


def test_jsonl_that_is_not_utf8_reads_as_latin1_like_txt(tmp_path: Path) -> None:
    docs = ["caf\xe9 cr\xe8me", "na\xefve r\xe9sum\xe9"]
    lines = [json.dumps({"text": d}, ensure_ascii=False) for d in docs]
    (tmp_path / "l1.jsonl").write_bytes("\r\n".join(lines).encode("latin-1"))
    (tmp_path / "l1.txt").write_bytes(docs[0].encode("latin-1"))
    assert read_documents(tmp_path / "l1.jsonl") == docs
    assert read_documents(tmp_path / "l1.txt") == docs[:1]
    (tmp_path / "sep.jsonl").write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False))
    assert read_documents(tmp_path / "sep.jsonl") == ["a\u2028b"]  # one line, not two


def test_parquet_with_text_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    docs = make_docs(6, seed=5)
    pq.write_table(pa.table({"content": docs, "n": list(range(6))}), path)
    assert read_documents(path, text_column="content") == docs
    _assert_tails(load_user_files([str(path)], text_column="content"), docs)
    with pytest.raises(UserError, match=r"no column 'text'.*content, n"):
        load_user_files([str(path)])


def test_missing_path_and_empty_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope/\\*.txt' matches no file"):
        load_user_files([str(tmp_path / "nope/*.txt")])
    with pytest.raises(UserError, match="missing.jsonl' matches no file"):
        load_user_files([str(tmp_path / "missing.jsonl")])
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(UserError, match="hold no text.*empty.txt"):
        load_user_files([str(tmp_path / "empty.txt")])
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported extension"):
        load_user_files([str(tmp_path / "data.csv")])
