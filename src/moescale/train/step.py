"""One optimizer step: the unit the trainer repeats and the benchmarks time.

forward and backward over `n_micro` consecutive micro-batches (gradient accumulation), the
non-finite check, global-norm clipping, the optimizer step, and the aux-loss-free router-bias
update from the whole step's expert loads. The optimised loss is the micro-batch mean of
lm + aux_loss_coef * aux + z_loss_coef * z (aux and z summed over MoE layers, so the
coefficients are per layer, as in Switch and ST-MoE); the reported `loss` is the language-model
cross-entropy alone, the number the scaling laws use.

Under data parallelism (`sync`, moescale.train.distributed) each rank runs its own slice of the
step's batch: gradients are exchanged on the last micro-batch only, expert loads are summed
over the ranks after every micro-batch (so `balance_scope: step` and the router-bias update see
the whole group's loads, as Megatron-Core's global balancing loss does), and the loss, hence
the non-finite check, is the mean over the ranks: every rank takes the same branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from moescale.config import MoEConfig
from moescale.model import ModelOutput, lm_loss
from moescale.model.moe import load_imbalance
from moescale.run import Metric
from moescale.train.device import Autocast
from moescale.train.distributed import GradSync
from moescale.train.noise_scale import NoiseScaleEstimator


class NonFiniteError(Exception):
    """The step's loss or gradient norm is NaN or infinite; nothing was applied."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StepOptions:
    n_micro: int  # micro-batches per optimizer step
    grad_clip: float  # global-norm clipping threshold; 0: off
    moe: MoEConfig | None  # the MoE layers' loss coefficients; None: dense
    autocast: Autocast


@dataclass
class StepStats:
    """Sums over the micro-batches of one step (tensors: read them only when logging)."""

    lm_sum: torch.Tensor
    aux_sum: torch.Tensor
    z_sum: torch.Tensor
    dropped_sum: torch.Tensor
    loads: list[torch.Tensor] = field(default_factory=list)  # per MoE layer: slots per expert
    small_sq: torch.Tensor | None = None  # |g|^2 of the first micro-batch's gradient
    rank_rows: list[torch.Tensor] = field(default_factory=list)  # per expert-parallel layer:
    # rows each rank's experts received (this rank's group, summed over the micro-batches)


@dataclass
class StepResult:
    loss: float  # mean language-model cross-entropy over the micro-batches
    grad_norm: float  # global gradient norm before clipping
    stats: StepStats
    n_micro: int
    moe: bool

    def moe_metrics(self) -> dict[str, Any]:
        """aux_loss, z_loss (per micro-batch), load imbalance, dropped fraction; None if dense.
        Reading them synchronises with the device: call when logging only."""
        st, n = self.stats, self.n_micro
        return {
            Metric.AUX_LOSS: float(st.aux_sum) / n if self.moe else None,
            Metric.Z_LOSS: float(st.z_sum) / n if self.moe else None,
            Metric.LOAD_IMBALANCE: mean_imbalance(st.loads) if st.loads else None,
            Metric.DROPPED_FRAC: float(st.dropped_sum) / n if self.moe else None,
            Metric.RANK_IMBALANCE: mean_imbalance(st.rank_rows) if st.rank_rows else None,
        }


def mean_imbalance(loads: list[torch.Tensor]) -> float:
    """Mean over MoE layers of max/mean tokens per expert (summed over the micro-batches)."""
    per_layer = [load_imbalance(c) for c in loads]
    return sum(per_layer) / len(per_layer)


