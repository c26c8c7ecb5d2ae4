"""The run-directory contract: typed summary, readers with clear errors, config diff, columns."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from moescale.run import (
    Col,
    RunDirError,
    RunLock,
    RunLockedError,
    RunSummary,
    config_diff,
    lock_holder,
    read_metrics,
    read_summary,
    read_summary_or_none,
)


def summary(**kw) -> RunSummary:
    base = dict(
        run="r", status="done", arch="moe", experts=8, granularity=4, top_k=2, d_model=64,
        n_layers=2, seq_len=64, params_total=1000, params_active=400, params_embedding=256,
        params_router=32, params_total_no_router=968, params_active_no_router=368,
        flops_per_token=3000.0, flops_per_token_simple=2400.0,
        flops_per_token_routing_aware=2500.0, batch_size=16, batch_tokens=1024, lr=3e-3,
        schedule="cosine", steps_planned=10, steps=10, tokens=10240, val_loss=4.5,
    )  # fmt: skip
    base.update(kw)
    return RunSummary(**base)


def test_summary_round_trips_through_json(tmp_path: Path):
    s = summary(noise_scale=1234.5)
    (tmp_path / "summary.json").write_text(json.dumps(s.to_dict()))
    assert read_summary(tmp_path) == s


def test_every_results_column_is_a_summary_key():
    fields = {f.name for f in dataclasses.fields(RunSummary)}
    columns = {v for k, v in vars(Col).items() if k.isupper()}
    assert columns <= fields, columns - fields


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "expected a JSON object"),
        (
            json.dumps(
                {k: v for k, v in summary().to_dict().items() if k != "val_loss"}
                | {"params_total": None}
            ),
            "key 'params_total' holds None",
        ),  # fmt: skip
        (
            json.dumps({k: v for k, v in summary().to_dict().items() if k != "arch"}),
            "key 'arch' is missing",
        ),  # fmt: skip
        (json.dumps(summary(status="exploded").to_dict()), "status 'exploded'"),
    ],
)
def test_corrupt_summary_names_file_and_problem(tmp_path: Path, content: str, message: str):
    (tmp_path / "summary.json").write_text(content)
    with pytest.raises(RunDirError, match=message) as err:
        read_summary(tmp_path)
    assert str(tmp_path / "summary.json") in str(err.value)


def test_missing_run_dir_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RunDirError, match="is not a run directory"):
        read_summary(tmp_path / "nope")
    assert read_summary_or_none(tmp_path / "nope") is None


def test_metrics_reader_skips_only_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_config_diff_names_dotted_keys_and_ignores_out_dir():
    a = {"model": {"d_model": 64, "moe": None}, "train": {"lr": 0.003, "out_dir": "x"}}
    b = {"model": {"d_model": 64, "moe": {"experts": 8}}, "train": {"lr": 0.001, "out_dir": "y"}}
    assert config_diff(a, b) == [
        "model.moe.experts: None -> 8",
        "train.lr: 0.003 -> 0.001",
    ]


def test_reading_a_run_directory_needs_no_torch():
    code = "import sys, moescale.run, moescale.fmt; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


HOLD_LOCK = (
    "import sys, time; from moescale.run import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); time.sleep(120)"
)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A second process that holds `run_dir`'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_its_holder_and_dies_with_it(tmp_path: Path):
    (tmp_path / "summary.json").write_text(json.dumps(summary(status="running").to_dict()))
    assert read_summary(tmp_path).status == "interrupted"  # nobody ever held the lock
    proc = hold_lock(tmp_path)
    try:
        assert lock_holder(tmp_path) == proc.pid
        assert read_summary(tmp_path).status == "running"
        with pytest.raises(RunLockedError, match=f"process {proc.pid} on "):
            RunLock(tmp_path, retry_s=0.05).acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the kernel drops the lock with the process
        proc.wait()
    assert lock_holder(tmp_path) is None
    assert read_summary(tmp_path).status == "interrupted"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"  # unwritten
    with RunLock(tmp_path):
        assert lock_holder(tmp_path) == os.getpid()
        assert read_summary(tmp_path).status == "running"
    assert lock_holder(tmp_path) is None and (tmp_path / ".lock").read_text() == ""


def test_a_done_run_reads_done_without_a_lock(tmp_path: Path):
    (tmp_path / "summary.json").write_text(json.dumps(summary(status="done").to_dict()))
    assert read_summary(tmp_path).status == "done"
    assert lock_holder(tmp_path / "missing") is None


def test_config_diff_ignores_branch_points_and_what_the_caller_says():
    a = {"train": {"tokens": 100, "branch_tokens": [50], "lr": 0.1}}
    b = {"train": {"tokens": 200, "branch_tokens": [], "lr": 0.1}}
    assert config_diff(a, b) == ["train.tokens: 100 -> 200"]
    assert config_diff(a, b, ignore=frozenset({"train.tokens", "train.branch_tokens"})) == []
