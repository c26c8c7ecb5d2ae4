"""Validation loss, its standard error, and bits per byte: the numbers the scaling laws use.

The validation sample is a fixed set of windows spread over every validation document
(`moescale.data.val_batches`), the same for every run of a corpus and vocabulary, so runs differ
only by their model. The standard error treats windows as the sampling unit (tokens within a
window are correlated). Bits per byte divide the summed loss, in bits, by the UTF-8 bytes the
predicted tokens stand for, which makes runs with different tokenizers comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from moescale.train.device import Autocast


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
) -> EvalResult:
    """Score the fixed validation windows (token-weighted mean; every window has seq_len
    tokens, so the window means weigh equally)."""
    was_training = model.training
    model.eval()
    window_means, total = [], 0.0
    n_bytes, n_tokens = 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x)
        logits = out.logits.float()
        loss_BS = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                  reduction="none").view(y.shape)  # fmt: skip
        window_means.append(loss_BS.double().mean(-1).cpu())
        total += float(loss_BS.double().sum())
        n_tokens += y.numel()
        if token_bytes is not None:
            n_bytes += int(token_bytes[y.cpu().numpy()].sum())
    model.train(was_training)
    means = torch.cat(window_means)
    se = float(means.std() / math.sqrt(len(means))) if len(means) > 1 else math.nan
    bpb = total / math.log(2) / n_bytes if n_bytes > 0 else None
    return EvalResult(loss=total / n_tokens, loss_se=se, bits_per_byte=bpb, tokens=n_tokens)
