"""Data: the bundled corpus or the user's files -> byte-level BPE -> token shards -> batches.

The trainer uses three names::

    prepared = prepare_data(cfg.data, cfg.model.vocab_size, log=print)
    sampler = BatchSampler(prepared.train_tokens, cfg.model.seq_len, seed=cfg.train.seed)
    x_BS, y_BS = sampler.batch(step, batch_size)  # pure function of (seed, step, batch_size)
    evals = val_batches(prepared.val_tokens, seq_len, cfg.train.eval_tokens, batch_size)

Importing this package does not import torch or tokenizers (the CLI must start fast).
"""

from moescale.data.corpus import EOS, build_bundled_corpus, cache_root, load_corpus
from moescale.data.dataset import (
    BatchSampler,
    PreparedData,
    n_windows,
    prepare_data,
    token_dtype,
    val_batches,
)
from moescale.data.tokenizer import load_tokenizer

__all__ = [
    "EOS",
    "BatchSampler",
    "PreparedData",
    "build_bundled_corpus",
    "cache_root",
    "load_corpus",
    "load_tokenizer",
    "n_windows",
    "prepare_data",
    "token_dtype",
    "val_batches",
]
