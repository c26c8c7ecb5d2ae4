"""Byte-level BPE (Hugging Face `tokenizers`) trained on the train split only.

Byte-level means every string is encodable (no unknown token) and the 256 byte symbols are
always in the vocabulary; `<|endoftext|>` is token 0 and separates documents in the shards.
Training is deterministic for a given corpus and vocabulary size: the trainer breaks ties
between equally frequent pairs by pair id, and the saved JSON is ordered by id, which
`tests/data/test_tokenizer.py` checks across processes.

Bits per byte, the tokenizer-independent loss (Gao et al. 2020, "The Pile"), needs the UTF-8
bytes behind each token: `token_byte_lengths`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moescale.atomic import atomic_write_bytes
from moescale.data.documents import EOS
from moescale.errors import ConfigError
from moescale.fmt import count

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

N_BYTES = 256
MIN_VOCAB = N_BYTES + 1  # every byte plus <|endoftext|>
TRAIN_BYTES_CAP = 200_000_000  # train the tokenizer on at most this much text (evenly sampled)
SHORT_VOCAB_SHARE = 0.9  # warn when the tokenizer learns fewer than this share of vocab_size


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB:
        raise ConfigError(
            f"model.vocab_size: {vocab_size} is too small for a byte-level BPE tokenizer, which "
            f"needs the 256 bytes plus {EOS}; use at least {MIN_VOCAB} (e.g. 4096)."
        )


def _sample(docs: Sequence[str], cap: int) -> Iterator[str]:
    """Evenly spaced documents up to ~cap bytes: bounded time on big corpora, deterministic."""
    total = sum(len(d) for d in docs)
    stride = max(1, -(-total // cap)) if total > cap else 1
    yield from docs[::stride]


def train_tokenizer(
    docs: Sequence[str],
    vocab_size: int,
    cap_bytes: int = TRAIN_BYTES_CAP,
) -> Tokenizer:
    """Train a byte-level BPE with `<|endoftext|>` as token 0 on `docs`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sample = list(_sample(docs, cap_bytes))
    tok.train_from_iterator(sample, trainer=trainer, length=len(sample))
    warn_if_short_vocab(tok.get_vocab_size(), vocab_size)
    return tok


def warn_if_short_vocab(learned: int, vocab_size: int) -> None:
    """Warn when BPE ran out of pairs (min_frequency 2) long before `vocab_size`.

    The shards stay valid (every id is below vocab_size), but the model then carries embedding
    rows that no token ever uses, which counts as parameters in every convention and makes
    runs of this corpus compare badly with runs whose vocabulary is used.
    """
    if learned >= SHORT_VOCAB_SHARE * vocab_size:
        return
    logger.warning(
        "data: the tokenizer learned only %s of the %s tokens of model.vocab_size: the training "
        "text has too few repeated byte pairs. Set model.vocab_size to at most %s, or give "
        "more text; ids %s and up are never used.",
        count(learned),
        count(vocab_size),
        count(learned),
        count(learned),
    )


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    atomic_write_bytes(path, tok.to_str(pretty=True).encode())


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def token_byte_lengths(tok: Tokenizer, size: int | None = None) -> np.ndarray:
    """UTF-8 bytes behind each token id, for bits per byte: int64 array of max(size, vocab).

    The byte-level BPE writes each byte as one symbol of the GPT-2 byte alphabet (Radford et
    al. 2019), so a token stands for as many bytes as its string has characters. Special tokens
    (`<|endoftext|>`) stand for no text and count 0, as do ids the tokenizer never learned
    (`size` pads the array to model.vocab_size so any id of the shards can index it).
    """
    specials = tok.get_added_tokens_decoder()
    vocab = tok.get_vocab(with_added_tokens=True)
    out = np.zeros(max(size or 0, max(vocab.values(), default=-1) + 1), dtype=np.int64)
    for token, i in vocab.items():
        added = specials.get(i)
        if added is None:
            out[i] = len(token)
        elif not added.special:  # a plain added token is matched as raw text
            out[i] = len(added.content.encode())
    return out


def eos_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOS)
    if i is None:
        raise ValueError(f"tokenizer has no {EOS} token")
    return int(i)


# Splitting a document just before a blank line leaves the byte-level pre-tokenization (and so
# the ids) unchanged, because the GPT-2 regex already cuts there; the pieces balance the work of
# a few very long documents (Paradise Lost, a Bible book) across threads.
_PARAGRAPH = re.compile(r"(?<=\S)(?=\n\n)")


def encode_documents(tok: Tokenizer, docs: Sequence[str], chunk: int = 256) -> Iterator[list[int]]:
    """Token ids of each document followed by `<|endoftext|>`, one list per chunk of docs."""
    eos = eos_id(tok)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # fast: no offsets
    for start in range(0, len(docs), chunk):
        pieces: list[str] = []
        ends: list[int] = []
        for doc in docs[start : start + chunk]:
            pieces.extend(_PARAGRAPH.split(doc))
            ends.append(len(pieces))
        encs = encode(pieces, add_special_tokens=False)
        ids: list[int] = []
        begin = 0
        for end in ends:
            for enc in encs[begin:end]:
                ids.extend(enc.ids)
            ids.append(eos)
            begin = end
        yield ids
