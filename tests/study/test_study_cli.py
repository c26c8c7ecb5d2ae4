"""`moescale study` end to end on a tiny corpus: real worker processes, real runs, the table,
the laws, the report; then the ways a study goes wrong: killed, failing runs, re-runs."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from moescale.cli import main
from moescale.run import read_summary_or_none
from moescale.study.collect import read_table

from .conftest import write_study

COMPARE = ("run", "tokens", "flops", "params_active", "params_total", "val_loss", "steps")


def _summaries(study: Path) -> dict[str, tuple[float, float]]:
    """run -> (summary mtime, val_loss) of every finished run."""
    out = {}
    for d in sorted((study / "runs").iterdir()):
        s = read_summary_or_none(d)
        if s is not None and s.status == "done":
            out[d.name] = ((d / "summary.json").stat().st_mtime, s.val_loss)
    return out


def test_tiny_study_end_to_end(tmp_path: Path, corpus_dir: Path, capsys):
    spec = write_study(tmp_path, corpus_dir)
    assert main(["study", str(spec)]) == 0
    out = capsys.readouterr().out
    study = tmp_path / "study"
    manifest_runs = len(list((study / "configs").glob("*.yaml")))
    rows = read_table(study / "results.csv")
    assert len(rows) == manifest_runs == 2 * 2 * 2  # 2 archs x 2 sizes x 2 budgets
    assert {r["variant"] for r in rows} == {"dense", "fine-grained"}
    branches = [r for r in rows if r["branch_of"]]
    assert len(branches) == 4 and all(r["flops_spent"] < r["flops"] for r in branches)
    assert (study / "results.parquet").exists() and (study / "curves.csv").exists()
    html = (study / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert images, "the report embeds its figures"
    for b64 in images:
        assert mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png").size > 0
    assert "report:" in out and str(study / "report.html") in out
    analysis = json.loads((study / "study.json").read_text())  # the answer, on the console too
    assert f"{len(analysis['claims'])} claims and {len(analysis['warnings'])} warnings" in out

    # a second call trains nothing and does not rewrite the report
    before = _summaries(study)
    report_mtime = (study / "report.html").stat().st_mtime
    assert main(["study", str(spec)]) == 0
    assert _summaries(study) == before
    assert (study / "report.html").stat().st_mtime == report_mtime
    _report_command_follows_the_study(study)


def _report_command_follows_the_study(study: Path) -> None:
    """`moescale report DIR` rebuilds what the study wrote (its name, its report.budgets), and
    --budgets changes the report even though the results did not."""
    mtime = (study / "report.html").stat().st_mtime
    assert main(["report", str(study)]) == 0
    assert (study / "report.html").stat().st_mtime == mtime  # up to date: the same settings
    assert main(["report", str(study), "--budgets", "1e16"]) == 0
    assert json.loads((study / "study.json").read_text())["data"]["budgets"] == [1e16]
    assert main(["report", str(study), "--force"]) == 0
    assert json.loads((study / "study.json").read_text())["data"]["budgets"] == [1e15, 1e18]
    assert "<title>moescale study: tiny</title>" in (study / "report.html").read_text()


def _wait_for(cond, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the study")
        time.sleep(0.1)


def test_killed_study_restarts_without_retraining(tmp_path: Path, corpus_dir: Path):
    # the reference: the same study, never interrupted
    (tmp_path / "ref").mkdir()
    ref_spec = write_study(tmp_path / "ref", corpus_dir, executor={"workers": 2, "threads": 1})
    assert main(["study", str(ref_spec), "--no-report"]) == 0
    reference = read_table(tmp_path / "ref" / "study" / "results.csv")

    spec = write_study(tmp_path, corpus_dir, executor={"workers": 1, "threads": 1})
    study = tmp_path / "study"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "moescale.cli", "study", str(spec),
                             "--no-report"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for(lambda: (study / "runs").is_dir() and len(_summaries(study)) >= 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = _summaries(study)
    assert 2 <= len(done_before) < len(reference)
    assert main(["study", str(spec), "--no-report"]) == 0
    after = _summaries(study)
    assert {k: after[k] for k in done_before} == done_before  # finished runs kept, not retrained
    table = read_table(study / "results.csv")
    strip = [{k: r[k] for k in COMPARE} for r in table]
    assert strip == [{k: r[k] for k in COMPARE} for r in reference]


def test_failing_runs_are_retried_then_reported(tmp_path: Path, corpus_dir: Path, capsys):
    runs = [{"name": "good", "set": {"train.tokens": 1024}},
            {"name": "diverges", "set": {"train.tokens": 1024, "train.lr": 1e30}},
            {"name": "no-gpu", "set": {"train.tokens": 1024, "train.device": "cuda"}}]  # fmt: skip
    spec = write_study(tmp_path, corpus_dir, drop=("ladder", "architectures", "tokens"),
                       runs=runs, executor={"workers": 2, "retries": 1, "threads": 1})
    if _has_cuda():
        pytest.skip("this machine has CUDA: the no-gpu run would succeed")
    assert main(["study", str(spec), "--no-report"]) == 1
    out = capsys.readouterr().out
    assert "failed: good" not in out
    assert re.search(r"failed: diverges-\w+: .*(non-finite|nan|inf)", out, re.I)
    assert re.search(r"failed: no-gpu-\w+: .*cuda", out, re.I)
    rows = read_table(tmp_path / "study" / "results.csv")
    assert [r["run"].split("-")[0] for r in rows] == ["good"]
    (log,) = (tmp_path / "study" / "runs").glob("diverges-*/stdout.log")
    assert "the previous attempt failed" in log.read_text()  # retried once, then reported


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def test_study_evaluates_ladder_runs_downstream(tmp_path: Path, corpus_dir: Path):
    pytest.importorskip("lm_eval")
    small = {"ladder": {"n_layers": [1], "d_model_per_layer": 16, "head_dim": 16},
             "architectures": ["dense"], "tokens": {"budgets": [1024, 2048]}}  # fmt: skip
    spec = write_study(tmp_path, corpus_dir, **small, eval={"tasks": ["moescale_cloze"],
                                                            "limit": 8})  # fmt: skip
    assert main(["study", str(spec)]) == 0
    rows = read_table(tmp_path / "study" / "results.csv")
    assert len(rows) == 2 and all(0 <= r["eval_moescale_cloze_acc"] <= 1 for r in rows)
    html = (tmp_path / "study" / "report.html").read_text()
    assert 'id="fig-accuracy"' in html and "Downstream accuracy against compute" in html
    assert (tmp_path / "study" / "figures" / "accuracy.png").exists()  # drawn, not skipped


def test_unknown_eval_task_stops_the_study_before_training(tmp_path: Path, corpus_dir: Path,
                                                          capsys):  # fmt: skip
    pytest.importorskip("lm_eval")
    spec = write_study(tmp_path, corpus_dir, eval={"tasks": ["moescale_cloze", "no_such_tsk"]})
    for dry in ([], ["--dry-run"]):
        assert main(["study", str(spec), *dry]) == 2
        assert "eval.tasks: unknown lm-eval task(s): no_such_tsk" in capsys.readouterr().err
    assert not (tmp_path / "study" / "runs").exists()  # nothing trained


def test_dry_run_lists_runs_and_estimates_without_training(tmp_path: Path, corpus_dir: Path,
                                                           capsys):  # fmt: skip
    spec = write_study(tmp_path, corpus_dir)
    assert main(["study", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 runs (4 WSD branches)" in out and "saved" in out and "estimated wall time" in out
    rows = [line for line in out.splitlines() if line.startswith(("dense-", "fg-"))]
    assert len(rows) == 8
    # each branch names the trunk checkpoint it decays from
    assert sum(line.endswith("scratch") for line in rows) == 4
    assert all(re.search(r"step \d+ of (dense|fg)-\S+$", line) for line in rows
               if not line.endswith("scratch"))  # fmt: skip
    assert not (tmp_path / "study" / "runs").exists()  # nothing trained


def test_added_budget_starts_from_an_earlier_trunk_checkpoint(tmp_path: Path, corpus_dir: Path):
    """A budget added to a finished study: its trunk (same name) is not retrained and never kept
    the new branch point, so the branch starts from the trunk's earlier checkpoint and trains
    the steps in between itself; it ends where a branch from its own checkpoint ends."""
    small = {"ladder": {"n_layers": [1], "d_model_per_layer": 16, "head_dim": 16},
             "architectures": ["dense"], "executor": {"workers": 1, "threads": 1}}  # fmt: skip
    spec = write_study(tmp_path, corpus_dir, **small, tokens={"budgets": [1024, 2048]})
    assert main(["study", str(spec), "--no-report"]) == 0
    before = _summaries(tmp_path / "study")
    spec = write_study(tmp_path, corpus_dir, **small, tokens={"budgets": [1024, 1536, 2048]})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "moescale.cli", "study", str(spec),
                           "--no-report"], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "starts from step" in proc.stdout + proc.stderr
    after = _summaries(tmp_path / "study")
    assert {k: after[k] for k in before} == before and len(after) == 3  # only the new branch
    (ref := tmp_path / "ref").mkdir()  # the same branch from its own checkpoint
    ref_spec = write_study(ref, corpus_dir, **small, tokens={"budgets": [1536, 2048]})
    assert main(["study", str(ref_spec), "--no-report"]) == 0
    (new,) = [r for r in read_table(tmp_path / "study" / "results.csv") if r["tokens"] == 1536]
    (want,) = [r for r in read_table(ref / "study" / "results.csv") if r["tokens"] == 1536]
    assert new["run"] == want["run"] and new["start_step"] < want["start_step"]
    assert new["val_loss"] == want["val_loss"] and new["steps"] == want["steps"]


@pytest.mark.parametrize("flag", ["--workers", "--retries"])
def test_negative_counts_on_the_command_line_are_refused(tmp_path: Path, corpus_dir: Path,
                                                         capsys, flag: str):  # fmt: skip
    spec = write_study(tmp_path, corpus_dir)
    assert main(["study", str(spec), flag, "-1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{flag}: got -1, expected an integer >= 0" in err and "executor." in err


def test_a_missing_corpus_fails_the_plan(tmp_path: Path, capsys):
    spec = write_study(tmp_path, tmp_path / "no-such-texts")
    for dry in (["--dry-run"], []):
        assert main(["study", str(spec), *dry]) == 2
        err = capsys.readouterr().err
        assert "data.corpus" in err and str(tmp_path / "no-such-texts") in err
    assert not (tmp_path / "study").exists()  # nothing planned, nothing trained
