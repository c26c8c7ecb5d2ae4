"""A whole Transformer made expert-parallel (`shard_model`) and its checkpoint state converted
between the canonical single-process form and each rank's form, over 2 gloo ranks.

One spawn of 2 CPU processes runs every case (start-up is most of the cost); each rank records
its mismatches per case and the tests below report them. Every rank builds the same seeded
single-process twin (8 experts: E=4, G=2; 2 layers, both MoE; sigmoid router with aux-loss-free
balancing and a shared expert, so every part of the layer's state is there), trains it for two
steps on both ranks' tokens, and checks against it:
- shard: the sharded names, and the parameter (hence optimizer) order of the twin;
- roundtrip: the twin's canonical state -> `to_local_state` -> `set_state_dict` on the sharded
  model -> `get_state_dict` -> `to_canonical_state` is the twin's state exactly;
- forward: each rank's logits and losses are the twin's on that rank's tokens;
- train_step: one step of the sharded model after the resume (L = sum of the ranks' losses,
  replicated gradients all-reduced) is the twin's step on both ranks' tokens;
- bias: `update_router_biases` with group-wide loads gives the twin's bias on every rank;
- missing_state: a never-stepped sharded parameter has no state to gather; ranks that disagree
  about it raise together instead of hanging.

A hang cannot block the suite: the process group times out after 30 s and the parent kills the
workers after DEADLINE_S.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from moescale.config import ModelConfig, MoEConfig, TrainConfig
from moescale.model import build_model, lm_loss
from moescale.model.parallel import shard_model, to_canonical_state, to_local_state
from moescale.train.optim import build_optimizer
from tests.model.test_parallel import rel_err
from tests.ranks import run_ranks

WORLD = 2
DEADLINE_S = 120.0
TOL = 1e-5
FULL = StateDictOptions(full_state_dict=True)
CFG = ModelConfig(
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_ff=64,
    vocab_size=50,
    seq_len=16,
    moe=MoEConfig(
        experts=4,
        granularity=2,
        top_k=1,
        shared_experts=1,
        router="sigmoid",
        bias_update_rate=0.01,
    ),
)


def make_model(seed: int):
    torch.manual_seed(seed)
    model = build_model(CFG)
    return model, build_optimizer(model, TrainConfig(), "cpu")


def batches(step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every rank's (inputs, targets) for one step, the same on every rank."""
    gen = torch.Generator().manual_seed(100 + step)
    seqs = [torch.randint(0, CFG.vocab_size, (2, CFG.seq_len + 1), generator=gen)]
    seqs.append(torch.randint(0, CFG.vocab_size, (3, CFG.seq_len + 1), generator=gen))
    return [(s[:, :-1], s[:, 1:]) for s in seqs]


def loss_of(model, x, y):
    out = model(x)
    return lm_loss(out.logits, y) + 0.01 * out.aux_loss, out


def twin_step(model, opt, step: int) -> list[torch.Tensor]:
    """One step of the single-process twin on every rank's tokens; each layer's loads."""
    opt.zero_grad()
    loads = [torch.zeros(CFG.moe.routed_experts, dtype=torch.int64) for _ in range(2)]
    for x, y in batches(step):
        loss, out = loss_of(model, x, y)
        loss.backward()
        loads = [a + s.tokens_per_expert for a, s in zip(loads, out.moe, strict=True)]
    opt.step()
    return loads


