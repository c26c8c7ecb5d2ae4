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
from moescale.model import experts


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
    prior_counts_X: torch.Tensor | None = None,
    drop: bool = True,
) -> Routing:
    """Pick experts for each token and their weights; compute losses and metrics. Float32.

    `prior_counts_X`: slots per expert already routed by earlier micro-batches of the same
    optimizer step; with them the balancing loss uses the step's loads so far (global-batch
    balancing, `balance_scope: step`), not only this micro-batch's. `drop=False` ignores
    `capacity_factor` (evaluation and generation run dropless); expert choice keeps its
    capacity, which is its routing rule."""
    logits_TX = logits_TX.float()
    if cfg.router == "expert_choice":
        return _expert_choice(logits_TX, cfg)
    n_tok, n_exp = logits_TX.shape
    k = cfg.active_experts
    if cfg.router == "softmax_after_topk":
        probs_TX = logits_TX.softmax(-1)
        top_logits_TK, expert_idx_TK = logits_TX.topk(k, dim=-1)
        weight_TK = top_logits_TK.softmax(-1)
    elif cfg.router == "softmax_before_topk":
        probs_TX = logits_TX.softmax(-1)
        weight_TK, expert_idx_TK = probs_TX.topk(k, dim=-1)
    elif cfg.router == "sigmoid":
        scores_TX = torch.sigmoid(logits_TX)
        probs_TX = scores_TX / scores_TX.sum(-1, keepdim=True)
        select_TX = scores_TX if bias_X is None else scores_TX + bias_X
        expert_idx_TK = select_TX.topk(k, dim=-1).indices
        weight_TK = scores_TX.gather(1, expert_idx_TK)  # the bias steers selection only
    else:  # validated at load; kept for library callers
        raise ValueError(f"unknown router {cfg.router!r}")
    if cfg.renormalizes and cfg.router != "softmax_after_topk":
        weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True)

    counts_X = experts.expert_counts(expert_idx_TK, n_exp)
    balance_X = counts_X if prior_counts_X is None else counts_X + prior_counts_X
    f_X = balance_X.float() / balance_X.sum().clamp_min(1)
    aux_loss = n_exp * (f_X * probs_TX.mean(0)).sum()
    z_loss = torch.logsumexp(logits_TX, -1).square().mean()

    dropped_frac = logits_TX.new_zeros(())
    if cfg.capacity_factor is not None and drop:
        capacity = math.ceil(n_tok * k * cfg.capacity_factor / n_exp)
        priority = weight_TK.detach() if cfg.capacity_policy == "weight" else None
        expert_idx_TK, n_dropped = apply_capacity(expert_idx_TK, n_exp, capacity, priority)
        dropped_frac = logits_TX.new_tensor(n_dropped / (n_tok * k))
    stats = MoEStats(aux_loss, z_loss, counts_X.detach(), dropped_frac)
    return Routing(expert_idx_TK, weight_TK, stats)


def _expert_choice(logits_TX: torch.Tensor, cfg: MoEConfig) -> Routing:
    """Expert-choice routing (Zhou et al. 2022): each expert takes the `capacity` tokens that
    score it highest, weighted by their softmax probability. Balanced by construction (no
    balancing loss); a token may get several experts or none. Not causal: whether a token is
    picked depends on the other tokens of the batch, later ones included, so its evaluation
    loss is not that of a left-to-right language model (docs/science.md).

    Slots are laid out T x X (slot e of token t is expert e, or X when e did not pick t), so
    every expert backend runs it unchanged."""
    n_tok, n_exp = logits_TX.shape
    factor = cfg.capacity_factor if cfg.capacity_factor is not None else 1.0
    capacity = min(n_tok, math.ceil(n_tok * cfg.active_experts * factor / n_exp))
    probs_TX = logits_TX.softmax(-1)
    picked_CX = probs_TX.topk(capacity, dim=0).indices  # each column: one expert's tokens
    mask_TX = torch.zeros_like(probs_TX, dtype=torch.bool)
    mask_TX[picked_CX, torch.arange(n_exp, device=logits_TX.device)] = True
    experts_X = torch.arange(n_exp, device=logits_TX.device)
    expert_idx_TX = torch.where(mask_TX, experts_X, n_exp)
    weight_TX = probs_TX * mask_TX
    z_loss = torch.logsumexp(logits_TX, -1).square().mean()
    unrouted = (~mask_TX.any(-1)).float().mean()  # share of tokens no expert picked
    counts_X = mask_TX.sum(0)
    stats = MoEStats(logits_TX.new_zeros(()), z_loss, counts_X.detach(), unrouted.detach())
    return Routing(expert_idx_TX, weight_TX, stats)


def apply_capacity(
    expert_idx_TK: torch.Tensor,
    n_experts: int,
    capacity: int,
    priority_TK: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Keep each expert's `capacity` slots of highest priority (ties, and no priority: first
    come, first served in token order); mark the rest dropped (index X). With the routing
    weights as priority this is Megatron-Core's default "probs" drop policy."""
    flat = expert_idx_TK.reshape(-1)
    order = torch.arange(flat.numel(), device=flat.device)
    if priority_TK is not None:
        order = torch.argsort(-priority_TK.reshape(-1), stable=True)
    order = order[torch.argsort(flat[order], stable=True)]  # by expert, then by priority
    counts = experts.expert_counts(flat, n_experts)
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


