"""The MoE feed-forward layer: router, balancing losses, capacity, metrics (docs/science.md).

Legend: T tokens, D d_model, X routed experts (E*G), F expert hidden (d_ff/G), K slots per token
(k*G), H = 2F (gate and up packed). `logits_TX` router logits, `expert_idx_TK` chosen experts,
`weight_TK` their weights.

Fine granularity G splits each of the E standard experts into G experts of hidden d_ff/G and
routes each token to k*G of them, so total and active expert parameters equal the G = 1 layer's;
only the router (D x E*G) grows. The layer returns its losses and metrics in `MoEStats` instead of
stashing them anywhere: the caller weights and sums them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from moescale.config import MoEConfig
from moescale.model.experts import expert_forward


@dataclass
class MoEStats:
    """What one MoE layer reports for one forward pass (losses unweighted by their coefs)."""

    aux_loss: torch.Tensor  # Switch load balancing: X * sum_i f_i * P_i (1.0 when balanced)
    z_loss: torch.Tensor  # mean over tokens of logsumexp(logits)^2
    tokens_per_expert: torch.Tensor  # (X,) routed slots per expert, before dropping
    dropped_frac: torch.Tensor  # fraction of routed slots dropped by the capacity limit

    @property
    def load_imbalance(self) -> float:
        return load_imbalance(self.tokens_per_expert)


def load_imbalance(tokens_per_expert_X: torch.Tensor) -> float:
    """max / mean slots per expert: 1.0 is perfectly balanced."""
    c = tokens_per_expert_X.float()
    return float(c.max() / c.mean().clamp_min(1e-9))


@dataclass
class Routing:
    expert_idx_TK: torch.Tensor  # dropped slots carry index X
    weight_TK: torch.Tensor  # float32
    stats: MoEStats


def route(
    logits_TX: torch.Tensor,
    cfg: MoEConfig,
    bias_X: torch.Tensor | None = None,
) -> Routing:
    """Pick k*G experts per token and their weights; compute losses and metrics. Float32."""
    logits_TX = logits_TX.float()
    n_tok, n_exp = logits_TX.shape
    k = cfg.active_experts
    if cfg.router == "softmax_after_topk":
        probs_TX = logits_TX.softmax(-1)
        top_logits_TK, expert_idx_TK = logits_TX.topk(k, dim=-1)
        weight_TK = top_logits_TK.softmax(-1)
    elif cfg.router == "softmax_before_topk":
        probs_TX = logits_TX.softmax(-1)
        weight_TK, expert_idx_TK = probs_TX.topk(k, dim=-1)
        if cfg.normalize_topk:
            weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True)
    elif cfg.router == "sigmoid":
        scores_TX = torch.sigmoid(logits_TX)
        probs_TX = scores_TX / scores_TX.sum(-1, keepdim=True)
        select_TX = scores_TX if bias_X is None else scores_TX + bias_X
        expert_idx_TK = select_TX.topk(k, dim=-1).indices
        weight_TK = scores_TX.gather(1, expert_idx_TK)  # the bias steers selection only
        if cfg.normalize_topk:
            weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True)
    else:  # validated at load; kept for library callers
        raise ValueError(f"unknown router {cfg.router!r}")

    counts_X = torch.bincount(expert_idx_TK.reshape(-1), minlength=n_exp)
    f_X = counts_X.float() / (n_tok * k)
    aux_loss = n_exp * (f_X * probs_TX.mean(0)).sum()
    z_loss = torch.logsumexp(logits_TX, -1).square().mean()

    dropped_frac = logits_TX.new_zeros(())
    if cfg.capacity_factor is not None:
        capacity = math.ceil(n_tok * k * cfg.capacity_factor / n_exp)
        expert_idx_TK, n_dropped = apply_capacity(expert_idx_TK, n_exp, capacity)
        dropped_frac = logits_TX.new_tensor(n_dropped / (n_tok * k))
    stats = MoEStats(aux_loss, z_loss, counts_X.detach(), dropped_frac)
    return Routing(expert_idx_TK, weight_TK, stats)


def apply_capacity(
    expert_idx_TK: torch.Tensor, n_experts: int, capacity: int
) -> tuple[torch.Tensor, int]:
    """Keep each expert's first `capacity` slots in token order; mark the rest dropped (index X)."""
    flat = expert_idx_TK.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    keep = rank < capacity
    dropped = int((~keep).sum())
    return torch.where(keep, flat, n_experts).view_as(expert_idx_TK), dropped


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoEFFN(nn.Module):
    """E*G routed SwiGLU experts of hidden d_ff/G in packed 3-D weights, plus shared experts."""

    def __init__(self, d_model: int, d_ff: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        n_exp, hid = cfg.routed_experts, cfg.expert_hidden(d_ff)
        self.router = nn.Linear(d_model, n_exp, bias=False)
        # gate (w1) and up (w3) projections side by side: one matmul per expert
        self.w13_XDH = nn.Parameter(torch.empty(n_exp, d_model, 2 * hid))
        self.w2_XFD = nn.Parameter(torch.empty(n_exp, hid, d_model))
        self.shared = SwiGLU(d_model, cfg.shared_experts * d_ff) if cfg.shared_experts else None
        # Aux-loss-free balancing (sigmoid router): a selection bias nudged after each step.
        self.register_buffer("expert_bias_X", torch.zeros(n_exp), persistent=True)

    def init_weights(self, std: float, out_std: float) -> None:
        """Inputs N(0, std); outputs N(0, out_std * k*G) so the layer's output scale at init is
        that of a dense SwiGLU of hidden k*d_ff whatever G: near-uniform weights 1/(k*G) over
        k*G experts of hidden d_ff/G would otherwise shrink the output variance by G^2."""
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.w13_XDH, std=std)
        nn.init.normal_(self.w2_XFD, std=out_std * self.cfg.active_experts)
        if self.shared is not None:
            nn.init.normal_(self.shared.w1.weight, std=std)
            nn.init.normal_(self.shared.w3.weight, std=std)
            nn.init.normal_(self.shared.w2.weight, std=out_std)

    def forward(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, MoEStats]:
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        logits_TX = F.linear(x_TD.float(), self.router.weight.float())
        bias = self.expert_bias_X if self.cfg.bias_update_rate > 0 else None
        r = route(logits_TX, self.cfg, bias)
        y_TD = expert_forward(
            x_TD,
            r.expert_idx_TK,
            r.weight_TK,
            self.w13_XDH,
            self.w2_XFD,
            backend=self.cfg.backend,
        )
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        return y_TD.view_as(x_BSD), r.stats

    @torch.no_grad()
    def update_bias(self, tokens_per_expert_X: torch.Tensor) -> None:
        """DeepSeek-V3 aux-loss-free balancing: raise the bias of under-loaded experts."""
        if self.cfg.bias_update_rate <= 0:
            return
        load = tokens_per_expert_X.float()
        self.expert_bias_X += self.cfg.bias_update_rate * torch.sign(load.mean() - load)
