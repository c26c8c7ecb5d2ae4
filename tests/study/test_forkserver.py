"""Runs forked from the fork server behave as fresh `python -m moescale.cli` processes."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from moescale.errors import ConfigError
from moescale.run import read_summary_or_none
from moescale.study import forkserver
from moescale.study.collect import read_table
from moescale.study.driver import run_study
from moescale.study.executors import ExecutorConfig, LocalExecutor

from .conftest import TINY_BASE, write_study

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="the fork server is Linux-only")


def _train_config(tmp: Path, corpus: Path, tokens: int) -> Path:
    cfg = copy.deepcopy(TINY_BASE)
    cfg["model"].update(d_model=16, n_layers=1, n_heads=1, d_ff=32)
    cfg["train"].update(tokens=tokens, out_dir=str(tmp / "run"), warmup_frac=0.0)
    cfg["data"] = {"corpus": [str(corpus)], "cache_dir": str(corpus.parent / "cache")}
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_forked_run_gets_its_environment_log_and_exit_status(tmp_path: Path, corpus_dir: Path):
    env = dict(os.environ, MOESCALE_PEAK_FLOPS="1.5e11")  # read by the run, not at import
    log = tmp_path / "stdout.log"
    log.write_text("earlier attempt\n")
    run = forkserver.ForkedRun(["train", str(_train_config(tmp_path, corpus_dir, 512))], env, log)
    assert run.wait(120) == 0 and run.poll() == 0
    text = log.read_text()
    assert text.startswith("earlier attempt\n")  # appended, as a retry's log is
    assert "$MOESCALE_PEAK_FLOPS" in text and "train: done" in text
    assert read_summary_or_none(tmp_path / "run").status == "done"

    bad = forkserver.ForkedRun(["train", str(tmp_path / "missing.yaml")], env, tmp_path / "b.log")
    assert bad.wait(60) == 2  # the command's own exit status
    assert "missing.yaml" in (tmp_path / "b.log").read_text()  # its stderr, in the log
    usage = forkserver.ForkedRun(["train"], env, tmp_path / "u.log")  # argparse exits itself
    assert usage.wait(60) == 2
    assert "required" in (tmp_path / "u.log").read_text()


def test_a_forked_run_stops_on_sigint_and_dies_on_kill(tmp_path: Path, corpus_dir: Path, request):
    # Ctrl-C at Python's default, as in a terminal; a suite started in a script's background
    # inherits SIGINT ignored, which a forked run keeps (as a fresh one would)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    cfg = _train_config(tmp_path, corpus_dir, 10_000_000)
    log = tmp_path / "stdout.log"
    run = forkserver.ForkedRun(["train", str(cfg)], dict(os.environ), log)
    metrics = tmp_path / "run" / "metrics.jsonl"
    t0 = time.monotonic()
    while not metrics.exists() and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)  # Ctrl-C: the step ends, a checkpoint is written
    assert run.wait(120) == 130, log.read_text()
    assert read_summary_or_none(tmp_path / "run").status == "interrupted"

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a study started with nohup: so is its run
    log2 = tmp_path / "again.log"
    again = forkserver.ForkedRun(["train", str(cfg)], dict(os.environ), log2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and "step " not in (log2.read_text() if log2.exists() else ""):
        time.sleep(0.05)
    again.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert again.poll() is None, log2.read_text()  # still training
    again.kill()
    assert again.wait(60) == -signal.SIGKILL


def test_forked_and_fresh_processes_train_the_same_study(tmp_path: Path, corpus_dir: Path):
    small = {"ladder": {"n_layers": [1], "d_model_per_layer": 16, "head_dim": 16},
             "architectures": ["dense", {"name": "fg", "experts": 4, "top_k": 1,
                                         "granularity": 2}],
             "tokens": {"budgets": [1024, 2048]}}  # fmt: skip
    losses = {}
    for start in ("forkserver", "process"):
        (tmp_path / start).mkdir()
        spec = write_study(tmp_path / start, corpus_dir, **small,
                           executor={"workers": 2, "threads": 1, "start": start})  # fmt: skip
        assert not run_study(spec, report=False).failed
        rows = read_table(tmp_path / start / "study" / "results.csv")
        losses[start] = sorted((r["arch"], r["tokens"], r["val_loss"]) for r in rows)
    assert losses["forkserver"] == losses["process"] and len(losses["process"]) == 4


def test_start_is_checked_and_auto_forks_only_without_a_gpu(monkeypatch):
    with pytest.raises(ConfigError, match="executor.start"):
        ExecutorConfig.from_dict({"start": "fork"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert LocalExecutor(ExecutorConfig()).fork
    assert not LocalExecutor(ExecutorConfig(gpus=1)).fork  # GPU runs: fresh processes
    assert LocalExecutor(ExecutorConfig(gpus=1, start="forkserver")).fork
    assert not LocalExecutor(ExecutorConfig(start="process")).fork
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU machine, even for CPU runs
    assert not LocalExecutor(ExecutorConfig()).fork


def test_the_fork_server_imports_no_cuda_state():
    """Forked children may use CUDA only if the server never initialised it."""
    import subprocess
    import sys

    code = ("import importlib, torch; [importlib.import_module(m) for m in "
            f"{json.dumps(forkserver.PRELOAD)}]; print(torch.cuda.is_initialized())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