def grad_sq_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squared gradient entries, in float32 (a tensor: no device sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return torch.stack([n.float() for n in norms]).square().sum()


def forward_backward(
    forward: Callable[..., ModelOutput],
    x: torch.Tensor,
    y: torch.Tensor,
    opts: StepOptions,
    params: list[torch.Tensor] | None = None,
    sync: GradSync | None = None,
) -> StepStats:
    """Accumulate the gradient of one optimizer step over `n_micro` consecutive slices of x.

    The loss of each slice is divided by n_micro, so the accumulated gradient equals that of the
    whole batch. With `balance_scope: step` the balancing loss of each micro-batch uses the
    expert loads of the step's micro-batches so far, the last one seeing the whole step's
    (Megatron-Core's global auxiliary loss under gradient accumulation); `micro_batch` uses
    each micro-batch's own loads, so the objective then depends on micro_batch_size. With
    `params`, also return the squared norm of the first micro-batch's gradient (the small-batch
    estimate of the noise scale). `sync`: data parallelism (module doc)."""
    n_micro, moe = opts.n_micro, opts.moe
    sync = sync or GradSync()
    step_balance = moe is not None and moe.balance_scope == "step"
    micro = x.shape[0] // n_micro
    zero = torch.zeros((), device=x.device)
    st = StepStats(zero.clone(), zero.clone(), zero.clone(), zero.clone())
    for i in range(n_micro):
        xs, ys = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]
        with sync.micro(last=i == n_micro - 1):
            with opts.autocast():
                out = forward(xs, st.loads) if step_balance and st.loads else forward(xs)
            lm = lm_loss(out.logits, ys)
            loss = lm
            if moe is not None:
                loss = loss + moe.aux_loss_coef * out.aux_loss + moe.z_loss_coef * out.z_loss
            (loss / n_micro).backward()
        if params is not None and i == 0:
            st.small_sq = grad_sq_norm(params) * n_micro**2
        st.lm_sum += lm.detach()
        if out.moe:
            st.aux_sum += out.aux_loss.detach()
            st.z_sum += out.z_loss.detach()
            counts = sync.sum([s.tokens_per_expert for s in out.moe])
            st.loads = (
                counts if not st.loads else [a + b for a, b in zip(st.loads, counts, strict=True)]
            )
            st.dropped_sum += torch.stack([s.dropped_frac for s in out.moe]).mean()
            rows = [s.parallel.rows_per_rank for s in out.moe if getattr(s, "parallel", None)]
            if rows:
                st.rank_rows = rows if not st.rank_rows else [
                    a + b for a, b in zip(st.rank_rows, rows, strict=True)]  # fmt: skip
    return st


def clip_gradients(params: list[torch.Tensor], grad_clip: float) -> float:
    """Scale the gradients to a global norm of `grad_clip` where it is exceeded (0: never);
    return the norm before clipping. Raises NonFiniteError, gradients untouched, when that norm
    is not finite.

    torch's clip_grad_norm_ multiplies every gradient by the coefficient clamped to 1, which
    spares it a host sync; the norm is read here anyway, so the gradients are scaled only when
    the coefficient, computed as torch computes it, is below 1: a pass over all gradients saved
    (10 against 16 ms for 27M parameters on the dev CPU; benchmarks/optimizer.py)."""
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None],
                                         foreach=True)  # fmt: skip
    total = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: all ranks'
    grad_norm = float(total)
    if not math.isfinite(grad_norm):
        raise NonFiniteError(f"non-finite gradient norm ({grad_norm})")
    if float(max_norm / (total + 1e-6)) < 1.0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return grad_norm


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    opts: StepOptions,
    *,
    forward: Callable[..., ModelOutput] | None = None,
    noise: NoiseScaleEstimator | None = None,
    sync: GradSync | None = None,
) -> StepResult:
    """One optimizer step on batch (x, y); raises NonFiniteError (before the optimizer step)
    when the loss or the gradient norm is not finite. `forward` is the model's forward to use
    (a torch.compile'd or data-parallel one; default `model`); `noise` receives this step's two
    gradient norms; `sync`: this rank's part in data parallelism (moescale.train.distributed)."""
    sync = sync or GradSync()
    params = [p for p in model.parameters() if p.requires_grad]
    small = noise is not None and sync.size == 1  # one rank: the first micro-batch is small
    fwd = forward if forward is not None else model  # a compiled module has no truth value
    st = forward_backward(fwd, x, y, opts, params if small else None, sync)
    loss = float(sync.mean(st.lm_sum)) / opts.n_micro
    if not math.isfinite(loss):
        raise NonFiniteError(f"non-finite loss ({loss})")
    sync.finish()
    grad_norm = clip_gradients(params, opts.grad_clip)
    small_sq = float(st.small_sq) if st.small_sq is not None else sync.local_grad_sq()
    if noise is not None and small_sq is not None:
        noise.update(small_sq, grad_norm**2, loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if st.loads:
        model.update_router_biases(st.loads)
    return StepResult(loss, grad_norm, st, opts.n_micro, opts.moe is not None)
