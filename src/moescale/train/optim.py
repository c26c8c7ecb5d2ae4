"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules.

Weight decay goes to weight matrices and packed expert tensors (parameters with >= 2 dims)
except the token embedding (tied to the LM head by default) and the MoE router: decaying the
embedding shrinks rare tokens' vectors towards zero, and decaying the router pulls its logits
towards uniform routing, which fights the load-balancing loss in a way that depends on the
coefficient. Norm gains (1-D) are never decayed.

Schedules are pure functions of the optimizer step, so a resumed run needs only the step.
Steps are counted from 0 here (`lr_at(0, ...)` is the lr of the first update):

- linear warmup over `warmup_steps = round(warmup_frac * total)`, or, with `warmup_tokens`,
  `max(1, round(warmup_tokens / tokens_per_step))` steps (0 tokens: none), so that runs of
  different budgets share one warmup: lr * (step + 1) / warmup_steps;
- `constant`: lr after warmup;
- `cosine`: from lr at the first post-warmup step to lr * min_lr_ratio at the last step;
- `wsd`: lr until the last `round(decay_frac * total)` steps, then linear down to
  lr * min_lr_ratio, reached at the last step.

WSD decay branches (Hägele et al. 2024): with `warmup_tokens` set, a wsd run of any budget has
the same lr at every step before its decay starts, so one long run's checkpoint at
`decay_start_step(t, seq_len, tokens=D)` is exactly where a run of budget D would start its
decay; a branch that continues from it (`train.init_from`) reproduces the run of budget D.
Everything here is torch-free, so a study driver computes these steps without torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from moescale.config import TrainConfig

if TYPE_CHECKING:
    import torch


def warmup_steps(
    total: int,
    warmup_frac: float,
    warmup_tokens: int | None = None,
    tokens_per_step: int | None = None,
) -> int:
    """Steps of linear warmup in a run of `total` steps: a share of them, or `warmup_tokens`
    in whole steps (at least one when > 0), whatever the run's length."""
    if warmup_tokens is None:
        return min(total, round(warmup_frac * total))
    if not tokens_per_step or tokens_per_step <= 0:
        raise ValueError("warmup_tokens needs tokens_per_step (batch_size x seq_len)")
    if warmup_tokens <= 0:
        return 0
    return min(total, max(1, round(warmup_tokens / tokens_per_step)))


def decay_steps(total: int, warm: int, t: TrainConfig) -> int:
    """wsd: steps of the final decay (the last of the run); 0 for the other schedules."""
    return min(total - warm, round(t.decay_frac * total)) if t.schedule == "wsd" else 0


def total_steps(t: TrainConfig, seq_len: int, tokens: int | None = None) -> int:
    """Optimizer steps of a run of `tokens` (default `t.tokens`): whole steps only."""
    return (t.tokens if tokens is None else tokens) // (t.batch_size * seq_len)


def decay_start_step(t: TrainConfig, seq_len: int, tokens: int | None = None) -> int:
    """The number of steps a wsd run of `tokens` (default `t.tokens`) trains at the peak lr
    (warmup included) before its decay: the step of the checkpoint a decay branch of that
    budget starts from. For cosine and constant schedules, the run's last step."""
    total = total_steps(t, seq_len, tokens)
    warm = warmup_steps(total, t.warmup_frac, t.warmup_tokens, t.batch_size * seq_len)
    return total - decay_steps(total, warm, t)


def branch_steps(t: TrainConfig, seq_len: int) -> dict[int, int]:
    """{budget D: its decay-start step} for every D in `t.branch_tokens`."""
    return {d: decay_start_step(t, seq_len, tokens=d) for d in t.branch_tokens}


def lr_at(step: int, total: int, t: TrainConfig, tokens_per_step: int | None = None) -> float:
    """Learning rate of the update at 0-based `step` of a run of `total` steps
    (`tokens_per_step` converts `t.warmup_tokens` into steps; needed only when it is set)."""
    peak, floor = t.lr, t.lr * t.min_lr_ratio
    warm = warmup_steps(total, t.warmup_frac, t.warmup_tokens, tokens_per_step)
    if step < warm:
        return peak * (step + 1) / warm
    if t.schedule == "constant":
        return peak
    if t.schedule == "cosine":
        span = total - warm - 1
        progress = min(1.0, (step - warm) / span) if span > 0 else 1.0
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if t.schedule == "wsd":
        decay = decay_steps(total, warm, t)
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

    # fused: one vectorized pass over each tensor. PyTorch's CPU default is a Python loop of about
    # ten ATen ops per tensor, each a pass over memory: 2.8x slower on the 27M-parameter MoE
    # model of the benchmarks (51 against 17 ms a step; benchmarks/optimizer.py)
    return torch.optim.AdamW(
        param_groups(model, t.weight_decay),
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        eps=t.eps,
        fused=device_type in ("cpu", "cuda"),
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
