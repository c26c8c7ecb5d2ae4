"""Documents, the on-disk text format, the seeded train/validation split and the corpus hash.

On-disk text format (`train.txt`, `val.txt`): documents one after another, each followed by a
line holding only `<|endoftext|>` (see `DOC_SEPARATOR`). The same format is accepted as user
input, so a `.txt` file may hold several documents.

The split is by whole document, never inside one, and depends only on the number of documents,
the validation fraction and `SPLIT_SEED`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from moescale.errors import UserError

EOS = "<|endoftext|>"
DOC_SEPARATOR = f"\n{EOS}\n"  # written after every document
SPLIT_SEED = 0  # the train/validation split of documents never changes between runs


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
