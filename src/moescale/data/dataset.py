"""Token shards on disk and the resumable batch sampler the trainer reads them with.

Shards are flat memmaps (`train.bin`, `val.bin`) of uint16 (vocab <= 65536) or uint32 token
ids: each document's tokens followed by `<|endoftext|>`. They live in
`<cache>/tokens/<key>/` where the key hashes the corpus text, the split and the vocabulary
size, so a changed corpus or vocabulary gets a new directory and an unchanged one is reused
without retraining. `manifest.json` is written last: a directory without it is incomplete.

The sampler is a pure function of (seed, position): sequence k of the run is window
`perm_e[k mod W]` of the W non-overlapping windows of seq_len+1 tokens, where `perm_e` is a
seeded permutation drawn afresh for each epoch e = k // W. Resuming needs only the number of
sequences already consumed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from moescale.atomic import atomic_write, atomic_write_json
from moescale.data import corpus as corpus_mod
from moescale.data import tokenizer as tok_mod
from moescale.errors import UserError

if TYPE_CHECKING:
    import torch

    from moescale.config import DataConfig

SHARD_FORMAT = 1  # bump when tokenization or the shard layout changes
Log = Callable[[str], None]


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
    if not (directory / "tokenizer.json").is_file():
        return None
    return manifest


def _write_shard(
    path: Path,
    tok: Any,
    docs: Sequence[str],
    dtype: np.dtype,
    split: str,
    log: Log,
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
            if now - last > 5:
                last = now
                done = min(len(docs), (i + 1) * chunk)
                log(f"data:   {split}: {done}/{len(docs)} documents, {n:,} tokens "
                    f"({now - t0:.0f} s)")  # fmt: skip
        return n, h.hexdigest()

    return atomic_write(path, write)


def prepare_split_corpus(
    split: corpus_mod.SplitCorpus,
    vocab_size: int,
    root: Path,
    log: Log = print,
) -> PreparedData:
    """Tokenizer + shards for already split documents, cached under `root/tokens/<key>`."""
    tok_mod.check_vocab_size(vocab_size)
    key = cache_key(split.sha256, vocab_size)
    directory = root / "tokens" / key
    directory.mkdir(parents=True, exist_ok=True)
    built = False
    with corpus_mod.file_lock(directory / ".lock"):
        manifest = _read_manifest(directory)
        if manifest is None:
            built = True
            manifest = _build(split, vocab_size, directory, log)
    dtype = np.dtype(manifest["dtype"])
    prepared = PreparedData(
        train_tokens=open_shard(directory / "train.bin", dtype, manifest["train"]["tokens"]),
        val_tokens=open_shard(directory / "val.bin", dtype, manifest["val"]["tokens"]),
        tokenizer_path=directory / "tokenizer.json",
        dir=directory,
        manifest=manifest,
        built=built,
        eos_id=int(manifest["eos_id"]),
        vocab_size=vocab_size,
    )
    if not built:
        log(
            f"data: reusing {directory} ({manifest['train']['tokens']:,} train / "
            f"{manifest['val']['tokens']:,} validation tokens)"
        )
    return prepared


def _build(
    split: corpus_mod.SplitCorpus, vocab_size: int, directory: Path, log: Log
) -> dict[str, Any]:
    (directory / "manifest.json").unlink(missing_ok=True)
    mb = sum(len(d) for d in split.train) / 1e6
    log(f"data: training a byte-level BPE tokenizer (vocab {vocab_size}) on {mb:.1f} MB ...")
    t0 = time.time()
    tok = tok_mod.train_tokenizer(split.train, vocab_size)
    tok_mod.save_tokenizer(tok, directory / "tokenizer.json")
    t_train = time.time() - t0
    log(f"data: tokenizer trained in {t_train:.1f} s ({tok.get_vocab_size()} tokens)")
    dtype = token_dtype(vocab_size)
    t1 = time.time()
    counts = {}
    for name, docs in (("train", split.train), ("val", split.val)):
        n, sha = _write_shard(directory / f"{name}.bin", tok, docs, dtype, name, log)
        counts[name] = {"tokens": n, "documents": len(docs), "sha256": sha}
    t_tok = time.time() - t1
    n_bytes = sum(len(d.encode()) for d in split.train)
    manifest = {
        "format": SHARD_FORMAT,
        "corpus": split.description,
        "corpus_sha256": split.sha256,
        "vocab_size": vocab_size,
        "tokenizer_vocab": tok.get_vocab_size(),
        "tokenizer_sha256": corpus_mod.sha256_file(directory / "tokenizer.json"),
        "eos_id": tok_mod.eos_id(tok),
        "dtype": dtype.name,
        "train": counts["train"],
        "val": counts["val"],
        "bytes_per_token": round(n_bytes / max(1, counts["train"]["tokens"]), 4),
        "seconds": {"tokenizer": round(t_train, 2), "tokenize": round(t_tok, 2)},
    }
    atomic_write_json(directory / "manifest.json", manifest)
    log(
        f"data: tokenized in {t_tok:.1f} s: {counts['train']['tokens']:,} train / "
        f"{counts['val']['tokens']:,} validation tokens -> {directory}"
    )
    return manifest


def prepare_data(data_cfg: DataConfig, vocab_size: int, log: Log = print) -> PreparedData:
    """Corpus -> tokenizer -> shards for a config, reusing every cached step that is unchanged."""
    split = corpus_mod.load_corpus(
        data_cfg.corpus,
        text_field=data_cfg.text_field,
        text_column=data_cfg.text_column,
        val_fraction=data_cfg.val_fraction,
        cache_dir=data_cfg.cache_dir,
        log=log,
    )
    return prepare_split_corpus(split, vocab_size, corpus_mod.cache_root(data_cfg.cache_dir), log)


# --------------------------------------------------------------------------------------------
# Sampling


def n_windows(n_tokens: int, seq_len: int) -> int:
    return n_tokens // (seq_len + 1)


def _check_windows(tokens: np.ndarray, seq_len: int, what: str) -> int:
    if seq_len < 1:
        raise UserError(f"model.seq_len: got {seq_len}, must be positive.")
    w = n_windows(len(tokens), seq_len)
    if w < 1:
        raise UserError(
            f"the {what} token stream has {len(tokens)} tokens, but model.seq_len = {seq_len} "
            f"needs at least {seq_len + 1} per sequence; use a larger corpus or a shorter "
            "seq_len."
        )
    return w


class BatchSampler:
    """Training batches as a pure function of (seed, index, n); see the module docstring."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.windows = _check_windows(tokens, seq_len, "training")
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """Window order of one epoch; cached because consecutive batches share an epoch."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def window_ids(self, start: int, n: int) -> np.ndarray:
        """Window numbers of sequences start ... start+n-1 of the run."""
        k = start + np.arange(n, dtype=np.int64)
        epochs, pos = np.divmod(k, self.windows)
        out = np.empty(n, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.permutation(int(e))[pos[sel]]
        return out

    def sequences(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences start ... start+n-1 of the run: for micro-batches and data-parallel ranks
        (rank r of R in step i takes `sequences(i * B + r * B // R, B // R)`)."""
        if start < 0 or n < 1:
            raise ValueError(f"sequences(start={start}, n={n}): need start >= 0 and n >= 1")
        return _gather(self.tokens, self.window_ids(start, n), self.seq_len)

    def batch(self, index: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each LongTensor [n, seq_len]; y[:, t] is the token after x[:, t].

        Batch `index` of size n is sequences index*n ... index*n+n-1 of the run.
        """
        if index < 0 or n < 1:
            raise ValueError(f"batch(index={index}, n={n}): index must be >= 0 and n >= 1")
        return self.sequences(index * n, n)

    def epoch_of(self, sequences_consumed: int) -> float:
        return sequences_consumed / self.windows


def _gather(tokens: np.ndarray, windows: np.ndarray, seq_len: int) -> tuple[Any, Any]:
    import torch

    span = seq_len + 1
    idx_NS = windows[:, None] * span + np.arange(span, dtype=np.int64)[None, :]
    data_NS = torch.from_numpy(np.asarray(tokens[idx_NS], dtype=np.int64))
    return data_NS[:, :-1].contiguous(), data_NS[:, 1:].contiguous()


def val_batches(
    tokens: np.ndarray, seq_len: int, n_tokens: int, batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches: the first ceil(n_tokens / seq_len) windows, in order.

    Uses every window when the validation stream is shorter than n_tokens.
    """
    w = _check_windows(tokens, seq_len, "validation")
    if batch < 1:
        raise ValueError(f"val_batches: batch must be >= 1, got {batch}")
    count = min(w, max(1, -(-n_tokens // seq_len)))
    ids = np.arange(count, dtype=np.int64)
    return [_gather(tokens, ids[i : i + batch], seq_len) for i in range(0, count, batch)]
