"""`moescale eval` and `moescale generate` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moescale.eval import Sampling, evaluate_text, generate

ROOT = Path(__file__).resolve().parents[2]


def moescale(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "moescale.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env)  # fmt: skip


def test_eval_text_prints_a_table_and_merges_eval_json(loaded, tmp_path: Path):
    text = "The king and the queen rode to the castle.\n\nThe whale swam in the sea at night.\n"
    f = tmp_path / "t.txt"
    f.write_text(text)
    run_dir = tmp_path / "run"
    import shutil

    shutil.copytree(loaded.dir, run_dir, ignore=shutil.ignore_patterns(".lock"))
    r = moescale("eval", str(run_dir), "--text", str(f), "--threads", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    want = evaluate_text(loaded, text)
    assert f"{want.loss:.4f}" in r.stdout and f"{want.bits_per_byte:.4f}" in r.stdout
    r = moescale("eval", str(run_dir), "--text", str(f), "--stride", "8", "--json",
                 "--threads", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    [entry] = json.loads(r.stdout).values()  # stdout holds the JSON alone
    assert entry["stride"] == 8 and entry["tokens"] == want.tokens
    entries = json.loads((run_dir / "eval.json").read_text())
    assert sorted(e["stride"] for e in entries.values()) == [8, loaded.seq_len]
    assert entries[f"text:{f.resolve()}|stride=32|step=30"]["loss"] == pytest.approx(want.loss)


def test_eval_without_anything_to_evaluate_exits_2(dense_run: Path):
    r = moescale("eval", str(dense_run))
    assert r.returncode == 2 and "nothing to evaluate" in r.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--text", "no/such.txt"], "cannot read --text no/such.txt: No such file"),
    (["--text", "README.md", "--stride", "0"], "--stride 0 must lie between 1 and the run's"),
    (["--text", "README.md", "--device", "tpu"], "--device: 'tpu' is not a device moescale runs"),
    (["--tasks", "mmlu", "--num-fewshot", "-1"], "--num-fewshot: '-1' must be a whole number >= 0"),
    (["--tasks", "mmlu", "--limit", "inf"], "--limit: 'inf' must be a whole count of items"),
    (["--tasks", "mmlu", "--limit", "1.5"], "--limit: '1.5' must be a whole count of items"),
    (["--text", "README.md", "--threads", "-1"], "--threads: '-1' must be a whole number >= 0"),
    (["--text", "README.md", "--step=-1"], "--step: '-1' must be a whole number >= 0"),
])  # fmt: skip
def test_eval_checks_its_flags_before_loading_the_checkpoint(dense_run: Path, flags, message):
    r = moescale("eval", str(dense_run), *flags)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "loaded" not in r.stderr  # refused before the model was read


def test_generate_greedy_prints_prompt_and_continuation(loaded):
    r = moescale(
        "generate",
        str(loaded.dir),
        "--prompt",
        "The king",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--json",
        "--threads",
        "1",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == generate(loaded, "The king", Sampling(max_new_tokens=12,
                                                                 temperature=0))  # fmt: skip
    assert out["step"] == 30 and out["sampling"]["temperature"] == 0
    r = moescale("generate", str(loaded.dir), "--prompt", "x", "--top-p", "2")
    assert r.returncode == 2 and "--top-p" in r.stderr


def test_tasks_without_lm_eval_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    from moescale.errors import UserError
    from moescale.eval.tasks import require_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(UserError, match=r"pip install 'moescale\[eval\]'"):
        require_lm_eval("--tasks")


def test_eval_tasks_dir_records_the_task(loaded, tmp_path: Path):
    pytest.importorskip("lm_eval")
    import shutil

    from .test_tasks import ITEMS, write_mc_task

    run_dir = tmp_path / "run"
    shutil.copytree(loaded.dir, run_dir, ignore=shutil.ignore_patterns(".lock", "eval.json"))
    tasks = write_mc_task(tmp_path / "tasks")
    r = moescale("eval", str(run_dir), "--tasks-dir", str(tasks), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert f"tiny_mc (step 30, {len(ITEMS)} items): acc" in r.stdout
    [entry] = json.loads((run_dir / "eval.json").read_text()).values()
    assert entry["task"] == "tiny_mc" and 0 <= entry["metrics"]["acc"] <= 1
