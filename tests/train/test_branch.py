"""WSD decay branches: a trunk keeps its branch points; a branch started from one reproduces
the run of its budget trained from scratch (CPU, float32, one thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moescale.config import dump_config
from moescale.errors import ConfigError
from moescale.run import read_metrics, read_summary
from moescale.train.branch import branch_checkpoint
from moescale.train.trainer import train

from .conftest import log_lines, tiny_config

STEP = 8 * 32  # tokens per step of the tiny configs
D1, D2, D3 = 30 * STEP, 45 * STEP, 60 * STEP  # decay starts: steps 24, 36 (trunk's: 48)
WSD: dict[str, Any] = dict(schedule="wsd", decay_frac=0.2, warmup_tokens=3 * STEP,
                           micro_batch_size=4, noise_scale=True, checkpoint_every=10)  # fmt: skip


def records(run: Path) -> dict[int, tuple[float, float, float]]:
    """step -> (loss, lr, grad_norm) of the training records."""
    return {r["step"]: (r["loss"], r["lr"], r["grad_norm"])
            for r in read_metrics(run / "metrics.jsonl") if "loss" in r}  # fmt: skip


@pytest.fixture(scope="module")
def trunk(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> Path:
    run = tmp_path_factory.mktemp("branch") / "trunk"
    cfg = tiny_config(run, moe=True, tokens=D3, branch_tokens=[D1, D2], keep_checkpoints=1, **WSD)
    assert train(cfg, data=tiny_data).status == "done"
    return run


def branch_config(out: Path, trunk: Path, tokens: int = D1, **kw: Any):
    init = branch_checkpoint(trunk, tiny_config(trunk, moe=True, tokens=D3, **WSD), tokens)
    return tiny_config(out, moe=True, tokens=tokens, init_from=str(init), **{**WSD, **kw})


def test_trunk_keeps_its_branch_points_through_pruning(trunk: Path):
    kept = sorted(p.name for p in (trunk / "checkpoints").iterdir())
    # keep_checkpoints 1: only the newest regular one, plus steps 24 and 36 forever
    assert kept == ["step_00000024.pt", "step_00000036.pt", "step_00000060.pt"]


def test_branch_reproduces_the_run_of_its_budget(tmp_path: Path, trunk: Path, tiny_data):
    scratch = train(tiny_config(tmp_path / "d1", moe=True, tokens=D1, **WSD), data=tiny_data)
    out = train(branch_config(tmp_path / "branch", trunk, eval_every=5), data=tiny_data)
    got, want = records(tmp_path / "branch"), records(tmp_path / "d1")
    assert sorted(got) == list(range(25, 31))  # its own steps only
    for step, values in got.items():
        assert values == pytest.approx(want[step], rel=1e-5, abs=1e-12), step
    trunk_recs = records(trunk)
    assert [trunk_recs[s] for s in range(1, 25)] == [want[s] for s in range(1, 25)]
    evals = [r["step"] for r in read_metrics(tmp_path / "branch" / "metrics.jsonl")
             if "val_loss" in r]  # fmt: skip
    assert evals == [25, 30]  # no evaluation at the starting step
    assert out.val_loss == pytest.approx(scratch.val_loss, rel=1e-5)
    assert out.noise_scale == pytest.approx(scratch.noise_scale, rel=1e-5)
    assert (out.steps, out.tokens, out.start_step) == (30, D1, 24)
    assert out.init_from == str(trunk / "checkpoints" / "step_00000024.pt")
    assert out.flops == pytest.approx(scratch.flops)  # the point's compute: all its tokens
    assert out.flops_spent == pytest.approx(out.flops_per_token * 6 * STEP)
    assert scratch.flops_spent == pytest.approx(scratch.flops) and scratch.start_step == 0
    assert read_summary(tmp_path / "branch") == out


def test_interrupted_branch_resumes_from_its_own_checkpoint(tmp_path: Path, trunk, tiny_data):
    cfg = branch_config(tmp_path / "branch", trunk, tokens=D2, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt), log_lines(stop_at="step 41/"):
        train(cfg, data=tiny_data)
    assert read_summary(tmp_path / "branch").status == "interrupted"
    with log_lines() as lines:
        out = train(cfg, data=tiny_data)
    assert any("resuming" in line and "step 40" in line for line in lines)
    assert sorted(records(tmp_path / "branch")) == list(range(37, 46))
    assert out.status == "done" and out.start_step == 36
    assert out.flops_spent == pytest.approx(out.flops_per_token * 9 * STEP)


def test_checkpoint_of_another_run_or_past_the_decay_start_is_refused(tmp_path, trunk, tiny_data):
    with pytest.raises(ConfigError) as err:
        train(branch_config(tmp_path / "a", trunk, lr=1e-3), data=tiny_data)
    assert "train.lr: 0.003 -> 0.001" in str(err.value) and "different config" in str(err.value)
    # D2's branch point (step 36) is past D1's decay start (step 24)
    late = branch_config(tmp_path / "b", trunk)
    late.train.init_from = str(trunk / "checkpoints" / "step_00000036.pt")
    with pytest.raises(ConfigError, match="at step 36, but .* decay begins after step 24"):
        train(late, data=tiny_data)
    missing = branch_config(tmp_path / "c", trunk)
    missing.train.init_from = str(tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="train.init_from: .*nope.pt' is not a file"):
        train(missing, data=tiny_data)
    assert not (tmp_path / "a" / "config.yaml").exists()  # refused before anything was written


def test_cli_continues_pretraining_from_a_checkpoint(tmp_path, trunk, tiny_data, monkeypatch):
    import moescale.data
    from moescale.cli import main

    monkeypatch.setattr(moescale.data, "prepare_data", lambda *a, **k: tiny_data)
    cfg = tmp_path / "trunk.yaml"
    cfg.write_text(dump_config(tiny_config(trunk, moe=True, tokens=D3, **WSD)))
    init = trunk / "checkpoints" / "step_00000036.pt"
    out = tmp_path / "more"
    assert main(["train", str(cfg), "--set", f"train.tokens={D2}", "--set",
                 f"train.init_from={init}", "--set", f"train.out_dir={out}"]) == 0  # fmt: skip
    assert read_summary(out).start_step == 36 and sorted(records(out)) == list(range(37, 46))
