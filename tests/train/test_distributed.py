"""The trainer on 2 gloo ranks (CPU processes on 127.0.0.1) against one process.

One spawn of 2 ranks runs every distributed job (process start-up is most of the cost); the
single-process references and the resumes on one rank run in the test process. Jobs:
- data parallelism (DDP) and FSDP2 at the same global batch give the loss trajectory of one
  process (float32, 1e-5), dense and MoE each (with gradient accumulation: 4 micro-batches of 2
  on one process, 2 on each rank);
- expert parallelism (parallel.expert 2, the 8 experts of each layer 4 per rank) gives it too;
- checkpoints: a run saved on 2 ranks (DDP and expert shards) resumes on 1, and one saved on 1
  resumes on 2 (DDP and expert shards), each continuing the one-process trajectory;
- evaluation, each rank scoring its share of the windows, gives the one-process validation loss
  and standard error;
- the noise scale's two squared norms under DDP are the mean per-rank |g|^2 and the full
  batch's |g|^2, computed independently on one process.

A hang cannot block the suite: the process group times out after 60 s and the parent kills the
ranks after DEADLINE_S.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from moescale.run import RunPaths, read_summary_or_none
from moescale.train.trainer import ArrayData, train
from tests.ranks import run_ranks
from tests.train.conftest import markov_tokens, tiny_config

WORLD = 2
DEADLINE_S = 240.0
TOL = 1e-5
CUT = 6  # resumed runs continue from this step's checkpoint
# MoE with the balancing statistics of each micro-batch: equal on 1 and 2 ranks (see step.py)
MOE = {"balance_scope": "micro_batch"}
TRAIN = {"tokens": 12 * 8 * 32, "micro_batch_size": 2, "eval_every": 6, "checkpoint_every": 6,
         "eval_tokens": 448}  # 7 validation batches: rank 1 scores 3 and runs a 4th for nothing


def data() -> ArrayData:
    return ArrayData(markov_tokens(20_000, seed=0), markov_tokens(2_000, seed=1))


def config(out: Path, moe: bool, parallel: dict | None = None, **train_kw: Any):
    cfg = tiny_config(out, moe=moe, **{**TRAIN, **train_kw})
    if moe:
        cfg.model.moe = dataclasses.replace(cfg.model.moe, **MOE)
    for k, v in (parallel or {}).items():
        setattr(cfg.parallel, k, v)
    return cfg


# name -> (moe, parallel, extra train keys): trained from scratch on 2 ranks
JOBS = {
    "dense_ddp": (False, {}, {}),
    "dense_fsdp": (False, {"fsdp": True}, {}),
    "moe_ddp_noise": (True, {}, {"noise_scale": True}),
    "moe_expert": (True, {"expert": 2}, {}),
    "moe_fsdp": (True, {"fsdp": True}, {}),
}
# name -> (moe, parallel, the one-process run directory whose cut copy it resumes)
RESUMES_ON_2 = {
    "dense_1to2": (False, {}, "ref_dense"),
    "moe_1to2": (True, {"expert": 2}, "ref_moe"),
}


def losses(run: Path) -> dict[int, float]:
    recs = records(run)
    assert len({r["step"] for r in recs}) == len(recs), f"{run}: a step was logged twice"
    return {r["step"]: r["loss"] for r in recs}


def cut_copy(src: Path, dst: Path, step: int = CUT) -> Path:
    """`src` as a run killed after checkpoint `step`: later checkpoints gone, status
    interrupted."""
    shutil.copytree(src, dst)
    for p in (dst / "checkpoints").glob("step_*.pt"):
        if int(p.stem.split("_")[1]) > step:
            p.unlink()
    s = read_summary_or_none(dst)
    dataclasses.replace(s, status="interrupted").write(RunPaths(dst))
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def noise_check(rank: int, tmp: Path) -> list[str]:
    """The two squared norms the noise scale gets under DDP, against one process."""
    from moescale.model import build_model
    from moescale.train.device import autocast_for
    from moescale.train.distributed import World, replicate
    from moescale.train.noise_scale import NoiseScaleEstimator
    from moescale.train.optim import build_optimizer
    from moescale.train.step import StepOptions, forward_backward, grad_sq_norm, train_step

    cfg = config(tmp / "noise", True, noise_scale=True)
    world = World(rank, WORLD, rank, WORLD)
    opts = StepOptions(2, 0.0, cfg.model.moe, autocast_for(torch.device("cpu")))
    x = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, 1)

    def fresh():
        torch.manual_seed(0)
        return build_model(cfg.model)

    ref = fresh()
    params = list(ref.parameters())
    small = []
    for r in range(WORLD):
        ref.zero_grad()
        forward_backward(ref, x[4 * r : 4 * r + 4], y[4 * r : 4 * r + 4], opts)
        small.append(float(grad_sq_norm(params)))
    ref.zero_grad()
    forward_backward(ref, x, y, dataclasses.replace(opts, n_micro=4))
    big = float(grad_sq_norm(params))

    model = fresh()
    wrapped, sync = replicate(model, cfg, world, torch.device("cpu"))
    noise = NoiseScaleEstimator(4 * 32, 8 * 32, 10)
    opt = build_optimizer(model, cfg.train, "cpu")
    train_step(model, opt, x[4 * rank : 4 * rank + 4], y[4 * rank : 4 * rank + 4], opts,
               forward=wrapped, noise=noise, sync=sync)  # fmt: skip
    errors = []
    for what, got, want in (("small", noise.small_sq[0], sum(small) / WORLD),
                            ("big", noise.big_sq[0], big)):  # fmt: skip
        if abs(got - want) > TOL * abs(want):
            errors.append(f"noise {what}: {got} != {want}")
    return errors


def _jobs(rank: int, root: Path) -> dict:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(WORLD), MOESCALE_PEAK_FLOPS="1e11")  # fmt: skip
    for name, (moe, par, extra) in JOBS.items():
        train(config(root / name, moe, par, **extra), data=data())
    for name, (moe, par, _) in RESUMES_ON_2.items():
        train(config(root / name, moe, par), data=data())
    return {"errors": noise_check(rank, root)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    for name, moe in (("ref_dense", False), ("ref_moe", True)):
        train(config(root / name, moe), data=data())
    for name, (_, _, src) in RESUMES_ON_2.items():
        cut_copy(root / src, root / name)
    for rank, result in enumerate(run_ranks(_jobs, WORLD, root, DEADLINE_S)):
        assert not result["errors"], f"rank {rank}:\n" + "\n".join(result["errors"])
    return root


def assert_same_trajectory(got: Path, want: Path, after: int = 0) -> None:
    a, b = losses(got), losses(want)
    steps = [s for s in b if s > after]
    assert steps and all(s in a for s in steps), (sorted(a), sorted(b))
    worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in steps)
    assert worst <= TOL, f"{got.name}: loss differs from {want.name} by {worst:.2e} (rel)"
    sa, sb = read_summary_or_none(got), read_summary_or_none(want)
    assert sa.status == sb.status == "done"
    assert abs(sa.val_loss - sb.val_loss) <= TOL * sb.val_loss  # windows split over the ranks
    assert abs(sa.val_loss_se - sb.val_loss_se) <= TOL * sb.val_loss_se


@pytest.mark.parametrize("name", list(JOBS))
def test_two_ranks_train_like_one(runs: Path, name: str) -> None:
    moe = JOBS[name][0]
    assert_same_trajectory(runs / name, runs / ("ref_moe" if moe else "ref_dense"))
    summary = read_summary_or_none(runs / name)
    assert summary.ranks == WORLD


def records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_the_noise_scale_and_rank_balance_are_logged(runs: Path) -> None:
    assert any(r.get("noise_scale") is not None for r in records(runs / "moe_ddp_noise"))
    ep = [r["rank_imbalance"] for r in records(runs / "moe_expert")]
    assert ep and all(1.0 <= v <= WORLD for v in ep)


@pytest.mark.parametrize("name", list(RESUMES_ON_2))
def test_saved_on_one_rank_resumes_on_two(runs: Path, name: str) -> None:
    moe = RESUMES_ON_2[name][0]
    assert_same_trajectory(runs / name, runs / ("ref_moe" if moe else "ref_dense"), after=CUT)
    assert read_summary_or_none(runs / name).start_step == 0


@pytest.mark.parametrize("name", ["dense_ddp", "moe_expert", "dense_fsdp"])
def test_saved_on_two_ranks_resumes_on_one(runs: Path, name: str) -> None:
    moe = JOBS[name][0]
    cut = cut_copy(runs / name, runs / f"{name}_2to1")
    train(config(cut, moe), data=data())
    assert_same_trajectory(cut, runs / ("ref_moe" if moe else "ref_dense"), after=CUT)
    assert read_summary_or_none(cut).ranks == 1
