"""`collect`: every finished run becomes one row; nothing unfinished or unreadable slips in or
disappears silently; collecting twice gives the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moescale.cli import main
from moescale.errors import UserError
from moescale.run import RunPaths, RunSummary
from moescale.study.collect import collect, read_table


def fake_run(root: Path, name: str, status: str = "done", val_loss: float | None = 3.5,
             **kw) -> Path:  # fmt: skip
    d = root / name
    d.mkdir(parents=True)
    s = RunSummary(
        run=name, status=status, arch="moe", experts=8, granularity=4, top_k=1, d_model=64,
        n_layers=2, seq_len=32, params_total=1000, params_active=400, params_embedding=100,
        params_router=20, params_total_no_router=980, params_active_no_router=380,
        flops_per_token=2500.0, flops_per_token_simple=2400.0, flops_per_token_routing_aware=2450.0,
        batch_size=4, batch_tokens=128, lr=3e-3, schedule="wsd", steps_planned=10, steps=10,
        tokens=1280, flops=3.2e6, val_loss=val_loss, tokenizer_sha256="abc", **kw,
    )  # fmt: skip
    s.write(RunPaths(d))
    (d / "config.yaml").write_text("train:\n  seed: 3\n")
    (d / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "tokens": 128 * i, "loss": 5.0 - i / 10}) + "\n"
                for i in range(1, 11))  # fmt: skip
        + json.dumps({"step": 10, "tokens": 1280, "val_loss": val_loss}) + "\n"
    )
    return d


def test_rows_problems_and_idempotence(tmp_path: Path):
    fake_run(tmp_path, "a", val_loss=3.25)
    fake_run(tmp_path, "b", val_loss=3.0)
    fake_run(tmp_path, "failed", status="failed", failed_step=7, reason="loss is nan")
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "summary.json").write_text('{"run": "corrupt", "status": ')
    c = collect(tmp_path)
    assert [r["run"] for r in c.rows] == ["a", "b"]
    assert c.rows[0]["variant"] == "fine-grained" and c.rows[0]["seed"] == 3
    assert c.rows[0]["flops_spent"] == 2500.0 * 10 * 128
    problems = dict(c.problems)
    assert "failed at step 7: loss is nan" in problems[str(tmp_path / "failed")]
    assert "not readable JSON" in problems[str(bad)]
    assert len(c.curves) == 2 * 11
    first = {p.name: p.read_bytes() for p in c.files}
    collect(tmp_path)
    assert {p.name: p.read_bytes() for p in c.files} == first
    assert read_table(tmp_path / "results.csv")[1]["val_loss"] == 3.0
    assert pq.read_table(tmp_path / "results.parquet").column("val_loss").to_pylist() == [3.25, 3.0]


def test_interrupted_run_is_reported_with_how_to_resume(tmp_path: Path):
    fake_run(tmp_path, "ok")
    fake_run(tmp_path, "killed", status="running")  # nobody holds its lock: it was killed
    c = collect(tmp_path)
    assert [r["run"] for r in c.rows] == ["ok"]
    assert "interrupted" in dict(c.problems)[str(tmp_path / "killed")]


def test_cli_exit_status_and_json(tmp_path: Path, capsys):
    fake_run(tmp_path, "ok")
    assert main(["collect", str(tmp_path)]) == 0
    assert "collected 1 runs" in capsys.readouterr().out
    fake_run(tmp_path, "nan", val_loss=None)
    assert main(["collect", str(tmp_path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in out["rows"]] == ["ok"]
    assert "no finite val_loss" in out["problems"][0]["reason"]


def test_a_study_collects_only_its_current_runs(tmp_path: Path):
    fake_run(tmp_path / "runs", "kept")
    fake_run(tmp_path / "runs", "old")  # from an earlier version of the spec
    (tmp_path / "runs.json").write_text(json.dumps(
        {"name": "s", "runs": [{"name": "kept", "arch": "fg", "variant": "fine-grained",
                                "hyper": "", "trunk": ""}]}))  # fmt: skip
    c = collect(tmp_path)
    assert [(r["run"], r["arch_name"]) for r in c.rows] == [("kept", "fg")]
    assert "current spec" in dict(c.problems)[str(tmp_path / "runs" / "old")]


def test_a_run_directory_or_a_directory_without_runs_is_refused(tmp_path: Path):
    run = fake_run(tmp_path, "a", val_loss=3.0)
    with pytest.raises(UserError, match="is one run's directory: give the directory that holds"):
        collect(run)
    assert not (run / "results.csv").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run directory"):
        collect(tmp_path / "empty")
    (tmp_path / "empty" / "runs.json").write_text('{"runs": {}}')  # a study whose runs failed early
    assert collect(tmp_path / "empty").rows == []
