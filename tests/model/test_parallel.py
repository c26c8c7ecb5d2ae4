"""Expert parallelism over 2 gloo ranks against the single-process MoEFFN, forward and backward.

One spawn of 2 CPU processes runs every case (process start-up is most of the cost); each rank
records its own mismatches per case and the tests below report them. Every rank builds the same
seeded MoEFFN (E=4, G=2: 8 experts, 4 per rank; k=1: 2 slots per token; d_model 16, d_ff 32)
and every rank's inputs and loss projections, so it can compute the single-process reference
for the whole group by itself.

The loss is L = sum over ranks r of sum(y_r * proj_r), each rank backpropagating its own term.
Against the single-process layer on the same inputs:
- y_r and dL/dx_r on rank r: the layer on x_r alone (rel 1e-5);
- the expert shard gradients on rank r: the layer's full gradient of L (both ranks' tokens),
  sliced to rank r's experts, with no all_reduce: the other rank's tokens came to this rank;
- the router (and shared expert) gradients: rank r holds dL_r only; summed over ranks with an
  all_reduce they equal the full gradient of L;
- the exchange's statistics: rows per local expert and per rank from the reference routing.

A hang cannot block the suite: the process group times out after 30 s and the parent kills the
workers after DEADLINE_S.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from moescale.config import MoEConfig
from moescale.model.experts import reference_experts
from moescale.model.moe import MoEFFN, route
from moescale.model.parallel import ExpertParallelMoE, expert_parallel_forward
from tests.ranks import run_ranks

WORLD = 2
D_MODEL, D_FF = 16, 32
DEADLINE_S = 120.0
TOL = 1e-5

# name -> (MoEConfig kwargs, tokens per rank, whether each rank's tokens are forced onto
# experts 0 and 1 (rank 0's block), what the case must exercise)
CASES = {
    # random routing of distinct random tokens: uneven splits both ways
    "uneven": ({}, (13, 6), (False, False)),
    # every token to experts 0 and 1: rank 1 receives no rows, 6 of 8 experts idle
    "idle_rank": ({}, (9, 5), (True, True)),
    # rank 0 sends nothing to rank 1 (a zero-size split), rank 1 has 3 random tokens
    "one_way": ({}, (8, 3), (True, False)),
    # capacity drops (dropped slots stay home), shared expert, unnormalised softmax weights
    "capacity_shared": (
        {"capacity_factor": 0.5, "shared_experts": 1, "router": "softmax_before_topk"},
        (12, 10),
        (False, False),
    ),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def make_layer(cfg: MoEConfig) -> MoEFFN:
    torch.manual_seed(0)
    layer = MoEFFN(D_MODEL, D_FF, cfg)
    layer.init_weights(0.5, 0.5)
    with torch.no_grad():  # feature 0 steers tokens that carry it to experts 0 and 1
        layer.router.weight[:, 0] = -10.0
        layer.router.weight[:2, 0] = 10.0
    return layer


def make_inputs(n_tok: tuple[int, ...], forced: tuple[bool, ...]):
    gen = torch.Generator().manual_seed(1234)
    xs, projs = [], []
    for t, f in zip(n_tok, forced, strict=True):
        x = torch.randn(t, D_MODEL, generator=gen)
        x[:, 0] = 3.0 if f else 0.0
        xs.append(x)
        projs.append(torch.randn(t, D_MODEL, generator=gen))
    return xs, projs


def check_case(name: str, rank: int) -> dict:
    """Runs one case on this rank (collectively); returns its mismatches and statistics."""
    import torch.distributed as dist

    kwargs, n_tok, forced = CASES[name]
    cfg = MoEConfig(experts=4, granularity=2, top_k=1, **kwargs)
    layer = make_layer(cfg)
    xs, projs = make_inputs(n_tok, forced)
    n_exp, n_local = cfg.routed_experts, cfg.routed_experts // WORLD
    mine = slice(rank * n_local, (rank + 1) * n_local)

    t0 = time.perf_counter()
    ep = ExpertParallelMoE(layer)
    x = xs[rank].clone().requires_grad_(True)
    y, stats = ep(x)
    (y * projs[rank]).sum().backward()
    seconds = time.perf_counter() - t0
    replicated = {"router": ep.router.weight.grad.clone()}
    if ep.shared is not None:
        for n, p in ep.shared.named_parameters():
            replicated[f"shared.{n}"] = p.grad.clone()
    for g in replicated.values():  # collective: the same calls on every rank
        dist.all_reduce(g)

    # the single-process reference on the whole group's tokens
    ref_xs = [xi.clone().requires_grad_(True) for xi in xs]
    ref_ys = [layer(xi)[0] for xi in ref_xs]
    sum((yi * pi).sum() for yi, pi in zip(ref_ys, projs, strict=True)).backward()
    kept_X = torch.zeros(n_exp, dtype=torch.int64)
    for xi in xs:
        idx = route(xi @ layer.router.weight.detach().T, cfg).expert_idx_TK
        kept_X += torch.bincount(idx.reshape(-1), minlength=n_exp + 1)[:n_exp]
    rows_P = kept_X.view(WORLD, n_local).sum(1)

    errors = []

    def close(what, got, want):
        if got.shape != want.shape:
            errors.append(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        elif want.numel() and rel_err(got, want) > TOL:
            errors.append(f"{what}: rel err {rel_err(got, want):.2e}")

    close("y", y.detach(), ref_ys[rank].detach())
    close("dx", x.grad, ref_xs[rank].grad)
    close("dw13 (local shard)", ep.w13_LDH.grad, layer.w13_XDH.grad[mine])
    close("dw2 (local shard)", ep.w2_LFD.grad, layer.w2_XFD.grad[mine])
    close("drouter (summed over ranks)", replicated.pop("router"), layer.router.weight.grad)
    for n, g in replicated.items():
        close(f"d{n} (summed over ranks)", g, dict(layer.named_parameters())[n].grad)
    par = stats.parallel
    expected = {
        "tokens_per_local_expert": kept_X[mine],
        "rows_per_rank": rows_P,
        "tokens_per_expert": kept_X,
    }
    for what, want in expected.items():
        if not torch.equal(getattr(par, what), want):
            errors.append(f"{what}: {getattr(par, what).tolist()} != {want.tolist()}")
    want_imb = float(rows_P.max() / rows_P.float().mean())
    if abs(par.load_imbalance - want_imb) > 1e-6:
        errors.append(f"load_imbalance {par.load_imbalance} != {want_imb}")
    local_routing = route(xs[rank] @ layer.router.weight.detach().T, cfg).stats
    if not torch.equal(stats.tokens_per_expert, local_routing.tokens_per_expert):
        errors.append("MoEStats.tokens_per_expert is not this rank's routing")
    return {
        "errors": errors,
        "seconds": seconds,
        "sent_per_rank": par.sent_per_rank.tolist(),
        "rows_per_rank": par.rows_per_rank.tolist(),
        "tokens_per_local_expert": par.tokens_per_local_expert.tolist(),
        "load_imbalance": par.load_imbalance,
    }


def _no_grad_and_empty(rank: int) -> dict:
    """The bare function under no_grad, with rank 1 holding no tokens at all."""
    torch.manual_seed(5)
    w13 = torch.randn(8, D_MODEL, 16)
    w2 = torch.randn(8, 8, D_MODEL)
    n_tok = 7 if rank == 0 else 0
    x = torch.randn(n_tok, D_MODEL)
    idx = torch.randint(0, 8, (n_tok, 2))
    w = torch.rand(n_tok, 2)
    with torch.no_grad():
        y, stats = expert_parallel_forward(
            x, idx, w, w13[rank * 4 : rank * 4 + 4], w2[rank * 4 : rank * 4 + 4], 8
        )
    want = reference_experts(x, idx, w, w13, w2)
    errors = []
    if y.shape != want.shape or (n_tok and rel_err(y, want) > TOL):
        errors.append(f"y: {tuple(y.shape)} vs {tuple(want.shape)}")
    if stats.rows_per_rank.sum() != 14:
        errors.append(f"rows_per_rank {stats.rows_per_rank.tolist()}")
    return {"errors": errors}


def _cases(rank: int, out_dir: Path) -> dict:
    results = {name: check_case(name, rank) for name in CASES}
    results["no_grad_empty"] = _no_grad_and_empty(rank)
    return results


@pytest.fixture(scope="module")
def group_results(tmp_path_factory):
    t0 = time.perf_counter()
    results = run_ranks(_cases, WORLD, tmp_path_factory.mktemp("parallel"), DEADLINE_S, 30)
    print(f"2-rank gloo run: {time.perf_counter() - t0:.1f} s wall")
    return results


@pytest.mark.parametrize("case", [*CASES, "no_grad_empty"])
def test_expert_parallel_matches_single_process(group_results, case):
    for rank, res in enumerate(group_results):
        assert case in res, f"rank {rank} did not run {case}"
        assert not res[case]["errors"], f"rank {rank}: {res[case]['errors']}"


def test_cases_exercise_uneven_and_empty_splits(group_results):
    r0, r1 = (res for res in group_results)
    # uneven: rank 0 and rank 1 send different numbers of rows to each rank
    assert r0["uneven"]["sent_per_rank"] != r1["uneven"]["sent_per_rank"]
    assert len(set(r0["uneven"]["sent_per_rank"])) > 1
    # idle_rank: rank 1 receives nothing, its experts are all idle, imbalance is P
    assert r1["idle_rank"]["tokens_per_local_expert"] == [0, 0, 0, 0]
    assert r0["idle_rank"]["rows_per_rank"][1] == 0
    assert r0["idle_rank"]["load_imbalance"] == pytest.approx(WORLD)
    # one_way: rank 0 sends nothing to rank 1, rank 1 sends some to both
    assert r0["one_way"]["sent_per_rank"][1] == 0
    assert min(r1["one_way"]["sent_per_rank"]) > 0
    # some expert got nothing in at least one of the random cases too
    assert 0 in r0["one_way"]["tokens_per_local_expert"] + r1["one_way"]["tokens_per_local_expert"]


def test_single_process_without_a_group_is_moeffn():
    cfg = MoEConfig(experts=4, granularity=2, top_k=1, shared_experts=1, capacity_factor=0.75)
    layer = make_layer(cfg)
    ep = ExpertParallelMoE(layer)
    x = torch.randn(2, 5, D_MODEL)
    y, stats = ep(x)
    want, want_stats = layer(x)
    assert rel_err(y.detach(), want.detach()) < TOL
    assert torch.equal(stats.tokens_per_expert, want_stats.tokens_per_expert)
    assert stats.parallel.load_imbalance == 1.0


def test_experts_must_split_evenly():
    w13, w2 = torch.zeros(3, 4, 8), torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="experts"):
        expert_parallel_forward(
            torch.zeros(2, 4),
            torch.zeros(2, 1, dtype=torch.long),
            torch.ones(2, 1),
            w13,
            w2,
            n_experts=8,
        )
