"""The user's own files: globs, .txt/.jsonl/.parquet readers, the split, and their errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moescale.data.documents import join_documents
from moescale.data.user_files import load_user_files
from moescale.errors import UserError

from .conftest import make_docs


def test_split_documents_never_straddle(txt_dir: Path) -> None:
    split = load_user_files([str(txt_dir)], val_fraction=0.25)
    originals = {p.read_text() for p in txt_dir.iterdir()}
    assert set(split.train) | set(split.val) == originals
    assert not set(split.train) & set(split.val)
    assert len(split.val) == 3
    again = load_user_files([str(txt_dir)], val_fraction=0.25)
    assert (again.train, again.val, again.sha256) == (split.train, split.val, split.sha256)


def test_progress_is_logged(txt_dir: Path, data_log: pytest.LogCaptureFixture) -> None:
    load_user_files([str(txt_dir)], val_fraction=0.25)
    (record,) = [r for r in data_log.records if r.name == "moescale.data.user_files"]
    assert record.levelno == logging.INFO
    assert "12 files, 12 documents" in record.getMessage()
    assert "9 train, 3 validation" in record.getMessage()


def test_txt_glob_and_separator(tmp_path: Path, txt_dir: Path) -> None:
    one = load_user_files([str(txt_dir / "doc0*.txt")])
    assert len(one.train) + len(one.val) == 10  # doc00..doc09
    multi = tmp_path / "multi.txt"
    multi.write_text(join_documents(make_docs(5, seed=3)))
    split = load_user_files([str(multi)])
    assert len(split.train) + len(split.val) == 5


def test_jsonl_with_text_field(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    docs = make_docs(6, seed=4)
    path.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)) + "\n")
    split = load_user_files([str(path)], text_field="body")
    assert sorted(split.train + split.val) == sorted(docs)
    with pytest.raises(UserError, match=r"no field 'text'.*id, body"):
        load_user_files([str(path)], text_field="text")


def test_parquet_with_text_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    docs = make_docs(6, seed=5)
    pq.write_table(pa.table({"content": docs, "n": list(range(6))}), path)
    split = load_user_files([str(path)], text_column="content")
    assert sorted(split.train + split.val) == sorted(docs)
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
