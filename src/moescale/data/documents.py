"""Documents, the on-disk text format, the seeded train/validation split and the corpus hash.

On-disk text format (`train.txt`, `val.txt`): documents one after another, each followed by a
line holding only `<|endoftext|>` (see `DOC_SEPARATOR`). The same format is accepted as user
input, so a `.txt` file may hold several documents.

Two splits, both deterministic. `split_documents` holds out whole documents, chosen by a seeded
permutation that depends only on the number of documents, the validation fraction and
`SPLIT_SEED`; the bundled corpus (486 documents) is split this way. `split_held_out` decides for
the user's files: whole documents when there are at least `MIN_DOCUMENTS_TO_HOLD_OUT` of them
and the held-out ones come to within a factor `SHARE_TOLERANCE` of the validation fraction by
bytes; otherwise the last `val_fraction` of every document (`split_tails`). Three 18 KB files
would otherwise give a third of the text, all from one file, to validation.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from moescale.errors import UserError
from moescale.fmt import human, plural, sig

EOS = "<|endoftext|>"
DOC_SEPARATOR = f"\n{EOS}\n"  # written after every document
SPLIT_SEED = 0  # the train/validation split of documents never changes between runs
MIN_DOCUMENTS_TO_HOLD_OUT = 20  # fewer documents: every document gives its tail to validation
SHARE_TOLERANCE = 2.0  # held-out bytes within this factor of val_fraction, else split tails


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


@dataclass
class HeldOut:
    """Train and validation texts and what was held out, in words, for the log."""

    train: list[str]
    val: list[str]
    by_document: bool  # False: the tail of each document went to validation
    reason: str = ""  # why the tails were held out instead of whole documents


def split_held_out(docs: list[Document], val_fraction: float, seed: int = SPLIT_SEED) -> HeldOut:
    """Whole documents to validation when there are enough of them, else each document's tail.

    "Enough" means at least `MIN_DOCUMENTS_TO_HOLD_OUT` documents whose seeded document split
    holds out between val_fraction / SHARE_TOLERANCE and val_fraction * SHARE_TOLERANCE of the
    bytes. Otherwise validation would be one or two documents: a share far from val_fraction
    and the style of whichever documents were drawn, not the corpus.
    """
    texts = [d.text for d in docs]
    if len(docs) < MIN_DOCUMENTS_TO_HOLD_OUT:
        reason = f"there are fewer than {MIN_DOCUMENTS_TO_HOLD_OUT} documents"
    else:
        train_idx, val_idx = split_indices(len(docs), val_fraction, seed)
        share = _n_bytes(texts[i] for i in val_idx) / max(1, _n_bytes(texts))
        if val_fraction / SHARE_TOLERANCE <= share <= val_fraction * SHARE_TOLERANCE:
            return HeldOut([texts[i] for i in train_idx], [texts[i] for i in val_idx], True)
        reason = f"whole documents would hold out {percent(share)} of the bytes"
    train, val = split_tails(texts, val_fraction)
    return HeldOut(train, val, False, reason)


def split_tails(texts: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Each text's head to train and its last ~val_fraction to validation (`cut_tail`).

    A text too short to cut goes to train whole; if no text can be cut there is nothing to
    validate on, which is an error the user can fix.
    """
    train, val = [], []
    for text in texts:
        head, tail = cut_tail(text, val_fraction)
        train.append(head or tail)
        if head and tail:
            val.append(tail)
    if not val:
        raise UserError(
            "the corpus is too short to hold out validation text (no document can be cut in "
            "two); give more text, or larger files."
        )
    return train, val


def cut_tail(text: str, val_fraction: float) -> tuple[str, str]:
    """(head, tail): the tail is the last ~val_fraction of the text, cut at a boundary.

    The cut is the paragraph break nearest to the target whose tail is within a factor
    `SHARE_TOLERANCE` of val_fraction, else such a line break, else such a space, else the
    character at the target. Whitespace at the cut is dropped, as between documents.
    """
    n = len(text)
    target = round(n * (1 - val_fraction))
    lo = int(n * (1 - val_fraction * SHARE_TOLERANCE))
    hi = int(n * (1 - val_fraction / SHARE_TOLERANCE)) + 1
    for sep in ("\n\n", "\n", " "):
        before = text.rfind(sep, max(0, lo), target)
        after = text.find(sep, target, max(target, hi))
        found = [c for c in (before, after) if c > 0]
        if found:
            cut = min(found, key=lambda c: abs(c - target))
            return text[:cut].rstrip(), text[cut:].lstrip()
    cut = min(max(1, target), n - 1) if n > 1 else n
    return text[:cut].rstrip(), text[cut:].lstrip()


def _n_bytes(texts: Iterable[str]) -> int:
    return sum(len(t.encode()) for t in texts)


def percent(share: float) -> str:
    """0.0512 -> '5.12 %'."""
    return f"{sig(100 * share, 3)} %"


def describe_held_out(held: HeldOut, val_fraction: float) -> str:
    """What went to validation, for the one log line of a split: documents or tails, bytes and
    the share of the corpus."""
    val_bytes = _n_bytes(held.val)
    share = val_bytes / max(1, val_bytes + _n_bytes(held.train))
    amount = f"{human(val_bytes)}B, {percent(share)} of the bytes"
    if held.by_document:
        return f"validation: {plural(len(held.val), 'whole document')} ({amount})"
    return (
        f"validation: the last ~{percent(val_fraction)} of each of "
        f"{plural(len(held.val), 'document')}, cut at a paragraph, line or word break ({amount}), "
        f"because {held.reason}"
    )


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
