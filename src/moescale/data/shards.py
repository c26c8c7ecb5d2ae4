"""Token shards: the tokenizer and the token streams of a split corpus, cached on disk.

Shards are flat memmaps (`train.bin`, `val.bin`) of uint16 (vocab <= 65536) or uint32 token
ids: each document's tokens followed by `<|endoftext|>`. They live in
`<cache>/tokens/<key>/` where the key hashes the corpus text, the split and the vocabulary
size, so a changed corpus or vocabulary gets a new directory and an unchanged one is reused
without retraining. `manifest.json` is written last: a directory without it is incomplete.
The manifest records the sha256 of `tokenizer.json`; a directory whose tokenizer no longer
matches it is rebuilt, since its shards were written by another tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from moescale.atomic import atomic_write, atomic_write_json
from moescale.data import tokenizer as tok_mod
from moescale.data.bundled import build_bundled_corpus
from moescale.data.cache import cache_root, file_lock, sha256_file
from moescale.data.corpus import load_corpus, user_patterns
from moescale.data.documents import SplitCorpus
from moescale.fmt import count, duration, human

if TYPE_CHECKING:
    from moescale.config import DataConfig

logger = logging.getLogger(__name__)

SHARD_FORMAT = 1  # bump when tokenization or the shard layout changes
PROGRESS_SECONDS = 5  # at most one progress line per this many seconds while tokenizing


@dataclass
class PreparedData:
    """Everything the trainer needs: token streams, the tokenizer and where they live."""

    train_tokens: np.memmap
    val_tokens: np.memmap
    tokenizer_path: Path
    dir: Path
    manifest: dict[str, Any]
    built: bool = False  # True when this call trained the tokenizer and wrote the shards
    eos_id: int = 0
    vocab_size: int = field(default=0)
    # UTF-8 bytes behind each id < vocab_size (0 for <|endoftext|>): validation bits per byte
    token_bytes: np.ndarray | None = None
    tokenizer_sha256: str = ""  # of tokenizer.json: runs compare only if they share it


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned type that holds every id: uint16 up to 65536 tokens, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def cache_key(corpus_sha: str, vocab_size: int) -> str:
    blob = json.dumps({"corpus": corpus_sha, "vocab": vocab_size, "format": SHARD_FORMAT})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_shard(path: Path, dtype: str | np.dtype, n_tokens: int) -> np.memmap:
    return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(n_tokens,))


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    itemsize = np.dtype(manifest.get("dtype", "uint16")).itemsize
    for split in ("train", "val"):
        path = directory / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != manifest[split]["tokens"] * itemsize:
            return None
    tokenizer = directory / "tokenizer.json"
    if not tokenizer.is_file():
        return None
    if manifest.get("tokenizer_sha256") not in (None, sha256_file(tokenizer)):
        logger.warning("data: %s does not match its manifest; rebuilding the shards", tokenizer)
        return None
    return manifest


def _write_shard(
    path: Path, tok: Any, docs: Sequence[str], dtype: np.dtype, split: str
) -> tuple[int, str]:
    """Tokenize docs into `path` atomically; returns (token count, sha256 of the bytes)."""
    chunk = 256

    def write(f: BinaryIO) -> tuple[int, str]:
        h = hashlib.sha256()
        n = 0
        t0 = last = time.time()
        for i, ids in enumerate(tok_mod.encode_documents(tok, docs, chunk=chunk)):
            blob = np.asarray(ids, dtype=dtype).tobytes()
            f.write(blob)
            h.update(blob)
            n += len(ids)
            now = time.time()
            if now - last > PROGRESS_SECONDS:
                last = now
                done = min(len(docs), (i + 1) * chunk)
                logger.info(
                    "data:   %s: %d/%d documents, %s tokens (%s)",
                    split,
                    done,
                    len(docs),
                    count(n),
                    duration(now - t0),
                )
        return n, h.hexdigest()

    return atomic_write(path, write)


def prepare_split_corpus(split: SplitCorpus, vocab_size: int, root: Path) -> PreparedData:
    """Tokenizer + shards for already split documents, cached under `root/tokens/<key>`."""
    tok_mod.check_vocab_size(vocab_size)
    directory = root / "tokens" / cache_key(split.sha256, vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    built = False
    with file_lock(directory / ".lock"):
        manifest = _read_manifest(directory)
        if manifest is None:
            built = True
            manifest = _build_shards(split, vocab_size, directory)
    return _open_prepared(directory, manifest, vocab_size, built)


def cached_shards(corpus_sha: str, vocab_size: int, root: Path) -> PreparedData | None:
    """The complete token cache of the corpus with this hash, or None: opened without the
    corpus's text, which only building the shards needs."""
    tok_mod.check_vocab_size(vocab_size)
    directory = root / "tokens" / cache_key(corpus_sha, vocab_size)
    if not (directory / "manifest.json").is_file():
        return None
    with file_lock(directory / ".lock"):  # not while another process is building it
        manifest = _read_manifest(directory)
    if manifest is None or manifest.get("corpus_sha256") != corpus_sha:
        return None
    return _open_prepared(directory, manifest, vocab_size, built=False)


