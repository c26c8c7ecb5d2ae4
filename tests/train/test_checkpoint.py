"""Atomic files: a write killed half-way leaves the old file (or none), never a partial one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from moescale.atomic import atomic_write_text
from moescale.train.checkpoint import (
    FORMAT,
    checkpoint_path,
    list_checkpoints,
    load_latest,
    save_checkpoint,
)

SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from moescale.atomic import atomic_write

    def write(f):
        for _ in range(1000):
            f.write(b"x" * 4096)
            f.flush()
            time.sleep(0.01)

    atomic_write(sys.argv[1], write)
    """
)


def test_kill_mid_write_leaves_old_file(tmp_path: Path):
    target = tmp_path / "step_00000010.pt"
    atomic_write_text(target, "old")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)])
    deadline = time.time() + 15
    while time.time() < deadline:  # wait until the temporary file has data in it
        tmps = list(tmp_path.glob(".step_00000010.pt.tmp-*"))
        if tmps and tmps[0].stat().st_size > 0:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_text() == "old"
    assert list(tmp_path.glob(".step_*.tmp-*")), "the partial write went to a temporary file"
    assert list_checkpoints(tmp_path) == [(10, target)]  # temporary files are not checkpoints


def state(step: int) -> dict:
    return {"format": FORMAT, "step": step, "model": {"w": torch.full((3,), float(step))}}


def test_keeps_newest_and_skips_broken(tmp_path: Path, caplog):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, state(step), keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30, 40]
    # a damaged newest checkpoint (e.g. a disk that lied about fsync) is skipped with a warning
    p = checkpoint_path(tmp_path, 40)
    p.write_bytes(p.read_bytes()[:100])
    (tmp_path / ".step_00000050.pt.tmp-abc").write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="moescale"):
        step, loaded = load_latest(tmp_path)
    assert step == 30 and torch.equal(loaded["model"]["w"], torch.full((3,), 30.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "step_00000040.pt" in warnings[0]
    # the next save cleans up leftovers of a killed writer
    save_checkpoint(tmp_path, 50, state(50), keep=3)
    assert not list(tmp_path.glob(".step_*.tmp-*"))


def test_nothing_to_resume(tmp_path: Path):
    assert load_latest(tmp_path / "missing") is None


def test_trained_checkpoint_loads_without_unpickling_code(tmp_path: Path, tiny_data):
    from moescale.train.trainer import train

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run", moe=True, tokens=10 * 8 * 32, checkpoint_every=10)
    train(cfg, data=tiny_data)
    (path,) = (tmp_path / "run" / "checkpoints").iterdir()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["format"] == FORMAT and state["step"] == 10
    assert state["config"]["model"]["moe"]["granularity"] == 2


def test_old_pickled_checkpoint_is_skipped_with_a_reason(tmp_path: Path, caplog):
    import numpy as np

    old = {"format": 1, "step": 10, "model": {}, "rng": {"numpy": np.random.get_state()}}
    torch.save(old, checkpoint_path(tmp_path, 10))
    with caplog.at_level("WARNING", logger="moescale"):
        assert load_latest(tmp_path) is None
    assert "older moescale" in caplog.text


def test_protected_checkpoints_survive_pruning(tmp_path: Path):
    for step in (10, 14, 20, 27, 30, 40):
        save_checkpoint(tmp_path, step, state(step), keep=1, protected=frozenset({14, 27}))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [14, 27, 40]
    save_checkpoint(tmp_path, 50, state(50), keep=1)  # unprotected, they would go
    assert [s for s, _ in list_checkpoints(tmp_path)] == [50]


def test_checkpoint_paths_need_no_torch():
    code = ("import sys; from moescale.train.checkpoint import checkpoint_path; "
            "from moescale.train.optim import decay_start_step; "
            "from moescale.train.branch import branch_checkpoint; "
            "assert 'torch' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_format_2_checkpoint_still_resumes(tmp_path: Path, tiny_data):
    """Format 2 keyed the optimizer state by index (`optimizer.state_dict()`): such a file
    restores into a one-process model exactly as format 3 does."""
    from moescale.model import build_model
    from moescale.train.checkpoint import full_state, restore
    from moescale.train.optim import build_optimizer

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run", moe=True)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg.train, "cpu")
    model(torch.randint(0, 300, (2, 32))).logits.square().mean().backward()
    opt.step()
    trainer = {"val_loss": None, "val_loss_se": None, "val_bpb": None, "wall_time_s": 1.0,
               "noise": None, "start_step": 0}  # fmt: skip
    rng = {"torch": torch.get_rng_state(), "numpy": {"kind": "MT19937",
           "keys": torch.zeros(624, dtype=torch.int64), "pos": 624, "has_gauss": 0,
           "cached_gaussian": 0.0}, "python": {"version": 3, "state": torch.arange(625),
           "gauss_next": None}}  # fmt: skip
    old = {"format": 2, "model": model.state_dict(), "optimizer": opt.state_dict(),
           "rng": rng, "trainer": trainer}  # fmt: skip
    torch.manual_seed(1)
    again = build_model(cfg.model)
    again_opt = build_optimizer(again, cfg.train, "cpu")
    restore(old, again, again_opt)
    want, got = full_state(model, opt), full_state(again, again_opt)
    for key, value in want[0].items():
        assert torch.equal(got[0][key], value), key
    for name, moments in want[1]["state"].items():
        for k, v in moments.items():
            assert torch.equal(got[1]["state"][name][k], v), (name, k)
