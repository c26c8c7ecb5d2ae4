"""The resumable batch sampler the trainer reads token shards with, and validation batches.

The sampler is a pure function of (seed, position): sequence k of the run is window
`perm_e[k mod W]` of the W non-overlapping windows of seq_len+1 tokens, where `perm_e` is a
seeded permutation drawn afresh for each epoch e = k // W. Resuming needs only the number of
sequences already consumed. Validation batches are fixed: windows spread evenly over the
whole validation stream (`val_batches`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from moescale.errors import UserError

if TYPE_CHECKING:
    import torch


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
    """Fixed validation batches: ceil(n_tokens / seq_len) windows spread evenly over the stream.

    Window i of the `count` chosen is window floor(i * W / count) of the W non-overlapping
    windows, so every stretch of the validation stream (every held-out document of a corpus
    that is concatenated document by document) is measured, not the first few documents only;
    the first windows of the bundled corpus are a single play. The choice depends only on
    (len(tokens), seq_len, n_tokens), so it is the same at every evaluation of every run, dense
    or MoE. Uses every window when the stream is shorter than n_tokens.
    """
    w = _check_windows(tokens, seq_len, "validation")
    if batch < 1:
        raise ValueError(f"val_batches: batch must be >= 1, got {batch}")
    ids = val_window_ids(w, max(1, -(-n_tokens // seq_len)))
    return [_gather(tokens, ids[i : i + batch], seq_len) for i in range(0, len(ids), batch)]


def val_window_ids(windows: int, count: int) -> np.ndarray:
    """`count` evenly spaced, increasing, distinct window ids out of `windows` (all if fewer)."""
    if count >= windows:
        return np.arange(windows, dtype=np.int64)
    return np.arange(count, dtype=np.int64) * windows // count