def _open_prepared(
    directory: Path, manifest: dict[str, Any], vocab_size: int, built: bool
) -> PreparedData:
    dtype = np.dtype(manifest["dtype"])
    tok_path = directory / "tokenizer.json"  # checked against the manifest by _read_manifest
    tok = tok_mod.load_tokenizer(tok_path)
    prepared = PreparedData(
        train_tokens=open_shard(directory / "train.bin", dtype, manifest["train"]["tokens"]),
        val_tokens=open_shard(directory / "val.bin", dtype, manifest["val"]["tokens"]),
        tokenizer_path=tok_path,
        dir=directory,
        manifest=manifest,
        built=built,
        eos_id=int(manifest["eos_id"]),
        vocab_size=vocab_size,
        token_bytes=tok_mod.token_byte_lengths(tok, vocab_size),
        tokenizer_sha256=manifest.get("tokenizer_sha256") or sha256_file(tok_path),
    )
    if not built:
        logger.info(
            "data: reusing %s (%s train / %s validation tokens)",
            directory,
            count(manifest["train"]["tokens"]),
            count(manifest["val"]["tokens"]),
        )
    return prepared


def _build_shards(split: SplitCorpus, vocab_size: int, directory: Path) -> dict[str, Any]:
    """Train the tokenizer on the train split, write both shards, then the manifest."""
    (directory / "manifest.json").unlink(missing_ok=True)
    chars = sum(len(d) for d in split.train)
    logger.info(
        "data: training a byte-level BPE tokenizer (vocab %d) on %s characters ...",
        vocab_size,
        human(chars),
    )
    t0 = time.time()
    tok = tok_mod.train_tokenizer(split.train, vocab_size)
    tok_mod.save_tokenizer(tok, directory / "tokenizer.json")
    t_train = time.time() - t0
    logger.info(
        "data: tokenizer trained in %s (%d tokens)", duration(t_train), tok.get_vocab_size()
    )
    dtype = token_dtype(vocab_size)
    t1 = time.time()
    counts = {}
    for name, docs in (("train", split.train), ("val", split.val)):
        n, sha = _write_shard(directory / f"{name}.bin", tok, docs, dtype, name)
        counts[name] = {"tokens": n, "documents": len(docs), "sha256": sha}
    t_tok = time.time() - t1
    n_bytes = sum(len(d.encode()) for d in split.train)
    manifest = {
        "format": SHARD_FORMAT,
        "corpus": split.description,
        "corpus_sha256": split.sha256,
        "vocab_size": vocab_size,
        "tokenizer_vocab": tok.get_vocab_size(),
        "tokenizer_sha256": sha256_file(directory / "tokenizer.json"),
        "eos_id": tok_mod.eos_id(tok),
        "dtype": dtype.name,
        "train": counts["train"],
        "val": counts["val"],
        "bytes_per_token": round(n_bytes / max(1, counts["train"]["tokens"]), 4),
        "seconds": {"tokenizer": round(t_train, 2), "tokenize": round(t_tok, 2)},
    }
    atomic_write_json(directory / "manifest.json", manifest)
    logger.info(
        "data: tokenized in %s: %s train / %s validation tokens -> %s",
        duration(t_tok),
        count(counts["train"]["tokens"]),
        count(counts["val"]["tokens"]),
        directory,
    )
    return manifest


def prepare_data(data_cfg: DataConfig, vocab_size: int) -> PreparedData:
    """Corpus -> tokenizer -> shards for a config, reusing every cached step that is unchanged.

    The bundled corpus's manifest records its hash, which names its token cache: where that
    cache is complete, a run opens it without reading and parsing the corpus (about 0.25 s of
    every run of a study). The user's files are hashed from their text every time."""
    root = cache_root(data_cfg.cache_dir)
    if user_patterns(data_cfg.corpus) is None:
        _, bundled = build_bundled_corpus(data_cfg.cache_dir)
        prepared = cached_shards(bundled["sha256"], vocab_size, root)
        if prepared is not None:
            return prepared
    split = load_corpus(
        data_cfg.corpus,
        text_field=data_cfg.text_field,
        text_column=data_cfg.text_column,
        val_fraction=data_cfg.val_fraction,
        cache_dir=data_cfg.cache_dir,
    )
    return prepare_split_corpus(split, vocab_size, root)
