"""Expert parallelism: the X = E*G routed experts of an MoE layer split over the P ranks of a
process group, tokens sent to their experts' ranks and back with all_to_all.

Rank r holds the contiguous block of L = X / P experts [r*L, (r+1)*L). Each rank routes its own
tokens (the router and shared experts are replicated; routing is computed locally, as in
`MoEFFN`), then one layer's forward is:

1. sort the kept (token, slot) pairs by expert, hence by destination rank (dropped slots, index
   X, are left out);
2. one all_reduce of the (P, P, L) count matrix (source rank, destination rank, local expert):
   every rank learns what it receives, and every rank's load, in one small collective;
3. all_to_all the token vectors (uneven split sizes; zero-size splits are fine);
4. the receiving rank runs its local experts on the received rows (`experts.expert_forward`,
   local expert indices, weight 1);
5. all_to_all the expert outputs back (the reverse splits), then multiply by the routing
   weights on the sender, so the weights' gradient (hence the router's) stays local, and sum
   each token's K slots.

Both exchanges are `_AllToAll`, an autograd function whose backward is the reverse all_to_all,
so gradients flow through them. Backward is therefore collective: every rank of the group must
run the forward and the backward of every expert-parallel layer, in the same order (autograd's
dependency order ensures the order within a model).

Gradients, for a loss that is a sum over ranks of each rank's own loss: a rank's expert shard
gradient already holds every rank's tokens' contributions (they came to it), so expert shards
are not all-reduced; the replicated router and shared experts hold this rank's contribution
only and are all-reduced (summed) over the group, as in data parallelism. With per-rank mean
losses averaged over ranks (DDP), divide the expert shards' gradients by P as well.

Legend as in `moe.py`, plus: P ranks in the group, L local experts (X / P), M kept slots this
rank sends (sorted by expert), R rows this rank receives (sorted by source rank, then local
expert).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn as nn

from moescale.model import experts, kernels
from moescale.model.moe import MoEFFN, MoEStats, load_imbalance, route_tokens

if TYPE_CHECKING:
    from moescale.model.transformer import Transformer


@dataclass
class ExpertParallelStats:
    """What one expert-parallel exchange reports (counts of kept slots, after dropping)."""

    tokens_per_local_expert: torch.Tensor  # (L,) rows this rank's experts received
    rows_per_rank: torch.Tensor  # (P,) rows each rank's experts received
    sent_per_rank: torch.Tensor  # (P,) rows this rank sent to each rank
    tokens_per_expert: torch.Tensor  # (X,) kept slots per expert over the whole group

    @property
    def load_imbalance(self) -> float:
        """max / mean rows received over ranks: 1.0 is perfectly balanced, P is one busy rank."""
        return load_imbalance(self.rows_per_rank)


@dataclass
class ExpertParallelMoEStats(MoEStats):
    """`MoEStats` of this rank's routing (local tokens), plus the exchange's statistics."""

    parallel: ExpertParallelStats | None = None


def _group_rank_world(group) -> tuple[int, int]:
    """(rank, world size) in `group`; (0, 1) when torch.distributed is not initialised."""
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class _AllToAll(torch.autograd.Function):
    """all_to_all_single along dim 0 with uneven splits; backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x_ND, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x_ND.new_empty(sum(out_splits), *x_ND.shape[1:])
        dist.all_to_all_single(out, x_ND.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        out_splits, in_splits = ctx.splits
        grad_in = grad_out.new_empty(sum(in_splits), *grad_out.shape[1:])
        dist.all_to_all_single(
            grad_in, grad_out.contiguous(), in_splits, out_splits, group=ctx.group
        )
        return grad_in, None, None, None


def _exchange(x_ND, out_splits, in_splits, group, world):
    if world == 1:
        return x_ND
    return _AllToAll.apply(x_ND, out_splits, in_splits, group)


def expert_parallel_forward(
    x_TD: torch.Tensor,
    expert_idx_TK: torch.Tensor,
    weight_TK: torch.Tensor,
    w13_local_LDH: torch.Tensor,
    w2_local_LFD: torch.Tensor,
    n_experts: int,
    group=None,
    backend: str = "auto",
) -> tuple[torch.Tensor, ExpertParallelStats]:
    """`experts.expert_forward` with the experts split over the ranks of `group` (module doc).

    `expert_idx_TK` are global expert indices (X = `n_experts` marks a dropped slot);
    `w13_local_LDH` / `w2_local_LFD` are this rank's block of L = X / P experts. Collective:
    every rank of the group calls it (and its backward) together, with any number of tokens,
    zero included. Without an initialised process group it runs alone (P = 1)."""
    rank, world = _group_rank_world(group)
    if n_experts % world:
        raise ValueError(f"{n_experts} experts do not split evenly over {world} ranks")
    n_local = n_experts // world
    if w13_local_LDH.shape[0] != n_local or w2_local_LFD.shape[0] != n_local:
        raise ValueError(
            f"rank {rank} holds {w13_local_LDH.shape[0]} / {w2_local_LFD.shape[0]} experts; "
            f"{n_experts} experts over {world} ranks is {n_local} each"
        )
    n_tok, k = expert_idx_TK.shape
    dtype = experts._compute_dtype(x_TD)
    device = x_TD.device

    # 1. kept slots sorted by expert: destination ranks are contiguous blocks
    flat_S = expert_idx_TK.reshape(-1)
    counts_X = experts.expert_counts(flat_S, n_experts)
    order_M = torch.argsort(flat_S, stable=True)[: int(counts_X.sum())]
    tok_M = order_M // k

    # 2. one small collective: counts_PPL[src, dst, l], each rank filling its own row
    counts_PPL = torch.zeros(world, world, n_local, dtype=torch.int64, device=device)
    counts_PPL[rank] = counts_X.view(world, n_local)
    if world > 1:
        dist.all_reduce(counts_PPL, group=group)
    recv_PL = counts_PPL[:, rank]
    send_P = counts_PPL[rank].sum(1)
    send_splits, recv_splits = send_P.tolist(), recv_PL.sum(1).tolist()

    # 3. tokens to their experts' ranks
    with torch.autocast(device.type, enabled=False):
        x_MD = x_TD.to(dtype).index_select(0, tok_M)
    x_RD = _exchange(x_MD, recv_splits, send_splits, group, world)

    # 4. this rank's experts on the received rows
    local_R = torch.arange(n_local, device=device).repeat(world)
    local_R = local_R.repeat_interleave(recv_PL.reshape(-1))
    if x_RD.shape[0] == 0:  # nothing to compute (the grouped_mm path cannot view 0 rows), but
        # stay in the graph so that the backward's collective runs on this rank too
        zero = (x_RD.sum() + w13_local_LDH.sum() + w2_local_LFD.sum()) * 0
        h_RD = x_RD.new_zeros(0, w2_local_LFD.shape[2]) + zero.to(x_RD.dtype)
    else:
        h_RD = experts.expert_forward(
            x_RD,
            local_R[:, None],
            x_RD.new_ones(x_RD.shape[0], 1, dtype=torch.float32),
            w13_local_LDH,
            w2_local_LFD,
            backend=backend,
        )

    # 5. back to the sender, weighted; K slots summed in float32+ (gather_sum_torch: autograd)
    out_MD = _exchange(h_RD, send_splits, recv_splits, group, world)
    out_MD = out_MD * weight_TK.reshape(-1)[order_M].to(out_MD.dtype)[:, None]
    inv_S = torch.full((n_tok * k,), -1, dtype=torch.long, device=out_MD.device)  # -1: dropped
    inv_S[order_M] = torch.arange(len(order_M), device=out_MD.device)
    y_TD = kernels.gather_sum_torch(out_MD, inv_S.view(n_tok, k), out_MD.dtype)

    stats = ExpertParallelStats(
        tokens_per_local_expert=recv_PL.sum(0),
        rows_per_rank=counts_PPL.sum((0, 2)),
        sent_per_rank=send_P,
        tokens_per_expert=counts_PPL.sum(0).reshape(-1),
    )
    return y_TD, stats


def shard_experts(layer: MoEFFN, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s block of `layer`'s routed experts: (w13_LDH, w2_LFD), detached copies."""
    n_experts = layer.w13_XDH.shape[0]
    if n_experts % world:
        raise ValueError(f"{n_experts} experts do not split evenly over {world} ranks")
    n_local = n_experts // world
    sl = slice(rank * n_local, (rank + 1) * n_local)
    return layer.w13_XDH.detach()[sl].clone(), layer.w2_XFD.detach()[sl].clone()


class ExpertParallelMoE(nn.Module):
    """One rank's part of an expert-parallel `MoEFFN`: the replicated router, shared experts and
    selection bias, and this rank's block of routed experts. `forward` computes what
    `MoEFFN.forward` computes on this rank's tokens (`out_scale` times the routed experts'
    output, plus the shared experts), exchanging tokens with the other ranks of `group`."""

    def __init__(self, layer: MoEFFN, group=None):
        super().__init__()
        self.group = group
        self.rank, self.world = _group_rank_world(group)
        self.cfg = layer.cfg
        self.n_experts = layer.w13_XDH.shape[0]
        self.out_scale = layer.out_scale
        # registered in MoEFFN's order, so that both yield their parameters (hence an
        # optimizer's param_groups and its state) in the same order
        self.router = copy.deepcopy(layer.router)
        w13, w2 = shard_experts(layer, self.rank, self.world)
        self.w13_LDH = nn.Parameter(w13, requires_grad=layer.w13_XDH.requires_grad)
        self.w2_LFD = nn.Parameter(w2, requires_grad=layer.w2_XFD.requires_grad)
        self.shared = copy.deepcopy(layer.shared)
        self.register_buffer("expert_bias_X", layer.expert_bias_X.detach().clone())
        self.train(layer.training)

    @property
    def local_experts(self) -> range:
        """The global indices of this rank's experts."""
        n_local = self.n_experts // self.world
        return range(self.rank * n_local, (self.rank + 1) * n_local)

    def forward(
        self, x_BSD: torch.Tensor, prior_counts_X: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ExpertParallelMoEStats]:
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        r, weight_TK = route_tokens(x_TD, self, prior_counts_X)
        y_TD, par = expert_parallel_forward(
            x_TD,
            r.expert_idx_TK,
            weight_TK,
            self.w13_LDH,
            self.w2_LFD,
            self.n_experts,
            group=self.group,
            backend=self.cfg.backend,
        )
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        s = r.stats
        stats = ExpertParallelMoEStats(
            s.aux_loss, s.z_loss, s.tokens_per_expert, s.dropped_frac, parallel=par
        )
        return y_TD.view_as(x_BSD), stats

    @torch.no_grad()
    def update_bias(self, tokens_per_expert_X: torch.Tensor) -> None:
        """As `MoEFFN.update_bias`. Pass group-wide loads (this rank's
        `stats.tokens_per_expert`, routed slots before dropping, summed over the group with an
        all_reduce) so that every rank's replica of the bias stays the same."""
        MoEFFN.update_bias(self, tokens_per_expert_X)  # type: ignore[arg-type]


# Whole models and their checkpoints. A checkpoint always holds the canonical, single-process
# form (`w13_XDH` / `w2_XFD`, all X experts), so that runs of any world size (and evaluation,
# and decay branches) read each other's checkpoints; the expert-parallel form exists only in
# memory.

_SHARDED = (("w13_LDH", "w13_XDH"), ("w2_LFD", "w2_XFD"))  # (local name, canonical name)


def shard_model(model: Transformer, group=None) -> list[str]:
    """Make every MoE layer of a `Transformer` expert-parallel over `group`, in place, before
    any wrapper (DDP, compile) or optimizer sees the model. Returns the names of the sharded
    parameters: they differ between ranks, so DDP must neither broadcast nor average them
    (`DistributedDataParallel._set_params_and_buffers_to_ignore_for_model`)."""
    for block in model.blocks:
        if isinstance(block.ffn, MoEFFN):
            block.ffn = ExpertParallelMoE(block.ffn, group)
    return [local for local, _, _ in _sharded_params(model)]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose names `get_state_dict` uses: it drops DDP's and compile's wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _sharded_params(model: nn.Module) -> list[tuple[str, str, ExpertParallelMoE]]:
    """(local name, canonical name, layer) of every sharded parameter, in module order (the
    same on every rank, which the collectives below rely on)."""
    out = []
    for prefix, layer in _unwrap(model).named_modules():
        if isinstance(layer, ExpertParallelMoE):
            for local, canonical in _SHARDED:
                p = f"{prefix}." if prefix else ""
                out.append((p + local, p + canonical, layer))
    return out


def _comm_device(group, device: torch.device) -> torch.device:
    """Where `group`'s backend can exchange a tensor that lives on `device`."""
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if backend == "gloo" else device


def _gather_experts(t_L: torch.Tensor, group, world: int) -> torch.Tensor:
    """Every rank's block of experts, in rank order, on `t_L`'s device."""
    src = t_L.detach().to(_comm_device(group, t_L.device)).contiguous()
    parts = [torch.empty_like(src) for _ in range(world)]
    dist.all_gather(parts, src, group=group)
    return torch.cat(parts).to(t_L.device)


def _convert_state(model_sd: dict, optim_sd: dict, pairs: list, convert) -> tuple[dict, dict]:
    """Renames each pair's (old, new) parameter in both dicts and converts its value, and the
    optimizer state tensors of the parameter's shape (moments; not `step`), with
    `convert(old, tensor)`. New dicts, in the inputs' key order; conversions run in `pairs`
    order, then sorted state keys, so that collective conversions match across ranks."""
    names = dict(pairs)
    converted = {old: convert(old, model_sd[old]) for old, _ in pairs}
    model_out = {names.get(k, k): converted.get(k, v) for k, v in model_sd.items()}
    state = optim_sd.get("state", {})
    new_state = {}
    for old, _ in pairs:
        if old not in state:  # never stepped: no state to convert
            continue
        s, shape = state[old], model_sd[old].shape
        done = {k: convert(old, s[k]) for k in sorted(s) if _is_moment(s[k], shape)}
        new_state[old] = {k: done.get(k, v) for k, v in s.items()}
    optim_out = {
        **optim_sd,
        "state": {names.get(k, k): new_state.get(k, v) for k, v in state.items()},
        "param_groups": [
            {**g, "params": [names.get(p, p) for p in g["params"]]}
            for g in optim_sd.get("param_groups", [])
        ],
    }
    return model_out, optim_out


def _is_moment(v, shape: torch.Size) -> bool:
    return isinstance(v, torch.Tensor) and v.shape == shape


def _check_same_state_on_ranks(optim_sd: dict, pairs: list, model_sd: dict, group, world):
    """Raises on every rank (instead of hanging in a gather some ranks skip) unless every rank
    holds optimizer state for the same sharded parameters."""
    state, sig = optim_sd.get("state", {}), []
    for old, _ in pairs:  # per parameter: 0 without state, else 1 + its number of moments
        moments = [v for v in state.get(old, {}).values() if _is_moment(v, model_sd[old].shape)]
        sig.append(1 + len(moments) if old in state else 0)
    device = next(iter(model_sd.values())).device if model_sd else torch.device("cpu")
    mine = torch.tensor(sig, dtype=torch.int64, device=_comm_device(group, device))
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    if not all(torch.equal(p, mine) for p in parts):
        got = [p.tolist() for p in parts]
        raise RuntimeError(f"ranks hold different optimizer state for sharded experts: {got}")


def to_canonical_state(
    model: nn.Module, model_sd: dict, optim_sd: dict, group=None
) -> tuple[dict, dict]:
    """An expert-parallel model's full state dicts (`get_state_dict(..., full_state_dict=True)`
    on every rank) in the single-process form: each layer's expert blocks, and their optimizer
    moments, gathered over `group` in rank order. Collective: every rank of the group calls it.
    Without a process group, or with one rank, the parameters are only renamed."""
    pairs = [(local, canonical) for local, canonical, _ in _sharded_params(model)]
    _, world = _group_rank_world(group)
    if world == 1:
        return _convert_state(model_sd, optim_sd, pairs, lambda old, t: t)
    if pairs:
        _check_same_state_on_ranks(optim_sd, pairs, model_sd, group, world)
    return _convert_state(
        model_sd, optim_sd, pairs, lambda old, t: _gather_experts(t, group, world)
    )


def to_local_state(model: nn.Module, model_sd: dict, optim_sd: dict) -> tuple[dict, dict]:
    """The inverse of `to_canonical_state` for this rank (no collective): each layer's block of
    the canonical experts, and of their optimizer moments, under the local names, ready for
    `set_state_dict(..., full_state_dict=True)`. Copies: the inputs are left untouched, and the
    loaded state shares no memory with them."""
    pairs, blocks = [], {}
    for local, canonical, layer in _sharded_params(model):
        want = (layer.n_experts, *getattr(layer, local.rsplit(".", 1)[-1]).shape[1:])
        if tuple(model_sd[canonical].shape) != want:
            got = tuple(model_sd[canonical].shape)
            raise ValueError(f"{canonical} has shape {got}; this model expects {want}")
        pairs.append((canonical, local))
        blocks[canonical] = layer.local_experts

    def block(old, t):
        r = blocks[old]
        return t[r.start : r.stop].clone()

    return _convert_state(model_sd, optim_sd, pairs, block)