def same_state(got: tuple[dict, dict], want: tuple[dict, dict], atol: float = 0.0) -> list:
    """Differences between two (model, optimizer) state pairs: keys and their order, shapes,
    values (exactly, or within atol), and param_groups."""
    errors = []

    def cmp(what, a, b):
        if not isinstance(b, torch.Tensor):
            if a != b:
                errors.append(f"{what}: {a} != {b}")
        elif a.shape != b.shape or a.dtype != b.dtype:
            errors.append(f"{what}: {a.shape} {a.dtype} != {b.shape} {b.dtype}")
        elif (atol and (a - b).abs().max() > atol) or (not atol and not torch.equal(a, b)):
            errors.append(f"{what}: max diff {float((a - b).abs().max()):.2e}")

    (gm, go), (wm, wo) = got, want
    if list(gm) != list(wm) or list(go["state"]) != list(wo["state"]):
        return [f"keys {list(gm)} / {list(go['state'])} != {list(wm)} / {list(wo['state'])}"]
    for k in wm:
        cmp(k, gm[k], wm[k])
    for k, s in wo["state"].items():
        if list(go["state"][k]) != list(s):
            errors.append(f"state {k}: {list(go['state'][k])} != {list(s)}")
            continue
        for name, v in s.items():
            cmp(f"state {k}.{name}", go["state"][k][name], v)
    # set_state_dict turns AdamW's betas tuple into a list, in a single process too
    cmp("param_groups", json.dumps(go["param_groups"]), json.dumps(wo["param_groups"]))
    return errors


def run_cases(rank: int) -> dict:
    import torch.distributed as dist

    twin, twin_opt = make_model(0)
    twin_names = [n for n, _ in twin.named_parameters()]
    for step in range(2):
        twin_step(twin, twin_opt, step)
    canonical = get_state_dict(twin, twin_opt, options=FULL)
    snapshot = copy.deepcopy(canonical)

    model, _ = make_model(1)  # other weights: the load must overwrite them all
    names = shard_model(model, None)
    opt = build_optimizer(model, TrainConfig(), "cpu")
    res = {"shard": [], "roundtrip": [], "forward": [], "train_step": [], "bias": []}
    want = [f"blocks.{i}.ffn.{w}" for i in range(2) for w in ("w13_LDH", "w2_LFD")]
    if names != want:
        res["shard"].append(f"names {names}")
    renamed = [n.replace("_L", "_X") for n, _ in model.named_parameters()]
    if renamed != twin_names:
        res["shard"].append(f"parameter order {renamed} != {twin_names}")
    if model.blocks[0].ffn.w13_LDH.shape[0] != CFG.moe.routed_experts // WORLD:
        res["shard"].append(f"w13_LDH {tuple(model.blocks[0].ffn.w13_LDH.shape)}")

    local = to_local_state(model, *copy.deepcopy(canonical))
    res["roundtrip"] += [f"input changed: {e}" for e in same_state(canonical, snapshot)]
    set_state_dict(model, opt, model_state_dict=local[0], optim_state_dict=local[1], options=FULL)
    back = to_canonical_state(model, *get_state_dict(model, opt, options=FULL))
    res["roundtrip"] += same_state(back, canonical)

    (x, _), errors = batches(5)[rank], res["forward"]
    got, want_out = model(x), twin(x)
    for what in ("logits", "aux_loss", "z_loss"):
        if rel_err(getattr(got, what).detach(), getattr(want_out, what).detach()) > TOL:
            errors.append(f"{what}: rel err {rel_err(getattr(got, what), getattr(want_out, what))}")
    for g, w in zip(got.moe, want_out.moe, strict=True):
        if not torch.equal(g.tokens_per_expert, w.tokens_per_expert):
            errors.append("tokens_per_expert")

    loads = twin_step(twin, twin_opt, 2)  # one more step each: the resumed run goes on alike
    opt.zero_grad()
    loss, out = loss_of(model, *batches(2)[rank])
    loss.backward()
    for n, p in model.named_parameters():  # replicated: sum the ranks' gradients (DDP's job)
        if n not in names:
            dist.all_reduce(p.grad)
    opt.step()
    stepped = to_canonical_state(model, *get_state_dict(model, opt, options=FULL))
    res["train_step"] += same_state(stepped, get_state_dict(twin, twin_opt, options=FULL), 1e-6)

    my_loads = [s.tokens_per_expert.clone() for s in out.moe]
    for c in my_loads:  # group-wide loads: what the trainer passes to every rank
        dist.all_reduce(c)
    if not all(torch.equal(a, b) for a, b in zip(my_loads, loads, strict=True)):
        res["bias"].append(f"group loads {my_loads} != the twin's {loads}")
    twin.update_router_biases(loads)
    model.update_router_biases(my_loads)
    for i, (a, b) in enumerate(zip(model.moe_layers(), twin.moe_layers(), strict=True)):
        if not torch.equal(a.expert_bias_X, b.expert_bias_X) or not b.expert_bias_X.any():
            res["bias"].append(f"layer {i}: {a.expert_bias_X} != {b.expert_bias_X}")
    x, _ = batches(6)[rank]
    if rel_err(model(x).logits.detach(), twin(x).logits.detach()) > TOL:
        res["bias"].append("forward after the bias update differs")
    res["missing_state"] = missing_state(model, opt, rank)
    return {k: {"errors": v} for k, v in res.items()}


