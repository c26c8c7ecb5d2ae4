"""Validation loss: the number every scaling law in this package is fitted to."""

from __future__ import annotations

import torch

from moescale.model import lm_loss
from moescale.train.device import Autocast


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast: Autocast,
) -> float:
    """Mean next-token loss over the fixed validation windows (token-weighted)."""
    was_training = model.training
    model.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x)
        total += lm_loss(out.logits, y).double() * y.numel()
        n += y.numel()
    model.train(was_training)
    return float(total / n)
