"""Executors: never more threads than cores, GPU slots, submitit's path, a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moescale.errors import ConfigError
from moescale.run import read_summary_or_none
from moescale.study import executors
from moescale.study.collect import read_table
from moescale.study.driver import run_study
from moescale.study.executors import ExecutorConfig, LocalExecutor, plan_workers

from .conftest import write_study

SMALL = {"ladder": {"n_layers": [1], "d_model_per_layer": 16, "head_dim": 16},
         "architectures": ["dense"], "tokens": {"budgets": [1024, 2048]}}  # fmt: skip


@pytest.mark.parametrize("cores", [1, 2, 3, 8])
@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_default_threads_never_oversubscribe(monkeypatch, cores: int, workers: int):
    monkeypatch.setattr(executors, "cores", lambda: cores)
    w, t = plan_workers(ExecutorConfig(workers=workers))
    assert t >= 1 and (w * t <= cores or t == 1)
    if workers == 0:
        assert (w, t) == (cores, 1)


def test_gpu_slots_pack_runs_per_gpu():
    ex = LocalExecutor(ExecutorConfig(gpus=2, runs_per_gpu=3))
    assert ex.workers == 6
    assert [ex.env(s)["CUDA_VISIBLE_DEVICES"] for s in range(6)] == ["0", "1"] * 3


def test_gpus_zero_on_cuda_takes_every_visible_gpu_and_one_run_per_core(monkeypatch):
    """A scheduler's allocation (GPUs 2 and 3) is kept: slots map to those GPUs, not to 0, 1."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(executors, "cores", lambda: 16)
    cfg = ExecutorConfig()
    executors.fill_gpus(cfg, runs_per_gpu_set=False)
    assert (cfg.gpus, cfg.runs_per_gpu) == (2, 8)
    ex = LocalExecutor(cfg)
    assert ex.workers == 16 and ex.threads == 1
    assert [ex.env(s)["CUDA_VISIBLE_DEVICES"] for s in range(4)] == ["2", "3", "2", "3"]
    kept = ExecutorConfig(runs_per_gpu=1)
    executors.fill_gpus(kept, runs_per_gpu_set=True)  # runs that fill a GPU
    assert (kept.gpus, kept.runs_per_gpu) == (2, 1)
    explicit = ExecutorConfig(gpus=1, runs_per_gpu=3)
    executors.fill_gpus(explicit, runs_per_gpu_set=True)
    assert (explicit.gpus, explicit.runs_per_gpu) == (1, 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: the CPU plan stays
    none = ExecutorConfig()
    executors.fill_gpus(none, runs_per_gpu_set=False)
    assert none.gpus == 0


def test_only_runs_on_cuda_are_spread_over_gpus(monkeypatch):
    import torch

    from moescale.study.driver import _on_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _on_cuda({"train": {"device": "cuda"}}) and _on_cuda({})  # auto, with a GPU
    assert not _on_cuda({"train": {"device": "cpu"}})
    assert not _on_cuda({"train": {"device": "cuda:1"}})  # names its GPU itself


def test_bad_executor_keys():
    with pytest.raises(ConfigError, match="unknown keys"):
        ExecutorConfig.from_dict({"worker": 2})
    with pytest.raises(ConfigError, match="executor.kind"):
        ExecutorConfig.from_dict({"kind": "k8s"})


def test_submitit_local_executor_runs_the_study(tmp_path: Path, corpus_dir: Path):
    pytest.importorskip("submitit")
    spec = write_study(tmp_path, corpus_dir, **SMALL,
                       executor={"kind": "submitit-local", "workers": 2, "threads": 1})
    outcome = run_study(spec, report=False)
    assert not outcome.failed
    rows = read_table(tmp_path / "study" / "results.csv")
    assert sorted(r["tokens"] for r in rows) == [1024, 2048]
    assert any(r["branch_of"] for r in rows)  # the branch waited for its trunk's checkpoint


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_workers_and_leaves_runs_resumable(tmp_path: Path, corpus_dir: Path):
    spec = write_study(tmp_path, corpus_dir, **SMALL, executor={"workers": 1, "threads": 1})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # SIGINT at its default, as in a terminal's foreground job: a background job of a
    # non-interactive shell (CI running `make test &`) inherits SIGINT ignored, and Python keeps
    # an inherited SIG_IGN, so the study would never see the Ctrl-C (`nohup` users want that)
    proc = subprocess.Popen([sys.executable, "-m", "moescale.cli", "study", str(spec),
                             "--no-report"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_sigint_default)  # fmt: skip
    runs = tmp_path / "study" / "runs"
    t0 = time.monotonic()
    while not any(runs.glob("*/metrics.jsonl")) and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    waited, alive = time.monotonic() - t0, proc.poll() is None
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, (f"waited {waited:.1f} s, study alive at the Ctrl-C: {alive}, "
                                    f"runs: {sorted(p.name for p in runs.glob('*/*'))}\n{out}")
    assert "re-run" in out
    summaries = [s for d in runs.iterdir() if (s := read_summary_or_none(d)) is not None]
    states = {s.status for s in summaries}
    assert states <= {"interrupted", "done"} and "interrupted" in states, (
        [(s.status, s.reason) for s in summaries], out)
    assert not run_study(spec, report=False).failed  # and it resumes


def test_submitit_runs_each_run_on_two_ranks(tmp_path: Path, corpus_dir: Path):
    """`slurm: {ranks_per_run: 2}`: each run is a 2-task job whose tasks join as torch ranks."""
    pytest.importorskip("submitit")
    small = {**SMALL, "tokens": {"budgets": [2048]}}
    spec = write_study(tmp_path, corpus_dir, **small,
                       executor={"kind": "submitit-local", "workers": 1, "threads": 1,
                                 "slurm": {"ranks_per_run": 2}})  # fmt: skip
    outcome = run_study(spec, report=False)
    assert not outcome.failed
    (run,) = (tmp_path / "study" / "runs").iterdir()
    assert read_summary_or_none(run).ranks == 2