def forward_scale(cfg: MoEConfig) -> float:
    """1 / the routing weight of one kept slot at init, so that every router and every G starts
    with a layer output of a dense SwiGLU's scale. Renormalised kept weights (softmax_after_topk,
    and by default sigmoid) are about 1/(k*G) each; softmax_before_topk and expert_choice keep
    softmax probabilities of about 1/(E*G) (Switch's top-1 layer would start E times smaller than
    a fine-grained one: a handicap of the architecture's recipe, not of the architecture);
    sigmoid without renormalisation keeps about 1/2."""
    if cfg.router == "softmax_after_topk" or cfg.renormalizes:
        return float(cfg.active_experts)
    if cfg.router == "sigmoid":
        return 2.0
    return float(cfg.routed_experts)


def route_tokens(
    x_TD: torch.Tensor, layer: nn.Module, prior_counts_X: torch.Tensor | None = None
) -> tuple[Routing, torch.Tensor]:
    """A layer's routing of its tokens (router logits in float32 under autocast, the balancing
    bias when enabled) and the weights the experts' outputs are combined with (times the
    layer's `out_scale`). Shared by MoEFFN and its expert-parallel twin (model/parallel.py)."""
    with torch.autocast(x_TD.device.type, enabled=False):
        logits_TX = F.linear(x_TD.float(), layer.router.weight.float())
    bias = layer.expert_bias_X if layer.cfg.bias_update_rate > 0 else None
    # capacity binds in training only: a capacity over the forward's tokens would make an
    # evaluated token's loss depend on the other tokens of its batch (later ones included) and
    # on the evaluation batch size, which differs between runs of a batch-size axis
    r = route(logits_TX, layer.cfg, bias, prior_counts_X, drop=layer.training)
    weight_TK = r.weight_TK * layer.out_scale if layer.out_scale != 1.0 else r.weight_TK
    return r, weight_TK


class MoEFFN(nn.Module):
    """E*G routed SwiGLU experts of hidden d_ff/G in packed 3-D weights, plus shared experts."""

    def __init__(self, d_model: int, d_ff: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        n_exp, hid = cfg.routed_experts, cfg.expert_hidden(d_ff)
        self.d_ff = d_ff
        self.router = nn.Linear(d_model, n_exp, bias=False)
        # gate (w1) and up (w3) projections side by side: one matmul per expert
        self.w13_XDH = nn.Parameter(torch.empty(n_exp, d_model, 2 * hid))
        self.w2_XFD = nn.Parameter(torch.empty(n_exp, hid, d_model))
        self.shared = SwiGLU(d_model, cfg.shared_experts * d_ff) if cfg.shared_experts else None
        # Aux-loss-free balancing (sigmoid router): a selection bias nudged after each step.
        self.register_buffer("expert_bias_X", torch.zeros(n_exp), persistent=True)
        # A fixed multiplier of the routed experts' output (Megatron-Core's
        # moe_router_topk_scaling_factor, DeepSeek's routed_scaling_factor), see init_weights.
        self.out_scale = forward_scale(cfg) if cfg.expert_init == "forward_scale" else 1.0

    def init_weights(self, std: float, out_std: float) -> None:
        """Inputs N(0, std); the down-projection by `expert_init`.

        A token's output is a weighted sum over k*G experts whose weights are about 1/(k*G) at
        init, so without compensation a fine-grained layer's output variance shrinks like 1/G^2.
        `forward_scale` (default) multiplies the experts' output by one over a kept weight at
        init (k*G when renormalised; `forward_scale()` has every router) in the forward pass and
        draws the down-projection N(0, out_std): the output scale at init equals a dense SwiGLU
        of hidden k*d_ff whatever G, and so does the relative size of an optimizer step (Adam
        moves each weight by about lr whatever its scale). `scaled_weights` draws the
        down-projection N(0, out_std * that factor) instead: the same output at init, but its
        relative update shrinks like 1/G, so fine-grained layers learn slower. `fan_in` draws every
        expert weight with the std of its dense-equivalent fan-in (1/sqrt(d_model) in,
        1/sqrt(k*d_ff) out, depth-scaled like out_std), without multiplier."""
        cfg = self.cfg
        nn.init.normal_(self.router.weight, std=std)
        if cfg.expert_init == "fan_in":
            d_model, depth = self.w13_XDH.shape[1], out_std / std
            nn.init.normal_(self.w13_XDH, std=d_model**-0.5)
            nn.init.normal_(self.w2_XFD, std=depth * (cfg.top_k * self.d_ff) ** -0.5)
        else:
            nn.init.normal_(self.w13_XDH, std=std)
            # scaled_weights: forward_scale's factor (router-dependent: E*G for unnormalised
            # softmax), moved from the forward pass into the init std
            scale = forward_scale(cfg) if cfg.expert_init == "scaled_weights" else 1.0
            nn.init.normal_(self.w2_XFD, std=out_std * scale)
        if self.shared is not None:
            nn.init.normal_(self.shared.w1.weight, std=std)
            nn.init.normal_(self.shared.w3.weight, std=std)
            nn.init.normal_(self.shared.w2.weight, std=out_std)

    def forward(
        self, x_BSD: torch.Tensor, prior_counts_X: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MoEStats]:
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        r, weight_TK = route_tokens(x_TD, self, prior_counts_X)
        y_TD = experts.expert_forward(
            x_TD,
            r.expert_idx_TK,
            weight_TK,
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