def missing_state(model, opt, rank: int) -> list[str]:
    errors = []
    model_sd, optim_sd = get_state_dict(model, opt, options=FULL)
    del optim_sd["state"]["blocks.1.ffn.w2_LFD"]  # as if never stepped, on every rank
    _, canon = to_canonical_state(model, model_sd, optim_sd)
    if "blocks.1.ffn.w2_XFD" in canon["state"] or "blocks.1.ffn.w13_XDH" not in canon["state"]:
        errors.append(f"state keys {list(canon['state'])}")
    if rank == 1:  # one rank only: both must raise, neither may hang
        del optim_sd["state"]["blocks.0.ffn.w13_LDH"]
    try:
        to_canonical_state(model, model_sd, optim_sd)
        errors.append("ranks that disagree did not raise")
    except RuntimeError as e:
        if "different optimizer state" not in str(e):
            raise
    return errors


def _cases(rank: int, out_dir: Path) -> dict:
    return run_cases(rank)


@pytest.fixture(scope="module")
def group_results(tmp_path_factory):
    return run_ranks(_cases, WORLD, tmp_path_factory.mktemp("parallel_state"), DEADLINE_S, 30)


CASES = ["shard", "roundtrip", "forward", "train_step", "bias", "missing_state"]


@pytest.mark.parametrize("case", CASES)
def test_sharded_model_and_state_match_single_process(group_results, case):
    for rank, res in enumerate(group_results):
        assert case in res, f"rank {rank} did not run {case}"
        assert not res[case]["errors"], f"rank {rank}: {res[case]['errors']}"


def test_single_process_round_trip_without_a_group():
    twin, twin_opt = make_model(0)
    twin_step(twin, twin_opt, 0)
    canonical = get_state_dict(twin, twin_opt, options=FULL)
    model, _ = make_model(1)
    names = shard_model(model, None)  # no process group: one rank holding all 8 experts
    opt = build_optimizer(model, TrainConfig(), "cpu")
    assert model.blocks[1].ffn.w2_LFD.shape[0] == CFG.moe.routed_experts
    local = to_local_state(model, *canonical)
    assert "blocks.1.ffn.w2_LFD" in local[0] and "blocks.1.ffn.w2_XFD" not in local[0]
    assert local[1]["param_groups"][0]["params"][2] == names[0]
    set_state_dict(model, opt, model_state_dict=local[0], optim_state_dict=local[1], options=FULL)
    back = to_canonical_state(model, *get_state_dict(model, opt, options=FULL))
    assert same_state(back, canonical) == []
    x, _ = batches(0)[0]
    assert rel_err(model(x).logits.detach(), twin(x).logits.detach()) < TOL


def test_local_state_rejects_another_models_experts():
    twin, twin_opt = make_model(0)
    model_sd, optim_sd = get_state_dict(twin, twin_opt, options=FULL)
    model_sd = {**model_sd, "blocks.0.ffn.w13_XDH": model_sd["blocks.0.ffn.w13_XDH"][:6]}
    model, _ = make_model(1)
    shard_model(model)
    with pytest.raises(ValueError, match="blocks.0.ffn.w13_XDH"):
        to_local_state(model, model_sd, optim_sd)
