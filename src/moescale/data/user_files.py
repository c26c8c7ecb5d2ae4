"""The user's own files as a corpus: paths and globs, and the .txt/.jsonl/.parquet readers.

`.txt`/`.text`/`.md`: the whole file is one document unless it contains `<|endoftext|>`
separator lines (the on-disk format of `moescale.data.documents`). `.jsonl`/`.ndjson`: one
document per line, key `data.text_field`. `.parquet`/`.pq`: one document per row, column
`data.text_column`. Directories are searched recursively for those extensions; globs are
expanded (`**` allowed).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
from pathlib import Path

from moescale.data.clean import decode_text, normalize_whitespace
from moescale.data.documents import (
    Document,
    SplitCorpus,
    corpus_sha,
    describe_held_out,
    join_documents,
    parse_documents,
    split_held_out,
)
from moescale.errors import UserError
from moescale.fmt import human, plural

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def expand_paths(patterns: list[str]) -> list[Path]:
    """Paths, directories and globs to a sorted, de-duplicated list of supported files."""
    out: list[Path] = []
    for pattern in patterns:
        files = _expand_one(pattern)
        if not files:
            raise UserError(
                f"data.corpus: {pattern!r} matches no file (looked from {os.getcwd()}); "
                "fix the path or glob, or use corpus: bundled."
            )
        out.extend(files)
    seen: set[Path] = set()
    unique = []
    for p in out:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(p)
    return unique


def _expand_one(pattern: str) -> list[Path]:
    """The supported files one path, directory or glob names, in sorted order."""
    expanded = os.path.expanduser(pattern)
    if glob.has_magic(expanded):
        matches = [Path(p) for p in sorted(glob.glob(expanded, recursive=True))]
    else:
        matches = [Path(expanded)] if Path(expanded).exists() else []
    files: list[Path] = []
    for m in matches:
        if m.is_dir():
            files.extend(
                p
                for p in sorted(m.rglob("*"))
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
            )
        elif m.is_file():
            if m.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise UserError(
                    f"data.corpus: {str(m)!r} has an unsupported extension; accepted: "
                    + ", ".join(SUPPORTED_SUFFIXES)
                    + "."
                )
            files.append(m)
    return files


def read_documents(path: Path, text_field: str = "text", text_column: str = "text") -> list[str]:
    """The documents of one user file, in file order (see the module docstring for formats)."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [normalize_whitespace(t) for t in parse_documents(decode_text(path.read_bytes()))]
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, text_field)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, text_column)
    raise UserError(f"data.corpus: {str(path)!r} has an unsupported extension.")


def _read_jsonl(path: Path, field: str) -> list[str]:
    """Decoded like a .txt file (`decode_text`): UTF-8, else the whole file as Latin-1, so a
    legacy-encoded export still reads rather than failing on its first accented byte."""
    docs = []
    # newline=None: universal newlines, as open() splits them; str.splitlines would also split
    # at U+2028 (legal unescaped inside a JSON string) and at Latin-1's 0x85
    with io.StringIO(decode_text(path.read_bytes()), newline=None) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc}).") from None
            if not isinstance(rec, dict) or field not in rec:
                keys = ", ".join(map(str, rec)) if isinstance(rec, dict) else type(rec).__name__
                raise UserError(
                    f"{path}:{lineno}: no field {field!r} (data.text_field); the record has: "
                    f"{keys}. Set data.text_field to the key that holds the text."
                )
            value = rec[field]
            if value is None:
                continue
            if not isinstance(value, str):
                raise UserError(
                    f"{path}:{lineno}: field {field!r} holds {type(value).__name__}, not text."
                )
            docs.append(normalize_whitespace(value))
    return docs


def _read_parquet(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable Parquet file ({exc}).") from None
    if column not in schema.names:
        raise UserError(
            f"{path}: no column {column!r} (data.text_column); columns are: "
            + ", ".join(schema.names)
            + ". Set data.text_column to the column that holds the text."
        )
    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    docs = []
    for i, v in enumerate(values):
        if v is None:
            continue
        if not isinstance(v, str):
            raise UserError(
                f"{path}: row {i} of column {column!r} is {type(v).__name__}, not text."
            )
        docs.append(normalize_whitespace(v))
    return docs


def load_user_files(
    patterns: list[str],
    text_field: str = "text",
    text_column: str = "text",
    val_fraction: float = 0.05,
) -> SplitCorpus:
    """Read the user's files, split them (`documents.split_held_out`), hash the result.

    Few documents give each its last val_fraction to validation instead of holding out whole
    ones; one INFO line says which, how many bytes and what share of the corpus.
    """
    paths = expand_paths(patterns)
    docs: list[Document] = []
    for path in paths:
        texts = [t for t in read_documents(path, text_field, text_column) if t]
        docs.extend(Document(str(path), f"{path}#{i}", t) for i, t in enumerate(texts))
    if not docs:
        raise UserError(
            "data.corpus: the files hold no text ("
            + ", ".join(map(str, paths[:5]))
            + (", ..." if len(paths) > 5 else "")
            + "); check data.text_field / data.text_column and that the files are not empty."
        )
    held = split_held_out(docs, val_fraction)
    sha = corpus_sha(join_documents(held.train).encode(), join_documents(held.val).encode())
    logger.info(
        "data: %s, %s (%s characters); %s",
        plural(len(paths), "file"),
        plural(len(docs), "document"),
        human(sum(len(d.text) for d in docs)),
        describe_held_out(held, val_fraction),
    )
    return SplitCorpus(held.train, held.val, sha, f"{len(paths)} user file(s)")
