"""Data: the bundled corpus or the user's files -> byte-level BPE -> token shards -> batches.

The trainer uses three names::

    prepared = prepare_data(cfg.data, cfg.model.vocab_size)
    sampler = BatchSampler(prepared.train_tokens, cfg.model.seq_len, seed=cfg.train.seed)
    x_BS, y_BS = sampler.batch(step, batch_size)  # pure function of (seed, step, batch_size)
    evals = val_batches(prepared.val_tokens, seq_len, cfg.train.eval_tokens, batch_size)
    n_bytes = prepared.token_bytes[y.numpy()].sum()  # UTF-8 bytes behind y: bits per byte

Modules, in the order data flows through them: `cache` (cache root, lock, file hashes),
`documents` (documents, on-disk text format, the split by document or by tail, corpus hash),
`clean` (text cleaning), `sources` (the registry packages behind the bundled corpus), `bundled`
(its cache and manifest), `user_files` (the user's .txt/.jsonl/.parquet files), `corpus`
(`load_corpus`, the entry point for `data.corpus`), `tokenizer` (byte-level BPE, the bytes
behind each token), `shards` (token shards on disk, `prepare_data`), `sampler` (training and
validation batches). Progress is logged through `logging` under "moescale.data".

Importing this package does not import torch or tokenizers (the CLI must start fast).
"""

from moescale.data.bundled import build_bundled_corpus
from moescale.data.cache import cache_root
from moescale.data.corpus import load_corpus
from moescale.data.documents import EOS
from moescale.data.sampler import BatchSampler, n_windows, val_batches
from moescale.data.shards import PreparedData, prepare_data, token_dtype
from moescale.data.tokenizer import load_tokenizer, token_byte_lengths

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
    "token_byte_lengths",
    "token_dtype",
    "val_batches",
]
