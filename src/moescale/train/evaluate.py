"""Validation loss, its standard error, and bits per byte: the numbers the scaling laws use.

The validation sample is a fixed set of windows spread over every validation document
(`moescale.data.val_batches`), the same for every run of a corpus and vocabulary, so runs differ
only by their model. The standard error treats windows as the sampling unit (tokens within a
window are correlated). Bits per byte divide the summed loss, in bits, by the UTF-8 bytes the
predicted tokens stand for, which makes runs with different tokenizers comparable.

Under torchrun (`sync`, moescale.train.distributed) rank r scores windows r, r+W, ... and the
sums are added over the ranks, so evaluation costs 1/W per rank. Every rank runs the same
number of forward passes (a rank short of a batch repeats one and ignores it), because an
expert-parallel or FSDP forward is a collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from moescale.train.device import Autocast
from moescale.train.distributed import GradSync


@dataclass
class EvalResult:
    loss: float  # mean next-token loss, nats per token
    loss_se: float  # standard error of `loss` over the windows
    bits_per_byte: float | None  # None without the tokenizer's byte lengths
    tokens: int  # tokens scored


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast: Autocast,
    token_bytes: np.ndarray | None = None,
    sync: GradSync | None = None,
) -> EvalResult:
    """Score the fixed validation windows (token-weighted mean; every window has seq_len
    tokens, so the window means weigh equally); `sync`: this rank's share (module doc)."""
    sync = sync or GradSync()
    was_training = model.training
    model.eval()
    # sums over this rank's windows: loss, window means and their squares, windows, tokens, bytes
    acc = torch.zeros(6, dtype=torch.float64)
    mine = batches[sync.rank :: sync.size]
    for j in range(-(-len(batches) // sync.size)):
        x, y = mine[j] if j < len(mine) else batches[0]  # the same number of forwards per rank
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x)
        if j >= len(mine):
            continue
        logits = out.logits.float()
        loss_BS = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                  reduction="none").view(y.shape)  # fmt: skip
        means = loss_BS.double().mean(-1).cpu()
        n_bytes = int(token_bytes[y.cpu().numpy()].sum()) if token_bytes is not None else 0
        acc += torch.tensor([float(loss_BS.double().sum()), float(means.sum()),
                             float(means.square().sum()), len(means), y.numel(), n_bytes],
                            dtype=torch.float64)  # fmt: skip
    model.train(was_training)
    total, s1, s2, n, n_tokens, n_bytes = sync.sum([acc.to(device)])[0].cpu().tolist()
    var = (s2 - s1 * s1 / n) / (n - 1) if n > 1 else math.nan
    se = math.sqrt(max(var, 0.0) / n) if n > 1 else math.nan
    bpb = total / math.log(2) / n_bytes if n_bytes > 0 else None
    return EvalResult(loss=total / n_tokens, loss_se=se, bits_per_byte=bpb, tokens=int(n_tokens))
