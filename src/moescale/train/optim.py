"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules.

Weight decay goes to weight matrices and packed expert tensors (parameters with >= 2 dims)
except the token embedding (tied to the LM head by default) and the MoE router: decaying the
embedding shrinks rare tokens' vectors towards zero, and decaying the router pulls its logits
towards uniform routing, which fights the load-balancing loss in a way that depends on the
coefficient. Norm gains (1-D) are never decayed.

Schedules are pure functions of the optimizer step, so a resumed run needs only the step.
Steps are counted from 0 here (`lr_at(0, ...)` is the lr of the first update):

- linear warmup over `warmup_steps = round(warmup_frac * total)`: lr * (step + 1) / warmup_steps;
- `constant`: lr after warmup;
- `cosine`: from lr at the first post-warmup step to lr * min_lr_ratio at the last step;
- `wsd`: lr until the last `round(decay_frac * total)` steps, then linear down to
  lr * min_lr_ratio, reached at the last step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from moescale.config import TrainConfig

if TYPE_CHECKING:
    import torch


def warmup_steps(total: int, warmup_frac: float) -> int:
    return min(total, round(warmup_frac * total))


def lr_at(step: int, total: int, t: TrainConfig) -> float:
    """Learning rate of the update at 0-based `step` of a run of `total` steps."""
    peak, floor = t.lr, t.lr * t.min_lr_ratio
    warm = warmup_steps(total, t.warmup_frac)
    if step < warm:
        return peak * (step + 1) / warm
    if t.schedule == "constant":
        return peak
    if t.schedule == "cosine":
        span = total - warm - 1
        progress = min(1.0, (step - warm) / span) if span > 0 else 1.0
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if t.schedule == "wsd":
        decay = min(total - warm, round(t.decay_frac * total))
        start = total - decay
        if decay <= 0 or step < start:
            return peak
        progress = min(1.0, (step - start + 1) / decay)
        return peak - (peak - floor) * progress
    raise ValueError(f"unknown schedule {t.schedule!r}")  # validated at load


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and everything else (see the module docstring)."""
    no_decay_ids = {id(model.embed.weight)} if hasattr(model, "embed") else set()
    for name, module in model.named_modules():
        if name.endswith("router"):
            no_decay_ids.update(id(p) for p in module.parameters())
    decay, other = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in no_decay_ids else other).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device_type: str) -> torch.optim.AdamW:
    import torch

    return torch.optim.AdamW(
        param_groups(model, t.weight_decay),
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        eps=t.eps,
        fused=device_type == "cuda",
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
