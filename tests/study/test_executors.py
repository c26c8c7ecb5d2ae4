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
    states = {read_summary_or_none(d).status for d in runs.iterdir()
              if read_summary_or_none(d) is not None}  # fmt: skip
    assert states <= {"interrupted", "done"} and "interrupted" in states
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
